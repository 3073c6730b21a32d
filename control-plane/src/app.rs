//! Wiring: flags → file source (+ Kubernetes source, TokenReview, trust
//! anchors published into namespaces, admission webhook when asked) +
//! index + gRPC server + admin listener, run until SIGTERM/SIGINT.

use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use weft_api::exposition;
use weft_api::v1 as api;

use crate::files::FileSource;
use crate::grpc::{
    DestinationService, GatewayService, IdentityService, InboundService, Proxies, MAX_MESSAGE,
};
use crate::identity::Ca;
use crate::index::{Index, IndexConfig};
use crate::kubernetes::{KubernetesSource, TokenReviewer, TrustAnchorPublisher};
use crate::metrics::ControlMetrics;
use crate::tls::ServingCert;

/// `weft-control`: Weft's control plane. Serves discovery and policy from
/// YAML documents and the Kubernetes API to the proxies over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-control", version)]
pub struct Config {
    /// YAML files or directories of documents (repeat).
    #[arg(
        long = "config",
        short = 'c',
        env = "WEFT_CONTROL_CONFIG",
        value_delimiter = ',',
        required_unless_present = "kubernetes"
    )]
    pub config: Vec<PathBuf>,
    /// Read the mesh from the Kubernetes API (Services, EndpointSlices,
    /// Pods, weft.dev policies, Gateway API HTTPRoutes) with the in-cluster
    /// credentials or KUBECONFIG; `--config` files may be given too.
    #[arg(long, env = "WEFT_KUBERNETES")]
    pub kubernetes: bool,
    /// With `--kubernetes`: publish the trust anchors as ConfigMap
    /// `weft-trust-anchors` (key `ca.crt`) in every namespace but
    /// kube-system, kube-public and kube-node-lease, for injected proxies
    /// to mount. `--publish-trust-anchors=false` turns it off.
    #[arg(
        long,
        env = "WEFT_PUBLISH_TRUST_ANCHORS",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub publish_trust_anchors: bool,
    /// Check proxies' tokens with the Kubernetes TokenReview API (audience
    /// `weft`) instead of a tokens file.
    #[arg(long, env = "WEFT_TOKEN_REVIEW", conflicts_with = "tokens")]
    pub token_review: bool,
    /// gRPC listener for proxies.
    #[arg(long, env = "WEFT_CONTROL_GRPC_LISTEN", default_value = "0.0.0.0:8086")]
    pub grpc_listen: SocketAddr,
    /// `/metrics`, `/ready`, `/live`.
    #[arg(long, env = "WEFT_CONTROL_ADMIN_LISTEN", default_value = "0.0.0.0:9990")]
    pub admin_listen: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// DNS suffix of services.
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// How often config files are checked for changes.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// CA certificate (PEM) that signs workload certificates. Without one,
    /// a dev CA is generated at start (local use only).
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Trust anchors handed to proxies (PEM bundle; several roots during a
    /// rotation). Default: the CA certificate.
    #[arg(long, env = "WEFT_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// Workload tokens (YAML list of {namespace, serviceAccount, token}).
    /// Without it every certificate request is refused.
    #[arg(long, env = "WEFT_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Lifetime of issued certificates (the control plane's own too).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,
    /// The namespace this control plane runs in: its own SPIFFE ID is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`,
    /// which proxies expect (their `controlPlaneIdentity`).
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "weft-system")]
    pub namespace: String,
    /// The service account this control plane runs as.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT", default_value = "weft-control")]
    pub service_account: String,
    /// More DNS names (or IPs) for the gRPC certificate, besides
    /// `weft-control.<namespace>.svc[.<cluster domain>]` (repeat).
    #[arg(long = "tls-san", env = "WEFT_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Write the trust anchors (PEM) here at start: what local proxies
    /// take as `--trust-anchors` (`weft demo` does this).
    #[arg(long, env = "WEFT_TRUST_ANCHORS_OUT")]
    pub trust_anchors_out: Option<PathBuf>,
    /// Clients refuse unmeshed endpoints (503 `not-meshed`) unless a
    /// TrafficPolicy says `mtls: optional` for that service.
    #[arg(long, env = "WEFT_REQUIRE_MTLS")]
    pub require_mtls: bool,
    /// gRPC connections open at once; more are closed at accept.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Concurrent streams on one gRPC connection (a proxy opens one per
    /// destination it uses).
    #[arg(long, default_value_t = 1024)]
    pub max_streams_per_connection: u32,
    /// How long files must be quiet before a change is applied.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

impl Config {
    /// The SPIFFE ID the control plane's gRPC certificate carries.
    pub fn own_identity(&self) -> String {
        crate::index::spiffe_id(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The DNS names of its gRPC certificate: the Service's, then
    /// `--tls-san`.
    pub fn dns_names(&self) -> Vec<String> {
        let svc = format!("weft-control.{}.svc", self.namespace);
        let mut names = vec![svc.clone(), format!("{svc}.{}", self.cluster_domain)];
        names.extend(self.tls_sans.iter().filter(|s| !s.is_empty()).cloned());
        names
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into
/// place: a reader never sees half a file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A control plane with its listeners bound.
pub struct Control {
    config: Config,
    ca: Arc<Ca>,
    /// The gRPC listener's own certificate.
    serving: Arc<ServingCert>,
    /// With `--kubernetes` or `--token-review`.
    kube: Option<kube::Client>,
    grpc: TcpListener,
    admin: TcpListener,
    webhook: Option<crate::webhook::Webhook>,
}

impl Control {
    pub async fn bind(config: Config) -> Result<Self, String> {
        let ca = Arc::new(load_ca(&config)?);
        let serving = ServingCert::issue(ca.clone(), config.own_identity(), config.dns_names())?;
        if let Some(out) = &config.trust_anchors_out {
            write_atomically(out, ca.trust_anchors_pem().as_bytes())
                .map_err(|e| format!("--trust-anchors-out {}: {e}", out.display()))?;
        }
        let kube = if config.kubernetes || config.token_review {
            Some(crate::kubernetes::client().await?)
        } else {
            None
        };
        let grpc = TcpListener::bind(config.grpc_listen)
            .await
            .map_err(|e| format!("{}: {e}", config.grpc_listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| format!("{}: {e}", config.admin_listen))?;
        let control_plane = crate::inject::ControlPlane {
            namespace: config.namespace.clone(),
            service_account: config.service_account.clone(),
            trust_domain: config.trust_domain.clone(),
            cluster_domain: config.cluster_domain.clone(),
        };
        let webhook = crate::webhook::Webhook::bind(&config.webhook, &control_plane).await?;
        Ok(Self {
            config,
            ca,
            serving,
            kube,
            grpc,
            admin,
            webhook,
        })
    }

    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            self.grpc.local_addr().expect("bound"),
            self.admin.local_addr().expect("bound"),
        )
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), tonic::transport::Error> {
        // Ready, and answering watches, only once every source has
        // applied its first full view (files: the first load; Kubernetes:
        // every kind listed or known to be absent).
        let mut sources = vec![crate::files::SOURCE.to_string()];
        if self.kube.is_some() {
            sources.push(crate::kubernetes::source::SOURCE.to_string());
        }
        let index = Index::new(IndexConfig {
            trust_domain: self.config.trust_domain.clone(),
            cluster_domain: self.config.cluster_domain.clone(),
            sources,
            require_mtls: self.config.require_mtls,
        });
        let metrics = Arc::new(ControlMetrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (ca_expiry, anchors_expiry) = self.ca.expiry();
        metrics.ca_expiry.set(ca_expiry.unwrap_or(0));
        metrics.trust_anchor_expiry.set(anchors_expiry.unwrap_or(0));
        let registry = Arc::new(registry);
        let proxies = Arc::new(Proxies::new(metrics.clone()));
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            // End every watch stream; proxies reconnect (to another
            // replica) and keep their last state meanwhile.
            let _ = closing.send(true);
        };

        let source = FileSource::new(self.config.config.clone());
        let files = tokio::spawn(source.run(
            index.clone(),
            metrics.clone(),
            self.config.poll_interval,
            self.config.debounce,
        ));
        let cluster = self.kube.clone().map(|client| {
            let source = KubernetesSource::start(client, metrics.clone());
            tokio::spawn(source.run(index.clone(), metrics.clone(), self.config.debounce))
        });
        let anchors = self
            .kube
            .clone()
            .filter(|_| self.config.kubernetes && self.config.publish_trust_anchors)
            .map(|client| {
                let publisher = TrustAnchorPublisher::new(client, self.ca.trust_anchors_pem());
                tokio::spawn(publisher.run(metrics.clone()))
            });
        let token_review = self
            .kube
            .clone()
            .filter(|_| self.config.token_review)
            .map(|client| TokenReviewer::new(client, metrics.clone()));
        let webhook = self.webhook.map(|w| {
            tracing::info!(addr = %w.local_addr(), "admission webhook listening");
            tokio::spawn(w.serve(metrics.clone()))
        });
        tokio::spawn(serve_admin(
            self.admin,
            registry,
            metrics.clone(),
            index.clone(),
            proxies.clone(),
        ));

        let tls = match crate::tls::server_config(&self.ca, self.serving.clone()) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(error = %e, "gRPC TLS");
                return Ok(());
            }
        };
        tracing::info!(identity = %self.serving.spiffe_id(), "gRPC serves TLS 1.3 only");
        let renewal = tokio::spawn(self.serving.clone().renew_forever());
        let limits = crate::tls::Limits {
            max_connections: self.config.max_connections,
            handshake_timeout: Duration::from_secs(10),
        };
        let incoming = crate::tls::incoming(self.grpc, tls, limits, metrics.clone());
        let trust_domain = self.config.trust_domain.clone();
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(self.config.max_streams_per_connection))
            .http2_max_header_list_size(Some(16 * 1024))
            .http2_max_pending_accept_reset_streams(Some(32))
            .add_service(
                api::destination_server::DestinationServer::new(DestinationService {
                    index: index.clone(),
                    trust_domain: trust_domain.clone(),
                    metrics: metrics.clone(),
                    proxies: proxies.clone(),
                    closing: closing_rx.clone(),
                })
                .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                api::inbound_server::InboundServer::new(InboundService {
                    index: index.clone(),
                    trust_domain: trust_domain.clone(),
                    metrics: metrics.clone(),
                    closing: closing_rx.clone(),
                })
                .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                api::gateway_server::GatewayServer::new(GatewayService {
                    index,
                    trust_domain,
                    metrics: metrics.clone(),
                    closing: closing_rx,
                })
                .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                api::identity_server::IdentityServer::new(IdentityService {
                    ca: self.ca,
                    metrics: metrics.clone(),
                    token_review,
                })
                .max_decoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        renewal.abort();
        files.abort();
        if let Some(cluster) = cluster {
            cluster.abort();
        }
        webhook.inspect(|w| w.abort());
        anchors.inspect(|a| a.abort());
        result
    }
}

async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    metrics: Arc<ControlMetrics>,
    index: Arc<Index>,
    proxies: Arc<Proxies>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, say: wait instead of spinning.
            Err(e) => {
                tracing::warn!(error = %e, "admin: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (registry, metrics, index, proxies) =
            (registry.clone(), metrics.clone(), index.clone(), proxies.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let path = req.uri().path().to_string();
                let openmetrics = exposition::wants_openmetrics(
                    req.headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok()),
                );
                let (status, body) = match path.as_str() {
                    "/live" => (StatusCode::OK, "live\n".to_string()),
                    "/version" => (
                        StatusCode::OK,
                        format!("{{\"version\":\"{}\"}}\n", env!("CARGO_PKG_VERSION")),
                    ),
                    "/proxies" => (
                        StatusCode::OK,
                        serde_json::to_string_pretty(&proxies.list()).unwrap_or_default() + "\n",
                    ),
                    "/ready" if index.is_synced() => (StatusCode::OK, "ready\n".to_string()),
                    "/ready" => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "waiting for sources to sync: {}\n",
                            index.unsynced_sources().join(", ")
                        ),
                    ),
                    "/metrics" => {
                        metrics.index_stats(index.stats());
                        let mut out = String::new();
                        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                        if openmetrics {
                            (StatusCode::OK, out)
                        } else {
                            (StatusCode::OK, exposition::openmetrics_to_text(&out))
                        }
                    }
                    _ => (
                        StatusCode::NOT_FOUND,
                        "not found; try /live /ready /metrics /proxies /version\n".to_string(),
                    ),
                };
                let mut rsp = Response::new(Full::new(Bytes::from(body)));
                *rsp.status_mut() = status;
                let content_type = if path == "/metrics" && !openmetrics {
                    exposition::TEXT_CONTENT_TYPE
                } else if path == "/metrics" {
                    exposition::OPENMETRICS_CONTENT_TYPE
                } else if path == "/proxies" || path == "/version" {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type),
                );
                async move { Ok::<_, Infallible>(rsp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn load_ca(config: &Config) -> Result<Ca, String> {
    let ca = match (&config.ca_cert, &config.ca_key) {
        (Some(cert), Some(key)) => {
            Ca::from_files(cert, key, config.trust_anchors.as_deref(), &config.trust_domain)?
        }
        _ => {
            tracing::warn!(
                "NO CA CONFIGURED: generated a throw-away DEV CA for this run; its certificates are trusted by no one else. Use --ca-cert/--ca-key in production"
            );
            Ca::generate(&config.trust_domain)?
        }
    };
    let ca = ca.with_lifetime(config.cert_lifetime);
    match &config.tokens {
        Some(path) => ca.with_tokens_file(path),
        None if config.token_review => Ok(ca),
        None => {
            tracing::warn!("no --tokens file: every certificate request will be refused");
            Ok(ca)
        }
    }
}

/// The `weft-control` command.
pub fn run_cli<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let config = match Config::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    for path in &config.config {
        if !path.exists() {
            eprintln!(
                "weft-control: invalid config: --config: {} does not exist",
                path.display()
            );
            return ExitCode::from(64);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let control = match Control::bind(config).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("weft-control: {e}");
                return ExitCode::from(64);
            }
        };
        let (grpc, admin) = control.addrs();
        tracing::info!(grpc = %grpc, admin = %admin, "listening");
        match control.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft-control: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
