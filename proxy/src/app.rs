//! Wiring: build the proxy from its config, run it until a shutdown signal,
//! drain. `main.rs` and the tests both go through [`Proxy::bind`] and
//! [`Proxy::run`].

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::admin::Admin;
use crate::client::Clients;
use crate::config::{Config, ConfigError, LogFormat, Overrides, UpstreamListener};
use crate::control::{
    ControlClient, ControlDiscover, ControlMetrics, ControlSettings, ControlTls, InboundWatcher,
};
use crate::discover::{Discover, StaticEndpoints};
use crate::drain;
use crate::identity::{Identity, TokenFile};
use crate::inbound::{Inbound, Workload};
use crate::listener::Listener;
use crate::metrics::{Direction, Metrics};
use crate::outbound::Outbound;
use crate::policy::{Policies, PortWatcher};
use crate::readiness::Readiness;
use crate::server::Limits;
use crate::telemetry::{AccessLog, Telemetry};

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// `weft-proxy`: the Weft sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// Commands besides running the proxy.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Install the iptables rules that send this network namespace's TCP
    /// through the proxy (run once per pod, as root or with NET_ADMIN).
    Init(crate::init::InitArgs),
    /// Run as an edge gateway: serve a Gateway API `Gateway`'s listeners
    /// for outside clients and forward into the mesh (no app, no
    /// outbound or inbound listener).
    Gateway(crate::gateway::GatewayArgs),
}

/// A proxy with its listeners bound, ready to run.
pub struct Proxy {
    config: Arc<Config>,
    discover: Arc<dyn Discover>,
    control_metrics: ControlMetrics,
    /// The one channel to the control plane (discovery, inbound policy,
    /// identity), when there is one.
    control: Option<ControlClient>,
    /// Only with a control plane: it issues the certificates.
    identity: Option<Arc<Identity>>,
    outbound: Listener,
    inbound: Listener,
    admin: Listener,
    /// Upstream listeners, each with the destination it is bound to.
    upstreams: Vec<(Listener, UpstreamListener)>,
}

/// Where a bound proxy listens: the configured (IPv4 or IPv6) addresses,
/// ports filled in. Each IPv4 wildcard or loopback listener also has an
/// IPv6 twin on the same port where the node has IPv6 ([`Proxy::ipv6_addrs`]).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {} ({which}): {}", .source.addr, .source.source)]
    Bind {
        which: &'static str,
        source: crate::listener::BindError,
    },
}

impl Proxy {
    /// Loads the endpoints and binds every listener.
    pub async fn bind(config: Config) -> Result<Self, BuildError> {
        let listen = |which, addr| async move {
            Listener::bind(addr)
                .await
                .map_err(|source| BuildError::Bind { which, source })
        };
        // A gateway has no app: its outbound and inbound listeners are
        // never served (bound to a free loopback port, closed at once).
        let unused = SocketAddr::from(([127, 0, 0, 1], 0));
        let gateway = config.gateway.is_some();
        let outbound = listen("outbound", if gateway { unused } else { config.outbound_listen }).await?;
        let inbound = listen("inbound", if gateway { unused } else { config.inbound_listen }).await?;
        let admin = listen("admin", config.admin_listen).await?;
        let mut upstreams = Vec::new();
        for up in &config.upstreams {
            upstreams.push((listen("upstream", up.listen).await?, up.clone()));
        }
        let control_metrics = ControlMetrics::default();
        let identity = match &config.identity_token_file {
            Some(file) => {
                // Read now so a bad path fails at start; read again before
                // every certificate request, since the token rotates.
                let token = TokenFile::open(file).map_err(|e| {
                    ConfigError::new(
                        "flags",
                        "identityTokenFile",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                Some(Identity::new(config.spiffe_id(), token))
            }
            None => None,
        };
        let control = match (&config.control_plane, &config.trust_anchors, &identity) {
            (Some(address), Some(anchors), Some(identity)) => {
                let tls = ControlTls {
                    anchors: anchors.clone(),
                    identity: config.control_plane_spiffe_id(),
                };
                // Fail at start on a bundle that can never verify anything.
                tls.roots()
                    .map_err(|e| ConfigError::new("flags", "trustAnchors", e.to_string()))?;
                Some(ControlClient::new(address, tls, identity.clone()).map_err(|e| {
                    ConfigError::new("flags", "controlPlane", format!("not a usable address: {e}"))
                })?)
            }
            (Some(_), _, _) => {
                return Err(ConfigError::new(
                    "flags",
                    "controlPlane",
                    "expected trustAnchors and identityTokenFile with it",
                )
                .into())
            }
            (None, _, _) => None,
        };
        let discover: Arc<dyn Discover> = match (&control, &config.endpoints_file) {
            (Some(control), _) => {
                let settings = ControlSettings {
                    namespace: config.namespace.clone(),
                    proxy_id: config.proxy_id.clone().unwrap_or_else(|| {
                        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-proxy".into());
                        format!("{host}-{}", std::process::id())
                    }),
                    idle_timeout: config.destination_idle_timeout,
                    first_update_timeout: config.discovery_timeout,
                    cluster_domain: config.cluster_domain.clone(),
                    admin_address: admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                };
                ControlDiscover::new(control.clone(), settings, control_metrics.clone())
            }
            (None, Some(path)) => Arc::new(StaticEndpoints::from_file(path)?),
            (None, None) => Arc::new(StaticEndpoints::default()),
        };
        Ok(Self {
            outbound,
            inbound,
            admin,
            upstreams,
            config: Arc::new(config),
            discover,
            control_metrics,
            control,
            identity,
        })
    }

    pub fn addrs(&self) -> Addrs {
        let addr = |l: &Listener| l.local_addr().expect("bound listener has an address");
        Addrs {
            outbound: addr(&self.outbound),
            inbound: addr(&self.inbound),
            admin: addr(&self.admin),
        }
    }

    /// Where each upstream listener listens (ports filled in), with what
    /// it is bound to, in the config's order.
    pub fn upstream_addrs(&self) -> Vec<(SocketAddr, &UpstreamListener)> {
        self.upstreams
            .iter()
            .map(|(l, up)| (l.local_addr().expect("bound listener has an address"), up))
            .collect()
    }

    /// The IPv6 twins of the listeners that have one.
    pub fn ipv6_addrs(&self) -> [Option<SocketAddr>; 3] {
        [
            self.outbound.ipv6_addr(),
            self.inbound.ipv6_addr(),
            self.admin.ipv6_addr(),
        ]
    }

    /// Serves until `shutdown` resolves or `POST /shutdown` arrives, then
    /// drains. Returns how many connections were still open at the drain
    /// deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let config = self.config.clone();
        let mut registry = Registry::default();
        let metrics = Metrics::default();
        metrics.register(&mut registry);
        let me = crate::telemetry::Party::new(
            &config.metrics_workload(),
            &config.namespace,
            &self.identity.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
        );
        let telemetry = Arc::new(Telemetry {
            me,
            access_log: config
                .access_log
                .then(|| AccessLog::spawn(metrics.access_log_dropped.clone())),
            metrics: metrics.clone(),
            create_trace_context: config.create_trace_context,
        });
        let sweeper = {
            let (metrics, idle) = (metrics.clone(), config.metrics_idle_timeout);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep((idle / 4).max(Duration::from_secs(1))).await;
                    let removed = metrics.expire_idle(idle);
                    if removed > 0 {
                        tracing::debug!(removed, "expired idle metric series");
                    }
                }
            })
        };
        if config.control_plane.is_some() {
            self.control_metrics.register(&mut registry);
        }
        let (signal, watch) = drain::channel();
        // Never forwarded to the app as "its" ports.
        let own_ports: Vec<u16> = [&self.inbound, &self.outbound, &self.admin]
            .iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
            .collect();
        let policies = Arc::new(match (&self.control, &config.workload) {
            (Some(control), Some(workload)) => {
                let watcher = InboundWatcher::new(
                    control,
                    format!("{}/{workload}", config.namespace),
                    config.pod.clone(),
                );
                let declared = watcher.watch_all(&config.app_ports);
                let any_port: Option<PortWatcher> = config
                    .inbound_any_port
                    .then(|| Box::new(move |port| watcher.watch(port)) as PortWatcher);
                Policies::watched(declared, any_port)
            }
            _ => Policies::allow_all(),
        });
        policies.register(&mut registry);
        let identity = self.identity;
        if let (Some(id), Some(control)) = (&identity, &self.control) {
            registry.register(
                "weft_identity_cert_expiration_timestamp_seconds",
                "When this proxy's certificate expires (Unix time)",
                id.expiry.clone(),
            );
            registry.register(
                "weft_identity_renewal_failures",
                "Certificate requests to the control plane that failed (the first one and renewals)",
                id.failures.clone(),
            );
            tokio::spawn(id.clone().run(control.clone()));
        }
        // This proxy's workload in the `weft-*workload` headers, when it is
        // a valid label value.
        let workload_header = http::HeaderValue::from_str(&config.metrics_workload())
            .ok()
            .filter(|v| crate::telemetry::workload_name(v).is_some());
        let clients = Clients::new(config.connect_timeout, identity.clone())
            .with_source_workload(workload_header.clone());
        let limits = |direction| Limits {
            max_connections: config.max_connections,
            max_header_bytes: config.max_header_bytes,
            head_timeout: config.request_head_timeout,
            idle_timeout: config.http_idle_timeout,
            tcp_idle_timeout: Some(config.tcp_idle_timeout).filter(|t| !t.is_zero()),
            long_lived_ports: config.long_lived_ports.clone().into(),
            metrics: telemetry.metrics.clone(),
            direction,
        };

        let ready = Arc::new(Readiness::new(identity.clone()));
        let shutdown_requested = Arc::new(Notify::new());
        let discover = self.discover.clone();
        let dump_config = config.clone();
        let dump_policies = policies.clone();
        // Set once the gateway (if this proxy is one) starts, below.
        let served_gateway: Arc<std::sync::OnceLock<crate::gateway::Served>> = Arc::default();
        let dump_gateway = served_gateway.clone();
        let app_metrics_errors = prometheus_client::metrics::counter::Counter::default();
        let app_metrics = config.app_metrics_port.map(|port| {
            registry.register(
                "weft_app_metrics_scrape_errors",
                "Scrapes of /metrics whose merged app metrics could not be fetched",
                app_metrics_errors.clone(),
            );
            crate::admin_merge::AppMetrics {
                addr: SocketAddr::new(config.app_ip, port),
                path: config.app_metrics_path.clone(),
            }
        });
        let admin = Arc::new(Admin {
            app_metrics,
            app_metrics_errors,
            ready: ready.clone(),
            registry: Arc::new(registry),
            config: Box::new(move || {
                let mut dump = serde_json::json!({
                    "config": &*dump_config,
                    "endpoints": discover.dump(),
                    "inboundPolicy": dump_policies.dump(),
                });
                if let Some(gateway) = dump_gateway.get() {
                    dump["gateway"] = gateway.borrow().dump();
                }
                dump
            }),
            shutdown: shutdown_requested.clone(),
        });
        tokio::spawn(admin.serve(self.admin));

        let interception = config.interception();
        let outbound = Outbound {
            discover: self.discover.clone(),
            clients: clients.clone(),
            telemetry: telemetry.clone(),
            limits: limits(Direction::Outbound),
            detect_timeout: config.detect_timeout,
            drain: watch.clone(),
            interception: interception.clone(),
        };
        let outbound = Arc::new(outbound);
        let inbound = Arc::new(Inbound {
            policies: policies.clone(),
            identity: identity.clone(),
            workload: Workload {
                name: config.workload.as_deref().unwrap_or_default().into(),
                namespace: config.namespace.as_str().into(),
            },
            workload_header,
            app_ip: config.app_ip,
            app_to_pod_ip: config.inbound_to_pod_ip,
            app_ports: config.app_ports.clone(),
            any_port: config.inbound_any_port,
            own_ports,
            clients,
            telemetry: telemetry.clone(),
            limits: limits(Direction::Inbound),
            detect_timeout: config.detect_timeout,
            drain: watch,
            interception,
        });
        for (listener, up) in self.upstreams {
            tokio::spawn(outbound.clone().serve_upstream(listener, up));
        }
        let gateway_ready = match (&config.gateway, &self.control) {
            (Some(settings), Some(control)) => {
                let configs =
                    crate::control::gateway::watch_gateway(control, &config.namespace, &settings.name);
                let (ready, served) = crate::gateway::Gateway::spawn(
                    outbound.clone(),
                    settings.clone(),
                    config.namespace.clone(),
                    limits(Direction::Gateway),
                    configs,
                );
                let _ = served_gateway.set(served);
                Some(ready)
            }
            _ => {
                tokio::spawn(outbound.serve(self.outbound));
                tokio::spawn(inbound.serve(self.inbound));
                None
            }
        };
        // Started once listening, holding a first certificate (with an
        // identity), and knowing every app port's policy (with a workload);
        // after that, ready while the certificate is fresh (readiness.rs).
        {
            let ready = ready.clone();
            let policies = policies.clone();
            tokio::spawn(async move {
                if let Some(id) = identity {
                    id.ready().await;
                }
                policies.ready().await;
                if let Some(mut gateway) = gateway_ready {
                    let _ = gateway.wait_for(|r| *r).await;
                }
                ready.started();
            });
        }

        tokio::select! {
            () = shutdown => {}
            () = shutdown_requested.notified() => {}
        }
        ready.drain();
        tracing::info!(grace = ?config.shutdown_grace, "draining: listeners closed, finishing in-flight work");
        let left = signal.drain(config.shutdown_grace).await;
        if left == 0 {
            tracing::info!("drained");
        } else {
            tracing::warn!(left, "drain deadline reached; closing what is left");
        }
        sweeper.abort();
        if let Some(log) = &telemetry.access_log {
            log.flush().await;
        }
        left
    }
}

/// The `weft-proxy` command: parse flags, load config (exit 64 when it is
/// bad), run until SIGTERM/SIGINT, drain, exit 0.
pub fn run_cli<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(Subcommand::Init(args)) = &cli.command {
        return crate::init::run(args);
    }
    let loaded = Config::load(&cli.overrides).and_then(|mut c| {
        if let Some(Subcommand::Gateway(args)) = &cli.command {
            c.gateway = Some(crate::gateway::GatewaySettings::with_args(c.gateway.take(), args));
            c.validate("flags")?;
        }
        Ok(c)
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-proxy: invalid config: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    init_logging(config.log_format);
    // One worker: a current-thread runtime, where every task runs on the
    // main thread without the work-stealing scheduler's cross-thread
    // wake-ups (docs/performance.md measures it). More: multi-threaded.
    let mut builder = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let runtime = match builder.thread_name("weft-proxy").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let proxy = match Proxy::bind(config).await {
            Ok(p) => p,
            Err(e @ BuildError::Config(_)) => {
                eprintln!("weft-proxy: invalid config: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            Err(e) => {
                eprintln!("weft-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let a = proxy.addrs();
        tracing::info!(outbound = %a.outbound, inbound = %a.inbound, admin = %a.admin, "listening");
        let [outbound, inbound, admin] = proxy.ipv6_addrs().map(|a| a.map(|a| a.to_string()).unwrap_or_default());
        if !(outbound.is_empty() && inbound.is_empty() && admin.is_empty()) {
            // Not "listening": tests find the line above by that word.
            tracing::info!(ipv6_outbound = %outbound, ipv6_inbound = %inbound, ipv6_admin = %admin, "also on IPv6");
        }
        for (addr, up) in proxy.upstream_addrs() {
            tracing::info!(upstream = %addr, service = %up.service, port = up.port, "upstream listener bound");
        }
        proxy.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
