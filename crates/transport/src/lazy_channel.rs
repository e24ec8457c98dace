//! An unbounded channel created on first use. A tokio channel allocates its first block of
//! slots when it is made (32 messages' worth), and most idle connections never receive a
//! delivery or a durability notice: they should not pay for the channel.

use std::task::{Context, Poll};

use tokio::sync::mpsc;

/// A channel that exists once [`LazyChannel::sender`] has been called.
pub struct LazyChannel<T> {
    sender: Option<mpsc::UnboundedSender<T>>,
    receiver: Option<mpsc::UnboundedReceiver<T>>,
}

impl<T> Default for LazyChannel<T> {
    fn default() -> Self {
        Self {
            sender: None,
            receiver: None,
        }
    }
}

impl<T> LazyChannel<T> {
    /// A sender, making the channel if it does not exist yet.
    pub fn sender(&mut self) -> mpsc::UnboundedSender<T> {
        if let Some(sender) = &self.sender {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        self.receiver = Some(receiver);
        self.sender.insert(sender).clone()
    }

    /// The next message; pending for ever while the channel does not exist (the owner keeps a
    /// sender, so it never ends by itself).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match &mut self.receiver {
            Some(receiver) => receiver.poll_recv(cx),
            None => Poll::Pending,
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.receiver.as_mut()?.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn the_channel_exists_once_a_sender_is_asked_for() {
        let mut channel = LazyChannel::<u32>::default();
        assert!(channel.try_recv().is_none());
        let idle = poll_fn(|cx| Poll::Ready(channel.poll_recv(cx).is_pending())).await;
        assert!(idle);

        let sender = channel.sender();
        sender.send(1).unwrap();
        channel.sender().send(2).unwrap();
        assert_eq!(poll_fn(|cx| channel.poll_recv(cx)).await, Some(1));
        assert_eq!(channel.try_recv(), Some(2));
        assert_eq!(channel.try_recv(), None);
    }
}
