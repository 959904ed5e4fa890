//! Graceful shutdown: a [`ShutdownTrigger`] held by whoever decides (the `hanul server` signal
//! handler) and cheap [`Shutdown`] receivers everywhere else. Triggering, or dropping the
//! trigger, stops caches and controllers; a controller lets running reconciles finish.

use std::future::Future;
use tokio::sync::watch;

/// Fires the shutdown. Dropping it fires it too, so that a lost handle cannot leave controllers
/// running unattended.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Tells a task when to stop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A trigger and its first receiver.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// A receiver that fires when `signal` completes (e.g. `tokio::signal::ctrl_c()`); the future
    /// runs on a task of its own.
    pub fn on<F>(signal: F) -> Shutdown
    where
        F: Future + Send + 'static,
    {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            signal.await;
            trigger.trigger();
        });
        shutdown
    }

    /// Whether shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once shutdown has been asked for (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped, which counts as a shutdown.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    /// Asks every receiver to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Another receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn triggering_or_dropping_the_trigger_stops_waiters() {
        let (trigger, shutdown) = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.wait().await }
        });
        trigger.trigger();
        waiter.await.unwrap();
        assert!(shutdown.is_triggered());

        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        shutdown.wait().await;
        assert!(shutdown.is_triggered());
    }
}
