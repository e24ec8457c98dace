//! An operator's request to close one connection (the management API's "close"), which the
//! connection's driver polls with everything else: a reason in a slot and a waker, no task
//! or channel per connection.

use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// One connection's close request.
#[derive(Debug, Default)]
pub struct CloseRequest {
    reason: Mutex<Option<String>>,
    waker: AtomicWaker,
}

impl CloseRequest {
    /// Asks the connection to close, telling its client `reason` (the first request wins).
    pub fn request(&self, reason: &str) {
        if let Ok(mut slot) = self.reason.lock()
            && slot.is_none()
        {
            *slot = Some(reason.to_owned());
        }
        self.waker.wake();
    }

    /// Ready with the reason once a close was requested; each request is answered once.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<String> {
        if let Some(reason) = self.take() {
            return Poll::Ready(reason);
        }
        self.waker.register(cx.waker());
        match self.take() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }

    fn take(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|mut slot| slot.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_request_wakes_the_driver_once_with_its_reason() {
        let request = Arc::new(CloseRequest::default());
        let waiting = request.clone();
        let driver = tokio::spawn(async move { poll_fn(|cx| waiting.poll(cx)).await });
        tokio::task::yield_now().await;
        request.request("Closed via management plugin");
        request.request("later");
        assert_eq!(driver.await.unwrap(), "Closed via management plugin");
        let again = poll_fn(|cx| Poll::Ready(request.poll(cx).is_pending())).await;
        assert!(again, "answered once");
    }
}
