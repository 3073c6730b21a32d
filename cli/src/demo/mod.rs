//! `weft demo`: a whole mesh on one machine, no root and no cluster.
//!
//! From the documents in `config/demo/` it starts the control plane, every
//! `MeshService` endpoint as a sample app behind its own proxy, and a
//! traffic generator calling the entry service through a client proxy.
//! Every second it prints per-service requests/s, success rate and
//! p50/p99 (from the proxies' metrics), until Ctrl-C or `--duration`, then
//! a summary. Edit the YAML while it runs: the control plane reloads it and
//! the table shows the change. Every process it starts is stopped on exit.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use weft_control::files::list_files;
use weft_control::model::{parse_file, Spec};

use crate::procs::{addr_field, Proc};
use crate::stats;

/// Annotations on a `MeshService` that shape its demo app.
const LATENCY: &str = "demo.weft.dev/latency";
const ERROR_RATE: &str = "demo.weft.dev/error-rate";
const CALLS: &str = "demo.weft.dev/calls";
const ENTRY: &str = "demo.weft.dev/entrypoint";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory (or file) of the demo mesh's documents.
    #[arg(long, default_value = "config/demo")]
    pub config: PathBuf,
    /// Stop after this long (e.g. `10s`); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second the traffic generator sends.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
}

pub fn run(args: Args) -> ExitCode {
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        eprintln!("weft demo: --rate: expected 0 < rate <= 10000");
        return ExitCode::from(64);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A demo workload: one endpoint of a service.
struct Replica {
    service: String,
    namespace: String,
    service_account: String,
    app: SocketAddr,
    proxy: SocketAddr,
    latency: String,
    error_rate: String,
    calls: Vec<String>,
}

struct Plan {
    replicas: Vec<Replica>,
    entry: (String, String),
    /// Gateways of class weft: (name, namespace, listener ports).
    gateways: Vec<(String, String, Vec<u16>)>,
}

fn plan(config: &Path) -> Result<Plan, String> {
    let files =
        list_files(&[config.to_path_buf()]).map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    if files.is_empty() {
        return Err(format!("no YAML documents under {}", config.display()));
    }
    let mut replicas = Vec::new();
    let mut entry = None;
    let mut gateways = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {name}: {e}"))?;
        let (docs, errors) = parse_file(&name, &text);
        if let Some(e) = errors.first() {
            return Err(format!("invalid demo config: {e}"));
        }
        for doc in docs {
            if let Spec::Gateway(g) = &doc.spec {
                if g.gateway_class_name == weft_control::model::GATEWAY_CLASS {
                    let ports = g.listeners.iter().map(|l| l.port).collect();
                    gateways.push((doc.meta.name.clone(), doc.meta.namespace.clone(), ports));
                }
                continue;
            }
            let Spec::MeshService(spec) = &doc.spec else {
                continue;
            };
            let ann = &doc.meta.annotations;
            if ann.get(ENTRY).is_some_and(|v| v == "true") {
                entry = Some((doc.meta.name.clone(), doc.meta.namespace.clone()));
            }
            for ep in &spec.endpoints {
                let Some(proxy) = ep.proxy else { continue };
                replicas.push(Replica {
                    service: doc.meta.name.clone(),
                    namespace: doc.meta.namespace.clone(),
                    service_account: spec
                        .service_account
                        .clone()
                        .unwrap_or_else(|| doc.meta.name.clone()),
                    app: ep.address,
                    proxy,
                    latency: ann.get(LATENCY).cloned().unwrap_or_else(|| "0ms".into()),
                    error_rate: ann.get(ERROR_RATE).cloned().unwrap_or_else(|| "0".into()),
                    calls: ann
                        .get(CALLS)
                        .map(|c| {
                            c.split(',')
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty())
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
    }
    let entry = entry.ok_or_else(|| format!("no MeshService is annotated `{ENTRY}: \"true\"`"))?;
    Ok(Plan {
        replicas,
        entry,
        gateways,
    })
}

/// What the demo runs; dropping it stops every process (apps first).
struct Mesh {
    apps: Vec<Proc>,
    proxies: Vec<(Proc, SocketAddr)>,
    control: Proc,
    /// Tokens for the demo's workloads (removed on drop).
    secrets: PathBuf,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.apps.clear();
        self.proxies.clear();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// A token per workload identity, as a local control plane checks them:
/// returns the tokens file, and writes `<namespace>.<sa>.token` beside it.
fn write_tokens(
    dir: &Path,
    identities: &std::collections::BTreeSet<(String, String)>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut list = String::new();
    for (ns, sa) in identities {
        let token = format!("{:032x}", rand::random::<u128>());
        list.push_str(&format!(
            "- {{namespace: {ns}, serviceAccount: {sa}, token: \"{token}\"}}\n"
        ));
        std::fs::write(dir.join(format!("{ns}.{sa}.token")), &token).map_err(|e| e.to_string())?;
    }
    let file = dir.join("tokens.yaml");
    std::fs::write(&file, list).map_err(|e| e.to_string())?;
    Ok(file)
}

fn proxy_cmd(exe: &Path, control: &str, anchors: &Path, namespace: &str, id: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["proxy", "--trust-anchors"])
        .arg(anchors)
        .args([
            "--control-plane",
            control,
            "--namespace",
            namespace,
            "--proxy-id",
            id,
        ])
        .args([
            "--outbound-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "2s",
        ])
        .args(["--worker-threads", "1"])
        .env("RUST_LOG", "warn,weft_proxy::app=info")
        .env_remove("WEFT_CONFIG");
    cmd
}

fn start_mesh(exe: &Path, config: &Path, plan: &Plan) -> Result<(Mesh, SocketAddr), String> {
    let secrets = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let mut identities: std::collections::BTreeSet<(String, String)> = plan
        .replicas
        .iter()
        .map(|r| (r.namespace.clone(), r.service_account.clone()))
        .collect();
    identities.insert((plan.entry.1.clone(), "loadgen".into()));
    for (_, ns, _) in &plan.gateways {
        identities.insert((ns.clone(), "gateway".into()));
    }
    let tokens = write_tokens(&secrets, &identities)?;
    let token_file = |ns: &str, sa: &str| secrets.join(format!("{ns}.{sa}.token"));
    // Written by the control plane at start (its dev CA's root); every
    // proxy verifies the control plane against it.
    let anchors = secrets.join("trust-anchors.pem");
    let mut cmd = Command::new(exe);
    cmd.arg("control")
        .arg("--config")
        .arg(config)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--trust-anchors-out")
        .arg(&anchors)
        .args(["--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            "warn,weft_control::app=info,weft_control::files=error",
        );
    let mut control =
        Proc::spawn("weft-control", cmd).map_err(|e| format!("cannot start the control plane: {e}"))?;
    let line = control.wait_line(&["listening", "grpc="], Duration::from_secs(20))?;
    let grpc = addr_field(&line, "grpc").ok_or("the control plane did not say where it listens")?;
    let url = format!("https://{grpc}");
    let mut mesh = Mesh {
        apps: Vec::new(),
        proxies: Vec::new(),
        control,
        secrets: secrets.clone(),
    };

    for r in &plan.replicas {
        let id = format!("{}-{}", r.service, r.app.port());
        let mut cmd = proxy_cmd(exe, &url, &anchors, &r.namespace, &id);
        cmd.args([
            "--inbound-listen",
            &r.proxy.to_string(),
            "--app-port",
            &r.app.port().to_string(),
        ])
        .args(["--workload", &r.service, "--service-account", &r.service_account])
        .arg("--identity-token-file")
        .arg(token_file(&r.namespace, &r.service_account));
        let mut proxy = Proc::spawn(format!("proxy {id}"), cmd).map_err(|e| e.to_string())?;
        let line = proxy.wait_line(&["listening", "outbound="], Duration::from_secs(20))?;
        let outbound = addr_field(&line, "outbound").ok_or("no outbound address")?;
        let admin = addr_field(&line, "admin").ok_or("no admin address")?;
        mesh.proxies.push((proxy, admin));

        let mut cmd = Command::new(exe);
        cmd.args(["sample-app", "--listen", &r.app.to_string(), "--name", &r.service])
            .args([
                "--latency",
                &r.latency,
                "--error-rate",
                &r.error_rate,
                "--proxy",
                &outbound.to_string(),
            ]);
        for call in &r.calls {
            cmd.args(["--call", call]);
        }
        let mut app = Proc::spawn(format!("app {id}"), cmd).map_err(|e| e.to_string())?;
        app.wait_line(&["listening"], Duration::from_secs(20))?;
        mesh.apps.push(app);
    }

    // The traffic generator's own sidecar.
    let mut cmd = proxy_cmd(exe, &url, &anchors, &plan.entry.1, "loadgen");
    cmd.args(["--inbound-listen", "127.0.0.1:0", "--service-account", "loadgen"])
        .arg("--identity-token-file")
        .arg(token_file(&plan.entry.1, "loadgen"));
    let mut proxy = Proc::spawn("proxy loadgen", cmd).map_err(|e| e.to_string())?;
    let line = proxy.wait_line(&["listening", "outbound="], Duration::from_secs(20))?;
    let outbound = addr_field(&line, "outbound").ok_or("no outbound address")?;
    let admin = addr_field(&line, "admin").ok_or("no admin address")?;
    mesh.proxies.push((proxy, admin));

    // An edge gateway per Gateway, in front of the mesh.
    for (name, ns, _) in &plan.gateways {
        let mut cmd = proxy_cmd(exe, &url, &anchors, ns, &format!("gateway-{name}"));
        cmd.args(["--inbound-listen", "127.0.0.1:0", "--service-account", "gateway"])
            .arg("--identity-token-file")
            .arg(token_file(ns, "gateway"))
            .args(["gateway", "--name", name, "--listen-ip", "127.0.0.1"]);
        let mut proxy = Proc::spawn(format!("gateway {name}"), cmd).map_err(|e| e.to_string())?;
        let line = proxy.wait_line(&["listening", "outbound="], Duration::from_secs(20))?;
        let admin = addr_field(&line, "admin").ok_or("no admin address")?;
        mesh.proxies.push((proxy, admin));
    }
    Ok((mesh, outbound))
}

async fn demo(args: Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let plan = plan(&args.config)?;
    println!(
        "weft demo: {} replicas of {} services from {}; {} req/s to {}.{}",
        plan.replicas.len(),
        plan.replicas
            .iter()
            .map(|r| r.service.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        args.config.display(),
        args.rate,
        plan.entry.0,
        plan.entry.1
    );
    let (mut mesh, outbound) = start_mesh(&exe, &args.config, &plan)?;
    let admins: Vec<SocketAddr> = mesh.proxies.iter().map(|(_, a)| *a).collect();
    println!(
        "started the control plane, {} proxies and {} apps; edit {} to change the mesh",
        admins.len(),
        mesh.apps.len(),
        args.config.display()
    );

    // Every proxy ready (listening, and holding its certificate) first.
    let probe: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for admin in &admins {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let uri: http::Uri = format!("http://{admin}/ready").parse().expect("valid uri");
            if let Ok(Ok(rsp)) = tokio::time::timeout(Duration::from_millis(500), probe.get(uri)).await {
                if rsp.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the proxy with admin {admin} did not become ready"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    for (name, ns, ports) in &plan.gateways {
        for port in ports {
            println!("gateway {ns}/{name}: http://127.0.0.1:{port}/ (try curl)");
        }
    }

    // Traffic: a steady rate, with a bound on requests in flight.
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (client, sent) = (client.clone(), sent.clone());
        let host = plan.entry.0.clone();
        let limit = Arc::new(tokio::sync::Semaphore::new(256));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let req = http::Request::get(format!("http://{outbound}/"))
                    .header("host", host.as_str())
                    .body(Empty::new())
                    .expect("valid request");
                let client = client.clone();
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Ok(Ok(rsp)) =
                        tokio::time::timeout(Duration::from_secs(10), client.request(req)).await
                    {
                        let _ = rsp.into_body().collect().await;
                    }
                    drop(permit);
                });
            }
        })
    };

    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let baseline = stats::scrape(&client, &admins).await;
    let mut previous = (Instant::now(), baseline.clone());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let deadline = args.duration.map(|d| started + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        if let Some(status) = mesh.control.exited() {
            return Err(format!("the control plane exited ({status})"));
        }
        let now = stats::scrape(&client, &admins).await;
        let window = stats::by_service(&stats::window(&now, &previous.1));
        let seconds = previous.0.elapsed().as_secs_f64();
        previous = (Instant::now(), now);
        let table = stats::render(&stats::rows(&window, seconds), false);
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "weft demo · {:>4.0}s · {} requests sent · Ctrl-C to stop\n{table}",
            started.elapsed().as_secs_f64(),
            sent.load(Ordering::Relaxed)
        );
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    traffic.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = stats::scrape(&client, &admins).await;
    let total = stats::by_service(&stats::window(&end, &baseline));
    println!(
        "summary over {:.0}s (all proxies' outbound traffic, by destination service):\n{}",
        started.elapsed().as_secs_f64(),
        stats::render(&stats::rows(&total, started.elapsed().as_secs_f64()), false)
    );
    drop(mesh);
    println!("stopped every process the demo started");
    Ok(())
}
