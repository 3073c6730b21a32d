//! Discovery from the control plane: one `Destination.Watch` stream per
//! destination in use, shared by every connection, over the
//! [`ControlClient`]'s channel.
//!
//! - The first lookup of a name opens its watch and waits (briefly) for the
//!   first answer; later lookups read the latest state without waiting.
//! - A watch unused for the idle timeout is closed.
//! - A broken stream reconnects after a [`Backoff`] (100 ms → 5 s);
//!   meanwhile the last known state keeps serving; after reconnecting, the
//!   first snapshot replaces it.
//! - A name the mesh does not know is resolved through DNS and forwarded
//!   without mesh features, unless it is a name only the mesh can own
//!   (`*.svc`, `*.svc.<cluster domain>`): those are never guessed.
//! - A destination still unanswered after the first-update wait is
//!   [`Unresolved::Pending`]: the request is refused (503
//!   `discovery-unavailable`), never sent by DNS in plaintext.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_api::v1 as api;
use weft_api::v1::destination_client::DestinationClient;
use weft_api::v1::destination_update::Kind;

use super::{proto, Backoff, ControlClient};
use crate::discover::{Destination, Discover, Endpoint, Resolution, Unresolved};

pub use crate::discover::EXTERNAL_SERVICE;

/// Settings of discovery from the control plane.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// This workload's namespace; short names resolve in it.
    pub namespace: String,
    pub proxy_id: String,
    /// This proxy's admin listener, reported to the control plane.
    pub admin_address: String,
    /// A watch unused this long is closed.
    pub idle_timeout: Duration,
    /// How long a first lookup waits for the control plane's answer.
    pub first_update_timeout: Duration,
    /// The cluster's DNS suffix (`cluster.local`): service names under it
    /// belong to the mesh and never fall back to DNS.
    pub cluster_domain: String,
}

impl ControlSettings {
    /// Whether `host` is a Kubernetes service name (`name.ns.svc`,
    /// `name.ns.svc.<cluster domain>`): only the control plane answers
    /// for it.
    pub fn is_mesh_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        host.ends_with(".svc") || host.ends_with(&format!(".svc.{}", self.cluster_domain))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Control-plane client metrics.
#[derive(Debug, Clone, Default)]
pub struct ControlMetrics {
    watches: Gauge,
    connected: Gauge,
    reconnects: Counter,
    updates: Counter,
    dns: Family<ResultLabels, Counter>,
    unavailable: Counter,
}

impl ControlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_destination_watches",
            "Destination watches open",
            self.watches.clone(),
        );
        registry.register(
            "weft_control_plane_streams_connected",
            "Destination watch streams currently connected to the control plane",
            self.connected.clone(),
        );
        registry.register(
            "weft_control_plane_reconnects",
            "Attempts to re-open a destination watch stream after it failed or ended",
            self.reconnects.clone(),
        );
        registry.register(
            "weft_control_plane_updates",
            "Destination updates received",
            self.updates.clone(),
        );
        registry.register(
            "weft_dns_fallback",
            "Requests for names the mesh does not know, resolved through DNS and forwarded without mesh features (refused: a service name only the mesh owns)",
            self.dns.clone(),
        );
        registry.register(
            "weft_discovery_unavailable",
            "Requests refused because the control plane had not answered for their destination within the wait",
            self.unavailable.clone(),
        );
    }
}

#[derive(Debug, Clone)]
enum State {
    /// No answer yet.
    Pending,
    NotFound,
    Found(Arc<Destination>),
}

struct WatchEntry {
    rx: watch::Receiver<State>,
    /// Milliseconds since the client started.
    last_used: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchEntry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct ControlDiscover {
    control: ControlClient,
    settings: ControlSettings,
    /// Read-shared on the request path: a lookup of a watched destination
    /// takes no exclusive lock (only opening or reaping a watch does).
    watches: RwLock<foldhash::HashMap<String, Arc<WatchEntry>>>,
    dns: Option<TokioResolver>,
    metrics: ControlMetrics,
    started: Instant,
}

impl ControlDiscover {
    /// Opens no stream until the first lookup. Spawns the idle reaper, so
    /// it needs a runtime.
    pub fn new(control: ControlClient, settings: ControlSettings, metrics: ControlMetrics) -> Arc<Self> {
        let dns = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver; names the mesh does not know will fail");
                None
            }
        };
        let this = Arc::new(Self {
            control,
            settings,
            watches: RwLock::default(),
            dns,
            metrics,
            started: Instant::now(),
        });
        let weak = Arc::downgrade(&this);
        let every = (this.settings.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                this.reap_idle();
            }
        });
        this
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn reap_idle(&self) {
        let idle = self.settings.idle_timeout.as_millis() as u64;
        let now = self.now_ms();
        let mut watches = self.watches.write().expect("watch lock poisoned");
        watches.retain(|target, w| {
            let keep = now.saturating_sub(w.last_used.load(Ordering::Relaxed)) < idle;
            if !keep {
                tracing::debug!(%target, "closing idle destination watch");
            }
            keep
        });
        self.metrics.watches.set(watches.len() as i64);
    }

    /// `target`'s watch, marked used now, when there is one.
    fn touch<'w>(
        &self,
        watches: &'w foldhash::HashMap<String, Arc<WatchEntry>>,
        target: &str,
    ) -> Option<&'w Arc<WatchEntry>> {
        let w = watches.get(target)?;
        w.last_used.store(self.now_ms(), Ordering::Relaxed);
        Some(w)
    }

    fn entry(&self, target: &str) -> Arc<WatchEntry> {
        if let Some(w) = self.touch(&self.watches.read().expect("watch lock poisoned"), target) {
            return w.clone();
        }
        let mut watches = self.watches.write().expect("watch lock poisoned");
        // Another lookup may have opened it between the two locks.
        if let Some(w) = self.touch(&watches, target) {
            return w.clone();
        }
        let (tx, rx) = watch::channel(State::Pending);
        let request = api::DestinationRequest {
            target: target.to_string(),
            namespace: self.settings.namespace.clone(),
            proxy_id: self.settings.proxy_id.clone(),
            admin_address: self.settings.admin_address.clone(),
            proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let task = tokio::spawn(run_watch(
            self.control.destination(),
            request,
            tx,
            self.metrics.clone(),
        ));
        let entry = Arc::new(WatchEntry {
            rx,
            last_used: AtomicU64::new(self.now_ms()),
            task,
        });
        watches.insert(target.to_string(), entry.clone());
        self.metrics.watches.set(watches.len() as i64);
        entry
    }

    /// The destination `host:port` names when its watch has found one.
    fn found(&self, host: &str, port: u16) -> Option<Arc<Destination>> {
        crate::discover::with_target(host, port, |target| {
            let watches = self.watches.read().expect("watch lock poisoned");
            let found = match &*self.touch(&watches, target)?.rx.borrow() {
                State::Found(d) => Some(d.clone()),
                _ => None,
            };
            found
        })
    }

    async fn lookup(&self, host: &str, port: u16) -> Resolution {
        let entry = self.entry(&crate::discover::target(host, port));
        let mut rx = entry.rx.clone();
        let state = match tokio::time::timeout(
            self.settings.first_update_timeout,
            rx.wait_for(|s| !matches!(s, State::Pending)),
        )
        .await
        {
            Ok(Ok(s)) => s.clone(),
            _ => State::Pending,
        };
        match state {
            State::Found(d) => Ok(d),
            State::NotFound if self.settings.is_mesh_name(host) => {
                self.metrics
                    .dns
                    .get_or_create(&ResultLabels { result: "refused" })
                    .inc();
                tracing::debug!(%host, "a service name the mesh does not know; not asking DNS");
                Err(Unresolved::Unknown)
            }
            State::NotFound => self.dns(host, port).await.ok_or(Unresolved::Unknown),
            State::Pending => {
                self.metrics.unavailable.inc();
                tracing::warn!(%host, wait = ?self.settings.first_update_timeout, "no answer from the control plane; refusing");
                Err(Unresolved::Pending)
            }
        }
    }

    async fn dns(&self, host: &str, port: u16) -> Option<Arc<Destination>> {
        let resolver = self.dns.as_ref()?;
        let result = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(vec![ip]),
            Err(_) => resolver
                .lookup_ip(host)
                .await
                .map(|l| l.iter().collect::<Vec<_>>()),
        };
        match result {
            Ok(mut ips) if !ips.is_empty() => {
                // One family: IPv4 when there is any. Until connect failures
                // are retried on another endpoint (resilience work), mixing
                // families would fail every other request to a server that
                // binds only one of them (e.g. `localhost`).
                if ips.iter().any(|ip| ip.is_ipv4()) {
                    ips.retain(|ip| ip.is_ipv4());
                }
                ips.sort();
                ips.dedup();
                self.metrics
                    .dns
                    .get_or_create(&ResultLabels { result: "resolved" })
                    .inc();
                let endpoints: Vec<Endpoint> = ips
                    .into_iter()
                    .map(|ip| Endpoint::unmeshed(SocketAddr::new(ip, port)))
                    .collect();
                let mut d = Destination::from_endpoints(EXTERNAL_SERVICE, endpoints.into());
                d.meshed = false;
                Some(Arc::new(d))
            }
            Ok(_) | Err(_) => {
                self.metrics
                    .dns
                    .get_or_create(&ResultLabels { result: "failed" })
                    .inc();
                tracing::debug!(%host, "DNS found nothing");
                None
            }
        }
    }
}

impl Discover for ControlDiscover {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Resolution> + Send + 'a>> {
        // Most lookups name a destination already watched and found:
        // answered here, without boxing the wait's (larger) future.
        if let Some(found) = self.found(host, port) {
            return Box::pin(std::future::ready(Ok(found)));
        }
        Box::pin(self.lookup(host, port))
    }

    fn dump(&self) -> serde_json::Value {
        let watches = self.watches.read().expect("watch lock poisoned");
        let out: BTreeMap<&String, serde_json::Value> = watches
            .iter()
            .map(|(target, w)| {
                let v = match &*w.rx.borrow() {
                    State::Pending => serde_json::json!("pending"),
                    State::NotFound => serde_json::json!("not found (DNS)"),
                    State::Found(d) => serde_json::to_value(&**d).unwrap_or_default(),
                };
                (target, v)
            })
            .collect();
        serde_json::json!({ "controlPlane": self.control.address(), "destinations": out })
    }
}

/// Counts a connected stream while alive.
struct ConnectedGuard(Gauge);

impl ConnectedGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The state of one stream, rebuilt from its updates.
#[derive(Default)]
struct StreamState {
    service: Option<api::ServiceRef>,
    endpoints: BTreeMap<String, api::Endpoint>,
    policy: api::ClientPolicy,
}

async fn run_watch(
    mut client: DestinationClient<Channel>,
    request: api::DestinationRequest,
    tx: watch::Sender<State>,
    metrics: ControlMetrics,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match client.watch(request.clone()).await {
            Ok(rsp) => {
                // Decremented on drop, also when the task is aborted.
                let _connected = ConnectedGuard::new(&metrics.connected);
                let mut stream = rsp.into_inner();
                let mut state = StreamState::default();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff.reset();
                            metrics.updates.inc();
                            if let Some(kind) = update.kind {
                                let prev = match &*tx.borrow() {
                                    State::Found(d) => Some(d.clone()),
                                    _ => None,
                                };
                                tx.send_replace(apply(&mut state, kind, prev.as_deref()));
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(target = %request.target, %status, "destination stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(target = %request.target, %status, "control plane unreachable");
            }
        }
        metrics.reconnects.inc();
        backoff.wait().await;
    }
}

/// Applies one update; `prev` is the destination it replaces, whose
/// endpoint statistics and bulkhead carry over.
fn apply(state: &mut StreamState, kind: Kind, prev: Option<&Destination>) -> State {
    match kind {
        Kind::NotFound(_) => {
            *state = StreamState::default();
            return State::NotFound;
        }
        Kind::Snapshot(s) => {
            state.service = s.service;
            state.endpoints = s.endpoints.into_iter().map(|e| (e.address.clone(), e)).collect();
            state.policy = s.policy.unwrap_or_default();
        }
        Kind::Added(a) => {
            for e in a.endpoints {
                state.endpoints.insert(e.address.clone(), e);
            }
        }
        Kind::Removed(r) => {
            for a in r.addresses {
                state.endpoints.remove(&a);
            }
        }
        Kind::Policy(p) => state.policy = p,
    }
    let mut dest = proto::destination(state.service.as_ref(), state.endpoints.values(), &state.policy);
    if let Some(prev) = prev {
        dest.carry_over(prev);
    }
    State::Found(Arc::new(dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Backend;

    fn settings(first_update_timeout: Duration) -> ControlSettings {
        ControlSettings {
            namespace: "demo".into(),
            proxy_id: "test".into(),
            admin_address: String::new(),
            idle_timeout: Duration::from_secs(60),
            first_update_timeout,
            cluster_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn service_names_belong_to_the_mesh() {
        let s = settings(Duration::from_secs(1));
        for name in [
            "web.demo.svc",
            "web.demo.svc.cluster.local",
            "web.demo.svc.cluster.local.",
        ] {
            assert!(s.is_mesh_name(name), "{name}");
        }
        for name in [
            "web",
            "web.demo",
            "example.com",
            "svc.example.com",
            "web.demo.svc.other.domain",
        ] {
            assert!(!s.is_mesh_name(name), "{name}");
        }
    }

    #[tokio::test]
    async fn an_unanswered_lookup_is_pending_not_dns() {
        // A control plane nobody listens for: every watch stays pending.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", gone.local_addr().unwrap());
        drop(gone);
        let metrics = ControlMetrics::default();
        let tls = crate::control::ControlTls {
            anchors: "/nonexistent/trust-anchors.pem".into(),
            identity: "spiffe://cluster.local/ns/weft-system/sa/weft-control".into(),
        };
        let token = std::env::temp_dir().join(format!("weft-unanswered-{}", std::process::id()));
        std::fs::write(&token, "t").unwrap();
        let identity = crate::identity::Identity::new(
            "spiffe://cluster.local/ns/demo/sa/web".into(),
            crate::identity::TokenFile::open(&token).unwrap(),
        );
        let _ = std::fs::remove_file(&token);
        let d = ControlDiscover::new(
            ControlClient::new(&url, tls, identity).unwrap(),
            settings(Duration::from_millis(100)),
            metrics.clone(),
        );
        let started = Instant::now();
        assert_eq!(d.resolve("localhost", 80).await.unwrap_err(), Unresolved::Pending);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(metrics.unavailable.get(), 1);
        assert_eq!(
            metrics
                .dns
                .get_or_create(&ResultLabels { result: "resolved" })
                .get(),
            0,
            "DNS was not asked"
        );
    }

    fn ep(addr: &str) -> api::Endpoint {
        api::Endpoint {
            address: addr.into(),
            weight: 1,
            proxy_address: "127.0.0.1:4143".into(),
            ..Default::default()
        }
    }

    fn addrs(s: &State) -> Vec<String> {
        match s {
            State::Found(d) => d.endpoints.iter().map(|e| e.addr.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn updates_rebuild_the_destination() {
        let mut st = StreamState::default();
        let mut prev: Option<Arc<Destination>> = None;
        let mut step = |st: &mut StreamState, kind: Kind| {
            let s = apply(st, kind, prev.as_deref());
            if let State::Found(d) = &s {
                prev = Some(d.clone());
            }
            s
        };
        let s = step(
            &mut st,
            Kind::Snapshot(api::Snapshot {
                service: Some(api::ServiceRef {
                    name: "web".into(),
                    ..Default::default()
                }),
                endpoints: vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")],
                policy: None,
            }),
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.2:80"]);
        let State::Found(first) = &s else { panic!() };
        let stats = first.endpoints[1].stats.clone();
        let shared = first.shared.clone();
        let s = step(
            &mut st,
            Kind::Removed(api::EndpointsRemoved {
                addresses: vec!["10.0.0.1:80".into()],
            }),
        );
        assert_eq!(addrs(&s), ["10.0.0.2:80"]);
        let s = step(
            &mut st,
            Kind::Added(api::EndpointsAdded {
                endpoints: vec![ep("10.0.0.3:80")],
            }),
        );
        assert_eq!(addrs(&s), ["10.0.0.2:80", "10.0.0.3:80"]);
        let State::Found(d) = &s else { panic!() };
        assert!(
            Arc::ptr_eq(&d.endpoints[0].stats, &stats),
            "endpoint state survives updates"
        );
        assert!(Arc::ptr_eq(&d.shared, &shared), "so does the bulkhead");
        let s = step(
            &mut st,
            Kind::Policy(api::ClientPolicy {
                routes: vec![api::Route {
                    name: "r".into(),
                    backends: vec![api::Backend {
                        authority: "v2:80".into(),
                        weight: 5,
                        ..Default::default()
                    }],
                    timeout_ms: 1500,
                    ..Default::default()
                }],
                concurrency: Some(api::Concurrency {
                    max_in_flight: 5,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        let State::Found(d) = s else { panic!() };
        assert_eq!(&*d.service, "web");
        assert_eq!(d.routes[0].backends, [Backend::new("v2:80", 5)]);
        assert_eq!(d.routes[0].timeout, Some(Duration::from_millis(1500)));
        assert_eq!(d.endpoints[0].proxy, Some("127.0.0.1:4143".parse().unwrap()));
        assert!(!Arc::ptr_eq(&d.shared, &shared), "new limits, new bulkhead");
        assert_eq!(d.policy.concurrency.max_in_flight, 5);
        assert!(matches!(
            step(&mut st, Kind::NotFound(api::NotFound {})),
            State::NotFound
        ));
    }
}
