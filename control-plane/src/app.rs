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
use crate::grpc::{DestinationService, IdentityService, InboundService, Proxies};
use crate::identity::{read_tokens, Ca};
use crate::index::{Index, IndexConfig};
use crate::kubernetes::{KubernetesSource, TokenReviewer, TrustAnchorPublisher};
use crate::metrics::ControlMetrics;

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
    /// Lifetime of issued certificates.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,
    /// How long files must be quiet before a change is applied.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

/// A control plane with its listeners bound.
pub struct Control {
    config: Config,
    ca: Arc<Ca>,
    /// With `--kubernetes` or `--token-review`.
    kube: Option<kube::Client>,
    grpc: TcpListener,
    admin: TcpListener,
    webhook: Option<crate::webhook::Webhook>,
}

impl Control {
    pub async fn bind(config: Config) -> Result<Self, String> {
        let ca = load_ca(&config)?;
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
            trust_domain: config.trust_domain.clone(),
            cluster_domain: config.cluster_domain.clone(),
            // Its own namespace and service account: the defaults
            // (weft-system, weft-control) until Config has them.
            ..crate::inject::ControlPlane::default()
        };
        let webhook = crate::webhook::Webhook::bind(&config.webhook, &control_plane).await?;
        Ok(Self {
            config,
            ca: Arc::new(ca),
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
        });
        let metrics = Arc::new(ControlMetrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let registry = Arc::new(registry);
        let proxies = Arc::new(Proxies::default());
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
            let source = KubernetesSource::start(client);
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
            .map(TokenReviewer::new);
        let webhook = self.webhook.map(|w| {
            tracing::info!(addr = %w.local_addr(), "admission webhook listening");
            tokio::spawn(w.serve())
        });
        tokio::spawn(serve_admin(
            self.admin,
            registry,
            metrics.clone(),
            index.clone(),
            proxies.clone(),
        ));

        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.grpc);
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(api::destination_server::DestinationServer::new(
                DestinationService {
                    index: index.clone(),
                    metrics: metrics.clone(),
                    proxies: proxies.clone(),
                    closing: closing_rx.clone(),
                },
            ))
            .add_service(api::inbound_server::InboundServer::new(InboundService {
                index,
                metrics: metrics.clone(),
                closing: closing_rx,
            }))
            .add_service(api::identity_server::IdentityServer::new(IdentityService {
                ca: self.ca,
                metrics: metrics.clone(),
                token_review,
            }))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
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
        let Ok((stream, _)) = listener.accept().await else {
            continue;
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
                        "not found; try /live /ready /metrics /proxies\n".to_string(),
                    ),
                };
                let mut rsp = Response::new(Full::new(Bytes::from(body)));
                *rsp.status_mut() = status;
                let content_type = if path == "/metrics" && !openmetrics {
                    exposition::TEXT_CONTENT_TYPE
                } else if path == "/metrics" {
                    exposition::OPENMETRICS_CONTENT_TYPE
                } else if path == "/proxies" {
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
    let tokens = match &config.tokens {
        Some(path) => read_tokens(path)?,
        None if config.token_review => Vec::new(),
        None => {
            tracing::warn!("no --tokens file: every certificate request will be refused");
            Vec::new()
        }
    };
    Ok(ca.with_lifetime(config.cert_lifetime).with_tokens(tokens))
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
