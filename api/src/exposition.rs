//! The metrics format both planes serve at `/metrics`: a contract with
//! Prometheus, `promtool` and `weft stat`, as much as the protos are.
//!
//! prometheus-client encodes OpenMetrics. Scrapers that ask for it (an
//! `Accept` header naming `application/openmetrics-text`, as Prometheus
//! does) get it unchanged; everyone else gets the Prometheus text format
//! 0.0.4, which differs only in naming: counters are described under their
//! `_total` sample name, and there is no `# EOF`.

/// Content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Turns OpenMetrics text (as prometheus-client writes it) into the
/// Prometheus text format.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE ", "# UNIT "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if *prefix == "# UNIT " {
                return Some(String::new());
            }
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) if l.is_empty() => {}
            Some(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// `process_*` metrics from `/proc/self` (the names every Prometheus
/// dashboard knows, hence no `weft_` prefix).
#[derive(Debug)]
pub struct ProcessCollector {
    start_time: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self { start_time }
    }
}

/// utime+stime in seconds and RSS in bytes, from `/proc/self/stat`.
fn proc_stat() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: f64 = fields.get(21)?.parse().ok()?;
    Some(((utime + stime) / ticks, rss_pages * 4096.0))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, rss)) = proc_stat() {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss).encode(m)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(fds.count() as i64).encode(m)?;
        }
        let m = encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.start_time).encode(m)?;
        Ok(())
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_under_their_sample_name() {
        let om = "# HELP weft_requests Requests.\n# TYPE weft_requests counter\nweft_requests_total{a=\"b\"} 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP weft_requests_total Requests.\n# TYPE weft_requests_total counter\nweft_requests_total{a=\"b\"} 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
    }
}
