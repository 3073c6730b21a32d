//! Bulkhead / load shedding per destination: at most `max_in_flight`
//! requests at once, at most `max_pending` more waiting for a slot, each
//! for at most `pending_timeout`. Everything beyond fails at once (503
//! `load-shed`): a slow destination cannot take all of a proxy's memory or
//! its callers' threads with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyPolicy {
    pub max_in_flight: u32,
    pub max_pending: u32,
    #[serde(serialize_with = "super::ser_duration")]
    pub pending_timeout: Duration,
}

impl Default for ConcurrencyPolicy {
    fn default() -> Self {
        Self {
            max_in_flight: 10_000,
            max_pending: 1_000,
            pending_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
pub struct Bulkhead {
    policy: ConcurrencyPolicy,
    slots: Arc<Semaphore>,
    pending: AtomicUsize,
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    QueueFull,
    Timeout,
}

impl Bulkhead {
    pub fn new(policy: ConcurrencyPolicy) -> Self {
        Self {
            policy,
            slots: Arc::new(Semaphore::new(policy.max_in_flight.max(1) as usize)),
            pending: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> &ConcurrencyPolicy {
        &self.policy
    }

    /// A slot, held until the permit drops (the end of the response body).
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.policy.max_pending as usize {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::QueueFull);
        }
        let waited =
            tokio::time::timeout(self.policy.pending_timeout, self.slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Shed::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_waits_then_sheds() {
        let b = Arc::new(Bulkhead::new(ConcurrencyPolicy {
            max_in_flight: 2,
            max_pending: 1,
            pending_timeout: Duration::from_millis(100),
        }));
        let p1 = b.acquire().await.unwrap();
        let _p2 = b.acquire().await.unwrap();
        // The third waits in the queue; a fourth finds it full.
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.acquire().await.unwrap_err(), Shed::QueueFull);
        // A slot frees up within the pending timeout: the waiter gets it.
        tokio::time::advance(Duration::from_millis(50)).await;
        drop(p1);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Full again, nobody frees a slot: shed after the pending timeout.
        let _p3 = b.acquire().await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(b.acquire().await.unwrap_err(), Shed::Timeout);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
