//! The edge gateway (`weft-proxy gateway`): listeners for outside
//! clients, configured by a Gateway API `Gateway` and the routes attached
//! to it (`Gateway.Watch`), forwarding into the mesh with the gateway's
//! own identity — the outbound stages, entered with [`Via::Gateway`].
//!
//! ```text
//! mod.rs    the configuration as served (Snapshot → Port → Listener),
//!           binding each listener port, TLS by SNI, one request's way in
//! certs.rs  TLS Secrets from the certificates directory, reloaded on change
//! edge.rs   a GatewayPolicy: JWT (jwt.rs) and rate limits, before routing
//! ```
//!
//! What the gateway never does: serve a request no attached route
//! matches (404 `no-route`), tunnel `CONNECT`, listen for the app (it has
//! no outbound or inbound listener), or fall back to plaintext on a TLS
//! listener without a certificate (the handshake fails).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use weft_api::v1 as api;

use crate::bounds::{Admission, Admitted};
use crate::detect::detect;
use crate::discover::Destination;
use crate::errors::ProxyError;
use crate::http::{incoming, AppProtocol, Body};
use crate::listener::Listener;
use crate::metrics::{unknown_service, Detected, Direction};
use crate::outbound::lookup::Via;
use crate::outbound::Outbound;
use crate::routes::Route;
use crate::server::{accept_loop, serve_http, Limits};
use crate::telemetry::{Observation, Target};

pub mod certs;
pub mod edge;
pub mod framing;
pub mod jwt;

use certs::{CertStore, SniResolver};
use edge::Edge;
use framing::{Framed, Verdicts};

/// `weft-proxy gateway`'s own settings (config key `gateway`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySettings {
    /// The Gateway served, in the proxy's namespace.
    pub name: String,
    /// Where TLS Secrets are: `<dir>/<namespace>/<name>/tls.{crt,key}`.
    pub certificates: Option<PathBuf>,
    /// Where the Gateway's listener ports are bound. Default `0.0.0.0`.
    pub listen_ip: IpAddr,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            certificates: None,
            listen_ip: IpAddr::from([0, 0, 0, 0]),
        }
    }
}

/// `weft-proxy gateway`: flags of the gateway mode.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The Gateway (gateway.networking.k8s.io) to serve, in this proxy's
    /// namespace.
    #[arg(long, env = "WEFT_GATEWAY_NAME")]
    pub name: Option<String>,
    /// Directory of TLS Secrets: `<dir>/<namespace>/<secret>/tls.crt` and
    /// `tls.key`.
    #[arg(long, env = "WEFT_GATEWAY_CERTIFICATES", value_name = "DIR")]
    pub certificates: Option<PathBuf>,
    /// Where the Gateway's listener ports are bound (default 0.0.0.0).
    #[arg(long, env = "WEFT_GATEWAY_LISTEN_IP", value_name = "IP")]
    pub listen_ip: Option<IpAddr>,
}

impl GatewaySettings {
    /// The config's `gateway` section with the flags on top.
    pub fn with_args(base: Option<GatewaySettings>, args: &GatewayArgs) -> Self {
        let mut s = base.unwrap_or_default();
        if let Some(n) = &args.name {
            s.name = n.clone();
        }
        if let Some(c) = &args.certificates {
            s.certificates = Some(c.clone());
        }
        if let Some(ip) = args.listen_ip {
            s.listen_ip = ip;
        }
        s
    }

    pub fn validate(&self, has_control_plane: bool, source: &str) -> Result<(), crate::config::ConfigError> {
        let err = |field: &str, problem: &str| {
            Err(crate::config::ConfigError::new(
                source,
                field,
                problem.to_string(),
            ))
        };
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !label(&self.name) {
            return err(
                "gateway.name",
                "expected the name of the Gateway to serve (--name or WEFT_GATEWAY_NAME), a DNS label",
            );
        }
        if !has_control_plane {
            return err(
                "controlPlane",
                "expected a control plane for gateway mode: the Gateway's listeners and routes come from it",
            );
        }
        Ok(())
    }
}

/// One Gateway listener, as requests see it.
#[derive(Debug)]
pub struct GatewayListener {
    /// The Gateway's name, for metrics.
    pub gateway: String,
    pub name: String,
    pub port: u16,
    /// Lower case; exact or `*.suffix`; `None`: any host.
    pub hostname: Option<String>,
    /// Its routes, as a destination the outbound stages route through.
    pub dest: Arc<Destination>,
    /// The listener's GatewayPolicy (a route's own replaces it).
    pub policy: Option<Arc<Edge>>,
    /// TLS Secrets (`namespace/name`); empty for `HTTP`.
    pub certificates: Vec<String>,
}

/// The listeners sharing one port.
#[derive(Debug, Default)]
pub struct Port {
    pub tls: bool,
    pub listeners: Vec<Arc<GatewayListener>>,
}

impl Port {
    /// The listener serving `host` (SNI or the request's host, without a
    /// port): its exact hostname, else the longest wildcard that covers
    /// it, else one without a hostname.
    pub fn listener_for(&self, host: Option<&str>) -> Option<&Arc<GatewayListener>> {
        let host = host.map(|h| h.trim_end_matches('.'));
        let serves = |l: &GatewayListener| match (&l.hostname, host) {
            (None, _) => Some(0),
            (Some(want), Some(h)) => {
                let route = Route {
                    hostname: Some(want.clone()),
                    ..Route::default()
                };
                route.serves(h).then_some(if want.starts_with('*') {
                    want.len()
                } else {
                    usize::MAX
                })
            }
            (Some(_), None) => None,
        };
        self.listeners
            .iter()
            .filter_map(|l| serves(l).map(|rank| (rank, l)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, l)| l)
    }
}

/// The Gateway as served.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// False until the first configuration, or without such a Gateway.
    pub found: bool,
    pub ports: BTreeMap<u16, Port>,
}

impl Snapshot {
    pub fn from_config(gateway: &str, namespace: &str, c: &api::GatewayConfig) -> Self {
        let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
        for l in &c.listeners {
            let Some(port) = u16::try_from(l.port).ok().filter(|p| *p != 0) else {
                continue;
            };
            let routes: Arc<[Route]> = l.routes.iter().map(Route::from).collect();
            let mut dest = Destination::from_endpoints(format!("{gateway}/{}", l.name), Arc::from([]));
            dest.namespace = namespace.into();
            dest.routes = routes;
            let listener = GatewayListener {
                gateway: gateway.to_string(),
                name: l.name.clone(),
                port,
                hostname: Some(l.hostname.to_ascii_lowercase()).filter(|h| !h.is_empty()),
                dest: Arc::new(dest),
                policy: l.policy.as_ref().map(Edge::shared),
                certificates: l.certificates.clone(),
            };
            let entry = ports.entry(port).or_default();
            entry.tls |= l.protocol == "HTTPS";
            entry.listeners.push(Arc::new(listener));
        }
        Self {
            found: c.found,
            ports,
        }
    }

    /// What `/config` shows of the Gateway served: per port, each
    /// listener with its hostname, certificates, policy and routes.
    pub fn dump(&self) -> serde_json::Value {
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|(port, p)| {
                let listeners: Vec<serde_json::Value> = p
                    .listeners
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "name": l.name,
                            "hostname": l.hostname,
                            "certificates": l.certificates,
                            "policy": l.policy.as_deref(),
                            "routes": &*l.dest.routes,
                        })
                    })
                    .collect();
                serde_json::json!({"port": port, "tls": p.tls, "listeners": listeners})
            })
            .collect();
        serde_json::json!({"found": self.found, "ports": ports})
    }

    /// Every TLS Secret a listener names.
    pub fn certificates(&self) -> impl Iterator<Item = &str> {
        self.ports
            .values()
            .flat_map(|p| &p.listeners)
            .flat_map(|l| l.certificates.iter().map(String::as_str))
    }
}

/// How a gateway request entered: its listener and client, which the
/// edge policy and routing read.
#[derive(Debug)]
pub struct Entry {
    pub listener: Arc<GatewayListener>,
    pub client: IpAddr,
}

/// The Gateway's configuration as served, live.
pub type Served = watch::Receiver<Arc<Snapshot>>;

/// How a request entered the gateway.
struct Entered {
    app: AppProtocol,
    port: u16,
    client: IpAddr,
    /// On a TLS port, the server name of the handshake (SNI), if any.
    sni: Option<Option<Arc<str>>>,
    /// Its HTTP/1.1 head had both Content-Length and Transfer-Encoding.
    ambiguous: bool,
}

/// The request ID header the gateway sets on every request.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// 128 random bits, as 32 hex digits.
fn request_id() -> http::HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    let mut id = http::HeaderValue::from_str(&id).expect("hex is a valid header value");
    // Unique per request: never indexed by HPACK (see ensure_trace_context).
    id.set_sensitive(true);
    id
}

/// A running gateway.
pub struct Gateway {
    outbound: Arc<Outbound>,
    settings: GatewaySettings,
    limits: Limits,
    config: watch::Receiver<Arc<Snapshot>>,
    certs: Arc<CertStore>,
}

/// Before the control plane answers, and while a port cannot be bound,
/// how long until binding is tried again.
const REBIND_EVERY: Duration = Duration::from_secs(5);

impl Gateway {
    /// Starts serving what `configs` says. Returns `ready`, which turns
    /// true once the first configuration is served (every port bound),
    /// and the configuration as served.
    pub fn spawn(
        outbound: Arc<Outbound>,
        settings: GatewaySettings,
        namespace: String,
        limits: Limits,
        mut configs: watch::Receiver<Option<Arc<api::GatewayConfig>>>,
    ) -> (watch::Receiver<bool>, Served) {
        let (snapshots, config) = watch::channel(Arc::new(Snapshot::default()));
        let name = settings.name.clone();
        tokio::spawn(async move {
            loop {
                let current = configs.borrow_and_update().clone();
                if let Some(c) = current {
                    if !c.found {
                        tracing::warn!(gateway = %name, "no such Gateway of class weft; serving nothing");
                    }
                    snapshots.send_replace(Arc::new(Snapshot::from_config(&name, &namespace, &c)));
                }
                if configs.changed().await.is_err() {
                    return;
                }
            }
        });
        let certs = CertStore::new(settings.certificates.clone());
        tokio::spawn(certs.clone().run(config.clone()));
        let gateway = Arc::new(Self {
            outbound,
            settings,
            limits,
            config,
            certs,
        });
        let served = gateway.config.clone();
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(gateway.bind_ports(ready_tx));
        (ready, served)
    }

    /// Keeps one accept loop per listener port of the current
    /// configuration.
    async fn bind_ports(self: Arc<Self>, ready: watch::Sender<bool>) {
        let mut config = self.config.clone();
        let mut bound: HashMap<u16, JoinHandle<()>> = HashMap::new();
        loop {
            let snapshot = config.borrow_and_update().clone();
            bound.retain(|port, task| {
                let keep = snapshot.ports.contains_key(port);
                if !keep {
                    tracing::info!(port, "gateway listener removed");
                    task.abort();
                }
                keep
            });
            let mut failed = false;
            for &port in snapshot.ports.keys() {
                if bound.contains_key(&port) {
                    continue;
                }
                let addr = SocketAddr::new(self.settings.listen_ip, port);
                match Listener::bind(addr).await {
                    Ok(listener) => {
                        tracing::info!(gateway = %self.settings.name, listen = %addr, "gateway listener bound");
                        bound.insert(port, tokio::spawn(self.clone().serve_port(listener, port)));
                    }
                    Err(e) => {
                        tracing::error!(listen = %addr, error = %e, "cannot bind a gateway listener; retrying");
                        failed = true;
                    }
                }
            }
            if snapshot.found && !failed {
                ready.send_replace(true);
            }
            tokio::select! {
                changed = config.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(REBIND_EVERY), if failed => {}
            }
        }
    }

    async fn serve_port(self: Arc<Self>, listener: Listener, port: u16) {
        let drain = self.outbound.drain.clone();
        let admission = Admission::new(self.limits.max_connections);
        let limits = self.limits.clone();
        accept_loop(listener, &drain, &admission, &limits, move |stream, peer| {
            self.clone().connection(stream, peer, port)
        })
        .await;
    }

    async fn connection(self: Arc<Self>, stream: Admitted<TcpStream>, peer: SocketAddr, port: u16) {
        let _ = stream.get_ref().set_nodelay(true);
        let mut guard = self.outbound.telemetry.connection(Direction::Gateway, peer);
        let stream = guard.meter(stream);
        let tls = self.config.borrow().ports.get(&port).is_some_and(|p| p.tls);
        if !tls {
            match detect(stream, self.outbound.detect_timeout).await {
                Ok((protocol, io)) => match protocol.http() {
                    Some(app) => {
                        guard.detected(app.into());
                        self.serve(io, app, port, peer, None).await;
                    }
                    None => {
                        guard.detected(Detected::Opaque);
                        tracing::debug!(%peer, port, "not HTTP on a gateway listener; closing");
                    }
                },
                Err(e) => tracing::debug!(%peer, error = %e, "gateway detection failed"),
            }
            return;
        }
        let acceptor = TlsAcceptor::from(self.tls_config(port));
        let accepted = tokio::time::timeout(
            self.outbound.detect_timeout.max(Duration::from_secs(10)),
            Box::pin(acceptor.accept(stream)),
        )
        .await;
        let io = match accepted {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return tracing::debug!(%peer, port, error = %e, "gateway TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, port, "gateway TLS handshake timed out"),
        };
        let app = if io.get_ref().1.alpn_protocol() == Some(b"h2") {
            AppProtocol::Http2
        } else {
            AppProtocol::Http1
        };
        guard.detected(app.into());
        let sni: Option<Arc<str>> = io.get_ref().1.server_name().map(Arc::from);
        // Boxed: a TLS connection's state (rustls, and hyper over it) is
        // several KiB, and unboxed it would size every connection's task,
        // plain ones included.
        Box::pin(self.serve(io, app, port, peer, Some(sni))).await;
    }

    fn tls_config(&self, port: u16) -> Arc<rustls::ServerConfig> {
        let resolver = SniResolver {
            port,
            store: self.certs.clone(),
            config: self.config.clone(),
        };
        let mut c =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(resolver));
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    }

    /// Serves HTTP on an accepted connection. `tls`: on a TLS port, the
    /// server name the client sent (SNI), if any.
    async fn serve<I>(
        self: Arc<Self>,
        io: I,
        app: AppProtocol,
        port: u16,
        peer: SocketAddr,
        tls: Option<Option<Arc<str>>>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let verdicts = Verdicts::default();
        let framing = verdicts.clone();
        let handler = move |req| {
            // HTTP/2 has no Content-Length/Transfer-Encoding ambiguity
            // (the h2 crate refuses Transfer-Encoding).
            let ambiguous = app == AppProtocol::Http1 && framing.next_is_ambiguous();
            let entered = Entered {
                app,
                port,
                client: peer.ip(),
                sni: tls.clone(),
                ambiguous,
            };
            this.clone().request(req, entered)
        };
        let (limits, drain) = (&self.limits, &self.outbound.drain);
        match app {
            AppProtocol::Http1 => {
                let io = Framed::new(io, verdicts);
                serve_http(io, app, limits, drain, std::future::pending(), handler).await;
            }
            AppProtocol::Http2 => serve_http(io, app, limits, drain, std::future::pending(), handler).await,
        }
    }

    /// One request from outside: to the listener for its host, then
    /// through the outbound stages; nothing else is reachable.
    async fn request(self: Arc<Self>, mut req: Request<Incoming>, entered: Entered) -> Response<Body> {
        // A request ID of the gateway's own, replacing any the client sent
        // (outside clients do not pick the IDs the mesh's logs join on),
        // and handed back on the response for reports.
        let id = request_id();
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        let mut rsp = self.route(req, entered).await;
        rsp.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        rsp
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>, entered: Entered) -> Response<Body> {
        let Entered {
            app,
            port,
            client,
            sni,
            ambiguous,
        } = entered;
        let authority = crate::http::authority(&req);
        let host = authority.as_ref().map(|a| a.host().to_string());
        let (listener, by_sni) = {
            let config = self.config.borrow();
            let port = config.ports.get(&port);
            let listener = port.and_then(|p| p.listener_for(host.as_deref()).cloned());
            let by_sni = sni
                .as_ref()
                .map(|name| port.and_then(|p| p.listener_for(name.as_deref()).cloned()));
            (listener, by_sni)
        };
        // The host must be one the handshake's listener serves: no fronting
        // one listener's name with another's certificate.
        let misdirected = match (&by_sni, &listener) {
            (Some(by_sni), Some(l)) => !by_sni.as_ref().is_some_and(|s| Arc::ptr_eq(s, l)),
            _ => false,
        };
        let refused = match &listener {
            _ if ambiguous => Some(ProxyError::AmbiguousFraming),
            None => Some(ProxyError::NoRoute(host.unwrap_or_default())),
            Some(_) if misdirected => Some(ProxyError::Misdirected(
                host.unwrap_or_default(),
                sni.flatten().map_or_else(|| "none".into(), |s| s.to_string()),
            )),
            // A listener no route attaches to serves nothing (its routes
            // are empty, which for a mesh destination would mean "call
            // it").
            Some(l) if req.method() == Method::CONNECT || l.dest.routes.is_empty() => {
                Some(ProxyError::NoRoute(host.unwrap_or_default()))
            }
            Some(_) => None,
        };
        match (refused, listener) {
            (None, Some(listener)) => {
                let entry = Arc::new(Entry { listener, client });
                self.outbound.clone().request(req, app, Via::Gateway(entry)).await
            }
            (e, listener) => {
                let e = e.unwrap_or_else(|| ProxyError::NoRoute(String::new()));
                self.refuse(req, listener.as_deref(), &e)
            }
        }
    }

    /// The gateway's own answer before routing, observed as any request
    /// (metrics, access log).
    fn refuse(
        &self,
        req: Request<Incoming>,
        listener: Option<&GatewayListener>,
        e: &ProxyError,
    ) -> Response<Body> {
        let mut req = req.map(incoming);
        let mut obs = Observation::start(&self.outbound.telemetry, Direction::Gateway, &mut req);
        obs.at_gateway(&self.settings.name, listener.map_or("", |l| l.name.as_str()));
        tracing::debug!(error = %e, "gateway request refused");
        let target = Target {
            service: unknown_service(),
            ..Target::default()
        };
        obs.respond(
            target,
            e.to_response(crate::grpc::is_grpc(req.headers())),
            Some(e.reason()),
        )
    }
}
