//! Pieces every connection driver (AMQP, MQTT, STOMP `io.rs`) polls the same way: input and
//! consumer events taking turns, and the broker-wide signals (shutdown, resource alarm).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::{Conduit, LazyChannel};

/// What the socket or the connection's consumer events have for the driver.
#[derive(Debug)]
pub enum Arrival<E> {
    /// Bytes were read into the conduit's input.
    Input,
    /// The peer closed the stream, or reading failed.
    Gone,
    /// A consumer event.
    Event(E),
}

/// Input and consumer events, each polled first in turn so neither starves the other.
#[derive(Debug, Default)]
pub struct Turns {
    input_first: bool,
}

impl Turns {
    /// The first of input (when `read` is true: not blocked by an alarm) and consumer events
    /// that is ready, the other one first next time.
    pub fn poll<S, E>(
        &mut self,
        cx: &mut Context<'_>,
        conduit: &mut Conduit<S>,
        read: bool,
        events: &mut LazyChannel<E>,
    ) -> Option<Arrival<E>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.input_first = !self.input_first;
        if self.input_first {
            poll_input(cx, conduit, read).or_else(|| poll_event(cx, events))
        } else {
            poll_event(cx, events).or_else(|| poll_input(cx, conduit, read))
        }
    }
}

fn poll_input<S, E>(
    cx: &mut Context<'_>,
    conduit: &mut Conduit<S>,
    read: bool,
) -> Option<Arrival<E>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !read {
        return None;
    }
    match conduit.poll_fill(cx) {
        Poll::Ready(Ok(0) | Err(_)) => Some(Arrival::Gone),
        Poll::Ready(Ok(_)) => Some(Arrival::Input),
        Poll::Pending => None,
    }
}

fn poll_event<E>(cx: &mut Context<'_>, events: &mut LazyChannel<E>) -> Option<Arrival<E>> {
    match events.poll_recv(cx) {
        Poll::Ready(Some(event)) => Some(Arrival::Event(event)),
        _ => None,
    }
}

/// A broker-wide change a connection must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerSignal {
    /// The broker is shutting down (or its shutdown signal is gone).
    Shutdown,
    /// The resource alarm changed: read its new value.
    AlarmChanged,
}

/// A future resolving with the next [`BrokerSignal`]; make a new one after each.
pub type BrokerSignals = Pin<Box<dyn Future<Output = BrokerSignal> + Send>>;

/// Waits for the broker to shut down or the alarm to change (a gone alarm never changes).
pub fn broker_signals<T>(
    shutdown: &watch::Receiver<bool>,
    alarm: &watch::Receiver<T>,
) -> BrokerSignals
where
    T: Send + Sync + 'static,
{
    let mut shutdown = shutdown.clone();
    let mut alarm = alarm.clone();
    Box::pin(async move {
        let alarm_changed = async move {
            if alarm.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|shutting_down| *shutting_down) => BrokerSignal::Shutdown,
            () = alarm_changed => BrokerSignal::AlarmChanged,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn input_and_events_take_turns() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut conduit = Conduit::new(near);
        let mut events = LazyChannel::<u32>::default();
        let sender = events.sender();
        let mut turns = Turns::default();
        far.write_all(b"x").await.unwrap();
        sender.send(1).unwrap();
        sender.send(2).unwrap();

        let first =
            poll_fn(|cx| Poll::Ready(turns.poll(cx, &mut conduit, true, &mut events))).await;
        assert!(matches!(first, Some(Arrival::Input)));
        let second =
            poll_fn(|cx| Poll::Ready(turns.poll(cx, &mut conduit, true, &mut events))).await;
        assert!(matches!(second, Some(Arrival::Event(1))));
        // Not reading (an alarm): only events arrive.
        let third =
            poll_fn(|cx| Poll::Ready(turns.poll(cx, &mut conduit, false, &mut events))).await;
        assert!(matches!(third, Some(Arrival::Event(2))));
        drop(far);
        let last = poll_fn(|cx| Poll::Ready(turns.poll(cx, &mut conduit, true, &mut events))).await;
        assert!(matches!(last, Some(Arrival::Gone)));
    }

    #[tokio::test]
    async fn shutdown_and_alarm_changes_are_signalled() {
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (alarm_tx, mut alarm) = watch::channel(None::<String>);
        let signals = broker_signals(&shutdown, &alarm);
        alarm_tx.send(Some("memory".into())).unwrap();
        assert_eq!(signals.await, BrokerSignal::AlarmChanged);
        // The driver reads the new value before it waits again.
        assert_eq!(alarm.borrow_and_update().as_deref(), Some("memory"));
        let signals = broker_signals(&shutdown, &alarm);
        shutdown_tx.send(true).unwrap();
        assert_eq!(signals.await, BrokerSignal::Shutdown);
    }
}
