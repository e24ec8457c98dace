//! How many bytes a connection may still read before its protocol has answered the client's
//! login. A client that has not logged in is a stranger: whatever it sends before the broker
//! has said anything (a WebSocket message, a ping flood, the body of a CONNECT) is held on its
//! behalf, so the transport stops reading it once it has sent its [`Allowance`] and lets TCP
//! push back. The allowance is lifted when the protocol writes its first output, which is its
//! answer to the login (CONNACK, CONNECTED) or a refusal it closes the connection after.
//!
//! [`Metered`] wraps the stream and counts what is read against the allowance. It does not
//! decide when the allowance starts or ends: the WebSocket upgrade sets it, the bridge lifts it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No limit.
const UNLIMITED: usize = usize::MAX;

/// Bytes a connection may still read; shared between its stream and whoever lifts the limit.
#[derive(Debug)]
pub struct Allowance {
    left: AtomicUsize,
    /// The reader waiting for the limit to be lifted.
    waiting: Mutex<Option<Waker>>,
}

impl Allowance {
    /// An allowance with no limit (until [`Allowance::limit`]).
    pub fn unlimited() -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(UNLIMITED),
            waiting: Mutex::new(None),
        })
    }

    /// From now on the connection may read at most `bytes` more, until [`Allowance::lift`].
    pub fn limit(&self, bytes: usize) {
        self.left.store(bytes.min(UNLIMITED - 1), Ordering::Release);
    }

    /// No limit any more; a reader waiting for it reads again.
    pub fn lift(&self) {
        self.left.store(UNLIMITED, Ordering::Release);
        let waiting = self.waiting.lock().ok().and_then(|mut slot| slot.take());
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Whether a limit is in force.
    pub fn is_limited(&self) -> bool {
        self.left.load(Ordering::Acquire) != UNLIMITED
    }

    /// How many bytes may be read now: `Ready(None)` for any number, `Ready(Some(n))` with
    /// `n > 0`, or `Pending` (woken by [`Allowance::lift`]) when none are left.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        match self.left.load(Ordering::Acquire) {
            UNLIMITED => return Poll::Ready(None),
            0 => {}
            left => return Poll::Ready(Some(left)),
        }
        if let Ok(mut slot) = self.waiting.lock() {
            *slot = Some(cx.waker().clone());
        }
        // Lifted between the load and storing the waker: read now.
        match self.left.load(Ordering::Acquire) {
            0 => Poll::Pending,
            UNLIMITED => Poll::Ready(None),
            left => Poll::Ready(Some(left)),
        }
    }

    /// Counts `n` bytes read (nothing when unlimited).
    fn spend(&self, n: usize) {
        let _ = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left != UNLIMITED).then(|| left.saturating_sub(n))
            });
    }
}

/// A stream whose reads are counted against an [`Allowance`]; writes pass through.
#[derive(Debug)]
pub struct Metered<S> {
    stream: S,
    allowance: Arc<Allowance>,
}

impl<S> Metered<S> {
    /// Wraps `stream`.
    pub fn new(stream: S, allowance: Arc<Allowance>) -> Self {
        Self { stream, allowance }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(left) = ready!(this.allowance.poll_room(cx)) else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        let room = left.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        this.allowance.spend(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_the_allowance_until_it_is_lifted() {
        let (near, mut far) = tokio::io::duplex(1024);
        let allowance = Allowance::unlimited();
        let mut metered = Metered::new(near, allowance.clone());
        allowance.limit(10);
        far.write_all(&[1u8; 30]).await.unwrap();

        let mut got = vec![0u8; 30];
        let n = metered.read(&mut got).await.unwrap();
        assert_eq!(n, 10, "no more than the allowance");
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), metered.read(&mut got))
                .await;
        assert!(blocked.is_err(), "nothing is read once it is spent");

        let lifter = allowance.clone();
        let reader = tokio::spawn(async move {
            let mut rest = vec![0u8; 20];
            metered.read_exact(&mut rest).await.map(|_| rest)
        });
        tokio::task::yield_now().await;
        lifter.lift();
        assert_eq!(reader.await.unwrap().unwrap(), vec![1u8; 20]);
        assert!(!lifter.is_limited());
    }
}
