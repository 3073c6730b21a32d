//! The one in-memory index every source feeds and every gRPC service
//! publishes from.
//!
//! Sources replace their whole document set with [`Index::apply`]; the index
//! rebuilds what it derives (services, policies, routes) and republishes
//! every watched destination whose view changed. Watches are
//! `tokio::sync::watch` channels: each holds only the latest view, so a slow
//! reader costs one value, never a queue.
//!
//! The index is *synced* once every source named in
//! [`IndexConfig::sources`] has applied its first complete view. Until
//! then it holds a partial mesh (no policies yet: inbound ports would
//! default to allow-all, destinations to NotFound), so readiness and the
//! gRPC watches wait for [`Index::synced`] rather than answer from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use weft_api::v1 as api;

use crate::model::{
    AppProtocol, AuthorizationPolicySpec, Document, HttpRouteSpec, LoadBalancer, MeshServiceSpec, Metadata,
    MtlsMode, ServicePort, Spec, TrafficPolicySpec, WorkloadSpec,
};

/// What a proxy can watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// An endpoint (pod) address.
    Address(SocketAddr),
}

/// The current state of one destination, with a version that grows by one
/// on every change (so a watcher can tell it skipped some).
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationState {
    pub version: u64,
    pub view: DestinationView,
}

// Views are built on config changes, not per request: size is no concern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DestinationView {
    NotFound,
    Found {
        service: api::ServiceRef,
        /// By address.
        endpoints: BTreeMap<String, api::Endpoint>,
        policy: api::ClientPolicy,
    },
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    meta: Metadata,
    spec: MeshServiceSpec,
}

/// Settings of the index.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// DNS suffix of services, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The sources that must each [`Index::apply`] once before the index
    /// is synced (e.g. `files`, `kubernetes`); empty: synced at once.
    pub sources: Vec<String>,
    /// Mesh-wide default of TrafficPolicy `mtls`: clients refuse unmeshed
    /// endpoints unless a policy says `optional`.
    pub require_mtls: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            sources: Vec::new(),
            require_mtls: false,
        }
    }
}

pub struct Index {
    config: IndexConfig,
    inner: Mutex<Inner>,
    /// True once every configured source has applied once; never false
    /// again (a source keeps its last view while it reconnects).
    synced: watch::Sender<bool>,
}

/// An HTTPRoute as attached to one parent service.
#[derive(Debug, Clone)]
struct RouteEntry {
    /// `HTTPRoute` or `GRPCRoute` (held as the HTTPRoute it routes as).
    kind: &'static str,
    /// The route's own namespace (where its backends without a namespace
    /// live).
    namespace: String,
    /// The route's `namespace/name`, which names its rules.
    full_name: String,
    /// The parent port the route is bound to; `None`: every port.
    parent_port: Option<u16>,
    /// A Gateway parent's `sectionName`: the one listener it attaches to.
    section: Option<String>,
    /// `metadata.creationTimestamp`: the older of two routes whose
    /// matches tie wins.
    created: Option<String>,
    spec: HttpRouteSpec,
}

/// An AuthorizationPolicy attached to a service.
#[derive(Debug, Clone)]
struct AuthzEntry {
    /// The policy's `namespace/name`, published as a server policy source.
    full_name: String,
    spec: AuthorizationPolicySpec,
}

#[derive(Default)]
struct Inner {
    sources: BTreeMap<String, Vec<Document>>,
    /// Configured sources that have not applied yet.
    unsynced: BTreeSet<String>,
    services: BTreeMap<(String, String), ServiceEntry>,
    traffic: BTreeMap<(String, String), TrafficPolicySpec>,
    /// By parent service.
    routes: BTreeMap<(String, String), Vec<RouteEntry>>,
    /// Gateways of Weft's class, by (namespace, name).
    gateways: BTreeMap<(String, String), crate::model::GatewaySpec>,
    /// By parent Gateway.
    gateway_routes: BTreeMap<(String, String), Vec<RouteEntry>>,
    /// GatewayPolicies, with their namespace and `namespace/name`.
    edge_policies: Vec<(String, String, crate::model::GatewayPolicySpec)>,
    gateway_watches: HashMap<(String, String), watch::Sender<Arc<api::GatewayConfig>>>,
    /// By target service.
    authz: BTreeMap<(String, String), Vec<AuthzEntry>>,
    /// Pods, by (namespace, name).
    workloads: BTreeMap<(String, String), WorkloadSpec>,
    /// ReferenceGrants, by their namespace (what they grant access to).
    grants: BTreeMap<String, Vec<crate::model::ReferenceGrantSpec>>,
    /// By target and the namespace of the clients watching it: consumer
    /// routes make a destination's view depend on who asks.
    destinations: HashMap<(Target, String), watch::Sender<Arc<DestinationState>>>,
    inbound: HashMap<(WorkloadRef, u16), watch::Sender<InboundState>>,
}

/// Whose inbound policy a proxy watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkloadRef {
    /// A MeshService, or the workload its endpoints name (file mode).
    Named { namespace: String, name: String },
    /// A pod (Kubernetes): every Service selecting it.
    Pod { namespace: String, name: String },
}

/// The server policy of one workload port; `None` while the workload is a
/// pod the index does not know.
pub type InboundState = Option<Arc<api::ServerPolicy>>;

/// A route, under each of its parent Services and Gateways.
fn add_route(inner: &mut Inner, kind: &'static str, doc: &Document, full_name: &str, spec: HttpRouteSpec) {
    for parent in &spec.parent_refs {
        let ns = parent
            .namespace
            .clone()
            .unwrap_or_else(|| doc.meta.namespace.clone());
        let routes = if parent.is_gateway() {
            &mut inner.gateway_routes
        } else {
            &mut inner.routes
        };
        routes
            .entry((ns, parent.name.clone()))
            .or_default()
            .push(RouteEntry {
                kind,
                namespace: doc.meta.namespace.clone(),
                full_name: full_name.to_string(),
                parent_port: parent.port,
                section: parent.section_name.clone(),
                created: doc.meta.creation_timestamp.clone(),
                spec: spec.clone(),
            });
    }
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub services: usize,
    pub endpoints: usize,
    pub policies: usize,
    pub routes: usize,
    pub watched_destinations: usize,
}

impl Index {
    pub fn new(config: IndexConfig) -> Arc<Self> {
        let unsynced: BTreeSet<String> = config.sources.iter().cloned().collect();
        let (synced, _) = watch::channel(unsynced.is_empty());
        Arc::new(Self {
            config,
            inner: Mutex::new(Inner {
                unsynced,
                ..Inner::default()
            }),
            synced,
        })
    }

    /// Whether every configured source has applied its first view.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once the index is synced (at once if it is).
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// The configured sources that have not applied yet, for `/ready`.
    pub fn unsynced_sources(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("index lock poisoned");
        inner.unsynced.iter().cloned().collect()
    }

    /// Replaces every document from `source` (its whole current view) and
    /// republishes what changed. The first apply of each configured source
    /// counts towards [`Index::synced`].
    pub fn apply(&self, source: &str, docs: Vec<Document>) {
        let mut inner = self.inner.lock().expect("index lock poisoned");
        inner.sources.insert(source.to_string(), docs);
        inner.unsynced.remove(source);
        inner.rebuild();
        let keys: Vec<(Target, String)> = inner.destinations.keys().cloned().collect();
        for key in keys {
            let view = inner.destination_view(&key.0, &key.1, &self.config);
            let sender = &inner.destinations[&key];
            sender.send_if_modified(|state| {
                if state.view == view {
                    return false;
                }
                *state = Arc::new(DestinationState {
                    version: state.version + 1,
                    view,
                });
                true
            });
        }
        let keys: Vec<(WorkloadRef, u16)> = inner.inbound.keys().cloned().collect();
        for key in keys {
            let policy = inner.server_policy(&key.0, key.1);
            inner.inbound[&key].send_if_modified(|current| {
                if current.as_deref() == policy.as_ref() {
                    return false;
                }
                *current = policy.map(Arc::new);
                true
            });
        }
        let keys: Vec<(String, String)> = inner.gateway_watches.keys().cloned().collect();
        for key in keys {
            let view = inner.gateway_view(&key.0, &key.1, &self.config);
            inner.gateway_watches[&key].send_if_modified(|current| {
                if **current == view {
                    return false;
                }
                *current = Arc::new(view);
                true
            });
        }
        inner.gateway_watches.retain(|_, s| s.receiver_count() > 0);
        inner.destinations.retain(|_, s| s.receiver_count() > 0);
        inner.inbound.retain(|_, s| s.receiver_count() > 0);
        if inner.unsynced.is_empty() {
            // Under the lock: whoever sees `synced` and then subscribes
            // gets a view built from every source.
            self.synced
                .send_if_modified(|synced| !std::mem::replace(synced, true));
        }
    }

    /// Parses a target as a proxy sends it: `ip:port`, or a name as an app
    /// wrote it (`name`, `name.ns`, `name.ns.svc[.<cluster domain>]`, with
    /// an optional `:port`, default 80). Short names resolve in
    /// `client_namespace`. `None`: not a name the mesh can own.
    pub fn parse_target(&self, target: &str, client_namespace: &str) -> Option<Target> {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            return Some(Target::Address(addr));
        }
        let (host, port) = match target.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()?),
            None => (target, 80),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let ns = if client_namespace.is_empty() {
            "default"
        } else {
            client_namespace
        };
        let (namespace, name) = match labels.as_slice() {
            [name] => (ns.to_string(), name.to_string()),
            [name, namespace] => (namespace.to_string(), name.to_string()),
            [name, namespace, "svc"] => (namespace.to_string(), name.to_string()),
            [name, namespace, "svc", rest @ ..] if rest.join(".") == self.config.cluster_domain => {
                (namespace.to_string(), name.to_string())
            }
            _ => return None,
        };
        if name.is_empty() || namespace.is_empty() || port == 0 {
            return None;
        }
        Some(Target::Service {
            namespace,
            name,
            port,
        })
    }

    /// Subscribes to a destination as clients in `client_namespace` see
    /// it (their consumer routes apply); the receiver holds its current
    /// state.
    pub fn watch_destination(
        &self,
        target: Target,
        client_namespace: &str,
    ) -> watch::Receiver<Arc<DestinationState>> {
        let mut inner = self.inner.lock().expect("index lock poisoned");
        let key = (target, client_namespace.to_string());
        if let Some(sender) = inner.destinations.get(&key) {
            return sender.subscribe();
        }
        let view = inner.destination_view(&key.0, &key.1, &self.config);
        let (tx, rx) = watch::channel(Arc::new(DestinationState { version: 1, view }));
        inner.destinations.insert(key, tx);
        rx
    }

    /// Subscribes to the server policy of `workload` on `port`. The value
    /// is `None` while `workload` is a pod the index does not know.
    pub fn watch_inbound(&self, workload: &WorkloadRef, port: u16) -> watch::Receiver<InboundState> {
        let mut inner = self.inner.lock().expect("index lock poisoned");
        let key = (workload.clone(), port);
        if let Some(sender) = inner.inbound.get(&key) {
            return sender.subscribe();
        }
        let (tx, rx) = watch::channel(inner.server_policy(workload, port).map(Arc::new));
        inner.inbound.insert(key, tx);
        rx
    }

    /// Whether a proxy running as `service_account` (in the workload's
    /// namespace) may watch the inbound policy of `workload`: a pod that
    /// runs as that account; or a name that is the account's own, or a
    /// service whose pods (or one of whose endpoints) run as it. `None`: a
    /// pod the index does not know (yet).
    pub fn serves_as(&self, workload: &WorkloadRef, service_account: &str) -> Option<bool> {
        let inner = self.inner.lock().expect("index lock poisoned");
        let (namespace, name) = match workload {
            WorkloadRef::Pod { namespace, name } => {
                let pod = inner.workloads.get(&(namespace.clone(), name.clone()))?;
                return Some(pod.service_account == service_account);
            }
            WorkloadRef::Named { namespace, name } => (namespace, name),
        };
        if name == service_account {
            return Some(true);
        }
        let runs_as = |s: &ServiceEntry, e: &crate::model::MeshEndpoint| {
            e.service_account.as_deref().or(s.spec.service_account.as_deref()) == Some(service_account)
        };
        Some(inner.services.iter().any(|((ns, n), s)| {
            ns == namespace
                && (s.spec.service_account.as_deref() == Some(service_account) && n == name
                    || s.spec.endpoints.iter().any(|e| {
                        (n == name || e.workload.as_deref() == Some(name.as_str())) && runs_as(s, e)
                    }))
        }))
    }

    pub fn stats(&self) -> IndexStats {
        let inner = self.inner.lock().expect("index lock poisoned");
        IndexStats {
            services: inner.services.len(),
            endpoints: inner.services.values().map(|s| s.spec.endpoints.len()).sum(),
            policies: inner.traffic.len() + inner.authz.values().map(Vec::len).sum::<usize>(),
            routes: inner.routes.values().map(Vec::len).sum(),
            watched_destinations: inner.destinations.len(),
        }
    }
}

pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

fn default_ports(spec: &MeshServiceSpec) -> Vec<ServicePort> {
    if spec.ports.is_empty() {
        vec![ServicePort {
            port: 80,
            name: None,
            protocol: AppProtocol::Http,
            target_port: None,
        }]
    } else {
        spec.ports.clone()
    }
}

impl Inner {
    fn rebuild(&mut self) {
        self.services.clear();
        self.traffic.clear();
        self.routes.clear();
        self.authz.clear();
        self.workloads.clear();
        self.grants.clear();
        self.gateways.clear();
        self.gateway_routes.clear();
        self.edge_policies.clear();
        let sources = std::mem::take(&mut self.sources);
        for doc in sources.values().flatten() {
            let key = (doc.meta.namespace.clone(), doc.meta.name.clone());
            let full_name = format!("{}/{}", doc.meta.namespace, doc.meta.name);
            match &doc.spec {
                Spec::MeshService(spec) => {
                    self.services.entry(key).or_insert_with(|| ServiceEntry {
                        meta: doc.meta.clone(),
                        spec: spec.clone(),
                    });
                }
                Spec::TrafficPolicy(spec) => {
                    if let Some(t) = &spec.target_ref {
                        self.traffic
                            .entry((doc.meta.namespace.clone(), t.name.clone()))
                            .or_insert_with(|| spec.clone());
                    }
                }
                Spec::AuthorizationPolicy(spec) => {
                    if let Some(t) = &spec.target_ref {
                        self.authz
                            .entry((doc.meta.namespace.clone(), t.name.clone()))
                            .or_default()
                            .push(AuthzEntry {
                                full_name,
                                spec: spec.clone(),
                            });
                    }
                }
                Spec::DenyAll(deny) => {
                    // Selects its target like a policy with no allow
                    // rules: nothing is admitted that another (valid)
                    // policy on the port does not allow, and without one
                    // every caller is denied.
                    self.authz
                        .entry((doc.meta.namespace.clone(), deny.target.name.clone()))
                        .or_default()
                        .push(AuthzEntry {
                            full_name: format!(
                                "{full_name} (invalid `{}`: denies every caller until fixed)",
                                deny.field
                            ),
                            spec: AuthorizationPolicySpec {
                                target_ref: Some(deny.target.clone()),
                                mtls: MtlsMode::Strict,
                                rules: Vec::new(),
                                rate_limit: None,
                            },
                        });
                }
                Spec::ReferenceGrant(spec) => {
                    self.grants
                        .entry(doc.meta.namespace.clone())
                        .or_default()
                        .push(spec.clone());
                }
                Spec::Workload(spec) => {
                    self.workloads.entry(key).or_insert_with(|| spec.clone());
                }
                Spec::HttpRoute(spec) => add_route(self, "HTTPRoute", doc, &full_name, spec.clone()),
                // A GRPCRoute routes as the HTTPRoute it amounts to.
                Spec::GrpcRoute(spec) => add_route(self, "GRPCRoute", doc, &full_name, spec.as_http()),
                Spec::Gateway(spec) => {
                    if spec.gateway_class_name == crate::model::GATEWAY_CLASS {
                        self.gateways.entry(key).or_insert_with(|| spec.clone());
                    }
                }
                Spec::GatewayPolicy(spec) => {
                    self.edge_policies
                        .push((doc.meta.namespace.clone(), full_name, spec.clone()))
                }
            }
        }
        self.sources = sources;
    }

    fn endpoint(
        &self,
        svc: &ServiceEntry,
        e: &crate::model::MeshEndpoint,
        config: &IndexConfig,
    ) -> api::Endpoint {
        let sa = e
            .service_account
            .as_deref()
            .or(svc.spec.service_account.as_deref())
            .unwrap_or(&svc.meta.name);
        api::Endpoint {
            address: e.address.to_string(),
            weight: e.weight,
            identity: if e.proxy.is_some() {
                spiffe_id(&config.trust_domain, &svc.meta.namespace, sa)
            } else {
                String::new()
            },
            proxy_address: e.proxy.map(|p| p.to_string()).unwrap_or_default(),
            labels: e.labels.clone().into_iter().collect(),
        }
    }

    fn destination_view(
        &self,
        target: &Target,
        client_namespace: &str,
        config: &IndexConfig,
    ) -> DestinationView {
        match target {
            Target::Service {
                namespace,
                name,
                port,
            } => {
                let Some(svc) = self.services.get(&(namespace.clone(), name.clone())) else {
                    return DestinationView::NotFound;
                };
                let Some(sp) = default_ports(&svc.spec).into_iter().find(|p| p.port == *port) else {
                    return DestinationView::NotFound;
                };
                let endpoints = svc
                    .spec
                    .endpoints
                    .iter()
                    .map(|e| {
                        let mut endpoint = self.endpoint(svc, e, config);
                        if let Some(target) = sp.target_port {
                            endpoint.address = SocketAddr::new(e.address.ip(), target).to_string();
                        }
                        (endpoint.address.clone(), endpoint)
                    })
                    .collect();
                DestinationView::Found {
                    service: api::ServiceRef {
                        name: name.clone(),
                        namespace: namespace.clone(),
                        port: u32::from(*port),
                        protocol: sp.protocol.as_str().into(),
                    },
                    endpoints,
                    policy: self.client_policy(namespace, name, *port, client_namespace, config),
                }
            }
            Target::Address(addr) => {
                // A service's virtual IP: the service itself.
                let by_cluster_ip = self.services.values().find(|svc| {
                    svc.spec.cluster_ip == Some(addr.ip())
                        && default_ports(&svc.spec).iter().any(|p| p.port == addr.port())
                });
                if let Some(svc) = by_cluster_ip {
                    let service = Target::Service {
                        namespace: svc.meta.namespace.clone(),
                        name: svc.meta.name.clone(),
                        port: addr.port(),
                    };
                    return self.destination_view(&service, client_namespace, config);
                }
                // The endpoint serving exactly there; else a pod (an
                // endpoint's IP) called on one of its service's ports, as
                // a transparently intercepted app dials it.
                let exact = self.services.values().find_map(|svc| {
                    let e = svc.spec.endpoints.iter().find(|e| e.address == *addr)?;
                    Some((svc, e))
                });
                let by_pod_ip = || {
                    self.services.values().find_map(|svc| {
                        if !default_ports(&svc.spec)
                            .iter()
                            .any(|p| p.port == addr.port() || p.target_port == Some(addr.port()))
                        {
                            return None;
                        }
                        let e = svc.spec.endpoints.iter().find(|e| e.address.ip() == addr.ip())?;
                        Some((svc, e))
                    })
                };
                let Some((svc, e)) = exact.or_else(by_pod_ip) else {
                    return DestinationView::NotFound;
                };
                let ports = default_ports(&svc.spec);
                let sp = ports
                    .iter()
                    .find(|p| p.port == addr.port())
                    .or(ports.first())
                    .expect("at least one port");
                let mut endpoint = self.endpoint(svc, e, config);
                endpoint.address = addr.to_string();
                DestinationView::Found {
                    service: api::ServiceRef {
                        name: svc.meta.name.clone(),
                        namespace: svc.meta.namespace.clone(),
                        port: u32::from(sp.port),
                        protocol: sp.protocol.as_str().into(),
                    },
                    endpoints: BTreeMap::from([(addr.to_string(), endpoint)]),
                    policy: api::ClientPolicy::default(),
                }
            }
        }
    }

    /// The HTTPRoutes on service `namespace/name` port `port` that apply to
    /// clients in `client_namespace` (GEP-1426): the consumer routes of
    /// the client's own namespace when it has any, else the producer
    /// routes (those in the service's namespace). A route in any other
    /// namespace applies to no one else.
    fn routes_for(&self, namespace: &str, name: &str, port: u16, client_namespace: &str) -> Vec<&RouteEntry> {
        let on_port: Vec<&RouteEntry> = self
            .routes
            .get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .filter(|r| r.parent_port.is_none_or(|p| p == port))
            .collect();
        let consumer: Vec<&RouteEntry> = on_port
            .iter()
            .copied()
            .filter(|r| r.namespace == client_namespace && client_namespace != namespace)
            .collect();
        if !consumer.is_empty() {
            return consumer;
        }
        on_port.into_iter().filter(|r| r.namespace == namespace).collect()
    }

    /// Whether a route in `route_namespace` may send to Service
    /// `namespace/name`: its own namespace, or a ReferenceGrant there.
    fn backend_permitted(&self, kind: &str, route_namespace: &str, namespace: &str, name: &str) -> bool {
        namespace == route_namespace
            || self
                .grants
                .get(namespace)
                .into_iter()
                .flatten()
                .any(|g| g.lets_route_use_service(kind, route_namespace, name))
    }

    /// Whether a Gateway in `gateway_namespace` may use Secret
    /// `namespace/name` for TLS: its own namespace, or a ReferenceGrant
    /// there.
    fn secret_permitted(&self, gateway_namespace: &str, namespace: &str, name: &str) -> bool {
        namespace == gateway_namespace
            || self
                .grants
                .get(namespace)
                .into_iter()
                .flatten()
                .any(|g| g.lets_gateway_use_secret(gateway_namespace, name))
    }

    fn client_policy(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        client_namespace: &str,
        config: &IndexConfig,
    ) -> api::ClientPolicy {
        let mut policy = api::ClientPolicy::default();
        let key = (namespace.to_string(), name.to_string());
        policy.routes = self.flat_routes(namespace, name, port, client_namespace, config);
        policy.require_mtls = config.require_mtls;
        if let Some(tp) = self.traffic.get(&key) {
            if tp
                .target_ref
                .as_ref()
                .and_then(|t| t.port)
                .is_none_or(|p| p == port)
            {
                apply_traffic_policy(&mut policy, tp);
            }
        }
        policy
    }
}

fn apply_traffic_policy(policy: &mut api::ClientPolicy, tp: &TrafficPolicySpec) {
    if let Some(mtls) = tp.mtls {
        policy.require_mtls = mtls == crate::model::ClientMtls::Required;
    }
    policy.load_balancer = match tp.load_balancer {
        None => api::LoadBalancer::Unspecified,
        Some(LoadBalancer::PeakEwma) => api::LoadBalancer::PeakEwma,
        Some(LoadBalancer::RoundRobin) => api::LoadBalancer::RoundRobin,
        Some(LoadBalancer::LeastRequest) => api::LoadBalancer::LeastRequest,
    } as i32;
    policy.retry = tp.retries.as_ref().map(|r| api::Retry {
        attempts: r.attempts,
        on: r.on.clone(),
        grpc_codes: r.grpc_codes.clone(),
        budget_ratio: r.budget.as_ref().map_or(0.0, |b| b.ratio),
        min_retries_per_second: r.budget.as_ref().map_or(0, |b| b.min_per_second),
        backoff_base_ms: ms(r.backoff.as_ref().and_then(|b| b.base)),
        backoff_max_ms: ms(r.backoff.as_ref().and_then(|b| b.max)),
        non_idempotent: r.non_idempotent,
    });
    policy.timeouts = tp.timeouts.as_ref().map(|t| api::Timeouts {
        request_ms: ms(t.request),
        per_try_ms: ms(t.per_try),
        connect_ms: ms(t.connect),
        idle_ms: ms(t.idle),
    });
    policy.circuit_breaker = tp.circuit_breaker.as_ref().map(|c| api::CircuitBreaker {
        consecutive_failures: c.consecutive_failures,
        base_ejection_ms: ms(c.base_ejection),
        max_ejection_ms: ms(c.max_ejection),
        max_ejected_ratio: c.max_ejected_percent.unwrap_or(0.0) / 100.0,
    });
    policy.concurrency = tp.concurrency.as_ref().map(|c| api::Concurrency {
        max_in_flight: c.max_in_flight,
        max_pending: c.max_pending,
        pending_timeout_ms: ms(c.pending_timeout),
    });
    policy.fault = tp.fault.as_ref().map(|f| api::Fault {
        delay_ms: ms(f.delay.as_ref().map(|d| d.fixed)),
        delay_percent: f.delay.as_ref().map_or(0.0, |d| d.percent),
        abort_status: f.abort.as_ref().map_or(0, |a| u32::from(a.status)),
        abort_percent: f.abort.as_ref().map_or(0.0, |a| a.percent),
    });
}

mod gateways;
mod inbound;
mod routes;
pub use gateways::ListenerStatus;
pub use routes::{ParentVerdict, Verdict, CONTROLLER_NAME};
#[cfg(test)]
mod tests;
