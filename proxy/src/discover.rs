//! Where endpoints come from.
//!
//! The data path asks a [`Discover`] for a service's [`Destination`]:
//! its endpoints, HTTPRoutes and policy. Two sources implement it: the
//! control plane ([`crate::control::ControlDiscover`]) and a static YAML
//! file ([`StaticEndpoints`]) for local runs without one.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{parse_yaml, ConfigError};
use crate::resilience::balance::Candidate;
use crate::resilience::{EndpointStats, Policy, Shared};
pub use crate::routes::{Backend, PathMatch, Route, RouteMatch};

/// The `service` label of destinations the mesh does not know (found
/// through DNS, or an original destination address).
pub const EXTERNAL_SERVICE: &str = "external";

/// One place a service can be reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where the workload itself listens (pod IP and port).
    pub addr: SocketAddr,
    /// The inbound listener of the Weft proxy in front of it. With one, the
    /// call travels over the mesh (HTTP/2 between proxies); without one, the
    /// endpoint is not meshed and is called directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<SocketAddr>,
    /// The SPIFFE ID its proxy must present (checked once mTLS arrives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Arc<str>>,
    /// Relative load-balancing weight.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// Latency, load and circuit-breaker state; shared by every version
    /// of the endpoint list that contains this endpoint.
    #[serde(skip)]
    pub stats: Arc<EndpointStats>,
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.proxy == other.proxy
            && self.identity == other.identity
            && self.weight == other.weight
    }
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

impl Endpoint {
    pub fn unmeshed(addr: SocketAddr) -> Self {
        Self {
            addr,
            proxy: None,
            identity: None,
            weight: 1,
            stats: Arc::default(),
        }
    }
}

impl Candidate for Endpoint {
    /// The endpoint's proxy when it is meshed (two replicas may share an
    /// app address behind different proxies, e.g. on one machine).
    fn addr(&self) -> SocketAddr {
        self.proxy.unwrap_or(self.addr)
    }

    fn weight(&self) -> u32 {
        self.weight
    }

    fn stats(&self) -> &EndpointStats {
        &self.stats
    }
}

/// A service's endpoints, shared cheaply.
pub type Endpoints = Arc<[Endpoint]>;

/// Everything the data path needs to call one destination.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    /// The name for metrics: the service discovery knows, or `external`.
    pub service: Arc<str>,
    /// Its namespace, when discovery knows it.
    pub namespace: Arc<str>,
    pub endpoints: Endpoints,
    /// HTTPRoutes in precedence order; empty: straight to `endpoints`.
    pub routes: Arc<[Route]>,
    /// How it is called: the TrafficPolicy, defaults filled in.
    pub policy: Arc<Policy>,
    /// Bulkhead, retry budget, round-robin position.
    #[serde(skip)]
    pub shared: Arc<Shared>,
    /// False for names found through DNS: forwarded without mesh features.
    pub meshed: bool,
    /// Endpoints left out because the policy requires mTLS and they are
    /// not meshed.
    pub unmeshed_refused: usize,
    /// The port is declared `protocol: tcp`: an upstream listener bound to
    /// it skips detection (a server-speaks-first banner arrives at once).
    pub opaque: bool,
}

impl Destination {
    pub fn from_endpoints(service: impl Into<Arc<str>>, endpoints: Endpoints) -> Self {
        let policy = Arc::new(Policy::default());
        Self {
            service: service.into(),
            namespace: Arc::default(),
            endpoints,
            routes: Arc::from([]),
            shared: Arc::new(Shared::new(&policy)),
            policy,
            meshed: true,
            unmeshed_refused: 0,
            opaque: false,
        }
    }

    /// Keeps what `prev` (the version this one replaces) learned: each
    /// endpoint's latency and breaker state, and the bulkhead and retry
    /// budget while their settings are unchanged.
    pub fn carry_over(&mut self, prev: &Destination) {
        if prev.shared.fits(&self.policy) {
            self.shared = prev.shared.clone();
        }
        // An endpoint is its address and its proxy: replicas that share an
        // app address behind different proxies keep their own stats.
        let old: HashMap<(SocketAddr, Option<SocketAddr>), &Arc<EndpointStats>> = prev
            .endpoints
            .iter()
            .map(|e| ((e.addr, e.proxy), &e.stats))
            .collect();
        if old.is_empty() {
            return;
        }
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .iter()
            .map(|e| Endpoint {
                stats: old
                    .get(&(e.addr, e.proxy))
                    .map_or_else(|| e.stats.clone(), |s| (*s).clone()),
                ..e.clone()
            })
            .collect();
        self.endpoints = endpoints.into();
    }
}

/// `host:port` as a destination target: an IPv6 address in brackets
/// (`[fd00::2]:8080`), so the control plane reads it as an address rather
/// than a name with colons in it.
pub fn target(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Calls `f` with [`target`]`(host, port)`, built on the stack when it
/// fits (every lookup of a request makes one; most names are short):
/// bytes copied, no formatter, and an IPv6 parse only for a host with a
/// colon (no name has one).
pub fn with_target<R>(host: &str, port: u16, f: impl FnOnce(&str) -> R) -> R {
    const CAP: usize = 128;
    let v6 = host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_ok();
    let (open, close): (&[u8], &[u8]) = if v6 { (b"[", b"]") } else { (b"", b"") };
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 5] = [open, host.as_bytes(), close, b":", &digits[start..]];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > CAP {
        return f(&target(host, port));
    }
    let mut buf = [0u8; CAP];
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    // Whole UTF-8 pieces (a str, ASCII punctuation and digits) joined.
    f(std::str::from_utf8(&buf[..len]).expect("joined from UTF-8 pieces"))
}

/// Why a name did not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// No such destination: the mesh does not know it and, for names
    /// outside the mesh, DNS found nothing.
    Unknown,
    /// Discovery has not answered (yet): the mesh cannot know where the
    /// request would go, so nothing is sent (fail closed).
    Pending,
}

/// What a lookup found.
pub type Resolution = Result<Arc<Destination>, Unresolved>;

/// Answers "where does this service live, and how is it called?".
pub trait Discover: Send + Sync + 'static {
    /// The destination `host:port` names.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Resolution> + Send + 'a>>;

    /// A JSON view of what is known, for `/config`.
    fn dump(&self) -> serde_json::Value;
}

/// Endpoints read once from a YAML file:
///
/// ```yaml
/// # service name (as apps write it in Host), or name:port
/// backend:
///   - addr: 127.0.0.1:8081    # the app
///     proxy: 127.0.0.1:4243   # its Weft proxy's inbound listener
/// ```
#[derive(Debug, Default, Clone)]
pub struct StaticEndpoints {
    services: HashMap<String, Arc<Destination>>,
}

impl StaticEndpoints {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&name, "(file)", format!("cannot read: {e}")))?;
        let parsed: HashMap<String, Vec<Endpoint>> = parse_yaml(&text, &name)?;
        Ok(Self::from_map(
            parsed
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        ))
    }

    pub fn from_map(services: HashMap<String, Vec<Endpoint>>) -> Self {
        Self {
            services: services
                .into_iter()
                .map(|(k, v)| {
                    let name = k.split(':').next().unwrap_or(&k).to_string();
                    (k, Arc::new(Destination::from_endpoints(name, v.into())))
                })
                .collect(),
        }
    }

    fn lookup(&self, host: &str, port: u16) -> Option<Arc<Destination>> {
        let host = host.to_ascii_lowercase();
        self.services
            .get(&target(&host, port))
            .or_else(|| self.services.get(&host))
            .cloned()
    }
}

impl Discover for StaticEndpoints {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Resolution> + Send + 'a>> {
        Box::pin(std::future::ready(
            self.lookup(host, port).ok_or(Unresolved::Unknown),
        ))
    }

    fn dump(&self) -> serde_json::Value {
        let sorted: std::collections::BTreeMap<_, _> =
            self.services.iter().map(|(k, v)| (k, &v.endpoints[..])).collect();
        serde_json::to_value(sorted).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_specific_entry_wins() {
        let a = Endpoint::unmeshed("127.0.0.1:1".parse().unwrap());
        let b = Endpoint::unmeshed("127.0.0.1:2".parse().unwrap());
        let s = StaticEndpoints::from_map(HashMap::from([
            ("web".to_string(), vec![a.clone()]),
            ("web:8080".to_string(), vec![b.clone()]),
        ]));
        assert_eq!(&*s.resolve("web", 80).await.unwrap().endpoints, &[a]);
        assert_eq!(&*s.resolve("WEB", 8080).await.unwrap().endpoints, &[b]);
        assert_eq!(s.resolve("other", 80).await.unwrap_err(), Unresolved::Unknown);
    }

    #[test]
    fn carried_over_stats_follow_address_and_proxy() {
        let app: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let behind = |proxy: &str| Endpoint {
            proxy: Some(proxy.parse().unwrap()),
            ..Endpoint::unmeshed(app)
        };
        let prev =
            Destination::from_endpoints("web", vec![behind("127.0.0.1:1"), behind("127.0.0.1:2")].into());
        let mut next =
            Destination::from_endpoints("web", vec![behind("127.0.0.1:2"), behind("127.0.0.1:1")].into());
        next.carry_over(&prev);
        // Replicas sharing an app address keep their own stats.
        assert!(Arc::ptr_eq(&next.endpoints[0].stats, &prev.endpoints[1].stats));
        assert!(Arc::ptr_eq(&next.endpoints[1].stats, &prev.endpoints[0].stats));
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        assert_eq!(target("fd00::2", 8080), "[fd00::2]:8080");
        assert_eq!(target("10.0.0.2", 8080), "10.0.0.2:8080");
        assert_eq!(target("echo.demo", 80), "echo.demo:80");
    }

    #[test]
    fn with_target_formats_as_target_does_at_any_length() {
        let long = "a".repeat(200);
        for (host, port) in [
            ("fd00::2", 8080),
            ("::1", 0),
            ("echo.demo", 80),
            ("echo.demo", 5),
            ("not:v6", 443),
            (&long[..122], 65535),
            (&long[..123], 65535),
            (&long, 1),
        ] {
            assert_eq!(
                with_target(host, port, str::to_string),
                target(host, port),
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn an_ipv6_address_resolves_as_itself() {
        let a = Endpoint::unmeshed("[fd00::2]:8080".parse().unwrap());
        let s = StaticEndpoints::from_map(HashMap::from([("[fd00::2]:8080".to_string(), vec![a.clone()])]));
        // As outbound/lookup.rs asks: the bare address, brackets stripped.
        assert_eq!(&*s.resolve("fd00::2", 8080).await.unwrap().endpoints, &[a]);
    }

    #[test]
    fn bad_endpoint_names_the_field() {
        let dir = std::env::temp_dir().join(format!("weft-ep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("endpoints.yaml");
        std::fs::write(&f, "web:\n  - addr: 127.0.0.1:80\n  - addr: nowhere\n").unwrap();
        let e = StaticEndpoints::from_file(&f).unwrap_err();
        assert_eq!(e.field, "web[1].addr");
        assert!(e.source_name.ends_with("endpoints.yaml"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
