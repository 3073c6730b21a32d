//! The chaos suite: steady GET and POST load through a client proxy to
//! three replicas (each behind its own proxy, mTLS, a real control plane)
//! while a scenario breaks something. Each asserts which requests may
//! fail (none, unless stated: a request in flight on a process that is
//! killed cannot always be saved) and prints p99 latency and the client
//! proxy's memory. Longer runs: `bench/chaos.sh`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use weft_tests::apps::*;
use weft_tests::bed::Bed;
use weft_tests::{eventually, ProxyProc};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Workers sending requests; each paces itself to `PER_WORKER` req/s.
const WORKERS: usize = 6;
const PER_WORKER: u64 = 40;

/// The error of a sample whose response broke off after its head.
const BODY_CUT: &str = "response body cut";

#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    post: bool,
    /// `None`: the connection failed under the request.
    status: Option<StatusCode>,
    error: Option<String>,
    took: Duration,
}

/// Steady load until stopped: half GETs, half POSTs with a body, over one
/// keep-alive connection per worker (reopened when the proxy closes it).
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(out: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let workers = (0..WORKERS)
            .map(|w| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut conn = h1_client(out).await;
                    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_WORKER));
                    let mut i = 0u64;
                    // Bounded: at most 5 minutes of load.
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
                        tick.tick().await;
                        i += 1;
                        let post = i % 2 == 0;
                        let req = if post {
                            Request::post("http://echo/orders").body(full(format!("order {w}-{i}")))
                        } else {
                            Request::get("http://echo/").body(full(Bytes::new()))
                        }
                        .unwrap();
                        if conn.ready().await.is_err() {
                            conn = h1_client(out).await;
                        }
                        let t = Instant::now();
                        let at = started.elapsed();
                        let sample = match conn.send_request(req).await {
                            Ok(rsp) => {
                                let (parts, body) = rsp.into_parts();
                                match body.collect().await {
                                    Ok(_) => Sample {
                                        at,
                                        post,
                                        status: Some(parts.status),
                                        error: parts
                                            .headers
                                            .get("weft-error")
                                            .map(|v| v.to_str().unwrap().to_string()),
                                        took: t.elapsed(),
                                    },
                                    // Cut after its head: failed as well.
                                    Err(e) => Sample {
                                        at,
                                        post,
                                        status: None,
                                        error: Some(format!("{BODY_CUT}: {e}")),
                                        took: t.elapsed(),
                                    },
                                }
                            }
                            Err(e) => {
                                conn = h1_client(out).await;
                                Sample {
                                    at,
                                    post,
                                    status: None,
                                    error: Some(e.to_string()),
                                    took: t.elapsed(),
                                }
                            }
                        };
                        samples.push(sample);
                    }
                    samples
                })
            })
            .collect();
        Self { stop, workers }
    }

    async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for w in self.workers {
            samples.extend(w.await.unwrap());
        }
        Report { samples }
    }
}

struct Report {
    samples: Vec<Sample>,
}

impl Report {
    fn failed(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.status != Some(StatusCode::OK))
            .collect()
    }

    fn p99(&self) -> Duration {
        let mut t: Vec<Duration> = self.samples.iter().map(|s| s.took).collect();
        t.sort();
        t.get(t.len() * 99 / 100).copied().unwrap_or_default()
    }

    /// Prints the numbers the scenario reports.
    fn print(&self, scenario: &str, client: &ProxyProc) {
        let rss = std::fs::read_to_string(format!("/proc/{}/status", client.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
            .unwrap_or_default();
        let mut why = std::collections::BTreeMap::new();
        for s in self.failed() {
            let key = format!("{:?} {}", s.status, s.error.as_deref().unwrap_or("-"));
            *why.entry(key).or_insert(0) += 1;
        }
        let when: Vec<String> = self
            .failed()
            .iter()
            .take(10)
            .map(|s| format!("{} at {:.2?}", if s.post { "POST" } else { "GET" }, s.at))
            .collect();
        eprintln!(
            "chaos {scenario}: {} requests, {} failed {why:?} ({}), p99 {:?}, client proxy RSS {rss}",
            self.samples.len(),
            self.failed().len(),
            when.join(", "),
            self.p99()
        );
    }
}

/// Endpoints file for `echo` from (app, proxy) pairs.
fn publish(bed: &Bed, pairs: &[(SocketAddr, SocketAddr)]) {
    let eps: String = pairs
        .iter()
        .map(|(app, proxy)| format!("    - address: {app}\n      proxy: {proxy}\n"))
        .collect();
    bed.dir.write(
        "mesh/echo.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  endpoints:\n{eps}"
        ),
    );
}

/// A new server proxy for replica `i`'s app, ready.
async fn replacement(bed: &Bed, i: usize) -> ProxyProc {
    let p = ProxyProc::start(&format!(
        "appPorts: [{}]\n{}workload: echo\n",
        bed.apps[i].addr.port(),
        bed.control.proxy_config("demo", "echo")
    ));
    p.ready().await;
    p
}

async fn warm_up(bed: &Bed) {
    eventually(Duration::from_secs(10), "the client reaches echo", || async {
        (get_echo(bed.client.addrs.outbound, "echo").await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// Rolling restart: each replica's proxy in turn gets SIGTERM while
/// requests are in flight (the apps answer in 30 ms), and a replacement
/// is published after it, as a Deployment's rollout does when the old
/// pod's endpoint is removed late. The old proxy drains what it accepted
/// and refuses new connections; the client proxy's requests that find it
/// gone were not sent and go to another replica. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_request() {
    let _serial = SERIAL.lock().await;
    let mut bed = Bed::start(3).await;
    for app in &bed.apps {
        app.set(Behaviour {
            delay: Duration::from_millis(30),
            ..Behaviour::default()
        });
    }
    warm_up(&bed).await;
    let load = Load::start(bed.client.addrs.outbound);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let new = replacement(&bed, i).await;
        let mut old = std::mem::replace(&mut bed.servers[i], new);
        old.sigterm();
        let pairs: Vec<_> = bed
            .apps
            .iter()
            .zip(&bed.servers)
            .map(|(a, s)| (a.addr, s.addrs.inbound))
            .collect();
        publish(&bed, &pairs);
        bed.wait_config(&bed.servers[i].addrs.inbound.to_string()).await;
        assert!(
            old.wait_exit(Duration::from_secs(10)).success(),
            "the old proxy drained and exited 0"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    report.print("rolling restart", &bed.client);
    assert!(report.samples.len() > 300, "load ran: {}", report.samples.len());
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
}

/// SIGKILL of one replica's proxy under load. Requests in flight on it
/// at that moment cannot all be saved: GETs are retried (the policy
/// retries resets), POSTs that may have reached the app are not. So: no
/// GET fails (unless its response was cut after its head), at most the
/// workers' count of requests fail (one in flight each), all within a second of the kill, and the breaker stops sending
/// to the dead endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_proxy_costs_at_most_the_posts_in_flight() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    bed.traffic_policy(
        "  retries: {retryOn: [gateway-error], attempts: 2}\n",
        "\"gatewayError\":true",
    )
    .await;
    for app in &bed.apps {
        app.set(Behaviour {
            delay: Duration::from_millis(50),
            ..Behaviour::default()
        });
    }
    warm_up(&bed).await;
    let load = Load::start(bed.client.addrs.outbound);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = started.elapsed();
    bed.servers[0].proc.signal("KILL");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = load.finish().await;
    report.print("proxy SIGKILL", &bed.client);
    let failed = report.failed();
    // A GET fails only if the proxy died between the response's head and
    // its body: sent on, it cannot be taken back.
    let cut = |s: &&Sample| s.error.as_deref().is_some_and(|e| e.starts_with(BODY_CUT));
    assert!(
        failed.iter().all(|s| s.post || cut(s)),
        "no GET fails: {failed:?}"
    );
    assert!(
        failed.len() <= WORKERS,
        "at most the requests in flight: {failed:?}"
    );
    assert!(
        failed.iter().all(|s| s.at + Duration::from_secs(1) >= killed_at && s.at <= killed_at + Duration::from_secs(1)),
        "failures only around the kill at {killed_at:?}: {failed:?}"
    );
}

/// The control plane is killed (SIGKILL) and comes back while the mesh
/// config is rewritten: an invalid document, then weight changes. The
/// proxies keep the last good state while it is away or the config is
/// wrong. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_and_config_churn_lose_no_request() {
    let _serial = SERIAL.lock().await;
    let mut bed = Bed::start(3).await;
    warm_up(&bed).await;
    let load = Load::start(bed.client.addrs.outbound);
    tokio::time::sleep(Duration::from_secs(1)).await;
    bed.control.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.control.restart(&[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // An invalid document next to the good ones: refused, last good kept.
    bed.dir.write(
        "mesh/broken.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: echo, namespace: demo}\nspec:\n  targetRef: {name: echo}\n  timeouts: {request: soon}\n",
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(bed.dir.path().join("mesh/broken.yaml")).unwrap();
    for weights in [[1, 0, 1], [0, 1, 1], [1, 1, 1]] {
        bed.publish(&weights);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let report = load.finish().await;
    report.print("control plane restart + config churn", &bed.client);
    assert!(report.samples.len() > 500, "load ran: {}", report.samples.len());
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
}

/// Certificates that live 4 s, so every proxy renews several times
/// during the load (the mesh connections drain to the new certificate).
/// No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_loses_no_request() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start_with(3, &["--cert-lifetime", "4s"]).await;
    warm_up(&bed).await;
    let renewals = |bed: &Bed| {
        let admin = bed.client.addrs.admin;
        async move {
            let (_, text) = admin_get(admin, "/metrics").await;
            text.lines()
                .find(|l| l.starts_with("weft_identity_cert_expiration_timestamp_seconds"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    let first = renewals(&bed).await;
    let load = Load::start(bed.client.addrs.outbound);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let report = load.finish().await;
    let last = renewals(&bed).await;
    report.print("certificate rotation every ~2 s", &bed.client);
    assert!(
        last > first + 4.0,
        "the client proxy renewed during the load ({first} → {last})"
    );
    assert!(report.samples.len() > 500, "load ran: {}", report.samples.len());
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
}

/// A storm of 5,000 connections opened and held against the client
/// proxy's outbound listener while one replica turns slow (2 s) behind a
/// 300 ms request timeout: after the slow replica is learned (2 s), fewer
/// than 1 in 1,000 requests fail, and the storm costs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_and_a_slow_replica_cost_almost_nothing() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    bed.traffic_policy(
        "  timeouts: {request: 300ms}\n  retries: {retryOn: [5xx], attempts: 2}\n",
        "\"fiveXx\":true",
    )
    .await;
    warm_up(&bed).await;
    let load_started = Instant::now();
    let load = Load::start(bed.client.addrs.outbound);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slow_at = load_started.elapsed();
    bed.apps[0].set(Behaviour {
        delay: Duration::from_secs(2),
        ..Behaviour::default()
    });
    let out = bed.client.addrs.outbound;
    let mut storm = Vec::new();
    for _ in 0..50 {
        let batch: Vec<_> = (0..100)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(out)))
            .collect();
        for c in batch {
            if let Ok(Ok(s)) = c.await {
                storm.push(s);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop(storm);
    let report = load.finish().await;
    report.print("connection storm + slow replica", &bed.client);
    let learned: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.at > slow_at + Duration::from_secs(2))
        .collect();
    let failed_after = learned
        .iter()
        .filter(|s| s.status != Some(StatusCode::OK))
        .count();
    assert!(
        learned.len() > 500,
        "load ran after the replica slowed: {}",
        learned.len()
    );
    assert!(
        failed_after * 1000 < learned.len(),
        "{failed_after} of {} requests failed after the slow replica was learned: {:?}",
        learned.len(),
        report.failed()
    );
}
