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
    /// A proxy's admin address (repeat).
    #[arg(long = "proxy", value_name = "ADDR")]
    pub proxies: Vec<SocketAddr>,
    /// The control plane's admin address: read every connected proxy.
    #[arg(long, value_name = "ADDR")]
    pub control_plane: Option<SocketAddr>,
    /// Window over which rates are computed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
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

async fn proxies(client: &HttpClient, args: &Args) -> Result<Vec<SocketAddr>, String> {
    let mut out = args.proxies.clone();
    if let Some(cp) = args.control_plane {
        let body = get(client, format!("http://{cp}/proxies")).await?;
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| format!("the control plane's /proxies: {e}"))?;
        for p in list {
            if let Some(addr) = p
                .get("admin")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse().ok())
            {
                out.push(addr);
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
    let admins = proxies(&client, &args).await?;
    let mut previous = (Instant::now(), stats::scrape(&client, &admins).await);
    loop {
        let (rows, window) = if args.since_start {
            (stats::rows(&previous.1, 0.0), None)
        } else {
            tokio::time::sleep(args.interval).await;
            let now = stats::scrape(&client, &admins).await;
            let seconds = previous.0.elapsed().as_secs_f64();
            let rows = stats::rows(&stats::window(&now, &previous.1), seconds);
            previous = (Instant::now(), now);
            (rows, Some(seconds))
        };
        match args.output {
            Output::Json => {
                let doc = serde_json::json!({
                    "proxies": admins.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
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
