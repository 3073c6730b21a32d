//! Inbound rate limiting: token buckets for all callers together and per
//! caller identity. Excess requests get 429 with `Retry-After` (gRPC:
//! `RESOURCE_EXHAUSTED`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Per-identity buckets kept before full (idle, so forgetting them changes
/// nothing) buckets are dropped.
const MAX_CALLERS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// The longest `Retry-After` a limit answers with.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

impl TokenBucket {
    /// `rate` tokens per second, holding at most `burst` (0: one second's
    /// worth, at least 1).
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = if burst == 0 {
            rate.ceil().max(1.0)
        } else {
            f64::from(burst)
        };
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // Never a panic, whatever rate the policy carries: an
            // unrepresentable wait is a day.
            let wait =
                Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate).unwrap_or(MAX_RETRY_AFTER);
            Err(wait.min(MAX_RETRY_AFTER))
        }
    }

    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Total,
    Identity,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Total => "total",
            Scope::Identity => "identity",
        }
    }
}

/// The limits a server policy sets on one port.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimitParams {
    /// Requests per second for all callers together; 0: unlimited.
    pub total_rps: f64,
    /// 0: one second's worth.
    pub total_burst: u32,
    /// Requests per second per caller identity; 0: unlimited.
    pub per_identity_rps: f64,
    pub per_identity_burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub scope: Scope,
    pub retry_after: Duration,
}

/// The limits of one server port.
#[derive(Debug)]
pub struct RateLimiter {
    params: RateLimitParams,
    total: Option<Mutex<TokenBucket>>,
    per_identity: Option<Mutex<HashMap<String, TokenBucket>>>,
}

impl RateLimiter {
    /// `None` when the policy sets no limit.
    pub fn new(params: &RateLimitParams) -> Option<Self> {
        let now = Instant::now();
        let total = (params.total_rps > 0.0)
            .then(|| Mutex::new(TokenBucket::new(params.total_rps, params.total_burst, now)));
        let per_identity = (params.per_identity_rps > 0.0).then(|| Mutex::new(HashMap::new()));
        (total.is_some() || per_identity.is_some()).then_some(Self {
            params: *params,
            total,
            per_identity,
        })
    }

    pub fn params(&self) -> &RateLimitParams {
        &self.params
    }

    /// Admits one request from `caller` (its SPIFFE ID; unauthenticated
    /// callers share one bucket). The caller's own bucket is checked first,
    /// so a caller over its limit does not use up the total.
    pub fn check(&self, caller: Option<&str>, now: Instant) -> Result<(), Limited> {
        let key = caller.unwrap_or("");
        if let Some(callers) = &self.per_identity {
            let mut callers = callers.lock().expect("rate limit lock");
            if !callers.contains_key(key) && callers.len() >= MAX_CALLERS {
                callers.retain(|_, b| !b.is_full(now));
            }
            let bucket = callers.entry(key.to_string()).or_insert_with(|| {
                TokenBucket::new(self.params.per_identity_rps, self.params.per_identity_burst, now)
            });
            bucket.take(now).map_err(|retry_after| Limited {
                scope: Scope::Identity,
                retry_after,
            })?;
        }
        if let Some(total) = &self.total {
            if let Err(retry_after) = total.lock().expect("rate limit lock").take(now) {
                if let Some(callers) = &self.per_identity {
                    if let Some(b) = callers.lock().expect("rate limit lock").get_mut(key) {
                        b.give_back();
                    }
                }
                return Err(Limited {
                    scope: Scope::Total,
                    retry_after,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(l: &RateLimiter, caller: Option<&str>, n: usize) -> usize {
        (0..n).filter(|_| l.check(caller, Instant::now()).is_ok()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_vanishing_rate_answers_a_bounded_retry_after_and_never_panics() {
        // Whatever reaches the proxy (the control plane refuses such rates).
        let l = RateLimiter::new(&RateLimitParams {
            total_rps: 1e-20,
            total_burst: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(l.check(None, Instant::now()).is_ok(), "the burst");
        for _ in 0..3 {
            let e = l.check(None, Instant::now()).unwrap_err();
            assert_eq!(e.retry_after, MAX_RETRY_AFTER);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn total_limit_admits_rate_plus_burst() {
        let l = RateLimiter::new(&RateLimitParams {
            total_rps: 10.0,
            total_burst: 5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(admitted(&l, None, 100), 5, "the burst");
        let e = l.check(None, Instant::now()).unwrap_err();
        assert_eq!(e.scope, Scope::Total);
        assert_eq!(e.retry_after, Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admitted(&l, None, 100), 5, "refilled up to the burst");
        // Steady state: 10 per second.
        let mut n = 0;
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            n += admitted(&l, None, 10);
        }
        // (Float refills: the tenth token may be a hair short of whole.)
        assert!((9..=10).contains(&n), "{n}");
    }

    #[tokio::test(start_paused = true)]
    async fn per_identity_limits_isolate_callers() {
        let l = RateLimiter::new(&RateLimitParams {
            total_rps: 100.0,
            total_burst: 100,
            per_identity_rps: 2.0,
            per_identity_burst: 2,
        })
        .unwrap();
        assert_eq!(admitted(&l, Some("spiffe://t/ns/a/sa/noisy"), 50), 2);
        assert_eq!(
            l.check(Some("spiffe://t/ns/a/sa/noisy"), Instant::now())
                .unwrap_err()
                .scope,
            Scope::Identity
        );
        assert_eq!(
            admitted(&l, Some("spiffe://t/ns/a/sa/quiet"), 2),
            2,
            "not starved"
        );
        // The noisy caller's refused requests did not spend the total.
        assert_eq!(admitted(&l, Some("spiffe://t/ns/a/sa/c"), 1), 1);
        assert!(RateLimiter::new(&RateLimitParams::default()).is_none());
    }
}
