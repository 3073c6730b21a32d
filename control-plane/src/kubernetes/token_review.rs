//! Identity in a cluster: a proxy sends its projected ServiceAccount token
//! (audience `weft`); the control plane asks the API server (TokenReview)
//! whether it is valid and whose it is, and derives the SPIFFE ID from the
//! namespace and service account the API server names.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use super::review_cache::ReviewCache;
use crate::identity::Refusal;
use crate::metrics::ControlMetrics;

/// The audience injected proxies' tokens are minted for.
pub const AUDIENCE: &str = "weft";

#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audience: String,
    /// Accepted reviews, reused for up to a minute (never past the token's
    /// expiry).
    cache: std::sync::Arc<ReviewCache>,
    metrics: std::sync::Arc<ControlMetrics>,
}

impl TokenReviewer {
    pub fn new(client: Client, metrics: std::sync::Arc<ControlMetrics>) -> Self {
        Self {
            client,
            audience: AUDIENCE.into(),
            cache: Default::default(),
            metrics,
        }
    }

    /// `(namespace, service account)` of a valid token: from the cache, or
    /// asked of the API server (and then cached).
    pub async fn review(&self, token: &str) -> Result<(String, String), Refusal> {
        if let Some(hit) = self.cache.get(token, std::time::SystemTime::now()) {
            self.metrics.token_review("cache_hit", None);
            return Ok(hit);
        }
        let start = std::time::Instant::now();
        let answer = self.ask(token).await;
        let result = match &answer {
            Ok(_) => "authenticated",
            Err(Refusal::Unavailable(_)) => "error",
            Err(_) => "rejected",
        };
        self.metrics.token_review(result, Some(start.elapsed()));
        let (ns, sa) = answer?;
        self.cache.insert(token, &ns, &sa, std::time::SystemTime::now());
        Ok((ns, sa))
    }

    async fn ask(&self, token: &str) -> Result<(String, String), Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            tracing::info!(error = ?status.error, "TokenReview: token not authenticated");
            return Err(Refusal::BadToken);
        }
        // An API server that checked audiences lists the ones it matched.
        if let Some(audiences) = &status.audiences {
            if !audiences.contains(&self.audience) {
                return Err(Refusal::BadToken);
            }
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&username).ok_or(Refusal::BadToken)
    }
}

/// `system:serviceaccount:<ns>:<sa>` → `(ns, sa)`; any other user is not a
/// workload.
pub fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| (ns.to_string(), sa.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_service_accounts_only() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:api"),
            Some(("shop".into(), "api".into()))
        );
        assert_eq!(service_account_of("system:node:worker-1"), None);
        assert_eq!(service_account_of("alice"), None);
        assert_eq!(service_account_of("system:serviceaccount:shop:"), None);
    }
}
