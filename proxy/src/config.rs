//! The proxy's one typed configuration: read from a YAML file, overridden by
//! flags and environment variables, validated once at start.
//!
//! A bad value is a [`ConfigError`] naming the file, the field and what was
//! expected; `main` exits with code 64 on it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

pub use crate::upstreams::UpstreamListener;

/// Ports whose clients wait for the server to speak first (SMTP, MySQL,
/// PostgreSQL, Redis, memcached, …). Traffic to them is never held for
/// protocol detection.
pub const SERVER_FIRST_PORTS: &[u16] = &[
    25,    // SMTP
    587,   // SMTP submission
    3306,  // MySQL
    4222,  // NATS
    5432,  // PostgreSQL
    6379,  // Redis
    9300,  // Elasticsearch transport
    11211, // memcached
    27017, // MongoDB
];

/// How redirected connections (`weft-proxy init`) are treated: which
/// original destination ports skip protocol detection.
#[derive(Debug, Clone)]
pub struct Interception {
    /// The server-speaks-first list and the config's `opaquePorts`.
    opaque_ports: std::sync::Arc<[u16]>,
}

impl Default for Interception {
    fn default() -> Self {
        Self {
            opaque_ports: SERVER_FIRST_PORTS.into(),
        }
    }
}

impl Interception {
    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }
}

/// Everything `weft-proxy` needs to run. Every field has a default, so an
/// empty file (or none) is a valid config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Where apps send their outbound calls (as an HTTP proxy, or naming the
    /// service in `Host` / `:authority`). Default `127.0.0.1:4140`.
    pub outbound_listen: SocketAddr,
    /// Where peers (and, in permissive mode, unmeshed clients) reach this
    /// workload. Default `0.0.0.0:4143`.
    pub inbound_listen: SocketAddr,
    /// `/live`, `/ready`, `/metrics`, `/config`, `POST /shutdown`.
    /// Default `0.0.0.0:4191`.
    pub admin_listen: SocketAddr,
    /// The address the local app listens on. Default `127.0.0.1`.
    pub app_ip: IpAddr,
    /// Transparent mode: forward inbound traffic to the pod IP the caller
    /// reached instead of `appIp` (the app sees a pod address, and a
    /// listener bound to loopback only is not reachable from other pods).
    /// Default `false`; the injector sets it.
    pub inbound_to_pod_ip: bool,
    /// Transparent mode: inbound traffic for a port that is not in
    /// `appPorts` goes to the app too, when the app listens on that port
    /// on the pod IP or every address (never loopback only), and never to
    /// this proxy's own ports; its policy is watched on first use. Needs
    /// `inboundToPodIp`. Default `false`; the injector sets it, so pods
    /// that declare no `containerPort` are reachable.
    pub inbound_any_port: bool,
    /// The app's ports: their policies are known before the proxy is
    /// ready; the first is where traffic goes when the caller names no
    /// port. Unless `inboundAnyPort`, inbound traffic may only reach these,
    /// and empty means this workload serves nothing (inbound connections
    /// are refused).
    pub app_ports: Vec<u16>,
    /// Static endpoints (service name → addresses), for running without a
    /// control plane. See [`crate::discover::StaticEndpoints`].
    pub endpoints_file: Option<PathBuf>,
    /// The control plane's gRPC address, e.g.
    /// `https://weft-control.weft-system.svc:8086` (always TLS). Discovery,
    /// policy and this proxy's certificate come from it. Needs
    /// `trustAnchors` and `identityTokenFile`. Exclusive with
    /// `endpointsFile`.
    pub control_plane: Option<String>,
    /// PEM bundle the control plane's certificate must chain to; re-read
    /// at every connection to it (a rotated ConfigMap is picked up).
    pub trust_anchors: Option<PathBuf>,
    /// The SPIFFE ID the control plane's certificate must carry. Default
    /// `spiffe://<trustDomain>/ns/weft-system/sa/weft-control`.
    pub control_plane_identity: Option<String>,
    /// This workload's namespace: short names resolve in it. Default
    /// `default`.
    pub namespace: String,
    /// The service this proxy fronts (its `MeshService` name, or the
    /// `workload` its endpoints name): the `service` label of inbound
    /// metrics, and whose server policy applies.
    pub workload: Option<String>,
    /// This proxy's workload in metrics (`source_workload` of its outbound
    /// requests, `destination_workload` of its inbound ones). In
    /// Kubernetes the injector sets the pod's owner: its Deployment,
    /// StatefulSet, DaemonSet or Job, so a canary and its primary differ.
    /// Default: `workload`, else the service account.
    pub workload_name: Option<String>,
    /// In Kubernetes, the pod this proxy runs in (the injector sets it):
    /// the inbound policy is then that of every Service selecting the pod,
    /// and waits until the control plane knows the pod.
    pub pod: Option<String>,
    /// The service account this workload runs as: with `namespace` and
    /// `trustDomain`, its SPIFFE ID. Default: `workload`, else `default`.
    pub service_account: Option<String>,
    /// SPIFFE trust domain. Default `cluster.local`.
    pub trust_domain: String,
    /// The cluster's DNS suffix. Service names under it
    /// (`name.ns.svc.<clusterDomain>`, and `name.ns.svc`) belong to the
    /// mesh: when the control plane does not know one, the request fails
    /// instead of going to DNS. Default `cluster.local`.
    pub cluster_domain: String,
    /// How long a request waits for the control plane's first answer
    /// about its destination before it is refused with `503
    /// discovery-unavailable` (never sent by DNS). Default `2s`.
    #[serde(with = "duration")]
    pub discovery_timeout: Duration,
    /// File holding the token that proves this workload's identity to the
    /// control plane (`Identity.Certify`). With it (and `controlPlane`),
    /// connections to meshed endpoints are mTLS, and `/ready` waits for
    /// the first certificate.
    pub identity_token_file: Option<PathBuf>,
    /// How this proxy names itself to the control plane. Default: the
    /// host name and process id.
    pub proxy_id: Option<String>,
    /// A destination unused this long stops being watched. Default `60s`.
    #[serde(with = "duration")]
    pub destination_idle_timeout: Duration,
    /// How long protocol detection waits for the first bytes of a connection
    /// before treating it as opaque TCP. Default `1s`.
    #[serde(with = "duration")]
    pub detect_timeout: Duration,
    /// Ports whose traffic is opaque TCP, in addition to
    /// [`SERVER_FIRST_PORTS`].
    pub opaque_ports: Vec<u16>,
    /// Timeout for connecting to an endpoint. Default `3s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// How long in-flight requests and streams may take to finish after a
    /// shutdown signal. Default `30s`.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Largest request head accepted (HTTP/1 head, HTTP/2 header list); a
    /// larger HTTP/1 head is answered 431. Default 65536.
    pub max_header_bytes: usize,
    /// Connections each listener (inbound, outbound) holds at once; more
    /// are closed as they arrive, and counted. Default 10000.
    pub max_connections: usize,
    /// An HTTP/1 request head must be complete this long after its first
    /// byte, or the connection is answered 408 and closed (slowloris).
    /// Default `10s`.
    #[serde(with = "duration")]
    pub request_head_timeout: Duration,
    /// An HTTP connection (either listener) with no request in progress
    /// for this long is closed; HTTP/2 with GOAWAY. Default `5m`.
    #[serde(with = "duration")]
    pub http_idle_timeout: Duration,
    /// A TCP stream (opaque, CONNECT, WebSocket) that moves no byte either
    /// way for this long is closed. `0s`: never. Default `1h`.
    #[serde(with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// Ports whose TCP streams are long-lived and may be quiet for longer
    /// (a database's pooled connections, a broker's subscriptions): no
    /// TCP idle timeout.
    pub long_lived_ports: Vec<u16>,
    /// The app's own metrics endpoint (port on `appIp`), merged into the
    /// proxy's `/metrics` (the injector sets it when the pod's
    /// `prometheus.io/*` annotations named one). Merged output is the
    /// Prometheus text format.
    pub app_metrics_port: Option<u16>,
    /// The path of the app's metrics. Default `/metrics`.
    pub app_metrics_path: String,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Write one JSON line per request and per TCP connection to stdout.
    /// Default false.
    pub access_log: bool,
    /// Give requests without a W3C `traceparent` a new one (`true`), or
    /// only propagate existing ones. Default true.
    pub create_trace_context: bool,
    /// Request metric series with no traffic for this long are removed.
    /// Default `10m`.
    #[serde(with = "duration")]
    pub metrics_idle_timeout: Duration,
    /// Runtime worker threads. A sidecar shares its pod's CPU with the app,
    /// so this stays small. Default 2.
    pub worker_threads: usize,
    /// Local listeners each bound to one destination. Default none.
    pub upstreams: Vec<UpstreamListener>,
    /// Run as an edge gateway (`weft-proxy gateway`): serve this Gateway's
    /// listeners instead of an app's. Default none.
    pub gateway: Option<crate::gateway::GatewaySettings>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            outbound_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4140)),
            inbound_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4143)),
            admin_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4191)),
            app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            inbound_to_pod_ip: false,
            inbound_any_port: false,
            app_ports: Vec::new(),
            endpoints_file: None,
            control_plane: None,
            trust_anchors: None,
            control_plane_identity: None,
            namespace: "default".into(),
            workload: None,
            workload_name: None,
            pod: None,
            service_account: None,
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            discovery_timeout: Duration::from_secs(2),
            identity_token_file: None,
            proxy_id: None,
            destination_idle_timeout: Duration::from_secs(60),
            detect_timeout: Duration::from_secs(1),
            opaque_ports: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            shutdown_grace: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            request_head_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(300),
            tcp_idle_timeout: Duration::from_secs(3600),
            long_lived_ports: Vec::new(),
            app_metrics_port: None,
            app_metrics_path: "/metrics".into(),
            log_format: LogFormat::Text,
            access_log: false,
            create_trace_context: true,
            metrics_idle_timeout: Duration::from_secs(600),
            worker_threads: 2,
            upstreams: Vec::new(),
            gateway: None,
        }
    }
}

/// Flags (and their environment variables) that override the file.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// YAML config file.
    #[arg(long, short = 'c', env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "WEFT_OUTBOUND_LISTEN", value_name = "ADDR")]
    pub outbound_listen: Option<SocketAddr>,
    #[arg(long, env = "WEFT_INBOUND_LISTEN", value_name = "ADDR")]
    pub inbound_listen: Option<SocketAddr>,
    #[arg(long, env = "WEFT_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Forward inbound traffic to the pod IP the caller reached (transparent
    /// mode).
    #[arg(long, env = "WEFT_INBOUND_TO_POD_IP")]
    pub inbound_to_pod_ip: Option<bool>,
    /// Forward inbound traffic for any port the app listens on, not only
    /// the app ports (needs `inboundToPodIp`).
    #[arg(long, env = "WEFT_INBOUND_ANY_PORT")]
    pub inbound_any_port: Option<bool>,
    /// The app's ports (repeat, or comma-separate in the env var).
    #[arg(long = "app-port", env = "WEFT_APP_PORTS", value_delimiter = ',')]
    pub app_ports: Vec<u16>,
    #[arg(long, env = "WEFT_ENDPOINTS_FILE", value_name = "FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// The control plane's gRPC address, e.g. `https://127.0.0.1:8086`.
    #[arg(long, env = "WEFT_CONTROL_PLANE", value_name = "URL")]
    pub control_plane: Option<String>,
    /// PEM bundle the control plane's certificate must chain to.
    #[arg(long, env = "WEFT_TRUST_ANCHORS", value_name = "FILE")]
    pub trust_anchors: Option<PathBuf>,
    /// The SPIFFE ID the control plane must prove.
    #[arg(long, env = "WEFT_CONTROL_PLANE_IDENTITY", value_name = "SPIFFE_ID")]
    pub control_plane_identity: Option<String>,
    #[arg(long, env = "WEFT_NAMESPACE")]
    pub namespace: Option<String>,
    /// The service this proxy fronts (its MeshService name).
    #[arg(long, env = "WEFT_WORKLOAD")]
    pub workload: Option<String>,
    /// This proxy's workload in metrics (Kubernetes: the pod's owner).
    #[arg(long, env = "WEFT_WORKLOAD_NAME")]
    pub workload_name: Option<String>,
    /// The app's metrics port, merged into the proxy's `/metrics`.
    #[arg(long, env = "WEFT_APP_METRICS_PORT")]
    pub app_metrics_port: Option<u16>,
    /// The app's metrics path. Default `/metrics`.
    #[arg(long, env = "WEFT_APP_METRICS_PATH")]
    pub app_metrics_path: Option<String>,
    /// The pod this proxy runs in (Kubernetes).
    #[arg(long, env = "WEFT_POD_NAME")]
    pub pod: Option<String>,
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// The cluster's DNS suffix (`cluster.local`).
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Ports whose traffic is opaque TCP (repeat, or comma-separate in the
    /// env var).
    #[arg(long = "opaque-port", env = "WEFT_OPAQUE_PORTS", value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,
    /// A local listener bound to one destination, `LISTEN=SERVICE:PORT`
    /// (repeat, or comma-separate in the env var); replaces the file's
    /// `upstreams`.
    #[arg(
        long = "upstream",
        env = "WEFT_UPSTREAMS",
        value_delimiter = ',',
        value_name = "LISTEN=SERVICE:PORT"
    )]
    pub upstreams: Vec<UpstreamListener>,
    /// File holding this workload's identity token.
    #[arg(long, env = "WEFT_IDENTITY_TOKEN_FILE", value_name = "FILE")]
    pub identity_token_file: Option<PathBuf>,
    #[arg(long, env = "WEFT_PROXY_ID")]
    pub proxy_id: Option<String>,
    /// e.g. `30s`, `500ms`.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    #[arg(long, env = "WEFT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "WEFT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Write JSON access-log lines to stdout.
    #[arg(long, env = "WEFT_ACCESS_LOG")]
    pub access_log: Option<bool>,
}

/// A config value that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: field `{field}`: {problem}")]
pub struct ConfigError {
    /// The file (or `flags`) the value came from.
    pub source_name: String,
    /// Dotted path to the field, e.g. `appPorts[1]`.
    pub field: String,
    /// What was wrong and what was expected.
    pub problem: String,
}

impl ConfigError {
    pub fn new(source: impl Into<String>, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            source_name: source.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// The interception settings: [`SERVER_FIRST_PORTS`] and `opaquePorts`.
    pub fn interception(&self) -> Interception {
        let mut ports: Vec<u16> = SERVER_FIRST_PORTS.to_vec();
        ports.extend(&self.opaque_ports);
        ports.sort_unstable();
        ports.dedup();
        Interception {
            opaque_ports: ports.into(),
        }
    }

    /// Reads the file named by the overrides (if any), applies the overrides
    /// and validates the result.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(overrides);
        let source = overrides
            .config
            .as_ref()
            .map(|p| format!("{} (or the flag/env var overriding it)", p.display()))
            .unwrap_or_else(|| "flags".to_string());
        config.validate(&source)?;
        Ok(config)
    }

    /// Parses a YAML file without validating it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&name, "(file)", format!("cannot read: {e}")))?;
        parse_yaml(&text, &name)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(a) = o.outbound_listen {
            self.outbound_listen = a;
        }
        if let Some(a) = o.inbound_listen {
            self.inbound_listen = a;
        }
        if let Some(a) = o.admin_listen {
            self.admin_listen = a;
        }
        if !o.app_ports.is_empty() {
            self.app_ports = o.app_ports.clone();
        }
        if let Some(b) = o.inbound_any_port {
            self.inbound_any_port = b;
        }
        if let Some(b) = o.inbound_to_pod_ip {
            self.inbound_to_pod_ip = b;
        }
        if let Some(f) = &o.endpoints_file {
            self.endpoints_file = Some(f.clone());
        }
        if let Some(c) = &o.control_plane {
            self.control_plane = Some(c.clone());
        }
        if let Some(f) = &o.trust_anchors {
            self.trust_anchors = Some(f.clone());
        }
        if let Some(id) = &o.control_plane_identity {
            self.control_plane_identity = Some(id.clone());
        }
        if let Some(n) = &o.namespace {
            self.namespace = n.clone();
        }
        if let Some(w) = &o.workload {
            self.workload = Some(w.clone());
        }
        if let Some(w) = &o.workload_name {
            self.workload_name = Some(w.clone());
        }
        if let Some(p) = o.app_metrics_port {
            self.app_metrics_port = Some(p);
        }
        if let Some(p) = &o.app_metrics_path {
            self.app_metrics_path = p.clone();
        }
        if let Some(p) = &o.pod {
            self.pod = Some(p.clone());
        }
        if let Some(sa) = &o.service_account {
            self.service_account = Some(sa.clone());
        }
        if let Some(td) = &o.trust_domain {
            self.trust_domain = td.clone();
        }
        if let Some(cd) = &o.cluster_domain {
            self.cluster_domain = cd.clone();
        }
        if !o.opaque_ports.is_empty() {
            self.opaque_ports = o.opaque_ports.clone();
        }
        if !o.upstreams.is_empty() {
            self.upstreams = o.upstreams.clone();
        }
        if let Some(f) = &o.identity_token_file {
            self.identity_token_file = Some(f.clone());
        }
        if let Some(id) = &o.proxy_id {
            self.proxy_id = Some(id.clone());
        }
        if let Some(d) = o.shutdown_grace {
            self.shutdown_grace = d;
        }
        if let Some(f) = o.log_format {
            self.log_format = f;
        }
        if let Some(n) = o.worker_threads {
            self.worker_threads = n;
        }
        if let Some(a) = o.access_log {
            self.access_log = a;
        }
    }

    /// Checks every value once; `source` names where the config came from.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let err = |field: &str, problem: String| Err(ConfigError::new(source, field, problem));
        crate::upstreams::validate(
            &self.upstreams,
            &[self.outbound_listen, self.inbound_listen, self.admin_listen],
            source,
        )?;
        if let Some(g) = &self.gateway {
            g.validate(self.control_plane.is_some(), source)?;
        }
        let mut seen = BTreeSet::new();
        for (i, port) in self.app_ports.iter().enumerate() {
            if *port == 0 {
                return err(
                    &format!("appPorts[{i}]"),
                    "expected a port in 1..=65535, got 0".into(),
                );
            }
            if !seen.insert(port) {
                return err(&format!("appPorts[{i}]"), format!("port {port} is listed twice"));
            }
        }
        if self.inbound_any_port && !self.inbound_to_pod_ip {
            return err(
                "inboundAnyPort",
                "needs inboundToPodIp: true (transparent mode); forwarding any port to appIp would open every loopback listener on the machine".into(),
            );
        }
        for (i, port) in self.opaque_ports.iter().enumerate() {
            if *port == 0 {
                return err(
                    &format!("opaquePorts[{i}]"),
                    "expected a port in 1..=65535, got 0".into(),
                );
            }
        }
        if self.detect_timeout.is_zero() || self.detect_timeout > Duration::from_secs(60) {
            return err(
                "detectTimeout",
                format!(
                    "expected a duration between 1ms and 60s, got {:?}",
                    self.detect_timeout
                ),
            );
        }
        if self.connect_timeout.is_zero() {
            return err("connectTimeout", "expected a duration above zero".into());
        }
        if self.discovery_timeout.is_zero() || self.discovery_timeout > Duration::from_secs(60) {
            return err(
                "discoveryTimeout",
                format!(
                    "expected a duration between 1ms and 60s, got {:?}",
                    self.discovery_timeout
                ),
            );
        }
        let domain_ok = !self.cluster_domain.is_empty()
            && self.cluster_domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_ok {
            return err(
                "clusterDomain",
                format!(
                    "expected a DNS suffix like cluster.local, got {:?}",
                    self.cluster_domain
                ),
            );
        }
        if self.shutdown_grace > Duration::from_secs(3600) {
            return err("shutdownGrace", "expected at most 1h".into());
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return err(
                "maxHeaderBytes",
                format!("expected 1024..=1048576 bytes, got {}", self.max_header_bytes),
            );
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return err(
                "maxConnections",
                format!("expected 1..=1000000, got {}", self.max_connections),
            );
        }
        if self.request_head_timeout < Duration::from_millis(100)
            || self.request_head_timeout > Duration::from_secs(300)
        {
            return err(
                "requestHeadTimeout",
                format!(
                    "expected a duration between 100ms and 5m, got {:?}",
                    self.request_head_timeout
                ),
            );
        }
        if self.http_idle_timeout < Duration::from_millis(100) {
            return err(
                "httpIdleTimeout",
                format!("expected at least 100ms, got {:?}", self.http_idle_timeout),
            );
        }
        for (i, port) in self.long_lived_ports.iter().enumerate() {
            if *port == 0 {
                return err(
                    &format!("longLivedPorts[{i}]"),
                    "expected a port in 1..=65535, got 0".into(),
                );
            }
        }
        if self.app_metrics_port == Some(0) {
            return err("appMetricsPort", "expected a port in 1..=65535, got 0".into());
        }
        if !self.app_metrics_path.starts_with('/') {
            return err(
                "appMetricsPath",
                format!("expected a path starting with /, got {:?}", self.app_metrics_path),
            );
        }
        if !(1..=64).contains(&self.worker_threads) {
            return err(
                "workerThreads",
                format!("expected 1..=64, got {}", self.worker_threads),
            );
        }
        let listeners = [
            ("outboundListen", self.outbound_listen),
            ("inboundListen", self.inbound_listen),
            ("adminListen", self.admin_listen),
        ];
        for (i, (name, a)) in listeners.iter().enumerate() {
            for (other, b) in &listeners[..i] {
                if a.port() != 0
                    && a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
                {
                    return err(
                        name,
                        format!("expected an address distinct from {other} ({b}), got {a}"),
                    );
                }
            }
        }
        if let Some(cp) = &self.control_plane {
            if self.endpoints_file.is_some() {
                return err(
                    "controlPlane",
                    "expected either controlPlane or endpointsFile, not both".into(),
                );
            }
            if !cp.starts_with("https://") || cp.parse::<http::Uri>().is_err() {
                return err(
                    "controlPlane",
                    format!(
                        "expected an https:// URL such as `https://weft-control.weft-system.svc:8086` (the control channel is always TLS), got `{cp}`"
                    ),
                );
            }
            match &self.trust_anchors {
                None => {
                    return err(
                        "trustAnchors",
                        "expected the PEM file of the control plane's trust anchors (trustAnchors, --trust-anchors or WEFT_TRUST_ANCHORS): the proxy verifies whom it takes orders from".into(),
                    )
                }
                Some(f) if !f.is_file() => {
                    return err(
                        "trustAnchors",
                        format!("expected a readable PEM file, {} is not one", f.display()),
                    )
                }
                Some(_) => {}
            }
            if self.identity_token_file.is_none() {
                return err(
                    "identityTokenFile",
                    "expected this workload's token file with controlPlane: every control-plane call but the first certificate request is made with the proxy's own certificate".into(),
                );
            }
            if let Some(id) = &self.control_plane_identity {
                if crate::identity::server_name_for(id).is_none() {
                    return err(
                        "controlPlaneIdentity",
                        format!("expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>, got `{id}`"),
                    );
                }
            }
        }
        if self.metrics_idle_timeout < Duration::from_secs(1) {
            return err("metricsIdleTimeout", "expected at least 1s".into());
        }
        if let Some(f) = &self.identity_token_file {
            if self.control_plane.is_none() {
                return err(
                    "identityTokenFile",
                    "expected controlPlane too: certificates come from it".into(),
                );
            }
            if !f.is_file() {
                return err(
                    "identityTokenFile",
                    format!("expected a readable file, {} is not one", f.display()),
                );
            }
        }
        if self.namespace.is_empty() {
            return err("namespace", "expected a namespace name".into());
        }
        if self.destination_idle_timeout < Duration::from_millis(100) {
            return err("destinationIdleTimeout", "expected at least 100ms".into());
        }
        if let Some(path) = &self.endpoints_file {
            if !path.is_file() {
                return err(
                    "endpointsFile",
                    format!("expected a readable file, {} is not one", path.display()),
                );
            }
        }
        Ok(())
    }

    /// The SPIFFE ID the control plane must prove.
    pub fn control_plane_spiffe_id(&self) -> String {
        self.control_plane_identity
            .clone()
            .unwrap_or_else(|| format!("spiffe://{}/ns/weft-system/sa/weft-control", self.trust_domain))
    }

    /// This proxy's workload in metrics.
    pub fn metrics_workload(&self) -> String {
        self.workload_name
            .clone()
            .or_else(|| self.workload.clone())
            .or_else(|| self.service_account.clone())
            .unwrap_or_default()
    }

    /// This workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        let sa = self
            .service_account
            .clone()
            .or_else(|| self.workload.clone())
            .unwrap_or_else(|| "default".into());
        format!("spiffe://{}/ns/{}/sa/{sa}", self.trust_domain, self.namespace)
    }

    /// Whether traffic to `port` skips protocol detection.
    pub fn is_opaque_port(&self, port: u16) -> bool {
        SERVER_FIRST_PORTS.contains(&port) || self.opaque_ports.contains(&port)
    }
}

/// Parses YAML into `T`, reporting the path of the field that failed.
///
/// YAML is read into a generic value first, so that the typed pass can name
/// the exact field (`appPorts[1]`) through `serde_path_to_error`.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<T, ConfigError> {
    let value: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::new(source, "(document)", format!("not valid YAML: {e}")))?
    };
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(document)".to_string()
        } else {
            path
        };
        ConfigError::new(source, field, e.into_inner().to_string())
    })
}

/// Durations written as `500ms`, `3s`, `1m`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a duration such as `500ms` or `3s`, got `{text}` ({e})"
            ))
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
