//! `cp-load`: opens N simulated proxy watch streams over M services against
//! a real `weft-control`, then measures how long one config change takes to
//! reach every watcher, and the control plane's memory.
//!
//! Watchers are multiplexed, 100 streams per HTTP/2 connection (as if 100
//! destinations per proxy), to stay within this machine's file descriptors.
//! Run it through `bench/control-plane.sh`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::{mpsc, Barrier};
use weft_api::v1 as api;
use weft_api::v1::destination_update::Kind;

#[derive(Debug, Parser)]
struct Args {
    /// Watch streams to open.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Services they spread over.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// The weft-control binary.
    #[arg(long, default_value = "target/release/weft-control")]
    control: PathBuf,
    /// Streams per connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
}

fn services_yaml(services: usize, endpoints: usize, generation: usize) -> String {
    let mut out = String::new();
    for s in 0..services {
        out.push_str(&format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: svc-{s}, namespace: load}}\nspec:\n  endpoints:\n"
        ));
        for e in 0..endpoints {
            // Generation g moves endpoint 0 of every service to a new port.
            let port = if e == 0 { 20000 + generation } else { 10000 + e };
            out.push_str(&format!(
                "    - address: 10.{}.{}.{}:{port}\n      proxy: 10.{}.{}.{}:4143\n",
                s / 256,
                s % 256,
                e,
                s / 256,
                s % 256,
                e
            ));
        }
        out.push_str("---\n");
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("weft-cp-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("services.yaml");
    std::fs::write(&file, services_yaml(args.services, args.endpoints, 0)).unwrap();

    let mut child = Command::new(&args.control)
        .arg("--config")
        .arg(&dir)
        .args(["--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--poll-interval", "50ms", "--debounce", "50ms"])
        .env("RUST_LOG", "warn,weft_control::app=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft-control");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let grpc = loop {
        let line = rx.recv().await.expect("weft-control exited");
        if let Some(i) = line.find("grpc=") {
            break line[i + 5..].split_whitespace().next().unwrap().to_string();
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(pid);

    // Open the watchers.
    let started = Instant::now();
    let connections = args.watchers.div_ceil(args.per_connection);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let ready = Arc::new(Barrier::new(args.watchers + 1));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Instant>();
    for i in 0..args.watchers {
        let mut client =
            api::destination_client::DestinationClient::new(channels[i / args.per_connection].clone());
        let ready = ready.clone();
        let seen = seen_tx.clone();
        let target = format!("svc-{}.load:80", i % args.services);
        tokio::spawn(async move {
            let req = api::DestinationRequest {
                target,
                namespace: "load".into(),
                proxy_id: format!("load-{i}"),
                admin_address: String::new(),
                proxy_version: String::new(),
            };
            let mut stream = client.watch(req).await.expect("watch").into_inner();
            let first = stream
                .message()
                .await
                .expect("first message")
                .expect("stream open");
            assert!(
                matches!(first.kind, Some(Kind::Snapshot(_))),
                "first message is a snapshot"
            );
            ready.wait().await;
            // Wait for endpoint 0's move to generation 1.
            while let Ok(Some(msg)) = stream.message().await {
                let moved = match &msg.kind {
                    Some(Kind::Added(a)) => a.endpoints.iter().any(|e| e.address.ends_with(":20001")),
                    Some(Kind::Snapshot(s)) => s.endpoints.iter().any(|e| e.address.ends_with(":20001")),
                    _ => false,
                };
                if moved {
                    let _ = seen.send(Instant::now());
                    break;
                }
            }
            // Hold the stream open until the end.
            std::future::pending::<()>().await;
        });
    }
    ready.wait().await;
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watching_rss = rss_kib(pid);

    // One change: endpoint 0 of every service moves.
    let t0 = Instant::now();
    std::fs::write(&file, services_yaml(args.services, args.endpoints, 1)).unwrap();
    let mut latencies = Vec::with_capacity(args.watchers);
    while latencies.len() < args.watchers {
        match tokio::time::timeout(Duration::from_secs(60), seen_rx.recv()).await {
            Ok(Some(t)) => latencies.push(t.duration_since(t0)),
            _ => break,
        }
    }
    latencies.sort();
    let after_rss = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(Path::new(&dir));

    let report = serde_json::json!({
        "watchers": args.watchers,
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "connections": connections,
        "reached": latencies.len(),
        "open_all_seconds": open_time.as_secs_f64(),
        "propagation_ms": {
            "p50": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            "p99": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            "max": latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        },
        "control_plane_rss_mib": {
            "idle": idle_rss as f64 / 1024.0,
            "watching": watching_rss as f64 / 1024.0,
            "after_change": after_rss as f64 / 1024.0,
        },
        "note": "propagation includes the file poll (50ms) and debounce (50ms) of the file source",
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
