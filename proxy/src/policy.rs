//! Inbound policy: the server side's `ServerPolicy` per app port, watched
//! from the control plane (`Inbound.Watch`), and the authorization check
//! made on every inbound request and TCP stream.
//!
//! Until the control plane answers (or with no control plane), a port has
//! the default policy: permissive mTLS, allow all, the same as when no
//! `AuthorizationPolicy` selects it. The last known policy stays in force
//! while the control plane is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_api::v1 as api;
use weft_api::v1::inbound_client::InboundClient;

use crate::inbound::ConnInfo;
use crate::resilience::ratelimit::{Limited, RateLimiter};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `allow` or `deny`.
    result: &'static str,
    /// `http` or `tcp`.
    kind: &'static str,
}

/// The server policy of every app port.
pub struct Policies {
    ports: HashMap<u16, watch::Receiver<Arc<api::ServerPolicy>>>,
    decisions: Family<DecisionLabels, Counter>,
    /// Per port, made from the policy's `rate_limit` and kept while it
    /// is unchanged.
    limiters: Mutex<HashMap<u16, Arc<RateLimiter>>>,
}

/// Before the control plane's first answer for a watched port: deny
/// (fail closed), so a restarted proxy never serves a `strict` port openly.
fn pending_policy() -> Arc<api::ServerPolicy> {
    Arc::new(api::ServerPolicy {
        protocol: "http".into(),
        mtls: api::MtlsMode::Strict as i32,
        default_allow: false,
        sources: vec!["(waiting for the control plane's first policy)".into()],
        ..Default::default()
    })
}

fn is_pending(p: &api::ServerPolicy) -> bool {
    p.sources.first().is_some_and(|s| s.starts_with("(waiting"))
}

fn default_policy() -> Arc<api::ServerPolicy> {
    Arc::new(api::ServerPolicy {
        protocol: "http".into(),
        mtls: api::MtlsMode::Permissive as i32,
        default_allow: true,
        ..Default::default()
    })
}

impl Policies {
    /// Static default policies (no control plane).
    pub fn allow_all() -> Self {
        Self {
            ports: HashMap::new(),
            decisions: Family::default(),
            limiters: Mutex::default(),
        }
    }

    /// Watches `workload` (`namespace/name`) on each of `ports`.
    pub fn watch(client: InboundClient<Channel>, workload: String, ports: &[u16]) -> Self {
        let mut map = HashMap::new();
        for &port in ports {
            let (tx, rx) = watch::channel(pending_policy());
            tokio::spawn(run_watch(client.clone(), workload.clone(), port, tx));
            map.insert(port, rx);
        }
        Self {
            ports: map,
            decisions: Family::default(),
            limiters: Mutex::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_authorization",
            "Inbound authorization decisions",
            self.decisions.clone(),
        );
    }

    /// Resolves once every watched port has its first policy.
    pub async fn ready(&self) {
        for rx in self.ports.values() {
            let mut rx = rx.clone();
            let _ = rx.wait_for(|p| !is_pending(p)).await;
        }
    }

    pub fn policy(&self, port: u16) -> Arc<api::ServerPolicy> {
        self.ports
            .get(&port)
            .map_or_else(default_policy, |rx| rx.borrow().clone())
    }

    /// Checks one request (`http: Some((method, path))`) or TCP stream
    /// (`None`) against the port's policy; counts the decision.
    pub fn authorize(&self, port: u16, conn: &ConnInfo, http: Option<(&str, &str)>) -> Result<(), String> {
        let result = check(&self.policy(port), conn, http);
        let labels = DecisionLabels {
            result: if result.is_ok() { "allow" } else { "deny" },
            kind: if http.is_some() { "http" } else { "tcp" },
        };
        self.decisions.get_or_create(&labels).inc();
        result
    }

    /// Admits one request from `caller` under the port's rate limit.
    pub fn rate_limit(&self, port: u16, caller: Option<&str>) -> Result<(), Limited> {
        let policy = self.policy(port);
        let Some(params) = policy
            .rate_limit
            .filter(|r| r.total_rps > 0.0 || r.per_identity_rps > 0.0)
        else {
            return Ok(());
        };
        let limiter = {
            let mut limiters = self.limiters.lock().expect("limiter lock");
            match limiters.get(&port) {
                Some(l) if *l.params() == params => l.clone(),
                _ => {
                    let Some(l) = RateLimiter::new(&params) else {
                        return Ok(());
                    };
                    let l = Arc::new(l);
                    limiters.insert(port, l.clone());
                    l
                }
            }
        };
        limiter.check(caller, tokio::time::Instant::now())
    }

    /// For `/config`.
    pub fn dump(&self) -> serde_json::Value {
        let ports: std::collections::BTreeMap<String, serde_json::Value> = self
            .ports
            .iter()
            .map(|(port, rx)| {
                let p = rx.borrow();
                (
                    port.to_string(),
                    serde_json::json!({
                        "mtls": if p.mtls == api::MtlsMode::Strict as i32 { "strict" } else { "permissive" },
                        "defaultAllow": p.default_allow,
                        "rules": p.rules.len(),
                        "sources": p.sources,
                        "rateLimit": p.rate_limit.map(|r| serde_json::json!({
                            "totalRps": r.total_rps,
                            "totalBurst": r.total_burst,
                            "perIdentityRps": r.per_identity_rps,
                            "perIdentityBurst": r.per_identity_burst,
                        })),
                    }),
                )
            })
            .collect();
        serde_json::json!(ports)
    }
}

/// The decision for one caller.
pub fn check(policy: &api::ServerPolicy, conn: &ConnInfo, http: Option<(&str, &str)>) -> Result<(), String> {
    if policy.mtls == api::MtlsMode::Strict as i32 && !conn.tls {
        return Err("this port requires mTLS; plaintext refused".into());
    }
    if policy.default_allow {
        return Ok(());
    }
    let caller = conn.caller.as_deref();
    let caller_ns = caller
        .and_then(|id| id.split("/ns/").nth(1))
        .and_then(|rest| rest.split('/').next());
    let allowed = policy.rules.iter().any(|rule| {
        let identity_ok = rule.identities.is_empty()
            || caller.is_some_and(|c| rule.identities.iter().any(|i| i == "*" || i == c));
        let ns_ok =
            rule.namespaces.is_empty() || caller_ns.is_some_and(|ns| rule.namespaces.iter().any(|n| n == ns));
        let (path_ok, method_ok) = match http {
            Some((method, path)) => (
                rule.path_prefixes.is_empty()
                    || (!ambiguous_path(path) && rule.path_prefixes.iter().any(|p| has_prefix(path, p))),
                rule.methods.is_empty() || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method)),
            ),
            // A TCP stream has no path or method: only rules without
            // them can allow it.
            None => (rule.path_prefixes.is_empty(), rule.methods.is_empty()),
        };
        identity_ok && ns_ok && path_ok && method_ok
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "no rule of {} allows {}",
            policy.sources.join(", "),
            caller.unwrap_or("an unauthenticated caller")
        ))
    }
}

/// Whole-segment prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
fn has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A path the app might read differently than a prefix check does (dot
/// segments, empty segments, encoded dots or slashes, backslashes, `;`
/// parameters): it matches no path rule.
fn ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.split('/')
        .skip(1)
        .any(|seg| seg == "." || seg == ".." || seg.is_empty() && path.len() > 1 && path.contains("//"))
        || ["%2e", "%2f", "%5c", "\\", ";"]
            .iter()
            .any(|bad| lower.contains(bad))
}

async fn run_watch(
    mut client: InboundClient<Channel>,
    workload: String,
    port: u16,
    tx: watch::Sender<Arc<api::ServerPolicy>>,
) {
    let mut attempt = 0u32;
    loop {
        let req = api::InboundRequest {
            workload: workload.clone(),
            port: u32::from(port),
        };
        if let Ok(rsp) = client.watch(req).await {
            let mut stream = rsp.into_inner();
            while let Ok(Some(policy)) = stream.message().await {
                attempt = 0;
                tx.send_replace(Arc::new(policy));
            }
        }
        attempt += 1;
        let ceiling = Duration::from_millis(100)
            .saturating_mul(1 << attempt.min(6))
            .min(Duration::from_secs(5));
        tokio::time::sleep(
            ceiling
                .mul_f64(rand::random_range(0.0..=1.0))
                .max(Duration::from_millis(10)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(tls: bool, id: Option<&str>) -> ConnInfo {
        ConnInfo {
            tls,
            caller: id.map(Arc::from),
            ..ConnInfo::default()
        }
    }

    const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/data/sa/db";

    #[test]
    fn rules_by_identity_namespace_path_and_method() {
        let policy = api::ServerPolicy {
            mtls: api::MtlsMode::Strict as i32,
            default_allow: false,
            rules: vec![
                api::AuthorizationRule {
                    identities: vec![WEB.into()],
                    path_prefixes: vec!["/api/".into()],
                    methods: vec!["GET".into()],
                    ..Default::default()
                },
                api::AuthorizationRule {
                    namespaces: vec!["data".into()],
                    ..Default::default()
                },
            ],
            sources: vec!["demo/ap".into()],
            ..Default::default()
        };
        assert!(check(&policy, &conn(true, Some(WEB)), Some(("GET", "/api/users"))).is_ok());
        assert!(check(&policy, &conn(true, Some(WEB)), Some(("POST", "/api/users"))).is_err());
        assert!(check(&policy, &conn(true, Some(WEB)), Some(("GET", "/admin"))).is_err());
        assert!(
            check(&policy, &conn(true, Some(WEB)), Some(("GET", "/api"))).is_ok(),
            "the prefix itself"
        );
        assert!(
            check(&policy, &conn(true, Some(WEB)), Some(("GET", "/apix"))).is_err(),
            "whole segments only"
        );
        assert!(
            check(&policy, &conn(true, Some(WEB)), Some(("GET", "/api/../admin"))).is_err(),
            "dot segments"
        );
        assert!(
            check(
                &policy,
                &conn(true, Some(WEB)),
                Some(("GET", "/api/%2e%2e/admin"))
            )
            .is_err(),
            "encoded"
        );
        assert!(
            check(&policy, &conn(true, Some(WEB)), Some(("GET", "/api//x"))).is_err(),
            "empty segment"
        );
        assert!(
            check(&policy, &conn(true, Some(WEB)), None).is_err(),
            "TCP does not match an HTTP-only rule"
        );
        assert!(
            check(&policy, &conn(true, Some(DB)), Some(("DELETE", "/x"))).is_ok(),
            "namespace rule"
        );
        assert!(check(&policy, &conn(true, Some(DB)), None).is_ok());
        let e = check(&policy, &conn(false, None), Some(("GET", "/api/users"))).unwrap_err();
        assert!(e.contains("requires mTLS"), "{e}");
    }

    #[test]
    fn pending_policy_denies() {
        assert!(check(&pending_policy(), &conn(true, Some(WEB)), Some(("GET", "/"))).is_err());
        assert!(is_pending(&pending_policy()) && !is_pending(&default_policy()));
    }

    #[test]
    fn permissive_default_allows_plaintext() {
        assert!(check(&default_policy(), &conn(false, None), Some(("GET", "/"))).is_ok());
        assert!(check(&default_policy(), &conn(false, None), None).is_ok());
    }
}
