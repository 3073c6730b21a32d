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
use weft_api::v1 as api;

pub use balance::{EndpointStats, LoadBalancer};
pub use breaker::BreakerPolicy;
pub use bulkhead::{Bulkhead, ConcurrencyPolicy};
pub use fault::FaultPolicy;
pub use retry::{Budget, RetryPolicy};

/// How this proxy calls one destination: the TrafficPolicy with every
/// unset field at its default.
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

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl Policy {
    /// The policy the control plane sent, defaults filled in. Zero means
    /// "unset" in the API, so zero fields take their defaults.
    pub fn from_api(p: &api::ClientPolicy) -> Self {
        let mut policy = Policy {
            load_balancer: match api::LoadBalancer::try_from(p.load_balancer) {
                Ok(api::LoadBalancer::RoundRobin) => LoadBalancer::RoundRobin,
                Ok(api::LoadBalancer::LeastRequest) => LoadBalancer::LeastRequest,
                _ => LoadBalancer::PeakEwma,
            },
            ..Policy::default()
        };
        if let Some(r) = &p.retry {
            let d = RetryPolicy::default();
            let unset_budget = r.budget_ratio == 0.0 && r.min_retries_per_second == 0;
            policy.retry = RetryPolicy {
                attempts: r.attempts,
                on: if r.on.is_empty() {
                    d.on.clone()
                } else {
                    retry::RetryOn::parse(&r.on)
                },
                grpc_codes: r
                    .grpc_codes
                    .iter()
                    .filter_map(|c| crate::grpc::code_by_name(c))
                    .collect(),
                budget_ratio: if unset_budget {
                    d.budget_ratio
                } else {
                    r.budget_ratio
                },
                min_per_second: if unset_budget {
                    d.min_per_second
                } else {
                    r.min_retries_per_second
                },
                backoff_base: ms(r.backoff_base_ms).unwrap_or(d.backoff_base),
                backoff_max: ms(r.backoff_max_ms)
                    .unwrap_or(d.backoff_max)
                    .max(ms(r.backoff_base_ms).unwrap_or_default()),
                non_idempotent: r.non_idempotent,
            };
        }
        if let Some(t) = &p.timeouts {
            policy.timeouts = Timeouts {
                request: ms(t.request_ms),
                per_try: ms(t.per_try_ms),
                connect: ms(t.connect_ms),
                idle: ms(t.idle_ms).unwrap_or(policy.timeouts.idle),
            };
        }
        if let Some(c) = &p.circuit_breaker {
            let d = BreakerPolicy::default();
            policy.circuit_breaker = BreakerPolicy {
                consecutive_failures: if c.consecutive_failures == 0 {
                    d.consecutive_failures
                } else {
                    c.consecutive_failures
                },
                base_ejection: ms(c.base_ejection_ms).unwrap_or(d.base_ejection),
                max_ejection: ms(c.max_ejection_ms)
                    .unwrap_or(d.max_ejection)
                    .max(ms(c.base_ejection_ms).unwrap_or_default()),
                max_ejected_ratio: if c.max_ejected_ratio > 0.0 {
                    c.max_ejected_ratio.min(1.0)
                } else {
                    d.max_ejected_ratio
                },
            };
        }
        if let Some(c) = &p.concurrency {
            let d = ConcurrencyPolicy::default();
            policy.concurrency = ConcurrencyPolicy {
                max_in_flight: if c.max_in_flight == 0 {
                    d.max_in_flight
                } else {
                    c.max_in_flight
                },
                max_pending: if c.max_in_flight == 0 && c.max_pending == 0 {
                    d.max_pending
                } else {
                    c.max_pending
                },
                pending_timeout: ms(c.pending_timeout_ms).unwrap_or(d.pending_timeout),
            };
        }
        if let Some(f) = &p.fault {
            policy.fault = Some(FaultPolicy {
                delay: Duration::from_millis(f.delay_ms),
                delay_percent: f.delay_percent,
                abort_status: u16::try_from(f.abort_status).unwrap_or(0),
                abort_percent: f.abort_percent,
            })
            .filter(|f| f.delay_percent > 0.0 || f.abort_percent > 0.0);
        }
        policy
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_defaults() {
        assert_eq!(Policy::from_api(&api::ClientPolicy::default()), Policy::default());
        let p = Policy::from_api(&api::ClientPolicy {
            load_balancer: api::LoadBalancer::RoundRobin as i32,
            retry: Some(api::Retry {
                attempts: 3,
                on: vec!["5xx".into()],
                ..Default::default()
            }),
            circuit_breaker: Some(api::CircuitBreaker {
                consecutive_failures: 2,
                ..Default::default()
            }),
            concurrency: Some(api::Concurrency {
                max_in_flight: 10,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(p.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(p.retry.attempts, 3);
        assert!(p.retry.on.five_xx && !p.retry.on.connect_failure);
        assert_eq!(p.retry.budget_ratio, 0.2, "default budget");
        assert_eq!(p.circuit_breaker.consecutive_failures, 2);
        assert_eq!(p.circuit_breaker.base_ejection, Duration::from_secs(1));
        assert_eq!(p.concurrency.max_in_flight, 10);
        assert_eq!(p.concurrency.max_pending, 0, "an explicit limit with no queue");
        assert!(p.fault.is_none());
    }
}
