//! End-to-end test kit: real `weft-proxy` processes on ephemeral ports and
//! in-test servers (HTTP/1+2 echo, gRPC framing, WebSocket, TCP) to send
//! traffic through them.
//!
//! Start with [`Mesh`]: an app behind a server proxy, and a client proxy
//! whose endpoints file points at it. Every process is owned by a handle
//! that kills it on drop; every temp dir is removed on drop.

pub mod apps;
pub mod bed;
pub mod netns;
pub mod proc;
pub mod token_review;

pub use proc::{bin, ControlProc, Proc, ProxyProc, TempDir};
pub use token_review::TokenReviewApi;

use std::net::SocketAddr;
use std::time::Duration;

/// A two-proxy path on one machine: `client proxy outbound → server proxy
/// inbound → app`.
pub struct Mesh {
    pub client: ProxyProc,
    pub server: ProxyProc,
}

impl Mesh {
    /// `service` is the name clients use; `app` is where the app listens.
    /// `extra` is YAML appended to both proxies' configs.
    pub fn start(service: &str, app: SocketAddr, extra: &str) -> Self {
        let server = ProxyProc::start(&format!(
            "appPorts: [{}]\nworkload: {service}\n{extra}",
            app.port()
        ));
        let endpoints = format!(
            "{service}:\n  - addr: {app}\n    proxy: {}\nunreachable:\n  - addr: 127.0.0.1:1\n",
            server.addrs.inbound
        );
        let client = ProxyProc::start_with_endpoints(extra, &endpoints);
        Self { client, server }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the suite runs in CI, where prerequisites must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether a command the test needs is installed. On a developer machine a
/// missing command skips the test with a printed reason; under `CI=true` it
/// fails it, so CI never skips silently.
pub fn require(command: &str, why: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if in_ci() {
            panic!("CI=true but `{command}` is not installed ({why}); .ci/run must install it");
        }
        eprintln!("SKIPPED: `{command}` is not installed ({why}); CI installs it");
    }
    found
}

/// The sum of the `metric` series in a scrape (text format) that carry
/// every one of `labels`; `None` when no series does.
pub fn series_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            let set = l
                .split_once('{')
                .and_then(|(_, rest)| rest.rsplit_once('}'))
                .map_or("", |(s, _)| s);
            let pairs: Vec<&str> = set.split("\",").map(|p| p.trim_end_matches('"')).collect();
            wanted.iter().all(|w| pairs.contains(&w.trim_end_matches('"')))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
