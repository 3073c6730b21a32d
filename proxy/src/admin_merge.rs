//! Metrics merging: the proxy's `/metrics` also carries the app's own
//! metrics, so the one scrape target the pod's `prometheus.io/*`
//! annotations name (the proxy, once injected) still yields the app's
//! series. The injector records where the app served them
//! (`appMetricsPort`, `appMetricsPath`) before pointing the annotations at
//! the proxy.
//!
//! Merged output is always the Prometheus text format: an app's
//! OpenMetrics cannot be appended to ours as OpenMetrics (one `# EOF`,
//! and its rules for counters), while every scraper reads the text format.
//! A family of the app's whose name is also one of the proxy's
//! (`process_cpu_seconds_total` from a Go or Java app) is left out: two
//! families of one name fail the whole scrape.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// How long the app has to answer; a slow app costs the scrape its own
/// series, not the proxy's.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest app exposition merged (bytes).
const MAX_APP_METRICS: usize = 8 * 1024 * 1024;

/// Where the app serves its metrics.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    pub addr: SocketAddr,
    pub path: String,
}

/// Why the app's metrics are missing from a scrape.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Io(String),
    #[error("HTTP {0}")]
    Status(StatusCode),
}

impl AppMetrics {
    /// The app's exposition, asked for in the text format.
    pub async fn fetch(&self) -> Result<String, FetchError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn get(&self) -> Result<String, FetchError> {
        let io = |e: &dyn std::fmt::Display| FetchError::Io(e.to_string());
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| io(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header(header::ACCEPT, "text/plain;version=0.0.4")
            .body(Empty::<Bytes>::new())
            .map_err(|e| io(&e))?;
        let rsp = send.send_request(req).await.map_err(|e| io(&e))?;
        if rsp.status() != StatusCode::OK {
            return Err(FetchError::Status(rsp.status()));
        }
        let body = Limited::new(rsp.into_body(), MAX_APP_METRICS)
            .collect()
            .await
            .map_err(|e| io(&e))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The metric family a text-format line belongs to: the name of a
/// `# HELP`/`# TYPE` line, or of a sample without its histogram or counter
/// suffix. `None` for other comments and blank lines.
fn family(line: &str) -> Option<&str> {
    if let Some(rest) = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
    {
        return rest.split_whitespace().next();
    }
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name = line.split(['{', ' ']).next()?;
    Some(name)
}

/// The names a family's samples may carry.
fn sample_names(family: &str) -> [String; 6] {
    ["", "_total", "_bucket", "_sum", "_count", "_created"].map(|s| format!("{family}{s}"))
}

/// `ours` (text format) followed by the app's exposition, without the
/// app's families that one of ours shares a sample name with, without
/// `# EOF`, ending in a newline.
pub fn merge(ours: &str, app: &str) -> String {
    let mut taken: HashSet<String> = HashSet::new();
    for line in ours.lines() {
        if let Some(f) = family(line) {
            taken.extend(sample_names(f));
        }
    }
    let mut out = String::with_capacity(ours.len() + app.len() + 1);
    out.push_str(ours);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    // A `# TYPE` line declares the names its samples will use; a clash on
    // any of them drops the whole family.
    let mut dropped: HashSet<String> = HashSet::new();
    for line in app.lines() {
        if line.starts_with("# EOF") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(f) = rest.split_whitespace().next() {
                if sample_names(f).iter().any(|n| taken.contains(n)) {
                    dropped.extend(sample_names(f));
                }
            }
        }
        let keep = match family(line) {
            Some(name) => !taken.contains(name) && !dropped.contains(name),
            None => true,
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "# HELP weft_requests_total Requests.\n# TYPE weft_requests_total counter\nweft_requests_total{direction=\"inbound\"} 3\n# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n";

    #[test]
    fn app_families_follow_ours_and_clashes_are_left_out() {
        let app = "# HELP http_server_requests_seconds Requests.\n# TYPE http_server_requests_seconds histogram\nhttp_server_requests_seconds_bucket{le=\"0.1\"} 4\nhttp_server_requests_seconds_count 4\nhttp_server_requests_seconds_sum 0.2\n# HELP process_cpu_seconds_total The app's CPU.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 9\n# EOF\n";
        let merged = merge(OURS, app);
        assert!(merged.starts_with(OURS));
        assert!(merged.contains("http_server_requests_seconds_bucket{le=\"0.1\"} 4\n"));
        assert!(merged.contains("# TYPE http_server_requests_seconds histogram\n"));
        assert_eq!(
            merged.matches("process_cpu_seconds_total 9").count(),
            0,
            "{merged}"
        );
        assert_eq!(
            merged.matches("# TYPE process_cpu_seconds_total").count(),
            1,
            "{merged}"
        );
        assert!(!merged.contains("# EOF"));
    }

    #[test]
    fn an_openmetrics_counter_family_is_matched_by_its_sample_names() {
        // OpenMetrics names the family without `_total`.
        let app = "# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 9\n# TYPE jobs counter\njobs_total 2\n";
        let merged = merge(OURS, app);
        assert!(!merged.contains("process_cpu_seconds_total 9"), "{merged}");
        assert!(merged.contains("jobs_total 2\n"), "{merged}");
    }
}
