//! Graceful drain: a signal every connection task watches, and a tracker
//! that knows when the last one has finished.
//!
//! On shutdown the listeners stop accepting, HTTP connections are asked to
//! finish (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY),
//! and [`Signal::drain`] waits for all tracked tasks up to a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Held by the owner; fires the drain.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
    tracker: TaskTracker,
}

/// Held by every task that must finish before exit.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    tracker: TaskTracker,
}

pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    (
        Signal {
            tx,
            tracker: tracker.clone(),
        },
        Watch { rx, tracker },
    )
}

impl Signal {
    /// Tells every watcher to wind down, then waits up to `deadline` for the
    /// tracked tasks. Returns the number of tasks still running at the
    /// deadline (0 when everything finished).
    pub async fn drain(self, deadline: Duration) -> usize {
        let _ = self.tx.send(true);
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

impl Watch {
    /// Resolves once a drain has started.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the Signal was dropped without draining: treat it
        // as a drain too, so nothing waits forever.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Spawns a task that the drain waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_that_finish_after_the_signal() {
        let (signal, watch) = channel();
        let w = watch.clone();
        let task = watch.spawn(async move {
            w.signaled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            "finished"
        });
        assert_eq!(signal.drain(Duration::from_secs(10)).await, 0);
        assert_eq!(task.await.unwrap(), "finished");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let (signal, watch) = channel();
        watch.spawn(std::future::pending::<()>());
        assert_eq!(signal.drain(Duration::from_secs(1)).await, 1);
    }
}
