//! Resilience: how the outbound side calls a destination whose endpoints
//! are slow or failing, and how the inbound side protects its app. Each
//! mechanism is a small module with its own tests, and none knows the
//! others or discovery; [`crate::outbound::call`] composes them per
//! request in the order docs/resilience.md explains:
//!
//! route → request timeout → fault injection → bulkhead → (pick endpoint
//! → per-try timeout → send → breaker/latency bookkeeping → retry?)*.
//!
//! Safe defaults apply with no policy at all ([`Policy::default`]).

pub mod balance;
pub mod body;
pub mod breaker;
pub mod bulkhead;
pub mod fault;
pub mod metrics;
pub mod ratelimit;
pub mod retry;

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde::Serialize;

pub use balance::{EndpointStats, LoadBalancer};
pub use breaker::BreakerPolicy;
pub use bulkhead::{Bulkhead, ConcurrencyPolicy};
pub use fault::FaultPolicy;
pub use retry::{Budget, RetryPolicy};

/// How this proxy calls one destination: the TrafficPolicy with every
/// unset field at its default (translated from the API in
/// [`crate::control::proto`]).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub load_balancer: LoadBalancer,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub circuit_breaker: BreakerPolicy,
    pub concurrency: ConcurrencyPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultPolicy>,
    /// Unmeshed endpoints are refused, never called in plaintext.
    pub require_mtls: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Until the response headers, over all tries; `None`: no limit.
    #[serde(serialize_with = "ser_opt_duration")]
    pub request: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub per_try: Option<Duration>,
    /// Connecting (TCP and TLS) to a meshed endpoint; `None`: the proxy's
    /// `connectTimeout`.
    #[serde(serialize_with = "ser_opt_duration")]
    pub connect: Option<Duration>,
    /// A response body that makes no progress for this long is cancelled.
    #[serde(serialize_with = "ser_duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: None,
            per_try: None,
            connect: None,
            idle: Duration::from_secs(300),
        }
    }
}

/// Per-destination state that outlives one version of the destination:
/// carried over by discovery from one update to the next as long as the
/// settings it was made with are unchanged.
#[derive(Debug)]
pub struct Shared {
    pub bulkhead: Bulkhead,
    pub budget: Budget,
    /// Round-robin position.
    pub rr: AtomicUsize,
}

impl Shared {
    pub fn new(policy: &Policy) -> Self {
        Self {
            bulkhead: Bulkhead::new(policy.concurrency),
            budget: Budget::new(policy.retry.budget_ratio, policy.retry.min_per_second),
            rr: AtomicUsize::new(0),
        }
    }

    /// Whether this state was made for `policy`'s settings.
    pub fn fits(&self, policy: &Policy) -> bool {
        *self.bulkhead.policy() == policy.concurrency
            && self.budget.params() == (policy.retry.budget_ratio, policy.retry.min_per_second)
    }
}

pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

pub(crate) fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
