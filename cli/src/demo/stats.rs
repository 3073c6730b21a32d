//! Per-service golden signals from the proxies' `/metrics`: requests per
//! second, success rate and latency quantiles, computed the way PromQL
//! does (`rate()` over counter deltas, `histogram_quantile()` with linear
//! interpolation inside a bucket).

use std::collections::BTreeMap;

/// Cumulative counts for one service at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub failures: f64,
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
}

/// Sums every proxy's outbound series per destination service.
pub fn parse(text: &str, into: &mut BTreeMap<String, Counts>) {
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) else {
        return;
    };
    for sample in scrape.samples {
        if sample.labels.get("direction") != Some("outbound") {
            continue;
        }
        let Some(service) = sample.labels.get("service") else {
            continue;
        };
        let entry = into.entry(service.to_string()).or_default();
        match (sample.metric.as_str(), &sample.value) {
            (
                "weft_requests_total",
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
            ) => {
                entry.requests += v;
                if sample.labels.get("classification") == Some("failure") {
                    entry.failures += v;
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

/// One table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub service: String,
    pub rps: f64,
    pub success: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub requests: f64,
}

pub fn rows(window: &BTreeMap<String, Counts>, seconds: f64) -> Vec<Row> {
    window
        .iter()
        .map(|(service, c)| Row {
            service: service.clone(),
            rps: if seconds > 0.0 { c.requests / seconds } else { 0.0 },
            success: (c.requests > 0.0).then(|| 1.0 - c.failures / c.requests),
            p50: c.quantile(0.5),
            p99: c.quantile(0.99),
            requests: c.requests,
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

pub fn render(rows: &[Row], total_column: bool) -> String {
    let mut out = format!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}{}\n",
        "SERVICE",
        "RPS",
        "SUCCESS",
        "P50",
        "P99",
        if total_column {
            format!(" {:>9}", "REQUESTS")
        } else {
            String::new()
        }
    );
    for r in rows {
        out.push_str(&format!(
            "{:<14} {:>9.1} {:>9} {:>9} {:>9}{}\n",
            r.service,
            r.rps,
            r.success
                .map_or_else(|| "-".into(), |s| format!("{:.2}%", s * 100.0)),
            ms(r.p50),
            ms(r.p99),
            if total_column {
                format!(" {:>9}", r.requests as u64)
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
weft_requests_total{direction="outbound",service="web",status_code="200",classification="success",error=""} 90
weft_requests_total{direction="outbound",service="web",status_code="503",classification="failure",error="no-endpoints"} 10
weft_requests_total{direction="inbound",service="web",status_code="200",classification="success",error=""} 1000
# HELP weft_response_latency_seconds Time to response headers.
# TYPE weft_response_latency_seconds histogram
weft_response_latency_seconds_sum{direction="outbound",service="web"} 1.0
weft_response_latency_seconds_count{direction="outbound",service="web"} 100
weft_response_latency_seconds_bucket{le="0.005",direction="outbound",service="web"} 50
weft_response_latency_seconds_bucket{le="0.01",direction="outbound",service="web"} 90
weft_response_latency_seconds_bucket{le="0.1",direction="outbound",service="web"} 100
weft_response_latency_seconds_bucket{le="+Inf",direction="outbound",service="web"} 100
# EOF
"#;

    #[test]
    fn parses_outbound_series_and_computes_like_promql() {
        let mut m = BTreeMap::new();
        parse(SCRAPE, &mut m);
        let web = &m["web"];
        assert_eq!(web.requests, 100.0);
        assert_eq!(web.failures, 10.0);
        // histogram_quantile(0.5) = 0.005 (rank 50 at the top of bucket 1);
        // 0.99: rank 99 in (0.01, 0.1] holding 10 → 0.01 + 0.09 * 0.9.
        assert!((web.quantile(0.5).unwrap() - 0.005).abs() < 1e-9);
        assert!((web.quantile(0.99).unwrap() - 0.091).abs() < 1e-9);
        let rows = rows(&m, 10.0);
        assert_eq!(rows[0].rps, 10.0);
        assert_eq!(rows[0].success, Some(0.9));
    }

    #[test]
    fn deltas_between_scrapes() {
        let before = Counts {
            requests: 10.0,
            failures: 1.0,
            buckets: vec![(0.01, 10.0), (f64::INFINITY, 10.0)],
        };
        let now = Counts {
            requests: 30.0,
            failures: 1.0,
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
