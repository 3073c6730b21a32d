//! A test bed for resilience tests: a control plane over a temp dir,
//! misbehaving apps ([`FlakyApp`]) behind their own proxies published as
//! one MeshService, a client proxy, and helpers to send load through it and
//! read what happened.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};

use crate::apps::*;
use crate::{eventually, ControlProc, ProxyProc, TempDir};

/// A control plane over a temp dir, `n` apps each behind a server proxy,
/// published as MeshService `echo` in namespace `demo`, and a client proxy.
pub struct Bed {
    pub dir: TempDir,
    pub control: ControlProc,
    pub apps: Vec<FlakyApp>,
    pub servers: Vec<ProxyProc>,
    pub client: ProxyProc,
}

impl Bed {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, &[]).await
    }

    /// As [`start`](Self::start), the control plane run with `flags`.
    pub async fn start_with(n: usize, flags: &[&str]) -> Self {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
        let control =
            ControlProc::start_with(&dir.path().join("mesh"), "127.0.0.1:0".parse().unwrap(), flags);
        let mut apps = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..n {
            let app = FlakyApp::start(Behaviour::default()).await;
            servers.push(ProxyProc::start(&format!(
                "appPorts: [{}]\n{}workload: echo\n",
                app.addr.port(),
                control.proxy_config("demo", "echo")
            )));
            apps.push(app);
        }
        let client = ProxyProc::start(&control.proxy_config("demo", "default"));
        let bed = Self {
            dir,
            control,
            apps,
            servers,
            client,
        };
        // Until a server proxy holds its certificate it refuses mesh TLS,
        // which the tests would count as the endpoint failing.
        for proxy in bed.servers.iter().chain([&bed.client]) {
            proxy.ready().await;
        }
        bed.publish(&vec![1; n]);
        bed
    }

    /// Publishes the endpoints with these weights.
    pub fn publish(&self, weights: &[u32]) {
        self.publish_with(weights, &[]);
    }

    /// As [`publish`](Self::publish), plus `extra` endpoints (app address,
    /// proxy address), weight 1.
    pub fn publish_with(&self, weights: &[u32], extra: &[(SocketAddr, SocketAddr)]) {
        let extra: String = extra
            .iter()
            .map(|(app, proxy)| format!("    - address: {app}\n      proxy: {proxy}\n"))
            .collect();
        let eps: String = self
            .apps
            .iter()
            .zip(&self.servers)
            .zip(weights)
            .map(|((a, s), w)| {
                format!(
                    "    - address: {}\n      proxy: {}\n      weight: {w}\n",
                    a.addr, s.addrs.inbound
                )
            })
            .collect();
        self.dir.write(
            "mesh/echo.yaml",
            &format!(
                "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  endpoints:\n{eps}{extra}"
            ),
        );
    }

    /// Writes a TrafficPolicy for `echo` with this spec (indented YAML
    /// under `spec:`, after `targetRef`), and waits until the client proxy
    /// shows `marker` in its `/config`.
    pub async fn traffic_policy(&self, spec: &str, marker: &str) {
        self.dir.write(
            "mesh/policy.yaml",
            &format!(
                "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  targetRef: {{name: echo}}\n{spec}"
            ),
        );
        self.wait_config(marker).await;
    }

    /// Writes an AuthorizationPolicy for `echo` admitting everyone under
    /// this `rateLimit` (flow YAML), and waits until the first server
    /// proxy shows `marker` in its `/config`.
    pub async fn rate_limit(&self, limit: &str, marker: &str) {
        self.dir.write(
            "mesh/authz.yaml",
            &format!(
                "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  targetRef: {{name: echo}}\n  rules: [{{}}]\n  rateLimit: {limit}\n"
            ),
        );
        eventually(
            Duration::from_secs(5),
            "the server has the rate limit",
            || async {
                let (_, config) = admin_get(self.servers[0].addrs.admin, "/config").await;
                let compact: String = config.split_whitespace().collect();
                compact.contains(marker).then_some(())
            },
        )
        .await;
    }

    pub async fn wait_config(&self, marker: &str) {
        // The watch exists once a request went through.
        let _ = call(self.client.addrs.outbound, "/", &[]).await;
        eventually(Duration::from_secs(5), marker, || async {
            let (_, config) = admin_get(self.client.addrs.admin, "/config").await;
            let compact: String = config.split_whitespace().collect();
            compact.contains(marker).then_some(())
        })
        .await;
    }

    pub fn share(&self, i: usize, before: &[usize]) -> usize {
        self.apps[i].requests() - before[i]
    }

    pub fn counts(&self) -> Vec<usize> {
        self.apps.iter().map(FlakyApp::requests).collect()
    }

    pub async fn metric(&self, prefix: &str) -> f64 {
        metric_sum(self.client.addrs.admin, prefix).await
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- client proxy log:\n{}", self.client.logs());
            for (i, s) in self.servers.iter().enumerate() {
                eprintln!("--- server proxy {i} log:\n{}", s.logs());
            }
        }
    }
}

/// Sum of the samples whose line starts with `prefix`.
pub async fn metric_sum(admin: SocketAddr, prefix: &str) -> f64 {
    let (_, text) = admin_get(admin, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub server: Option<String>,
    pub error: Option<String>,
    pub headers: http::HeaderMap,
    pub took: Duration,
}

pub async fn call(out: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Conn::open(out).await.send(path, headers).await
}

/// A keep-alive HTTP/1 connection to the client proxy, reopened when the
/// proxy closed it.
pub struct Conn {
    addr: SocketAddr,
    tx: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Self {
        Self {
            addr,
            tx: h1_client(addr).await,
        }
    }

    pub async fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        if self.tx.ready().await.is_err() {
            self.tx = h1_client(self.addr).await;
        }
        let mut req = Request::get(path).header("host", "echo");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let start = Instant::now();
        let rsp = self
            .tx
            .send_request(req.body(full(Bytes::new())).unwrap())
            .await
            .unwrap();
        let took = start.elapsed();
        let (status, headers, _, _) = collect(rsp).await;
        Reply {
            status,
            server: headers
                .get("x-echo-server")
                .map(|v| v.to_str().unwrap().to_string()),
            error: headers.get("weft-error").map(|v| v.to_str().unwrap().to_string()),
            headers,
            took,
        }
    }
}

/// `n` GETs over `conns` keep-alive connections in parallel.
pub async fn load(out: SocketAddr, n: usize, conns: usize) -> Vec<Reply> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let share = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut client = Conn::open(out).await;
            let mut replies = Vec::with_capacity(share);
            for _ in 0..share {
                replies.push(client.send("/", &[]).await);
            }
            replies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

pub fn ok_share(replies: &[Reply]) -> f64 {
    replies.iter().filter(|r| r.status == StatusCode::OK).count() as f64 / replies.len() as f64
}
