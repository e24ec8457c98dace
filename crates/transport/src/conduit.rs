//! A connection's byte stream with its read and write buffers, driven from the connection's
//! own task: one task per connection reads, handles and writes, so an idle connection costs
//! one small task and no buffers, and a busy one pays no cross-task hand-off per batch.
//!
//! Reading grows its buffer while reads fill it (busy connections read up to 64 KiB at once)
//! and gives it back when the connection goes quiet; writing takes the protocol's whole output
//! buffer as one frozen chunk (no copy) and writes it as the socket accepts it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The smallest read: quiet connections (most of them, for IoT devices) read this much.
const READ_CHUNK_MIN: usize = 512;
/// The largest read, reached by doubling while reads fill the buffer.
const READ_CHUNK_MAX: usize = 64 * 1024;

/// What a conduit has moved: bytes and the reads and writes that moved them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes read.
    pub received: u64,
    /// Reads that brought bytes.
    pub reads: u64,
    /// Bytes written.
    pub sent: u64,
    /// Writes.
    pub writes: u64,
}

/// A byte stream, its unconsumed input and its unwritten output.
pub struct Conduit<S> {
    stream: S,
    input: BytesMut,
    output: Bytes,
    read_chunk: usize,
    traffic: Traffic,
    /// A flush is owed: the stream took the output but has not sent all of it (TLS keeps
    /// records in its own buffer while the socket would block; plain TCP never does).
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conduit<S> {
    /// Wraps a stream; no buffer is allocated until bytes arrive.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            input: BytesMut::new(),
            output: Bytes::new(),
            read_chunk: READ_CHUNK_MIN,
            traffic: Traffic::default(),
            unflushed: false,
        }
    }

    /// Wraps a stream whose earlier traffic (on another conduit) counts on.
    pub fn resuming(stream: S, traffic: Traffic) -> Self {
        let mut conduit = Self::new(stream);
        conduit.traffic = traffic;
        conduit
    }

    /// What the conduit has moved since it was made.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The stream itself, once the conduit is quiet (see [`Conduit::is_quiet`]): what was
    /// buffered is dropped.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// The bytes read and not consumed yet; the protocol's decoder takes whole frames off the
    /// front and leaves a partial one.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Whether output is waiting for the socket.
    pub fn is_writing(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether the connection is quiet: no read buffer held, nothing being written.
    pub fn is_quiet(&self) -> bool {
        self.input.capacity() == 0 && self.output.is_empty() && !self.unflushed
    }

    /// Reads what the socket has. `Ready(Ok(0))` is the end of the stream. Reads double while
    /// they fill the buffer and halve each time the socket is found drained; at the smallest
    /// size, with nothing left unconsumed, no buffer is held: the next bytes are read onto the
    /// stack and copied into a buffer of their size.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.input.is_empty() && self.read_chunk == READ_CHUNK_MIN {
            // Quiet: no buffer is held while waiting, none is made until bytes arrive.
            if self.input.capacity() > 0 {
                self.input = BytesMut::new();
            }
            let mut scratch = [0u8; READ_CHUNK_MIN];
            let mut buf = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
            let filled = buf.filled();
            self.count_read(filled.len());
            if filled.len() == READ_CHUNK_MIN {
                self.read_chunk = (READ_CHUNK_MIN * 2).min(READ_CHUNK_MAX);
            }
            self.input.extend_from_slice(filled);
            return Poll::Ready(Ok(filled.len()));
        }
        if self.input.capacity() - self.input.len() < self.read_chunk / 2 {
            self.input.reserve(self.read_chunk);
        }
        let spare = self.input.capacity() - self.input.len();
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.input) {
            Poll::Ready(Ok(n)) => {
                self.count_read(n);
                if n == spare {
                    self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                // The socket is drained: reads shrink back, and a quiet connection ends up
                // holding no buffer.
                if self.input.is_empty() {
                    self.read_chunk = (self.read_chunk / 2).max(READ_CHUNK_MIN);
                }
                Poll::Pending
            }
            other => other,
        }
    }

    /// Counts `n` bytes read outside the conduit and put in its input.
    pub fn note_read(&mut self, n: usize) {
        self.count_read(n);
    }

    fn count_read(&mut self, n: usize) {
        if n > 0 {
            self.traffic.received += n as u64;
            self.traffic.reads += 1;
        }
    }

    /// Takes `chunk` as the next output; only while nothing is being written (see
    /// [`Conduit::is_writing`]), so output keeps its order.
    pub fn send(&mut self, chunk: Bytes) {
        debug_assert!(self.output.is_empty(), "send while writing");
        self.output = chunk;
    }

    /// Writes the output, taking each next chunk from `next` (the protocol's output buffer)
    /// once the previous one is written, until there is none or the socket would block. An
    /// error means the connection is gone.
    pub fn write_from(
        &mut self,
        cx: &mut Context<'_>,
        mut next: impl FnMut() -> Option<Bytes>,
    ) -> io::Result<()> {
        loop {
            if !self.is_writing() {
                match next() {
                    Some(chunk) => self.send(chunk),
                    None if self.unflushed => {
                        return match self.poll_flush(cx) {
                            Poll::Ready(result) => result,
                            Poll::Pending => Ok(()),
                        };
                    }
                    None => return Ok(()),
                }
            }
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Writes output until it is all written (`Ready(Ok)`) or the socket would block.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.output))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.output.advance(n);
            self.traffic.sent += n as u64;
            self.traffic.writes += 1;
        }
        // An empty chunk still holds its buffer.
        self.output = Bytes::new();
        self.poll_flush(cx)
    }

    /// Flushes the stream, remembering a flush that could not finish (the socket would
    /// block) so the next [`Conduit::write_from`] tries again.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        self.unflushed = flushed.is_pending();
        flushed
    }

    /// Writes what is left of the output, then `last`, and shuts the write side down (the
    /// peer sees the end of the stream). Errors end it quietly: the connection is closing.
    pub async fn close(&mut self, last: Bytes) {
        if self.write_last(last).await {
            let _ = self.stream.shutdown().await;
        }
    }

    /// Writes what is left of the output, then `last`, and leaves closing to the peer: what
    /// it still sends is read and dropped until it closes its side (or fails), then the
    /// stream is shut down. The caller bounds how long that may take.
    pub async fn close_after_peer(&mut self, last: Bytes) {
        if !self.write_last(last).await {
            return;
        }
        let mut scratch = [0u8; 4096];
        while let Ok(n) = self.stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
        self.input = BytesMut::new();
        let _ = self.stream.shutdown().await;
    }

    /// Writes what is left of the output, then `last`; false when the stream failed.
    async fn write_last(&mut self, last: Bytes) -> bool {
        let output = std::mem::take(&mut self.output);
        self.stream.write_all(&output).await.is_ok() && self.stream.write_all(&last).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt;

    /// A stream that, as TLS does, takes writes into a buffer of its own and sends them only
    /// when flushed, and whose first flush finds the socket full.
    #[derive(Default)]
    struct Buffering {
        held: Vec<u8>,
        sent: Vec<u8>,
        flushes: usize,
    }

    impl AsyncRead for Buffering {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            if self.flushes == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let held = std::mem::take(&mut self.held);
            self.sent.extend(held);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn output_a_flush_could_not_send_is_flushed_at_the_next_wake_up() {
        let mut conduit = Conduit::new(Buffering::default());
        let mut chunks = vec![Bytes::from_static(b"PUBACK")];
        poll_fn(|cx| Poll::Ready(conduit.write_from(cx, || chunks.pop())))
            .await
            .expect("written");
        assert!(!conduit.is_quiet(), "a flush is owed");
        assert!(conduit.stream.sent.is_empty());
        // Nothing new to write: the owed flush is tried again, and the bytes go out.
        poll_fn(|cx| Poll::Ready(conduit.write_from(cx, || None)))
            .await
            .expect("flushed");
        assert_eq!(conduit.stream.sent, b"PUBACK");
        assert!(conduit.is_quiet());
    }

    #[tokio::test]
    async fn reads_grow_while_full_and_the_buffer_goes_when_quiet() {
        let (near, mut far) = tokio::io::duplex(256 * 1024);
        let mut conduit = Conduit::new(near);
        assert!(conduit.is_quiet());

        far.write_all(&[7u8; 100]).await.unwrap();
        let n = poll_fn(|cx| conduit.poll_fill(cx)).await.unwrap();
        assert_eq!(n, 100);
        assert_eq!(&conduit.input()[..], &[7u8; 100][..]);
        conduit.input().clear();

        // Nothing to read: the quiet connection's buffer is freed.
        let pending = poll_fn(|cx| Poll::Ready(conduit.poll_fill(cx).is_pending())).await;
        assert!(pending);
        assert!(conduit.is_quiet());

        // A big burst: reads double up to the maximum and everything arrives in order.
        let burst: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&burst).await.unwrap();
        let mut got = Vec::new();
        while got.len() < burst.len() {
            let n = poll_fn(|cx| conduit.poll_fill(cx)).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&conduit.input().split());
        }
        assert_eq!(got, burst);
        assert!(conduit.read_chunk > READ_CHUNK_MIN);

        drop(far);
        assert_eq!(poll_fn(|cx| conduit.poll_fill(cx)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn output_is_written_in_order_when_the_socket_accepts_it() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut conduit = Conduit::new(near);
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
        conduit.send(Bytes::from(first.clone()));
        // The pipe holds 1 KiB: the write stops part way.
        let blocked = poll_fn(|cx| Poll::Ready(conduit.poll_drain(cx).is_pending())).await;
        assert!(blocked);
        assert!(conduit.is_writing());

        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        poll_fn(|cx| conduit.poll_drain(cx)).await.unwrap();
        assert!(!conduit.is_writing());
        conduit.close(Bytes::from_static(b"bye")).await;
        drop(conduit);
        let mut expected = first;
        expected.extend_from_slice(b"bye");
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn closing_after_the_peer_drops_what_it_still_sends_until_it_closes() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut conduit = Conduit::new(near);
        conduit.send(Bytes::from_static(b"first "));
        let closing = tokio::spawn(async move {
            conduit.close_after_peer(Bytes::from_static(b"last")).await;
        });
        let mut got = [0u8; 10];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first last");
        // The peer still sends (publishes it had buffered) and the socket stays open.
        far.write_all(&[1u8; 50_000]).await.unwrap();
        tokio::task::yield_now().await;
        assert!(
            !closing.is_finished(),
            "the socket must stay open until the peer closes"
        );
        far.shutdown().await.unwrap();
        closing.await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the write side was shut down");
    }
}
