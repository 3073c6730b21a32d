//! Inbound policy: the server side's [`ServerPolicy`] per app port, and the
//! authorization check made on every inbound request and TCP stream.
//!
//! A watched port is [`PortPolicy::Pending`] until the control plane's
//! first answer (`Inbound.Watch`, [`crate::control::InboundWatcher`]), and
//! pending denies everything (fail closed), so a restarted proxy never
//! serves a `strict` port openly. The last known policy stays in force
//! while the control plane is unreachable. With a control plane, a port
//! nobody watches is pending too; the app's declared ports are watched
//! from the start and, with `inboundAnyPort`, any other is watched on
//! first use ([`Policies::watch_port`]). Without a control plane (or a
//! workload) every port has the default policy: permissive mTLS, allow
//! all, the same as when no `AuthorizationPolicy` selects it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::resilience::ratelimit::{Limited, RateLimitParams, RateLimiter};

/// What the connection a request came on says about its caller: what the
/// policy judges.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub tls: bool,
    /// The caller's SPIFFE ID, from its client certificate.
    pub caller: Option<Arc<str>>,
    /// The port the caller dialled, when iptables redirected it here
    /// (`weft-proxy init`): the app port, unless a peer's `weft-port` says
    /// otherwise.
    pub target_port: Option<u16>,
    /// The local address the caller reached (the pod IP: the original
    /// destination of a redirected connection, else the socket's own).
    pub local_ip: Option<std::net::IpAddr>,
}

/// Whether a port accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// mTLS from peers, plaintext from anyone else.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }
}

/// How one app port is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPolicy {
    pub mtls: MtlsMode,
    /// True when no `AuthorizationPolicy` selects the port: every caller
    /// the mTLS mode lets in is allowed.
    pub default_allow: bool,
    /// Allow rules: a caller any rule matches is allowed.
    pub rules: Vec<AuthorizationRule>,
    pub rate_limit: Option<RateLimitParams>,
    /// `namespace/name` of the policies that produced this.
    pub sources: Vec<String>,
}

impl ServerPolicy {
    /// Permissive, allow all: a port no policy selects.
    pub fn allow_all() -> Self {
        Self {
            mtls: MtlsMode::Permissive,
            default_allow: true,
            rules: Vec::new(),
            rate_limit: None,
            sources: Vec::new(),
        }
    }
}

/// One allow rule; every non-empty list must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthorizationRule {
    /// Empty: any caller, authenticated or not.
    pub identities: Vec<IdentityMatch>,
    /// The caller's namespace (from its SPIFFE ID); empty: any.
    pub namespaces: Vec<String>,
    /// Empty: any path, and TCP streams too.
    pub path_prefixes: Vec<PathPrefix>,
    /// Compared ignoring case; empty: any, and TCP streams too.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    /// `*`: any caller with a certificate.
    AnyAuthenticated,
    /// This SPIFFE ID.
    Exact(String),
}

impl IdentityMatch {
    fn matches(&self, caller: &str) -> bool {
        match self {
            IdentityMatch::AnyAuthenticated => true,
            IdentityMatch::Exact(id) => id == caller,
        }
    }
}

/// A path prefix matched on whole segments: `/api` (or `/api/`) matches
/// `/api` and `/api/x`, not `/apix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn new(prefix: &str) -> Self {
        Self(prefix.trim_end_matches('/').to_string())
    }

    pub fn matches(&self, path: &str) -> bool {
        crate::http::has_path_prefix(path, &self.0)
    }
}

/// The policy in force on one port.
#[derive(Debug, Clone)]
pub enum PortPolicy {
    /// No answer from the control plane yet: every caller is denied.
    Pending,
    Known(Arc<ServerPolicy>),
}

impl PortPolicy {
    pub fn is_known(&self) -> bool {
        matches!(self, PortPolicy::Known(_))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `allow` or `deny`.
    result: &'static str,
    /// `http` or `tcp`.
    kind: &'static str,
}

/// The most ports watched on first use: each is a stream to the control
/// plane, and only ports the app listens on are (see
/// [`crate::inbound`]), so this is a backstop.
pub const MAX_DYNAMIC_PORTS: usize = 256;

/// Starts a watch for one port (see [`crate::control::InboundWatcher`]).
pub type PortWatcher = Box<dyn Fn(u16) -> watch::Receiver<PortPolicy> + Send + Sync>;

/// Ports watched on first use.
struct Dynamic {
    watch: PortWatcher,
    ports: Mutex<HashMap<u16, watch::Receiver<PortPolicy>>>,
}

/// The server policy of every app port.
pub struct Policies {
    /// The declared app ports: read on every request without a lock.
    ports: HashMap<u16, watch::Receiver<PortPolicy>>,
    dynamic: Option<Dynamic>,
    /// The policy of ports not watched.
    unwatched: PortPolicy,
    decisions: Family<DecisionLabels, Counter>,
    /// Per port, made from the policy's `rate_limit` and kept while it
    /// is unchanged.
    limiters: Mutex<HashMap<u16, Arc<RateLimiter>>>,
}

impl Policies {
    /// Static default policies (no control plane).
    pub fn allow_all() -> Self {
        Self {
            ports: HashMap::new(),
            dynamic: None,
            unwatched: PortPolicy::Known(Arc::new(ServerPolicy::allow_all())),
            decisions: Family::default(),
            limiters: Mutex::default(),
        }
    }

    /// Each port in `ports` follows its receiver; with `dynamic`, other
    /// ports can be watched on first use ([`Self::watch_port`]); a port
    /// not watched is pending (denies).
    pub fn watched(ports: HashMap<u16, watch::Receiver<PortPolicy>>, dynamic: Option<PortWatcher>) -> Self {
        Self {
            ports,
            dynamic: dynamic.map(|watch| Dynamic {
                watch,
                ports: Mutex::default(),
            }),
            unwatched: PortPolicy::Pending,
            decisions: Family::default(),
            limiters: Mutex::default(),
        }
    }

    /// Whether `port` has a policy watch (declared, or started on first
    /// use).
    pub fn is_watched(&self, port: u16) -> bool {
        self.ports.contains_key(&port)
            || self
                .dynamic
                .as_ref()
                .is_some_and(|d| d.ports.lock().expect("policy lock").contains_key(&port))
    }

    /// Makes sure `port` is watched (starting a watch when this proxy
    /// watches ports on first use), and waits up to `wait` for its first
    /// policy. False: it cannot be watched (no first-use watches, or
    /// [`MAX_DYNAMIC_PORTS`] reached); the port then stays pending.
    pub async fn watch_port(&self, port: u16, wait: std::time::Duration) -> bool {
        if self.ports.contains_key(&port) {
            return true;
        }
        let Some(dynamic) = &self.dynamic else {
            return false;
        };
        let mut rx = {
            let mut ports = dynamic.ports.lock().expect("policy lock");
            match ports.get(&port) {
                Some(rx) => rx.clone(),
                None if ports.len() >= MAX_DYNAMIC_PORTS => {
                    tracing::warn!(
                        port,
                        max = MAX_DYNAMIC_PORTS,
                        "too many app ports to watch; this one is denied"
                    );
                    return false;
                }
                None => {
                    tracing::debug!(port, "watching the policy of an undeclared app port");
                    let rx = (dynamic.watch)(port);
                    ports.insert(port, rx.clone());
                    rx
                }
            }
        };
        // Pending after the wait: the checks deny, as for any pending port.
        let _ = tokio::time::timeout(wait, rx.wait_for(PortPolicy::is_known)).await;
        true
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
            let _ = rx.wait_for(PortPolicy::is_known).await;
        }
    }

    pub fn policy(&self, port: u16) -> PortPolicy {
        if let Some(rx) = self.ports.get(&port) {
            return rx.borrow().clone();
        }
        let dynamic = self.dynamic.as_ref().and_then(|d| {
            let ports = d.ports.lock().expect("policy lock");
            ports.get(&port).map(|rx| rx.borrow().clone())
        });
        dynamic.unwrap_or_else(|| self.unwatched.clone())
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
        let PortPolicy::Known(policy) = self.policy(port) else {
            return Ok(());
        };
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
        let mut ports: BTreeMap<String, serde_json::Value> = self
            .ports
            .iter()
            .map(|(port, rx)| (port.to_string(), dump_port(&rx.borrow())))
            .collect();
        if let Some(d) = &self.dynamic {
            let dynamic = d.ports.lock().expect("policy lock");
            ports.extend(
                dynamic
                    .iter()
                    .map(|(port, rx)| (port.to_string(), dump_port(&rx.borrow()))),
            );
        }
        serde_json::json!(ports)
    }
}

/// A pending port shows as what it enforces: strict, nothing allowed.
fn dump_port(p: &PortPolicy) -> serde_json::Value {
    let PortPolicy::Known(p) = p else {
        return serde_json::json!({
            "mtls": MtlsMode::Strict.as_str(),
            "defaultAllow": false,
            "rules": 0,
            "sources": ["(waiting for the control plane's first policy)"],
            "rateLimit": null,
        });
    };
    serde_json::json!({
        "mtls": p.mtls.as_str(),
        "defaultAllow": p.default_allow,
        "rules": p.rules.len(),
        "sources": p.sources,
        "rateLimit": p.rate_limit.map(|r| serde_json::json!({
            "totalRps": r.total_rps,
            "totalBurst": r.total_burst,
            "perIdentityRps": r.per_identity_rps,
            "perIdentityBurst": r.per_identity_burst,
        })),
    })
}

/// The decision for one caller.
pub fn check(policy: &PortPolicy, conn: &ConnInfo, http: Option<(&str, &str)>) -> Result<(), String> {
    let PortPolicy::Known(policy) = policy else {
        return Err("no policy for this port yet (waiting for the control plane); denied".into());
    };
    if policy.mtls == MtlsMode::Strict && !conn.tls {
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
            || caller.is_some_and(|c| rule.identities.iter().any(|i| i.matches(c)));
        let ns_ok =
            rule.namespaces.is_empty() || caller_ns.is_some_and(|ns| rule.namespaces.iter().any(|n| n == ns));
        let (path_ok, method_ok) = match http {
            Some((method, path)) => (
                rule.path_prefixes.is_empty()
                    || (!ambiguous_path(path) && rule.path_prefixes.iter().any(|p| p.matches(path))),
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn conn(tls: bool, id: Option<&str>) -> ConnInfo {
        ConnInfo {
            tls,
            caller: id.map(Arc::from),
            ..ConnInfo::default()
        }
    }

    fn known(p: ServerPolicy) -> PortPolicy {
        PortPolicy::Known(Arc::new(p))
    }

    const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/data/sa/db";

    #[test]
    fn rules_by_identity_namespace_path_and_method() {
        let policy = known(ServerPolicy {
            mtls: MtlsMode::Strict,
            default_allow: false,
            rules: vec![
                AuthorizationRule {
                    identities: vec![IdentityMatch::Exact(WEB.into())],
                    path_prefixes: vec![PathPrefix::new("/api/")],
                    methods: vec!["GET".into()],
                    ..Default::default()
                },
                AuthorizationRule {
                    namespaces: vec!["data".into()],
                    ..Default::default()
                },
            ],
            rate_limit: None,
            sources: vec!["demo/ap".into()],
        });
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
    fn any_authenticated_caller() {
        let policy = known(ServerPolicy {
            default_allow: false,
            rules: vec![AuthorizationRule {
                identities: vec![IdentityMatch::AnyAuthenticated],
                ..Default::default()
            }],
            ..ServerPolicy::allow_all()
        });
        assert!(check(&policy, &conn(true, Some(DB)), None).is_ok());
        let e = check(&policy, &conn(false, None), None).unwrap_err();
        assert!(e.contains("an unauthenticated caller"), "{e}");
    }

    #[test]
    fn pending_policy_denies() {
        assert!(check(&PortPolicy::Pending, &conn(true, Some(WEB)), Some(("GET", "/"))).is_err());
        assert!(check(&PortPolicy::Pending, &conn(false, None), None).is_err());
        assert!(!PortPolicy::Pending.is_known() && known(ServerPolicy::allow_all()).is_known());
    }

    #[test]
    fn permissive_default_allows_plaintext() {
        let default = known(ServerPolicy::allow_all());
        assert!(check(&default, &conn(false, None), Some(("GET", "/"))).is_ok());
        assert!(check(&default, &conn(false, None), None).is_ok());
    }

    #[tokio::test]
    async fn undeclared_ports_are_watched_on_first_use_up_to_a_bound() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let log = started.clone();
        let watcher: PortWatcher = Box::new(move |port| {
            log.lock().unwrap().push(port);
            let (tx, rx) = watch::channel(PortPolicy::Pending);
            // The control plane answers a little later; port 7 never.
            if port != 7 {
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    tx.send_replace(known(ServerPolicy::allow_all()));
                    tx.closed().await;
                });
            }
            rx
        });
        let policies = Policies::watched(HashMap::new(), Some(watcher));
        let caller = conn(true, Some(WEB));
        let wait = std::time::Duration::from_secs(2);
        assert!(
            policies.authorize(8080, &caller, None).is_err(),
            "before its watch"
        );
        assert!(policies.watch_port(8080, wait).await);
        assert!(
            policies.authorize(8080, &caller, None).is_ok(),
            "its first policy arrived"
        );
        assert!(policies.watch_port(8080, wait).await);
        assert_eq!(*started.lock().unwrap(), [8080], "one watch per port");
        assert_eq!(policies.dump()["8080"]["defaultAllow"], true);

        // No answer within the wait: watched, and denied meanwhile.
        assert!(policies.watch_port(7, std::time::Duration::from_millis(50)).await);
        assert!(policies.authorize(7, &caller, None).is_err());

        for port in 10..(10 + MAX_DYNAMIC_PORTS as u16 - 2) {
            assert!(policies.watch_port(port, std::time::Duration::ZERO).await);
        }
        assert!(!policies.watch_port(60000, wait).await, "the bound");
        assert!(policies.authorize(60000, &caller, None).is_err());
        assert!(
            !Policies::watched(HashMap::new(), None)
                .watch_port(8080, wait)
                .await,
            "declared ports only"
        );
    }

    #[test]
    fn a_watched_port_is_pending_until_its_first_policy() {
        let (tx, rx) = watch::channel(PortPolicy::Pending);
        let policies = Policies::watched(HashMap::from([(8080, rx)]), None);
        let caller = conn(true, Some(WEB));
        assert!(
            policies.authorize(8080, &caller, Some(("GET", "/"))).is_err(),
            "fail closed"
        );
        assert!(
            policies.authorize(9090, &caller, None).is_err(),
            "a port nobody watches, with a control plane"
        );
        assert!(
            Policies::allow_all().authorize(9090, &caller, None).is_ok(),
            "without one"
        );
        assert!(
            policies.ready().now_or_never().is_none(),
            "not ready while pending"
        );
        let port = |p: &Policies| p.dump()["8080"].clone();
        assert_eq!(port(&policies)["mtls"], "strict");
        assert_eq!(port(&policies)["defaultAllow"], false);
        assert_eq!(
            port(&policies)["sources"][0],
            "(waiting for the control plane's first policy)"
        );

        tx.send_replace(known(ServerPolicy {
            rate_limit: Some(RateLimitParams {
                total_rps: 20.0,
                total_burst: 10,
                ..Default::default()
            }),
            sources: vec!["demo/ap".into()],
            ..ServerPolicy::allow_all()
        }));
        assert!(policies.ready().now_or_never().is_some(), "ready once known");
        assert!(policies.authorize(8080, &caller, Some(("GET", "/"))).is_ok());
        assert_eq!(
            port(&policies),
            serde_json::json!({
                "mtls": "permissive",
                "defaultAllow": true,
                "rules": 0,
                "sources": ["demo/ap"],
                "rateLimit": {"totalRps": 20.0, "totalBurst": 10, "perIdentityRps": 0.0, "perIdentityBurst": 0},
            })
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// The path an app might act on: percent-decoded once, backslashes
        /// as slashes, `;` parameters dropped, dot segments resolved
        /// (RFC 3986 5.2.4) and empty segments merged.
        fn app_view(path: &str) -> String {
            let b = path.as_bytes();
            let mut decoded = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                match (b[i], hex) {
                    (b'%', Some(v)) => {
                        decoded.push(v);
                        i += 3;
                    }
                    (c, _) => {
                        decoded.push(c);
                        i += 1;
                    }
                }
            }
            let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
            let mut out: Vec<&str> = Vec::new();
            for seg in decoded.split('/').skip(1) {
                match seg.split(';').next().unwrap_or("") {
                    "" | "." => {}
                    ".." => {
                        out.pop();
                    }
                    s => out.push(s),
                }
            }
            format!("/{}", out.join("/"))
        }

        fn paths() -> impl Strategy<Value = String> {
            let segment = prop_oneof![
                Just("api"),
                Just("admin"),
                Just("a"),
                Just("b"),
                Just(".."),
                Just("."),
                Just(""),
                Just("%2e%2e"),
                Just("%2E."),
                Just(".%2e"),
                Just("%2f"),
                Just("api%2Fadmin"),
                Just("%5c"),
                Just("..\\"),
                Just("\\..\\admin"),
                Just(";x"),
                Just("api;x"),
                Just("%252e%252e"),
                Just("x%00"),
                Just("apix"),
                Just("..."),
            ];
            prop::collection::vec(segment, 0..6).prop_map(|segs| format!("/{}", segs.join("/")))
        }

        fn policy(prefix: &str) -> PortPolicy {
            known(ServerPolicy {
                mtls: MtlsMode::Permissive,
                default_allow: false,
                rules: vec![AuthorizationRule {
                    path_prefixes: vec![PathPrefix::new(prefix)],
                    ..Default::default()
                }],
                rate_limit: None,
                sources: vec!["demo/ap".into()],
            })
        }

        proptest! {
            #[test]
            fn an_allowed_path_is_under_the_prefix_however_the_app_reads_it(
                path in prop_oneof![paths(), "/[ -~]{0,24}"],
                prefix in prop_oneof![Just("/api"), Just("/api/"), Just("/a/b"), Just("/")],
            ) {
                let allowed = check(&policy(prefix), &conn(false, None), Some(("GET", &path))).is_ok();
                let seen = app_view(&path);
                if allowed {
                    prop_assert!(crate::http::has_path_prefix(&seen, prefix), "{:?} allowed under {:?}, but the app reads {:?}", path, prefix, seen);
                    prop_assert!(!path.split('/').any(|s| s == ".." || s.eq_ignore_ascii_case("%2e%2e")));
                }
            }

            #[test]
            fn a_plain_path_under_the_prefix_is_allowed(segs in prop::collection::vec("[a-z0-9_-]{1,8}", 0..5)) {
                let path = format!("/api/{}", segs.join("/"));
                prop_assert!(check(&policy("/api"), &conn(false, None), Some(("GET", &path))).is_ok(), "{}", path);
                let beside = format!("/apix/{}", segs.join("/"));
                prop_assert!(check(&policy("/api"), &conn(false, None), Some(("GET", &beside))).is_err());
            }
        }
    }
}
