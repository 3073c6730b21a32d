//! A bounded cache of accepted TokenReviews, so a proxy fleet renewing (or
//! reconnecting after a control-plane restart) does not send the API
//! server one TokenReview per request.
//!
//! Keyed by the SHA-256 of the token (tokens themselves are not kept), each
//! entry lives at most [`MAX_TTL`] and never past the token's own `exp`
//! (read from the JWT's claims, which the API server has just verified; a
//! token without a readable `exp` is not cached). At most [`MAX_ENTRIES`]:
//! when full, expired entries go first, then the one expiring soonest.
//! Refusals are never cached: a revoked token must fail at once, and a bad
//! token costs the caller the same review every time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

/// The longest an accepted review is reused.
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Entries kept at most (32-byte keys: about 1 MiB when full).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
pub struct ReviewCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    namespace: String,
    service_account: String,
    until: SystemTime,
}

impl ReviewCache {
    /// The workload a cached, unexpired review accepted `token` for.
    pub fn get(&self, token: &str, now: SystemTime) -> Option<(String, String)> {
        let key = key(token);
        let mut entries = self.entries.lock().expect("review cache lock");
        match entries.get(&key) {
            Some(e) if e.until > now => Some((e.namespace.clone(), e.service_account.clone())),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers that `token` was accepted for `namespace`/`service_account`.
    pub fn insert(&self, token: &str, namespace: &str, service_account: &str, now: SystemTime) {
        let Some(exp) = expiry(token) else { return };
        let until = exp.min(now + MAX_TTL);
        if until <= now {
            return;
        }
        let mut entries = self.entries.lock().expect("review cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.until > now);
        }
        if entries.len() >= MAX_ENTRIES {
            let soonest = entries.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k);
            if let Some(k) = soonest {
                entries.remove(&k);
            }
        }
        entries.insert(
            key(token),
            Entry {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
                until,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("review cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The `exp` claim of a JWT (`header.claims.signature`, base64url).
fn expiry(token: &str) -> Option<SystemTime> {
    let claims = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("exp")?
        .as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(&format!(
                r#"{{"exp":{exp},"sub":"system:serviceaccount:shop:api"}}"#
            ))
        )
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn entries_live_until_the_earlier_of_the_ttl_and_the_tokens_exp() {
        let cache = ReviewCache::default();
        let long = jwt(10_000);
        cache.insert(&long, "shop", "api", at(1_000));
        assert_eq!(cache.get(&long, at(1_059)), Some(("shop".into(), "api".into())));
        assert_eq!(cache.get(&long, at(1_060)), None, "MAX_TTL");
        let short = jwt(1_010);
        cache.insert(&short, "shop", "api", at(1_000));
        assert!(cache.get(&short, at(1_009)).is_some());
        assert_eq!(cache.get(&short, at(1_010)), None, "the token's exp");
        assert!(cache.is_empty(), "expired entries are dropped when looked up");
    }

    #[test]
    fn tokens_without_a_readable_exp_or_already_expired_are_not_cached() {
        let cache = ReviewCache::default();
        for token in ["opaque-token-0123456789", "a.b.c", &jwt(999)] {
            cache.insert(token, "shop", "api", at(1_000));
            assert_eq!(cache.get(token, at(1_000)), None, "{token}");
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = ReviewCache::default();
        for i in 0..MAX_ENTRIES as u64 + 50 {
            cache.insert(&jwt(2_000 + i), "shop", "api", at(1_000));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(
            cache
                .get(&jwt(2_000 + MAX_ENTRIES as u64 + 49), at(1_001))
                .is_some(),
            "the newest is kept"
        );
        // Once all have expired, the next insert clears them out.
        cache.insert(&jwt(5_000), "shop", "api", at(1_100));
        assert_eq!(cache.len(), 1);
    }
}
