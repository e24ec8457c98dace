//! The bridge between a WebSocket and the in-memory pipe a protocol adapter serves: client
//! messages become bytes in the pipe, the adapter's bytes become messages. One task, one poll
//! loop, and every buffer in it is bounded:
//!
//! - Client input: one message at a time; the next is read only once the previous one is in
//!   the pipe (which holds [`PIPE_CAPACITY`] bytes), so an adapter that stops reading stops
//!   the client.
//! - Pings: tungstenite answers each ping with a pong when it next writes. After a ping the
//!   bridge reads nothing more until the socket has flushed that pong, so a client that
//!   floods pings and never reads the pongs is not read either (TCP pushes back on it)
//!   instead of growing the broker by a pong per ping.
//! - Output: a message is taken from the pipe only once the socket has accepted the previous
//!   one, so at most one message waits here; tungstenite writes at once (no write buffer) and
//!   its buffer is capped at [`MAX_WRITE_BUFFER`].
//! - Before login: the connection's [`Allowance`] caps what the client may send until the
//!   adapter writes its first output (its login answer); the bridge lifts it then.
//!
//! Idle, the bridge holds no output buffer (it is dropped when the pipe is drained).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream};
use tokio::io::{AsyncWrite, DuplexStream};

use crate::allowance::Allowance;
use crate::peer::Peer;
use crate::websocket::WebSocketProtocol;

/// Bytes buffered in the pipe between the bridge and the adapter, in each direction.
pub const PIPE_CAPACITY: usize = 64 * 1024;
/// The smallest read of adapter output (quiet connections read this much).
const OUTPUT_CHUNK_MIN: usize = 4 * 1024;
/// The largest read of adapter output, and so the largest message the bridge sends.
pub const OUTPUT_CHUNK_MAX: usize = 64 * 1024;
/// The most tungstenite may hold of output the socket has not taken: one message and the
/// control frames (pongs, close) that may join it.
pub const MAX_WRITE_BUFFER: usize = 2 * OUTPUT_CHUNK_MAX;
/// How long the closing handshake and the last output may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of the poll loop before the bridge yields to other tasks.
const ROUNDS: usize = 64;

/// Runs the protocol's handler over a pipe and moves bytes between the pipe and the socket
/// until either side ends; then closes the socket (bounded) and waits for the handler.
pub(crate) async fn run(
    socket: WebSocket,
    peer: Peer,
    protocol: WebSocketProtocol,
    allowance: Arc<Allowance>,
) {
    let (adapter_side, pipe) = tokio::io::duplex(PIPE_CAPACITY);
    let handler = tokio::spawn((protocol.handler)(adapter_side, peer));
    let mut bridge = Box::new(Bridge {
        socket,
        pipe,
        allowance,
        text_output: protocol.text_output,
        inbound: Bytes::new(),
        outbound: None,
        output: BytesMut::new(),
        output_chunk: OUTPUT_CHUNK_MIN,
        flush_owed: false,
        pong_owed: false,
        adapter_gone: false,
    });
    let end = poll_fn(|cx| bridge.poll_run(cx)).await;
    let Bridge {
        mut socket,
        pipe,
        outbound,
        ..
    } = *bridge;
    // The adapter sees the end of its input (and its writes fail) once the pipe is gone.
    drop(pipe);
    let close = match end {
        End::ClientError(reason) => Some(CloseFrame {
            code: close_code::PROTOCOL,
            reason: Utf8Bytes::from(reason),
        }),
        End::AdapterDone | End::ClientGone => None,
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(message) = outbound {
            socket.send(message).await?;
        }
        if let Some(frame) = close {
            socket.send(Message::Close(Some(frame))).await?;
        }
        socket.close().await
    })
    .await;
    let _ = handler.await;
}

/// Why the bridge stopped.
enum End {
    /// The adapter closed its side of the pipe.
    AdapterDone,
    /// The client closed the WebSocket or the connection.
    ClientGone,
    /// The client broke the WebSocket protocol or a limit (the close frame's reason).
    ClientError(String),
}

struct Bridge {
    socket: WebSocket,
    pipe: DuplexStream,
    allowance: Arc<Allowance>,
    text_output: bool,
    /// The rest of the last client message, not yet in the pipe.
    inbound: Bytes,
    /// A message for the client that the socket has not accepted yet.
    outbound: Option<Message>,
    /// Adapter output read from the pipe and not sent yet (a UTF-8 character cut in two).
    output: BytesMut,
    output_chunk: usize,
    /// Output was given to the socket, or a pong is owed: flush.
    flush_owed: bool,
    /// A ping came: read nothing more until the socket has flushed its pong.
    pong_owed: bool,
    /// The adapter takes no more input: the client is not read any more.
    adapter_gone: bool,
}

impl Bridge {
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..ROUNDS {
            match self.poll_output(cx) {
                Poll::Ready(end) => return Poll::Ready(end),
                Poll::Pending => {}
            }
            if self.flush_owed {
                match Pin::new(&mut self.socket).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.flush_owed = false;
                        self.pong_owed = false;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::ClientGone),
                    Poll::Pending => {}
                }
            }
            match self.poll_input(cx) {
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                Poll::Ready(None) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Busy: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Moves adapter output to the socket until one of them would block. `Ready` when the
    /// connection ends.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            if let Some(message) = self.outbound.take() {
                match Pin::new(&mut self.socket).poll_ready(cx) {
                    Poll::Pending => {
                        self.outbound = Some(message);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::ClientGone),
                    Poll::Ready(Ok(())) => {
                        if Pin::new(&mut self.socket).start_send(message).is_err() {
                            return Poll::Ready(End::ClientGone);
                        }
                        self.flush_owed = true;
                    }
                }
            }
            if self.output.capacity() - self.output.len() < self.output_chunk / 2 {
                self.output.reserve(self.output_chunk);
            }
            let spare = self.output.capacity() - self.output.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.pipe), cx, &mut self.output) {
                Poll::Pending => {
                    if self.output.is_empty() {
                        // Drained: shrink the next read, and hold no buffer while quiet.
                        self.output_chunk = (self.output_chunk / 2).max(OUTPUT_CHUNK_MIN);
                        self.output = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(End::AdapterDone),
                Poll::Ready(Ok(n)) => {
                    if n == spare {
                        self.output_chunk = (self.output_chunk * 2).min(OUTPUT_CHUNK_MAX);
                    }
                    if self.allowance.is_limited() {
                        // The adapter's first output answers the login: the client may send
                        // freely from now on.
                        self.allowance.lift();
                    }
                    self.outbound = take_message(&mut self.output, self.text_output);
                }
            }
        }
    }

    /// Moves client input to the pipe. `Ready(None)`: progress, go round again;
    /// `Ready(Some)`: the connection ends; `Pending`: nothing to do until woken.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        if self.adapter_gone {
            // Its last output is read from the pipe until the end comes.
            return Poll::Pending;
        }
        if !self.inbound.is_empty() {
            return match Pin::new(&mut self.pipe).poll_write(cx, &self.inbound) {
                Poll::Ready(Ok(0) | Err(_)) => {
                    // The adapter has closed: what it wrote before still goes to the client.
                    self.adapter_gone = true;
                    self.inbound = Bytes::new();
                    Poll::Ready(None)
                }
                Poll::Ready(Ok(n)) => {
                    self.inbound.advance(n);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if self.pong_owed {
            // Woken by the flush.
            return Poll::Pending;
        }
        let message = match Pin::new(&mut self.socket).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(Some(End::ClientGone)),
            Poll::Ready(Some(Err(error))) => {
                let reason = close_reason(&error.to_string());
                return Poll::Ready(Some(End::ClientError(reason)));
            }
            Poll::Ready(Some(Ok(message))) => message,
        };
        match message {
            Message::Binary(bytes) => self.inbound = bytes,
            Message::Text(text) => self.inbound = Bytes::from(text),
            Message::Ping(_) => {
                self.pong_owed = true;
                self.flush_owed = true;
            }
            Message::Pong(_) => {}
            Message::Close(_) => return Poll::Ready(Some(End::ClientGone)),
        }
        Poll::Ready(None)
    }
}

/// A close frame's reason (at most 123 bytes) from an error's text.
fn close_reason(text: &str) -> String {
    text[..text.floor_char_boundary(120)].to_owned()
}

/// The message for the output in `output`, taken off it. With `text_output`, valid UTF-8 goes
/// as a text message and a character cut by the end stays for the next one (None: only such
/// a piece so far); output that is not UTF-8 goes as binary.
fn take_message(output: &mut BytesMut, text_output: bool) -> Option<Message> {
    if !text_output {
        return Some(Message::Binary(output.split().freeze()));
    }
    let valid = match std::str::from_utf8(output) {
        Ok(text) => text.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => return Some(Message::Binary(output.split().freeze())),
    };
    if valid == 0 {
        return None;
    }
    let text = output.split_to(valid).freeze();
    match Utf8Bytes::try_from(text) {
        Ok(text) => Some(Message::Text(text)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_keeps_a_cut_character_for_the_next_message() {
        let text = "é€".as_bytes();
        let mut output = BytesMut::from(&text[..3]);
        let message = take_message(&mut output, true);
        assert!(matches!(message, Some(Message::Text(t)) if t.as_str() == "é"));
        assert_eq!(output.len(), 1, "the first byte of '€' waits for the rest");
        assert!(take_message(&mut output, true).is_none());
        output.extend_from_slice(&text[3..]);
        let message = take_message(&mut output, true);
        assert!(matches!(message, Some(Message::Text(t)) if t.as_str() == "€"));
        assert!(output.is_empty());

        let mut output = BytesMut::from(&[0xff, 0x00][..]);
        let message = take_message(&mut output, true);
        assert!(
            matches!(message, Some(Message::Binary(_))),
            "not UTF-8: binary"
        );
        let mut output = BytesMut::from(&b"abc"[..]);
        assert!(matches!(
            take_message(&mut output, false),
            Some(Message::Binary(_))
        ));
    }
}
