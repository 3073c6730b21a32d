//! Telemetry as an on-call engineer meets it: metrics that promtool and a
//! real Prometheus server accept, PromQL answers that match the traffic
//! sent, `weft stat` agreeing with PromQL, access logs one line per
//! request, trace context, and bounded cardinality.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use weft_tests::apps::*;
use weft_tests::{bin, eventually, require, ControlProc, Mesh, Proc, ProxyProc, TempDir};

async fn get(outbound: std::net::SocketAddr, path: &str) -> StatusCode {
    let mut c = h1_client(outbound).await;
    let req = Request::get(path)
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, _, _, _) = collect(c.send_request(req).await.unwrap()).await;
    status
}

/// A control plane knowing `echo` (unmeshed, at `app`) and a client proxy.
fn control_plane_and_proxy(app: std::net::SocketAddr) -> (TempDir, ControlProc, ProxyProc) {
    let dir = TempDir::new();
    dir.write(
        "mesh.yaml",
        &format!("apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  endpoints: [{{address: \"{app}\"}}]\n"),
    );
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let proxy = ProxyProc::start(&control.proxy_config("demo", "default"));
    (dir, control, proxy)
}

fn promtool_check(text: &str) -> (bool, String) {
    let dir = TempDir::new();
    let file = dir.write("metrics.txt", text);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_proxy_and_control_plane_metrics() {
    if !require("promtool", "Debian package prometheus") {
        return;
    }
    let app = echo_app().await;
    let (_dir, control, proxy) = control_plane_and_proxy(app.addr);
    for path in ["/a", "/b?status=503", "/c"] {
        get(proxy.addrs.outbound, path).await;
    }
    let (_, text) = admin_get(proxy.addrs.admin, "/metrics").await;
    assert!(text.contains("weft_requests_total{"), "{text}");
    let (ok, out) = promtool_check(&text);
    assert!(ok, "promtool on the proxy's metrics: {out}\n{text}");
    let (_, text) = admin_get(control.admin, "/metrics").await;
    let (ok, out) = promtool_check(&text);
    assert!(ok, "promtool on the control plane's metrics: {out}\n{text}");
}

/// A Prometheus server on 127.0.0.1 scraping `targets` every second, with
/// its own temporary storage; killed on drop.
struct Prometheus {
    _proc: Proc,
    url: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(targets: &[std::net::SocketAddr]) -> Self {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Self::start_with(
            &format!(
                "  - job_name: weft\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
            |_| {},
        )
    }

    /// Prometheus scraping every second with these `scrape_configs`
    /// entries (`$DIR` is its directory); `files` writes what they refer
    /// to there.
    fn start_with(scrape_configs: &str, files: impl FnOnce(&TempDir)) -> Self {
        let dir = TempDir::new();
        files(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}",
                scrape_configs.replace("$DIR", &dir.path().display().to_string())
            ),
        );
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut proc = Proc::spawn(cmd);
        proc.wait_line(
            &["Server is ready to receive web requests"],
            Duration::from_secs(60),
        );
        Self {
            _proc: proc,
            url: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// One instant-query result as a number (`None` for an empty result).
    async fn query(&self, promql: &str) -> Option<f64> {
        let result = self.query_all(promql).await;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Every series an instant query returns (the query must be valid).
    async fn query_all(&self, promql: &str) -> Vec<serde_json::Value> {
        let v = self.api(&format!("query?query={}", url_encode(promql))).await;
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// A GET of `/api/v1/<path>`, as JSON.
    async fn api(&self, path: &str) -> serde_json::Value {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<Bytes>>();
        let uri: http::Uri = format!("http://{}/api/v1/{path}", self.url).parse().unwrap();
        let rsp = client.get(uri).await.unwrap();
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_known_traffic_and_weft_stat_agrees() {
    if !require("prometheus", "Debian package prometheus") {
        return;
    }
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let prometheus = Prometheus::start(&[mesh.client.addrs.admin, mesh.server.addrs.admin]);

    // 80 successes and 20 failures (the app answers 503), each ~30 ms.
    for i in 0..100 {
        let path = if i % 5 == 0 {
            "/slow?ms=30&status=503"
        } else {
            "/slow?ms=30"
        };
        get(mesh.client.addrs.outbound, path).await;
    }

    let total = r#"sum(weft_requests_total{direction="outbound",destination_service_name="echo"})"#;
    eventually(
        Duration::from_secs(20),
        "Prometheus scraped all 100 requests",
        || async { (prometheus.query(total).await == Some(100.0)).then_some(()) },
    )
    .await;
    let success = prometheus
        .query(r#"sum(weft_requests_total{direction="outbound",destination_service_name="echo",classification="success"}) / sum(weft_requests_total{direction="outbound",destination_service_name="echo"})"#)
        .await
        .unwrap();
    assert!((success - 0.8).abs() < 1e-9, "success rate {success}");
    // The two proxies are scraped independently: wait for the server's too.
    let inbound = r#"sum(weft_requests_total{direction="inbound",destination_service_name="echo"})"#;
    eventually(
        Duration::from_secs(20),
        "the server proxy's 100 requests scraped",
        || async { (prometheus.query(inbound).await == Some(100.0)).then_some(()) },
    )
    .await;
    let p50 = prometheus
        .query(r#"histogram_quantile(0.5, sum by (le) (weft_response_latency_seconds_bucket{direction="outbound",destination_service_name="echo"}))"#)
        .await
        .unwrap();
    assert!((0.025..=0.05).contains(&p50), "p50 {p50}s for ~30 ms responses");
    let p99 = prometheus
        .query(r#"histogram_quantile(0.99, sum by (le) (weft_response_latency_seconds_bucket{direction="outbound",destination_service_name="echo"}))"#)
        .await
        .unwrap();

    // weft stat over the same series.
    let out = Command::new(bin("weft"))
        .args(["stat", "--since-start", "-o", "json", "--proxy"])
        .arg(mesh.client.addrs.admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "echo")
        .expect("an echo row")
        .clone();
    assert_eq!(row["requests"].as_f64(), Some(100.0), "{row}");
    assert!(
        (row["success_rate"].as_f64().unwrap() - success).abs() < 1e-9,
        "{row}"
    );
    assert!(
        (row["p50_seconds"].as_f64().unwrap() - p50).abs() < 1e-9,
        "weft stat p50 vs PromQL {p50}: {row}"
    );
    assert!(
        (row["p99_seconds"].as_f64().unwrap() - p99).abs() < 1e-9,
        "weft stat p99 vs PromQL {p99}: {row}"
    );
    assert_eq!(
        row["mtls_share"].as_f64(),
        Some(0.0),
        "plaintext until the identity work"
    );

    // And `weft stat --prometheus` reads the same numbers from Prometheus.
    let url = format!("http://{}", prometheus.url);
    let out = Command::new(bin("weft"))
        .args(["stat", "--since-start", "-o", "json", "--prometheus", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_prometheus = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "echo")
        .unwrap_or_else(|| panic!("an echo row: {doc}"))
        .clone();
    for column in [
        "requests",
        "success_rate",
        "p50_seconds",
        "p99_seconds",
        "mtls_share",
    ] {
        let (a, b) = (
            row[column].as_f64().unwrap(),
            from_prometheus[column].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{column}: proxies {a}, Prometheus {b}");
    }
    // Over a window, rates: 20 more requests, seen by Prometheus after the
    // first 100 (an increase needs two samples of the series).
    for _ in 0..20 {
        get(mesh.client.addrs.outbound, "/slow?ms=1").await;
    }
    eventually(
        Duration::from_secs(20),
        "Prometheus scraped all 120 requests",
        || async { (prometheus.query(total).await == Some(120.0)).then_some(()) },
    )
    .await;
    let out = Command::new(bin("weft"))
        .args(["stat", "--interval", "5m", "-o", "json", "--prometheus", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["window_seconds"].as_f64(), Some(300.0), "{doc}");
    let windowed = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "echo");
    assert!(
        windowed.is_some_and(|r| r["rps"].as_f64().is_some_and(|v| v > 0.0)),
        "{doc}"
    );
    // A Prometheus that is not there is an error, not an empty table.
    let out = Command::new(bin("weft"))
        .args(["stat", "--prometheus", "http://127.0.0.1:9", "-o", "json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_stat_finds_proxies_through_the_control_plane() {
    let app = echo_app().await;
    let (_dir, control, proxy) = control_plane_and_proxy(app.addr);
    assert_eq!(get(proxy.addrs.outbound, "/x").await, StatusCode::OK);
    let (_, list) = admin_get(control.admin, "/proxies").await;
    assert!(list.contains(&proxy.addrs.admin.to_string()), "{list}");

    // A live window while traffic flows.
    let out = proxy.addrs.outbound;
    let traffic = tokio::spawn(async move {
        for _ in 0..60 {
            get(out, "/y").await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let stat = tokio::task::spawn_blocking({
        // By DNS name, as the docs show it (`weft-control.weft-system:9990`).
        let cp = format!("localhost:{}", control.admin.port());
        move || {
            Command::new(bin("weft"))
                .args(["stat", "--interval", "1s", "--control-plane", &cp])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    traffic.await.unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&stat.stderr)
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("echo "))
        .expect("an echo row")
        .split_whitespace()
        .collect();
    let rps: f64 = row[1].parse().unwrap();
    assert!(rps > 5.0, "requests/s over the window: {text}");
    assert_eq!(row[2], "100.00%", "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_with_trace_ids() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "accessLog: true\n");
    let mut sent_traces = Vec::new();
    for i in 0..10 {
        let mut c = h1_client(mesh.client.addrs.outbound).await;
        let mut req = Request::get(format!("/log/{i}")).header("host", "echo");
        if i == 0 {
            req = req.header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
        }
        let (status, headers, _, _) = collect(
            c.send_request(req.body(full(Bytes::new())).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let tp = headers["x-echo-traceparent"].to_str().unwrap().to_string();
        sent_traces.push((format!("/log/{i}"), tp.split('-').nth(1).unwrap().to_string()));
    }
    assert_eq!(
        sent_traces[0].1, "4bf92f3577b34da6a3ce929d0e0e4736",
        "an existing trace context is propagated"
    );

    let lines = eventually(Duration::from_secs(5), "10 outbound access-log lines", || async {
        let http: Vec<serde_json::Value> = mesh
            .client
            .proc
            .stdout_lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every access-log line is JSON"))
            .filter(|v| v["kind"] == "http")
            .collect();
        (http.len() == 10).then_some(http)
    })
    .await;
    for (path, trace) in &sent_traces {
        let line = lines
            .iter()
            .find(|l| l["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no line for {path}"));
        assert_eq!(line["direction"], "outbound");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["authority"], "echo");
        assert_eq!(line["status"], 200);
        assert_eq!(line["service"], "echo");
        assert_eq!(line["upstream"], mesh.server.addrs.inbound.to_string());
        assert_eq!(
            line["trace_id"],
            trace.as_str(),
            "the app saw the logged trace id"
        );
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(line["error"], serde_json::Value::Null);
    }
    // The server side logs the same requests, with the same trace ids.
    let server: Vec<serde_json::Value> = eventually(Duration::from_secs(5), "10 inbound lines", || async {
        let v: Vec<serde_json::Value> = mesh
            .server
            .proc
            .stdout_lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "http")
            .collect();
        (v.len() == 10).then_some(v)
    })
    .await;
    for (path, trace) in &sent_traces {
        assert!(server
            .iter()
            .any(|l| l["path"] == path.as_str() && l["trace_id"] == trace.as_str()));
    }
    // One line per TCP connection too, once it closes: stop the client
    // proxy and its mesh connection to the server proxy ends.
    drop(mesh.client);
    let line = eventually(Duration::from_secs(5), "a TCP access-log line", || async {
        mesh.server
            .proc
            .stdout_lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["kind"] == "tcp" && v["protocol"] == "http2")
    })
    .await;
    assert_eq!(line["direction"], "inbound");
    assert!(
        line["bytes_read"].as_u64().unwrap() > 0 && line["bytes_written"].as_u64().unwrap() > 0,
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_authorities_do_not_grow_the_series() {
    let proxy = ProxyProc::start("");
    let out = proxy.addrs.outbound;
    let series = || async {
        let (_, text) = admin_get(proxy.addrs.admin, "/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
            .count()
    };
    let flood = |from: usize, to: usize| async move {
        let mut handles = Vec::new();
        for worker in 0..4 {
            handles.push(tokio::spawn(async move {
                let mut c = h1_client(out).await;
                for i in (from + worker..to).step_by(4) {
                    c.ready().await.unwrap();
                    let req = Request::get("/")
                        .header("host", format!("host-{i}.example"))
                        .body(full(Bytes::new()))
                        .unwrap();
                    let (status, _, _, _) = collect(c.send_request(req).await.unwrap()).await;
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    };
    flood(0, 100).await;
    let before = series().await;
    flood(100, 10_000).await;
    let after = series().await;
    assert_eq!(
        before, after,
        "10,000 distinct unknown authorities share one label value"
    );
    let (_, text) = admin_get(proxy.addrs.admin, "/metrics").await;
    assert!(
        text.contains(r#"destination_service_name="unknown""#)
            && text.contains("error=\"no-endpoints\"} 10000"),
        "{text}"
    );
}

/// The proxies scraped as Kubernetes scrapes them: the standard
/// `kubernetes-pods` job (the injector's `prometheus.io/*` annotations),
/// fed through `file_sd_configs` targets carrying the `__meta_kubernetes_*`
/// labels a pod would have. No Weft label is renamed `exported_*`; the
/// golden signals by destination service and namespace, by source
/// workload, and a latency quantile answer for the traffic sent; every
/// PromQL expression in docs/metrics.md and the dashboard is valid, and the
/// request ones return data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_scrape_keeps_every_label() {
    if !require("prometheus", "Debian package prometheus") {
        return;
    }
    let bed = weft_tests::bed::Bed::start(1).await;
    let pod = |addr: std::net::SocketAddr, name: &str, app: &str| {
        serde_json::json!({
            "targets": [addr.to_string()],
            "labels": {
                "__meta_kubernetes_namespace": "demo",
                "__meta_kubernetes_pod_name": name,
                "__meta_kubernetes_pod_label_app": app,
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_pod_annotation_prometheus_io_port": addr.port().to_string(),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            }
        })
    };
    let targets = serde_json::json!([
        pod(bed.client.addrs.admin, "web-6d4cf56db6-x2x7q", "web"),
        pod(bed.servers[0].addrs.admin, "echo-7b9f8c6b5-k8s0p", "echo"),
    ]);
    // The relabelling docs/metrics.md gives (Prometheus's own example job).
    let job = r#"  - job_name: kubernetes-pods
    file_sd_configs:
      - files: ['$DIR/pods.json']
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        action: replace
        target_label: __metrics_path__
        regex: (.+)
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        action: replace
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
      - source_labels: [__meta_kubernetes_namespace]
        action: replace
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        action: replace
        target_label: pod
"#;
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).unwrap();
    assert!(
        docs.contains(&job.replace(
            "file_sd_configs:\n      - files: ['$DIR/pods.json']",
            "kubernetes_sd_configs:\n      - role: pod"
        )),
        "docs/metrics.md gives the same job"
    );
    let prometheus = Prometheus::start_with(job, |dir| {
        dir.write("pods.json", &targets.to_string());
    });

    // Until the client knows echo; what that cost is read back from the
    // proxies, so the numbers below are exact.
    eventually(Duration::from_secs(10), "the client reaches echo", || async {
        (get(bed.client.addrs.outbound, "/").await == StatusCode::OK).then_some(())
    })
    .await;
    let own = |admin: std::net::SocketAddr, labels: &'static [(&'static str, &'static str)]| async move {
        let (_, text) = admin_get(admin, "/metrics").await;
        weft_tests::series_sum(&text, "weft_requests_total", labels).unwrap_or(0.0)
    };
    let out_before = own(
        bed.client.addrs.admin,
        &[("direction", "outbound"), ("destination_service_name", "echo")],
    )
    .await;
    let ok_before = own(
        bed.client.addrs.admin,
        &[
            ("direction", "outbound"),
            ("destination_service_name", "echo"),
            ("classification", "success"),
        ],
    )
    .await;
    let in_before = own(
        bed.servers[0].addrs.admin,
        &[("direction", "inbound"), ("source_workload", "default")],
    )
    .await;
    // 54 requests, 4 of them failing (the app answers 503; fewer than the
    // breaker's 5 in a row, so every one reaches the server proxy).
    for _ in 0..50 {
        assert_eq!(get(bed.client.addrs.outbound, "/").await, StatusCode::OK);
    }
    bed.apps[0].set(Behaviour {
        fail_ratio: 1.0,
        ..Default::default()
    });
    for _ in 0..4 {
        get(bed.client.addrs.outbound, "/").await;
    }
    let by_service = r#"sum(weft_requests_total{direction="outbound",destination_service_name="echo",destination_service_namespace="demo",namespace="demo",pod="web-6d4cf56db6-x2x7q"})"#;
    eventually(
        Duration::from_secs(20),
        "Prometheus scraped the client's requests",
        || async { (prometheus.query(by_service).await == Some(out_before + 54.0)).then_some(()) },
    )
    .await;
    let by_source = r#"sum(weft_requests_total{direction="inbound",source_workload="default",source_workload_namespace="demo",destination_workload="echo",connection_security_policy="mutual_tls",pod="echo-7b9f8c6b5-k8s0p"})"#;
    eventually(
        Duration::from_secs(20),
        "Prometheus scraped the server's requests",
        || async { (prometheus.query(by_source).await == Some(in_before + 54.0)).then_some(()) },
    )
    .await;
    let success = prometheus
        .query(r#"sum(weft_requests_total{direction="outbound",destination_service_name="echo",classification="success"}) / sum(weft_requests_total{direction="outbound",destination_service_name="echo"})"#)
        .await
        .unwrap();
    let expected = (ok_before + 50.0) / (out_before + 54.0);
    assert!(
        (success - expected).abs() < 1e-9,
        "success rate {success}, expected {expected}"
    );
    let answered_by = prometheus
        .query(r#"sum(weft_requests_total{direction="outbound",destination_workload="echo",destination_principal="spiffe://cluster.local/ns/demo/sa/echo"})"#)
        .await;
    assert_eq!(
        answered_by,
        Some(in_before + 54.0),
        "the client proxy knows which workload answered (every request the server saw)"
    );
    let p99 = prometheus
        .query(r#"histogram_quantile(0.99, sum by (le) (weft_response_latency_seconds_bucket{direction="outbound",destination_service_name="echo"}))"#)
        .await
        .unwrap();
    assert!(p99 > 0.0 && p99 < 1.0, "p99 {p99}");
    eprintln!(
        "kubernetes-pods scrape: {} requests to echo.demo, success rate {success}, p99 {p99}s",
        out_before + 54.0
    );

    // No label was renamed because it clashed with a target label.
    let labels = prometheus.api("labels").await;
    let names: Vec<&str> = labels["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("exported_")), "{names:?}");
    assert!(
        names.contains(&"destination_service_name") && names.contains(&"pod"),
        "{names:?}"
    );

    // Every PromQL expression the docs and the dashboard give, once each
    // series has samples enough for rate().
    eventually(
        Duration::from_secs(20),
        "three samples of every series",
        || async {
            let q = r#"min(count_over_time(weft_requests_total[1m])) >= 3"#;
            prometheus.query(q).await.map(|_| ())
        },
    )
    .await;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/grafana/weft-golden-signals.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs: Vec<String> = docs
        .split("```promql\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_string)
        .collect();
    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| collect_exprs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{} expressions found", exprs.len());
    let mut empty = Vec::new();
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$direction", "outbound")
            .replace("$namespace", ".*")
            .replace("$service", ".*");
        let result = prometheus.query_all(&q).await;
        // Request queries must find the traffic, except those about what
        // this traffic has none of (routes, gRPC, the docs' `backend`).
        let about_requests = [
            "weft_requests_total",
            "weft_response_latency_seconds",
            "weft_response_bytes",
        ]
        .iter()
        .any(|m| q.contains(m));
        let none_sent = ["route!=", "grpc", "backend"].iter().any(|m| q.contains(m));
        if about_requests && !none_sent && result.is_empty() {
            empty.push(q);
        }
    }
    assert!(empty.is_empty(), "request queries that found no data: {empty:#?}");
}

/// An app that serves its own metrics (here `orders_created_total` and a
/// clashing `process_cpu_seconds_total`, as Go and Java clients export).
async fn app_with_metrics() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/actuator/prometheus" {
                        "# HELP orders_created_total Orders created.\n# TYPE orders_created_total counter\norders_created_total{shop=\"eu\"} 7\n# HELP process_cpu_seconds_total The app's CPU.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 99\n"
                    } else {
                        ""
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(full(Bytes::from_static(
                        body.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Metrics merging: a proxy told where the app serves its metrics (as the
/// injector tells it when the pod's `prometheus.io/*` annotations named
/// them) serves them after its own, leaving out the app's family that
/// clashes with one of its own; the merged text passes promtool, a real
/// Prometheus scraping only the proxy gets both, and an app that is down
/// costs only its own series (counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_metrics_are_merged_into_the_proxys() {
    let app = app_with_metrics().await;
    let proxy = ProxyProc::start(&format!(
        "appPorts: [{}]\nappMetricsPort: {}\nappMetricsPath: /actuator/prometheus\n",
        app.port(),
        app.port()
    ));
    let (status, text) = admin_get(proxy.addrs.admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("orders_created_total{shop=\"eu\"} 7\n"), "{text}");
    assert!(text.contains("weft_build_info"), "{text}");
    assert_eq!(
        text.matches("# TYPE process_cpu_seconds_total").count(),
        1,
        "{text}"
    );
    assert!(
        !text.contains("process_cpu_seconds_total 99"),
        "the app's clashing family is left out"
    );
    if require("promtool", "Debian package prometheus") {
        let (ok, out) = promtool_check(&text);
        assert!(ok, "promtool on the merged metrics: {out}");
    }
    if require("prometheus", "Debian package prometheus") {
        let prometheus = Prometheus::start(&[proxy.addrs.admin]);
        eventually(
            Duration::from_secs(20),
            "the app's and the proxy's series scraped",
            || async {
                let app = prometheus.query(r#"orders_created_total{shop="eu"}"#).await;
                let own = prometheus.query("weft_build_info").await;
                (app == Some(7.0) && own == Some(1.0)).then_some(())
            },
        )
        .await;
    }
    // The app's metrics gone: the proxy's still served, the miss counted.
    let down = ProxyProc::start("appMetricsPort: 1\n");
    let (status, text) = admin_get(down.addrs.admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("weft_build_info"), "{text}");
    let (_, text) = admin_get(down.addrs.admin, "/metrics").await;
    let misses: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("weft_app_metrics_scrape_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(misses >= 1.0, "{text}");
}
