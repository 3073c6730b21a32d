//! `weft stat`: golden signals per service and route, from the proxies'
//! metrics: requests/s, success rate, p50/p95/p99, share of mTLS traffic.
//!
//! The proxies are named with `--proxy` (admin addresses) or found through
//! the control plane (`--control-plane`, its admin address), which lists
//! every proxy with an open stream. Numbers are computed as PromQL would
//! from the same series: rates from counter deltas over the window, and
//! `histogram_quantile` over summed buckets.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A proxy's admin address, `host:port` (repeat).
    #[arg(long = "proxy", value_name = "HOST:PORT", value_parser = host_port)]
    pub proxies: Vec<String>,
    /// The control plane's admin address, `host:port` (a DNS name such as
    /// `weft-control.weft-system:9990` or an IP): read every connected
    /// proxy.
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port)]
    pub control_plane: Option<String>,
    /// Read the same numbers from a Prometheus server
    /// (`http://HOST:PORT`, e.g. through `kubectl port-forward`) with the
    /// PromQL docs/metrics.md gives, instead of scraping proxies.
    #[arg(long, value_name = "URL", value_parser = prometheus_url, conflicts_with_all = ["proxies", "control_plane"])]
    pub prometheus: Option<String>,
    /// Window over which rates are computed (default 1s from proxies, 1m
    /// from Prometheus, which needs at least two scrapes in it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Totals since the proxies started instead of a window (no rates).
    #[arg(long)]
    pub since_start: bool,
    /// Refresh every interval, like `top`.
    #[arg(long)]
    pub watch: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

pub fn run(args: Args) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(stat(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft stat: {e}");
            ExitCode::FAILURE
        }
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(client: &HttpClient, url: String) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let rsp = tokio::time::timeout(Duration::from_secs(2), client.get(uri))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !rsp.status().is_success() {
        return Err(format!("{url}: {}", rsp.status()));
    }
    Ok(rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes())
}

/// An address to dial: `host:port`, the host a DNS name or an IP
/// (`[v6]` in brackets).
fn host_port(s: &str) -> Result<String, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr.to_string());
    }
    match s.parse::<http::uri::Authority>() {
        Ok(a) if a.port_u16().is_some_and(|p| p != 0) && !a.host().is_empty() && !s.contains('@') => {
            Ok(s.to_string())
        }
        _ => Err(format!(
            "expected HOST:PORT (e.g. weft-control.weft-system:9990 or 127.0.0.1:4191), got {s:?}"
        )),
    }
}

async fn proxies(client: &HttpClient, args: &Args) -> Result<Vec<String>, String> {
    let mut out = args.proxies.clone();
    if let Some(cp) = &args.control_plane {
        let body = get(client, format!("http://{cp}/proxies")).await?;
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| format!("the control plane's /proxies: {e}"))?;
        for p in list {
            if let Some(addr) = p
                .get("admin")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                out.push(addr.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err("no proxies to read: pass --proxy ADDR or --control-plane ADDR".into());
    }
    Ok(out)
}

async fn stat(args: Args) -> Result<(), String> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    if let Some(url) = &args.prometheus {
        return stat_prometheus(&client, url, &args).await;
    }
    let interval = args.interval.unwrap_or(Duration::from_secs(1));
    let admins = proxies(&client, &args).await?;
    let mut previous = (Instant::now(), stats::scrape(&client, &admins).await);
    loop {
        let (rows, window) = if args.since_start {
            (stats::rows(&previous.1, 0.0), None)
        } else {
            tokio::time::sleep(interval).await;
            let now = stats::scrape(&client, &admins).await;
            let seconds = previous.0.elapsed().as_secs_f64();
            let rows = stats::rows(&stats::window(&now, &previous.1), seconds);
            previous = (Instant::now(), now);
            (rows, Some(seconds))
        };
        match args.output {
            Output::Json => {
                let doc = serde_json::json!({
                    "proxies": admins,
                    "window_seconds": window,
                    "rows": rows,
                });
                println!("{}", serde_json::to_string(&doc).expect("rows serialize"));
            }
            Output::Table => {
                if args.watch {
                    print!("\x1b[2J\x1b[H");
                }
                let span = window.map_or_else(|| "since start".to_string(), |w| format!("over {w:.1}s"));
                println!("{} proxies, {span}\n{}", admins.len(), stats::render(&rows, true));
            }
        }
        if !args.watch || args.since_start {
            return Ok(());
        }
    }
}

/// `--prometheus`: one query per column, over the window (or since the
/// series began with `--since-start`); with `--watch`, again every window.
async fn stat_prometheus(client: &HttpClient, url: &str, args: &Args) -> Result<(), String> {
    let window = args.interval.unwrap_or(Duration::from_secs(60));
    loop {
        let rows = prometheus_rows(client, url, (!args.since_start).then_some(window)).await?;
        match args.output {
            Output::Json => {
                let doc = serde_json::json!({
                    "prometheus": url,
                    "window_seconds": (!args.since_start).then_some(window.as_secs_f64()),
                    "rows": rows,
                });
                println!("{}", serde_json::to_string(&doc).expect("rows serialize"));
            }
            Output::Table => {
                if args.watch {
                    print!("\x1b[2J\x1b[H");
                }
                let span = if args.since_start {
                    "since the series began".to_string()
                } else {
                    format!("over {}", humantime::format_duration(window))
                };
                println!("{url}, {span}\n{}", stats::render(&rows, true));
            }
        }
        if !args.watch || args.since_start {
            return Ok(());
        }
        tokio::time::sleep(window).await;
    }
}

/// The PromQL `weft stat --prometheus` runs for `window` (`None`: totals
/// since the series began), by destination service and route: requests,
/// failures, mTLS requests, then p50, p95, p99.
pub fn promql(window: Option<Duration>) -> [String; 6] {
    const BY: &str = "destination_service_namespace, destination_service_name, route";
    let over = |series: &str, f: &str| match window {
        Some(w) => format!("{f}({series}[{}s])", w.as_secs().max(1)),
        None => series.to_string(),
    };
    let requests = |extra: &str| {
        let series = format!("weft_requests_total{{direction=\"outbound\"{extra}}}");
        format!("sum by ({BY}) ({})", over(&series, "increase"))
    };
    let quantile = |q: &str| {
        let series = r#"weft_response_latency_seconds_bucket{direction="outbound"}"#;
        format!(
            "histogram_quantile({q}, sum by ({BY}, le) ({}))",
            over(series, "rate")
        )
    };
    [
        requests(""),
        requests(r#",classification="failure""#),
        requests(r#",connection_security_policy="mutual_tls""#),
        quantile("0.5"),
        quantile("0.95"),
        quantile("0.99"),
    ]
}

/// Rows from Prometheus: each column one instant query.
async fn prometheus_rows(
    client: &HttpClient,
    url: &str,
    window: Option<Duration>,
) -> Result<Vec<stats::Row>, String> {
    let mut columns = Vec::new();
    for query in promql(window) {
        let q = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", &query)
            .finish();
        let body = get(client, format!("{}/api/v1/query?{q}", url.trim_end_matches('/'))).await?;
        columns.push(stats::prometheus_vector(&body).map_err(|e| format!("{url}: {query}: {e}"))?);
    }
    let seconds = window.map_or(0.0, |w| w.as_secs_f64());
    Ok(stats::prometheus_rows(&columns, seconds))
}

/// `http://HOST:PORT` with an optional path prefix (Prometheus behind a
/// `--web.route-prefix`).
fn prometheus_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() || uri.query().is_some() {
        return Err(format!(
            "expected http://HOST:PORT[/prefix] (e.g. http://127.0.0.1:9090), got {s:?}"
        ));
    }
    Ok(s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            host_port("weft-control.weft-system:9990").as_deref(),
            Ok("weft-control.weft-system:9990")
        );
        assert_eq!(host_port("127.0.0.1:4191").as_deref(), Ok("127.0.0.1:4191"));
        assert_eq!(host_port("[::1]:4191").as_deref(), Ok("[::1]:4191"));
        for bad in [
            "weft-control",
            "weft-control:0",
            ":9990",
            "user@host:1",
            "http://x:1",
        ] {
            let err = host_port(bad).unwrap_err();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }
}
