//! Circuit breaking per endpoint: consecutive failures eject it for a
//! backoff that doubles with each ejection (with jitter, up to a maximum);
//! when the backoff has passed, one probe request decides whether it comes
//! back (half-open) or stays out for longer. A probe is taken by a request
//! that can survive its failure (one that may be sent again elsewhere, see
//! `outbound::call`); any request may probe once the backoff has passed
//! twice over, so an endpoint only non-idempotent traffic reaches still
//! comes back.
//!
//! The state lives in the endpoint's [`EndpointStats`](super::balance::EndpointStats),
//! so it survives control-plane updates of the endpoint list. The share of
//! a destination's endpoints ejected at once is capped by the balancer,
//! which sees them all (see [`Breaker::failure`]'s `may_eject`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// When to eject and for how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerPolicy {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection lasts about this long; each next one twice as long.
    #[serde(serialize_with = "super::ser_duration")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "super::ser_duration")]
    pub max_ejection: Duration,
    /// At most this share of a destination's endpoints is ejected at once
    /// (at least one may always be).
    pub max_ejected_ratio: f64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            max_ejected_ratio: 0.5,
        }
    }
}

impl BreakerPolicy {
    /// How long the `n`th ejection in a row lasts (n ≥ 1): `base · 2ⁿ⁻¹`
    /// capped at `max`, then jittered into its upper half so endpoints
    /// ejected together do not all return at once.
    pub fn ejection(&self, n: u32) -> Duration {
        let exp = self
            .base_ejection
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max_ejection);
        exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    /// How many of `n` endpoints may be ejected at once.
    pub fn max_ejected(&self, n: usize) -> usize {
        ((n as f64 * self.max_ejected_ratio).floor() as usize).max(1)
    }
}

/// Whether an endpoint may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Ejected, but its backoff has passed: this request is the probe.
    Probe,
    No,
}

#[derive(Debug, Default)]
pub struct Breaker {
    /// Fast path: false while closed.
    open: AtomicBool,
    consecutive: AtomicU32,
    state: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    /// Ejections in a row (reset by a successful probe).
    ejections: u32,
    until: Option<Instant>,
    /// How long this ejection lasts: after `until` plus this, any request
    /// may probe.
    length: Duration,
    probing: bool,
}

impl Breaker {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Closed: yes. Ejected: a probe once the backoff has passed and no
    /// other probe is out, else no. A request that cannot survive a failed
    /// probe (`!recoverable`) probes only once the backoff has passed
    /// twice over.
    pub fn admit(&self, now: Instant, recoverable: bool) -> Admit {
        if !self.is_open() {
            return Admit::Yes;
        }
        let mut s = self.state.lock().expect("breaker lock");
        if !self.is_open() {
            return Admit::Yes;
        }
        let due = s.until.map(|u| if recoverable { u } else { u + s.length });
        if !s.probing && due.is_none_or(|u| now >= u) {
            s.probing = true;
            return Admit::Probe;
        }
        Admit::No
    }

    /// A request to this endpoint succeeded: closes the breaker (a
    /// successful probe) and resets the failure count.
    pub fn success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.is_open() {
            let mut s = self.state.lock().expect("breaker lock");
            *s = Open::default();
            self.open.store(false, Ordering::Release);
        }
    }

    /// A request failed. Returns `true` when this failure ejected the
    /// endpoint (a new ejection, or a failed probe extending one).
    /// `may_eject` is asked before a new ejection: false when the cap on
    /// ejected endpoints is reached.
    pub fn failure(&self, policy: &BreakerPolicy, now: Instant, may_eject: impl FnOnce() -> bool) -> bool {
        if self.is_open() {
            let mut s = self.state.lock().expect("breaker lock");
            if s.probing {
                // The probe failed: out again, for longer.
                s.probing = false;
                s.ejections = s.ejections.saturating_add(1);
                s.length = policy.ejection(s.ejections);
                s.until = Some(now + s.length);
                return true;
            }
            return false;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if policy.consecutive_failures == 0 || n < policy.consecutive_failures || !may_eject() {
            return false;
        }
        let mut s = self.state.lock().expect("breaker lock");
        if self.is_open() {
            return false;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        s.ejections = 1;
        s.probing = false;
        s.length = policy.ejection(1);
        s.until = Some(now + s.length);
        self.open.store(true, Ordering::Release);
        true
    }

    /// The probe went out but ended without an answer either way (e.g. the
    /// caller went away): let another request probe.
    pub fn probe_abandoned(&self) {
        if self.is_open() {
            self.state.lock().expect("breaker lock").probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(4),
            max_ejected_ratio: 0.5,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_threshold_probes_after_backoff_and_recovers() {
        let b = Breaker::default();
        let p = policy();
        assert!(!b.failure(&p, Instant::now(), || true));
        b.success(); // resets the streak
        assert!(!b.failure(&p, Instant::now(), || true));
        assert!(!b.failure(&p, Instant::now(), || true));
        assert!(b.failure(&p, Instant::now(), || true), "third in a row ejects");
        assert_eq!(b.admit(Instant::now(), true), Admit::No);

        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.admit(Instant::now(), true), Admit::Probe);
        assert_eq!(b.admit(Instant::now(), true), Admit::No, "one probe at a time");
        // The probe fails: out again, for 1–2 s (base · 2, jittered).
        assert!(b.failure(&p, Instant::now(), || true));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.admit(Instant::now(), true), Admit::No);
        tokio::time::advance(Duration::from_millis(1002)).await;
        assert_eq!(b.admit(Instant::now(), true), Admit::Probe);
        b.success();
        assert_eq!(b.admit(Instant::now(), true), Admit::Yes);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_cannot_survive_a_failed_probe_probes_only_when_overdue() {
        let p = policy();
        let ejected = || {
            let b = Breaker::default();
            for _ in 0..3 {
                b.failure(&p, Instant::now(), || true);
            }
            b
        };
        // Each ejects for 0.5–1 s (jittered).
        let (any, recoverable) = (ejected(), ejected());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(
            any.admit(Instant::now(), false),
            Admit::No,
            "not before twice the ejection"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(
            recoverable.admit(Instant::now(), true),
            Admit::Probe,
            "due once it passed"
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(
            any.admit(Instant::now(), false),
            Admit::Probe,
            "overdue: any request probes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cap_on_ejections_is_respected() {
        let b = Breaker::default();
        let p = policy();
        for _ in 0..10 {
            assert!(!b.failure(&p, Instant::now(), || false));
        }
        assert_eq!(b.admit(Instant::now(), true), Admit::Yes);
    }

    #[test]
    fn ejection_grows_exponentially_up_to_the_maximum() {
        let p = policy();
        for _ in 0..100 {
            let first = p.ejection(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = p.ejection(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            assert!(p.ejection(30) <= Duration::from_secs(4));
        }
        assert_eq!(p.max_ejected(3), 1);
        assert_eq!(p.max_ejected(10), 5);
        assert_eq!(p.max_ejected(1), 1);
    }
}
