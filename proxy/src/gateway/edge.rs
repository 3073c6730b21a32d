//! Edge policy: what the gateway checks before a request goes into the
//! mesh — a JWT ([`super::jwt`]) and a rate limit per client IP or per
//! claim — as a GatewayPolicy on the route or its listener says.
//!
//! Policies arrive with every configuration update; [`Edge::shared`]
//! hands out the live one for an unchanged policy, so a push of
//! unrelated config neither refills every rate-limit bucket nor refetches
//! the signing keys.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use serde::{Serialize, Serializer};
use tokio::time::Instant;
use weft_api::v1 as api;

use super::jwt::{Authenticator, JwksSource, JwtConfig};
use crate::errors::ProxyError;
use crate::resilience::ratelimit::{RateLimitParams, RateLimiter};

/// One edge policy, ready to check requests.
pub struct Edge {
    policy: api::EdgePolicy,
    jwt: Option<Authenticator>,
    limit: Option<RateLimiter>,
    /// Buckets per value of this claim; `None`: per client IP.
    limit_claim: Option<String>,
}

/// The policies in use, so an equal one is shared rather than rebuilt.
static LIVE: Mutex<Vec<Weak<Edge>>> = Mutex::new(Vec::new());

impl Edge {
    /// The live policy equal to `policy`, or a new one.
    pub fn shared(policy: &api::EdgePolicy) -> Arc<Edge> {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        if let Some(edge) = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|e| e.policy == *policy)
        {
            return edge;
        }
        let edge = Arc::new(Edge::new(policy));
        live.push(Arc::downgrade(&edge));
        edge
    }

    fn new(policy: &api::EdgePolicy) -> Self {
        let jwt = policy.jwt.as_ref().map(|j| {
            Authenticator::new(JwtConfig {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                jwks: if j.jwks_url.is_empty() {
                    JwksSource::File(PathBuf::from(&j.jwks_file))
                } else {
                    JwksSource::Url(j.jwks_url.clone())
                },
                clock_skew: Duration::from_millis(j.clock_skew_ms),
                forward_claims: j
                    .forward_claims
                    .iter()
                    .filter_map(|c| {
                        Some((c.claim.clone(), HeaderName::from_bytes(c.header.as_bytes()).ok()?))
                    })
                    .collect(),
            })
        });
        let limit = policy.rate_limit.as_ref().and_then(|r| {
            RateLimiter::new(&RateLimitParams {
                per_identity_rps: r.requests_per_second,
                per_identity_burst: r.burst,
                ..RateLimitParams::default()
            })
        });
        Self {
            policy: policy.clone(),
            jwt,
            limit,
            limit_claim: policy
                .rate_limit
                .as_ref()
                .map(|r| r.claim.clone())
                .filter(|c| !c.is_empty()),
        }
    }

    /// The GatewayPolicy this came from (`namespace/name`).
    pub fn source(&self) -> &str {
        &self.policy.source
    }

    /// Checks one request from `client`: a per-client-IP rate limit, its
    /// token (forwarding the configured claims as headers, after removing
    /// any a client sent), then a per-claim rate limit.
    pub async fn check(&self, headers: &mut HeaderMap, client: IpAddr) -> Result<(), ProxyError> {
        // A per-client-IP limit comes first: every request counts, so a
        // client sending bad tokens is limited before the gateway spends
        // a signature check on each. A per-claim limit needs the
        // verified token, so it comes after.
        if self.limit_claim.is_none() {
            self.limit(&client.to_string())?;
        }
        let mut claims = None;
        if let Some(jwt) = &self.jwt {
            jwt.strip(headers);
            let verified = jwt
                .verify(headers)
                .await
                .map_err(|e| ProxyError::Unauthenticated {
                    reason: e.reason(),
                    status: e.status(),
                    challenge: e.www_authenticate(),
                })?;
            verified.forward(headers);
            claims = Some(verified);
        }
        if let Some(name) = &self.limit_claim {
            // Tokens without the claim share one bucket.
            let key = claims.as_ref().and_then(|c| c.get(name)).unwrap_or_default();
            self.limit(&key)?;
        }
        Ok(())
    }

    fn limit(&self, key: &str) -> Result<(), ProxyError> {
        let Some(limit) = &self.limit else {
            return Ok(());
        };
        limit
            .check(Some(key), Instant::now())
            .map_err(|l| ProxyError::RateLimited {
                scope: if self.limit_claim.is_some() {
                    "claim"
                } else {
                    "client-ip"
                },
                retry_after: l.retry_after,
            })
    }
}

impl PartialEq for Edge {
    fn eq(&self, other: &Self) -> bool {
        self.policy == other.policy
    }
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("source", &self.policy.source)
            .finish()
    }
}

/// In `/config`: which policy applies.
impl Serialize for Edge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.policy.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(claim: &str) -> api::EdgePolicy {
        api::EdgePolicy {
            source: "shop/p".into(),
            jwt: Some(api::Jwt {
                issuer: "https://issuer.example".into(),
                jwks_file: "/nonexistent/jwks.json".into(),
                ..Default::default()
            }),
            rate_limit: Some(api::EdgeRateLimit {
                requests_per_second: 0.001,
                burst: 2,
                claim: claim.into(),
            }),
        }
    }

    #[tokio::test]
    async fn a_client_ip_limit_counts_requests_refused_for_their_token() {
        let edge = Edge::new(&policy(""));
        let client: IpAddr = [192, 0, 2, 7].into();
        let mut reasons = Vec::new();
        for _ in 0..3 {
            let refused = edge.check(&mut HeaderMap::new(), client).await.unwrap_err();
            reasons.push(refused.reason());
        }
        assert_eq!(reasons[2], "rate-limited", "{reasons:?}");
        assert!(reasons[..2].iter().all(|r| *r != "rate-limited"), "{reasons:?}");
        // Another client has its own bucket.
        let other = edge.check(&mut HeaderMap::new(), [192, 0, 2, 8].into()).await;
        assert_ne!(other.unwrap_err().reason(), "rate-limited");
    }

    #[tokio::test]
    async fn a_claim_limit_needs_a_verified_token_first() {
        let edge = Edge::new(&policy("sub"));
        for _ in 0..3 {
            let refused = edge.check(&mut HeaderMap::new(), [192, 0, 2, 7].into()).await;
            assert_ne!(refused.unwrap_err().reason(), "rate-limited");
        }
    }
}
