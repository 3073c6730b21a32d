//! The gRPC services: Destination and Inbound watches published from the
//! index, and Identity, which signs workload certificates.
//!
//! Who may ask what: `Identity.Certify` is served to any TLS client (the
//! token is the proof); every other call needs the caller's mesh
//! certificate ([`crate::tls::caller`]) and sees only what its identity
//! may: destinations resolve in the caller's own namespace, inbound
//! policy only for workloads of its own service account, and `/proxies`
//! entries are keyed by the caller's identity. Every string field is
//! bounded ([`bounded`]); tonic caps whole messages (`MAX_MESSAGE`).
//!
//! Each watch stream has a task that reads the index's `watch` channel and
//! writes into a small bounded queue. A stream that is not read fills its
//! queue and the task waits; meanwhile the channel keeps only the latest
//! state, so memory stays bounded, and when the reader catches up it gets
//! one update covering everything it missed (a fresh snapshot when it
//! skipped versions).
//!
//! No stream answers from an unsynced index: each task first waits for
//! [`Index::synced`], so a watch opened while a source is still listing
//! gets nothing (the proxy keeps the destination pending and the inbound
//! port denied) instead of a NotFound or allow-all built from a partial
//! mesh.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_api::v1 as api;
use weft_api::v1::destination_update::Kind;

use crate::index::{DestinationState, DestinationView, Index, WorkloadRef};
use crate::metrics::{ApiLabels, ControlMetrics};
use crate::tls::{caller, Caller};

/// Updates queued per stream before the stream's task waits.
pub const STREAM_QUEUE: usize = 4;

/// The largest request message decoded (tonic answers RESOURCE_EXHAUSTED
/// beyond it). A CSR and a projected token fit many times over.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A DNS name's limit: proxy ids, names and targets stay within it.
const MAX_NAME: usize = 253;

/// INVALID_ARGUMENT unless `value` has at most `max` bytes, all printable
/// ASCII without spaces (what names, ids and addresses are made of).
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field}: expected at most {max} bytes, got {}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field}: expected printable ASCII without spaces, got {c:?}"
        )));
    }
    Ok(())
}

pub struct DestinationService {
    pub index: Arc<Index>,
    /// Callers' certificates must be of this trust domain.
    pub trust_domain: String,
    pub metrics: Arc<ControlMetrics>,
    pub proxies: Arc<Proxies>,
    /// Turns true at shutdown: every stream ends, so proxies reconnect to
    /// another replica and the server can finish.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// Resolves once `closing` turns true (or its sender is gone).
async fn closed(mut closing: tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Waits until `index` is synced; false when the stream ended first
/// (the client went away, or the server is closing).
async fn wait_synced<T>(
    index: &Index,
    tx: &mpsc::Sender<T>,
    closing: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = index.synced() => true,
        () = tx.closed() => false,
        () = closed(closing.clone()) => false,
    }
}

/// The proxies with an open Destination stream, and where their metrics
/// are, for `weft stat`. Keyed by the caller's verified identity and then
/// the id it reports, so one workload can never replace another's entry.
#[derive(Debug, Default)]
pub struct Proxies {
    by_id: std::sync::Mutex<std::collections::BTreeMap<ProxyKey, Registered>>,
    /// Where `connected_proxies` by version is kept current.
    metrics: Option<Arc<ControlMetrics>>,
}

#[derive(Debug)]
struct Registered {
    admin: String,
    version: String,
    streams: usize,
}

/// (SPIFFE ID, proxy id)
type ProxyKey = (String, String);

/// One connected proxy, as `/proxies` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectedProxy {
    pub id: String,
    /// The SPIFFE ID its certificate proves.
    pub identity: String,
    pub admin: String,
    /// The version it reports (empty from proxies older than the field).
    pub version: String,
    pub streams: usize,
}

impl Proxies {
    /// An empty list that keeps `metrics.connected_proxies` current.
    pub fn new(metrics: Arc<ControlMetrics>) -> Self {
        Self {
            by_id: Default::default(),
            metrics: Some(metrics),
        }
    }

    fn register(
        self: &Arc<Self>,
        identity: String,
        id: String,
        admin: String,
        version: String,
    ) -> ProxyGuard {
        let key = (identity, id);
        let mut by_id = self.by_id.lock().expect("proxies lock");
        let entry = by_id.entry(key.clone()).or_insert(Registered {
            admin: String::new(),
            version: String::new(),
            streams: 0,
        });
        entry.admin = admin;
        entry.version = version;
        entry.streams += 1;
        self.count_versions(&by_id);
        ProxyGuard {
            proxies: self.clone(),
            key,
        }
    }

    fn count_versions(&self, by_id: &std::collections::BTreeMap<ProxyKey, Registered>) {
        if let Some(metrics) = &self.metrics {
            metrics.connected_proxies(by_id.values().map(|r| r.version.as_str()));
        }
    }

    pub fn list(&self) -> Vec<ConnectedProxy> {
        self.by_id
            .lock()
            .expect("proxies lock")
            .iter()
            .map(|((identity, id), r)| ConnectedProxy {
                id: id.clone(),
                identity: identity.clone(),
                admin: r.admin.clone(),
                version: r.version.clone(),
                streams: r.streams,
            })
            .collect()
    }
}

struct ProxyGuard {
    proxies: Arc<Proxies>,
    key: ProxyKey,
}

impl Drop for ProxyGuard {
    fn drop(&mut self) {
        let mut by_id = self.proxies.by_id.lock().expect("proxies lock");
        if let Some(entry) = by_id.get_mut(&self.key) {
            entry.streams -= 1;
            if entry.streams == 0 {
                by_id.remove(&self.key);
                self.proxies.count_versions(&by_id);
            }
        }
    }
}

/// A reported version: at most 32 characters of `[0-9A-Za-z.+-]` (what
/// semantic versions use), since it becomes a label value.
fn version_like(v: &str) -> Result<(), Status> {
    let ok = v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "proxy_version: at most 32 characters of 0-9 A-Z a-z . + -",
        ))
    }
}

/// The admin address a proxy reported, with an unspecified IP replaced by
/// the address its stream comes from.
fn admin_address(reported: &str, remote: Option<std::net::SocketAddr>) -> Option<String> {
    let addr: std::net::SocketAddr = reported.parse().ok()?;
    if addr.ip().is_unspecified() {
        return Some(std::net::SocketAddr::new(remote?.ip(), addr.port()).to_string());
    }
    Some(addr.to_string())
}

/// Counts an open stream while alive.
struct WatcherGuard {
    metrics: Arc<ControlMetrics>,
    api: &'static str,
}

impl WatcherGuard {
    fn new(metrics: &Arc<ControlMetrics>, api: &'static str) -> Self {
        metrics.watchers.get_or_create(&ApiLabels { api }).inc();
        Self {
            metrics: metrics.clone(),
            api,
        }
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.metrics
            .watchers
            .get_or_create(&ApiLabels { api: self.api })
            .dec();
    }
}

fn update(kind: Kind) -> api::DestinationUpdate {
    api::DestinationUpdate { kind: Some(kind) }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Snapshot(_) => "snapshot",
        Kind::Added(_) => "added",
        Kind::Removed(_) => "removed",
        Kind::Policy(_) => "policy",
        Kind::NotFound(_) => "not_found",
    }
}

/// What to send a watcher that last saw `last` so that it sees `current`.
pub fn updates_between(
    last: Option<&DestinationState>,
    current: &DestinationState,
) -> Vec<api::DestinationUpdate> {
    let DestinationView::Found {
        service,
        endpoints,
        policy,
    } = &current.view
    else {
        return match last {
            Some(l) if l.view == DestinationView::NotFound => Vec::new(),
            _ => vec![update(Kind::NotFound(api::NotFound {}))],
        };
    };
    let snapshot = || {
        vec![update(Kind::Snapshot(api::Snapshot {
            service: Some(service.clone()),
            endpoints: endpoints.values().cloned().collect(),
            policy: Some(policy.clone()),
        }))]
    };
    let Some(last) = last else { return snapshot() };
    let DestinationView::Found {
        service: last_service,
        endpoints: last_eps,
        policy: last_policy,
    } = &last.view
    else {
        return snapshot();
    };
    if last.version + 1 != current.version || last_service != service {
        // Skipped versions (a slow reader) or a different service: start over.
        return snapshot();
    }
    let mut out = Vec::new();
    let removed: Vec<String> = last_eps
        .keys()
        .filter(|a| !endpoints.contains_key(*a))
        .cloned()
        .collect();
    if !removed.is_empty() {
        out.push(update(Kind::Removed(api::EndpointsRemoved {
            addresses: removed,
        })));
    }
    let added: Vec<api::Endpoint> = endpoints
        .iter()
        .filter(|(a, e)| last_eps.get(*a) != Some(e))
        .map(|(_, e)| e.clone())
        .collect();
    if !added.is_empty() {
        out.push(update(Kind::Added(api::EndpointsAdded { endpoints: added })));
    }
    if last_policy != policy {
        out.push(update(Kind::Policy(policy.clone())));
    }
    out
}

#[tonic::async_trait]
impl api::destination_server::Destination for DestinationService {
    type WatchStream = ReceiverStream<Result<api::DestinationUpdate, Status>>;

    async fn watch(
        &self,
        request: Request<api::DestinationRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let deny = |s| self.metrics.denied("destination", s);
        let Caller {
            id: identity,
            namespace,
            remote,
            ..
        } = caller(&request, &self.trust_domain).map_err(deny)?;
        let mut req = request.into_inner();
        bounded("target", &req.target, MAX_NAME + 6)
            .and(bounded("namespace", &req.namespace, 63))
            .and(bounded("proxy_id", &req.proxy_id, MAX_NAME))
            .and(bounded("admin_address", &req.admin_address, 64))
            .and(version_like(&req.proxy_version))
            .map_err(deny)?;
        if !req.namespace.is_empty() && req.namespace != namespace {
            return Err(deny(Status::permission_denied(format!(
                "namespace: {identity} resolves names in its own namespace `{namespace}`, not `{}`",
                req.namespace
            ))));
        }
        req.namespace = namespace;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let proxy = match admin_address(&req.admin_address, Some(remote)) {
            Some(admin) if !req.proxy_id.is_empty() => {
                Some(
                    self.proxies
                        .register(identity, req.proxy_id.clone(), admin, req.proxy_version.clone()),
                )
            }
            _ => None,
        };
        let guard = (WatcherGuard::new(&self.metrics, "destination"), proxy);
        let metrics = self.metrics.clone();
        let Some(target) = self.index.parse_target(&req.target, &req.namespace) else {
            // Not a name the mesh can own: say so, and hold the stream open
            // so the proxy does not reconnect in a loop.
            tokio::spawn(async move {
                let _guard = guard;
                metrics.update_sent("destination", "not_found");
                if tx
                    .send(Ok(update(Kind::NotFound(api::NotFound {}))))
                    .await
                    .is_ok()
                {
                    tx.closed().await;
                }
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        tracing::debug!(target = %req.target, proxy = %req.proxy_id, "destination watch");
        let index = self.index.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if !wait_synced(&index, &tx, &closing).await {
                return;
            }
            let mut states = index.watch_destination(target, &req.namespace);
            let mut last: Option<Arc<DestinationState>> = None;
            loop {
                let current = states.borrow_and_update().clone();
                for u in updates_between(last.as_deref(), &current) {
                    let kind = kind_name(u.kind.as_ref().expect("updates have a kind"));
                    if tx.send(Ok(u)).await.is_err() {
                        return;
                    }
                    metrics.update_sent("destination", kind);
                }
                last = Some(current);
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = closed(closing.clone()) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub struct InboundService {
    pub index: Arc<Index>,
    /// Callers' certificates must be of this trust domain.
    pub trust_domain: String,
    pub metrics: Arc<ControlMetrics>,
    pub closing: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl api::inbound_server::Inbound for InboundService {
    type WatchStream = ReceiverStream<Result<api::ServerPolicy, Status>>;

    async fn watch(
        &self,
        request: Request<api::InboundRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let deny = |s| self.metrics.denied("inbound", s);
        let who = caller(&request, &self.trust_domain).map_err(deny)?;
        let req = request.into_inner();
        bounded("workload", &req.workload, 63 + 1 + MAX_NAME)
            .and(bounded("pod", &req.pod, MAX_NAME))
            .map_err(deny)?;
        let port = u16::try_from(req.port).ok().filter(|p| *p != 0).ok_or_else(|| {
            deny(Status::invalid_argument(format!(
                "port: expected 1..=65535, got {}",
                req.port
            )))
        })?;
        let Some((namespace, name)) = req
            .workload
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        else {
            return Err(deny(Status::invalid_argument(
                "workload: expected `namespace/name`",
            )));
        };
        let not_yours = || {
            self.metrics.denied(
                "inbound",
                Status::permission_denied(format!(
                    "workload: {} may watch the inbound policy of its own workloads only, not `{}`",
                    who.id, req.workload
                )),
            )
        };
        if namespace != who.namespace {
            return Err(not_yours());
        }
        let workload = if req.pod.is_empty() {
            WorkloadRef::Named {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
        } else {
            WorkloadRef::Pod {
                namespace: namespace.to_string(),
                name: req.pod.clone(),
            }
        };
        // Which services (or pods) run as the caller's account is known
        // once the index is synced (or has the pod): checked then, in the
        // stream, and again with every policy (a pod may be replaced by
        // one of the same name).
        let account = who.service_account.clone();
        let refusal = not_yours();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let guard = WatcherGuard::new(&self.metrics, "inbound");
        let metrics = self.metrics.clone();
        let index = self.index.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if !wait_synced(&index, &tx, &closing).await {
                return;
            }
            let mut policies = index.watch_inbound(&workload, port);
            loop {
                // `None`: a pod not known yet; nothing to say until it is.
                let current = policies.borrow_and_update().clone();
                if let Some(policy) = current {
                    if index.serves_as(&workload, &account) == Some(false) {
                        let _ = tx.send(Err(refusal)).await;
                        return;
                    }
                    if tx.send(Ok((*policy).clone())).await.is_err() {
                        return;
                    }
                    metrics.update_sent("inbound", "policy");
                }
                tokio::select! {
                    changed = policies.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = closed(closing.clone()) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub struct GatewayService {
    pub index: Arc<Index>,
    /// Callers' certificates must be of this trust domain.
    pub trust_domain: String,
    pub metrics: Arc<ControlMetrics>,
    pub closing: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl api::gateway_server::Gateway for GatewayService {
    type WatchStream = ReceiverStream<Result<api::GatewayConfig, Status>>;

    /// A Gateway's listeners and routes, to a proxy of the Gateway's own
    /// namespace only (they name Secrets, JWKS files and backends).
    async fn watch(
        &self,
        request: Request<api::GatewayRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let deny = |s| self.metrics.denied("gateway", s);
        let who = caller(&request, &self.trust_domain).map_err(deny)?;
        let req = request.into_inner();
        bounded("namespace", &req.namespace, 63)
            .and(bounded("name", &req.name, MAX_NAME))
            .map_err(deny)?;
        if req.namespace.is_empty() || req.name.is_empty() {
            return Err(deny(Status::invalid_argument(
                "namespace, name: expected the Gateway's namespace and name",
            )));
        }
        if req.namespace != who.namespace {
            return Err(deny(Status::permission_denied(format!(
                "namespace: {} may watch the Gateways of its own namespace only, not `{}`",
                who.id, req.namespace
            ))));
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let guard = WatcherGuard::new(&self.metrics, "gateway");
        let metrics = self.metrics.clone();
        let index = self.index.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if !wait_synced(&index, &tx, &closing).await {
                return;
            }
            let mut configs = index.watch_gateway(&req.namespace, &req.name);
            loop {
                let current = configs.borrow_and_update().clone();
                if tx.send(Ok((*current).clone())).await.is_err() {
                    return;
                }
                metrics.update_sent("gateway", "config");
                tokio::select! {
                    changed = configs.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = closed(closing.clone()) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Identity: signs workload certificates with the control plane's CA.
pub struct IdentityService {
    pub ca: Arc<crate::identity::Ca>,
    pub metrics: Arc<ControlMetrics>,
    /// In a cluster: tokens are checked with the TokenReview API instead
    /// of the tokens file.
    pub token_review: Option<crate::kubernetes::TokenReviewer>,
}

#[tonic::async_trait]
impl api::identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<api::CertifyRequest>,
    ) -> Result<Response<api::CertifyResponse>, Status> {
        // A renewal over mutual TLS renews the caller's own identity only.
        let presented = request
            .extensions()
            .get::<crate::tls::Peer>()
            .and_then(|p| p.identity.clone());
        let req = request.into_inner();
        if let Some(presented) = presented.filter(|p| *p != req.identity) {
            return Err(self.metrics.denied(
                "identity",
                Status::permission_denied(format!(
                    "identity: a caller proving {presented} cannot ask for {}",
                    req.identity
                )),
            ));
        }
        bounded("identity", &req.identity, 512)
            .and(bounded("token", &req.token, 16 * 1024))
            .map_err(|s| self.metrics.denied("identity", s))?;
        let result = match &self.token_review {
            Some(reviewer) => match reviewer.review(&req.token).await {
                Ok((ns, sa)) => self.ca.certify_as(&req.identity, &req.csr, &ns, &sa),
                Err(refusal) => Err(refusal),
            },
            None => self.ca.certify(&req.identity, &req.csr, &req.token),
        };
        match result {
            Ok(rsp) => {
                self.metrics.certificate("issued");
                tracing::debug!(identity = %req.identity, "certificate issued");
                Ok(Response::new(rsp))
            }
            Err(refusal) => {
                self.metrics.certificate(refusal.reason());
                tracing::warn!(identity = %req.identity, reason = %refusal, "certificate refused");
                Err(refusal.to_status())
            }
        }
    }
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
