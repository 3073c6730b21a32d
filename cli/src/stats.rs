//! Per-service golden signals from the proxies' `/metrics`: requests per
//! second, success rate and latency quantiles, computed the way PromQL
//! does (`rate()` over counter deltas, `histogram_quantile()` with linear
//! interpolation inside a bucket).

use std::collections::BTreeMap;

/// What a row is about: the outbound destination service and route.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub service: String,
    pub namespace: String,
    pub route: String,
}

/// Cumulative counts for one key at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub failures: f64,
    /// Requests whose hop between proxies was mTLS.
    pub tls: f64,
    /// `(le, cumulative count)`, sorted by `le`.
    pub buckets: Vec<(f64, f64)>,
}

impl Counts {
    fn add_buckets(&mut self, buckets: &[(f64, f64)]) {
        for (le, count) in buckets {
            match self.buckets.iter_mut().find(|(l, _)| l == le) {
                Some((_, c)) => *c += count,
                None => self.buckets.push((*le, *count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Counts) -> Counts {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let prev = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, p)| *p);
                (*le, (c - prev).max(0.0))
            })
            .collect();
        Counts {
            requests: (self.requests - before.requests).max(0.0),
            failures: (self.failures - before.failures).max(0.0),
            tls: (self.tls - before.tls).max(0.0),
            buckets,
        }
    }

    /// Like PromQL's `histogram_quantile(q, …)`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let in_bucket = count - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, count);
        }
        None
    }

    fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.tls += other.tls;
        self.add_buckets(&other.buckets);
    }
}

/// Merges keys that differ only in route (per-service view).
pub fn by_service(counts: &BTreeMap<Key, Counts>) -> BTreeMap<Key, Counts> {
    let mut out: BTreeMap<Key, Counts> = BTreeMap::new();
    for (k, c) in counts {
        let key = Key {
            route: String::new(),
            ..k.clone()
        };
        out.entry(key).or_default().merge(c);
    }
    out
}

/// What happened between two scrapes, per key.
pub fn window(now: &BTreeMap<Key, Counts>, before: &BTreeMap<Key, Counts>) -> BTreeMap<Key, Counts> {
    now.iter()
        .map(|(k, c)| (k.clone(), c.since(before.get(k).unwrap_or(&Counts::default()))))
        .collect()
}

/// Sums every proxy's outbound series per destination service and route.
pub fn parse(text: &str, into: &mut BTreeMap<Key, Counts>) {
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) else {
        return;
    };
    for sample in scrape.samples {
        if sample.labels.get("direction") != Some("outbound") {
            continue;
        }
        let Some(service) = sample.labels.get("destination_service_name") else {
            continue;
        };
        let key = Key {
            service: service.to_string(),
            namespace: sample
                .labels
                .get("destination_service_namespace")
                .filter(|ns| *ns != "unknown")
                .unwrap_or_default()
                .to_string(),
            route: sample.labels.get("route").unwrap_or_default().to_string(),
        };
        let entry = into.entry(key).or_default();
        match (sample.metric.as_str(), &sample.value) {
            (
                "weft_requests_total",
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
            ) => {
                entry.requests += v;
                if sample.labels.get("classification") == Some("failure") {
                    entry.failures += v;
                }
                if sample.labels.get("connection_security_policy") == Some("mutual_tls") {
                    entry.tls += v;
                }
            }
            ("weft_response_latency_seconds", prometheus_parse::Value::Histogram(h)) => {
                let buckets: Vec<(f64, f64)> = h.iter().map(|b| (b.less_than, b.count)).collect();
                entry.add_buckets(&buckets);
            }
            _ => {}
        }
    }
}

/// Scrapes every proxy's `/metrics` (500 ms timeout each) and sums them.
pub async fn scrape(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    admins: &[impl std::fmt::Display],
) -> BTreeMap<Key, Counts> {
    use http_body_util::BodyExt;
    let mut all = BTreeMap::new();
    for admin in admins {
        let Ok(uri) = format!("http://{admin}/metrics").parse::<http::Uri>() else {
            continue;
        };
        let Ok(Ok(rsp)) = tokio::time::timeout(std::time::Duration::from_millis(500), client.get(uri)).await
        else {
            continue;
        };
        if let Ok(body) = rsp.into_body().collect().await {
            parse(&String::from_utf8_lossy(&body.to_bytes()), &mut all);
        }
    }
    all
}

/// One table row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub service: String,
    pub namespace: String,
    pub route: String,
    /// Requests in the window (or since the proxies started).
    pub requests: f64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Share of requests that crossed the mesh over mTLS.
    pub mtls_share: Option<f64>,
}

pub fn rows(window: &BTreeMap<Key, Counts>, seconds: f64) -> Vec<Row> {
    window
        .iter()
        .map(|(k, c)| Row {
            service: k.service.clone(),
            namespace: k.namespace.clone(),
            route: k.route.clone(),
            requests: c.requests,
            rps: if seconds > 0.0 { c.requests / seconds } else { 0.0 },
            success_rate: (c.requests > 0.0).then(|| 1.0 - c.failures / c.requests),
            p50_seconds: c.quantile(0.5),
            p95_seconds: c.quantile(0.95),
            p99_seconds: c.quantile(0.99),
            mtls_share: (c.requests > 0.0).then(|| c.tls / c.requests),
        })
        .collect()
}

/// An instant-query answer of the Prometheus HTTP API
/// (`{"status":"success","data":{"resultType":"vector","result":[{"metric":{…},"value":[t,"1.5"]}]}}`)
/// by key; NaN samples (a quantile of nothing) are left out.
pub fn prometheus_vector(body: &[u8]) -> Result<BTreeMap<Key, f64>, String> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if doc["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            doc["error"].as_str().unwrap_or("no reason given")
        ));
    }
    if doc["data"]["resultType"] != "vector" {
        return Err(format!("expected a vector, got {}", doc["data"]["resultType"]));
    }
    let mut out = BTreeMap::new();
    for sample in doc["data"]["result"].as_array().into_iter().flatten() {
        let label = |name: &str| sample["metric"][name].as_str().unwrap_or_default().to_string();
        let value = sample["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| !v.is_nan());
        let Some(value) = value else { continue };
        let namespace = label("destination_service_namespace");
        let key = Key {
            service: label("destination_service_name"),
            namespace: if namespace == "unknown" {
                String::new()
            } else {
                namespace
            },
            route: label("route"),
        };
        *out.entry(key).or_default() += value;
    }
    Ok(out)
}

/// Rows from the columns `weft stat --prometheus` queries (requests,
/// failures, mTLS requests, p50, p95, p99), over `seconds` (0: totals).
pub fn prometheus_rows(columns: &[BTreeMap<Key, f64>], seconds: f64) -> Vec<Row> {
    let [requests, failures, tls, p50, p95, p99] = columns else {
        return Vec::new();
    };
    requests
        .iter()
        .map(|(k, &n)| {
            let of = |c: &BTreeMap<Key, f64>| c.get(k).copied();
            Row {
                service: k.service.clone(),
                namespace: k.namespace.clone(),
                route: k.route.clone(),
                requests: n,
                rps: if seconds > 0.0 { n / seconds } else { 0.0 },
                success_rate: (n > 0.0).then(|| 1.0 - of(failures).unwrap_or(0.0) / n),
                p50_seconds: of(p50),
                p95_seconds: of(p95),
                p99_seconds: of(p99),
                mtls_share: (n > 0.0).then(|| of(tls).unwrap_or(0.0) / n),
            }
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.2}%", s * 100.0))
}

/// A table: `SERVICE RPS SUCCESS P50 P95 P99 MTLS REQUESTS [ROUTE]`.
pub fn render(rows: &[Row], with_route: bool) -> String {
    let mut out = format!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}{}\n",
        "SERVICE",
        "RPS",
        "SUCCESS",
        "P50",
        "P95",
        "P99",
        "MTLS",
        "REQUESTS",
        if with_route { "  ROUTE" } else { "" }
    );
    for r in rows {
        out.push_str(&format!(
            "{:<14} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}{}\n",
            r.service,
            r.rps,
            pct(r.success_rate),
            ms(r.p50_seconds),
            ms(r.p95_seconds),
            ms(r.p99_seconds),
            pct(r.mtls_share),
            r.requests as u64,
            if with_route {
                format!("  {}", if r.route.is_empty() { "-" } else { &r.route })
            } else {
                String::new()
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP weft_requests HTTP requests completed.
# TYPE weft_requests counter
weft_requests_total{direction="outbound",destination_service_name="web",response_code="200",classification="success",error=""} 90
weft_requests_total{direction="outbound",destination_service_name="web",response_code="503",classification="failure",error="no-endpoints"} 10
weft_requests_total{direction="inbound",destination_service_name="web",response_code="200",classification="success",error=""} 1000
# HELP weft_response_latency_seconds Time to response headers.
# TYPE weft_response_latency_seconds histogram
weft_response_latency_seconds_sum{direction="outbound",destination_service_name="web"} 1.0
weft_response_latency_seconds_count{direction="outbound",destination_service_name="web"} 100
weft_response_latency_seconds_bucket{le="0.005",direction="outbound",destination_service_name="web"} 50
weft_response_latency_seconds_bucket{le="0.01",direction="outbound",destination_service_name="web"} 90
weft_response_latency_seconds_bucket{le="0.1",direction="outbound",destination_service_name="web"} 100
weft_response_latency_seconds_bucket{le="+Inf",direction="outbound",destination_service_name="web"} 100
# EOF
"#;

    #[test]
    fn parses_outbound_series_and_computes_like_promql() {
        let mut m = BTreeMap::new();
        parse(SCRAPE, &mut m);
        let web = &m[&Key {
            service: "web".into(),
            ..Key::default()
        }];
        assert_eq!(web.requests, 100.0);
        assert_eq!(web.failures, 10.0);
        // histogram_quantile(0.5) = 0.005 (rank 50 at the top of bucket 1);
        // 0.99: rank 99 in (0.01, 0.1] holding 10 → 0.01 + 0.09 * 0.9.
        assert!((web.quantile(0.5).unwrap() - 0.005).abs() < 1e-9);
        assert!((web.quantile(0.99).unwrap() - 0.091).abs() < 1e-9);
        let rows = rows(&m, 10.0);
        assert_eq!(rows[0].rps, 10.0);
        assert_eq!(rows[0].success_rate, Some(0.9));
        assert_eq!(rows[0].mtls_share, Some(0.0));
    }

    #[test]
    fn deltas_between_scrapes() {
        let before = Counts {
            requests: 10.0,
            failures: 1.0,
            tls: 0.0,
            buckets: vec![(0.01, 10.0), (f64::INFINITY, 10.0)],
        };
        let now = Counts {
            requests: 30.0,
            failures: 1.0,
            tls: 0.0,
            buckets: vec![(0.01, 20.0), (f64::INFINITY, 30.0)],
        };
        let d = now.since(&before);
        assert_eq!((d.requests, d.failures), (20.0, 0.0));
        assert_eq!(d.buckets, vec![(0.01, 10.0), (f64::INFINITY, 20.0)]);
        assert_eq!(
            d.quantile(0.9),
            Some(0.01),
            "the +Inf bucket reports the last finite bound"
        );
    }
}
