//! The proxy's Prometheus metrics: one struct, registered into one registry
//! at construction, served at `admin:/metrics`. See docs/metrics.md.
//!
//! Cardinality is bounded by construction: the `service` label is a name
//! discovery knows, or one of `unknown` / `external` / `unmeshed`; series
//! that see no traffic for `idle` are removed by [`Metrics::expire_idle`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which listener the traffic came through.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// What a connection turned out to carry: the TCP metrics' `protocol`
/// label and the access log's.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Detected {
    /// Closed before detection finished.
    Undetected,
    Http1,
    Http2,
    /// TLS for this proxy (the mesh's mTLS, inbound).
    Tls,
    /// A peer proxy's `WEFT-TCP/1` stream.
    MeshTcp,
    /// Bytes the proxy does not interpret.
    Opaque,
    /// Bytes forwarded to an original destination the mesh does not
    /// know: no mTLS, no mesh features.
    Passthrough,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Undetected => "undetected",
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::MeshTcp => "mesh_tcp",
            Detected::Opaque => "opaque",
            Detected::Passthrough => "passthrough",
        }
    }
}

impl From<crate::http::AppProtocol> for Detected {
    fn from(app: crate::http::AppProtocol) -> Self {
        match app {
            crate::http::AppProtocol::Http1 => Detected::Http1,
            crate::http::AppProtocol::Http2 => Detected::Http2,
        }
    }
}

impl EncodeLabelValue for Detected {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Why the proxy refused or closed a connection to keep its bounds.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LimitReason {
    /// The listener held its maximum of connections.
    MaxConnections,
    /// An HTTP/1 request head was not complete in time (answered 408).
    HeadTimeout,
    /// An HTTP connection had no request in progress for the idle timeout.
    IdleTimeout,
    /// A TCP stream moved no byte for the TCP idle timeout.
    TcpIdleTimeout,
}

impl EncodeLabelValue for LimitReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            LimitReason::MaxConnections => "max_connections",
            LimitReason::HeadTimeout => "head_timeout",
            LimitReason::IdleTimeout => "idle_timeout",
            LimitReason::TcpIdleTimeout => "tcp_idle_timeout",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub direction: Direction,
    pub reason: LimitReason,
}

/// Whether a response counts as a success for SLOs: not a 5xx, not made up
/// by the proxy, and (gRPC) `grpc-status` 0.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        })
    }
}

/// `true` / `false`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Flag(pub bool);

impl EncodeLabelValue for Flag {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(if self.0 { "true" } else { "false" })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// Who a request went to and how it went.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// Outbound: the destination service (the backend a route chose);
    /// `unknown` when discovery has no such name, `external` for DNS names.
    /// Inbound: the service the peer called, or `unmeshed`.
    pub service: String,
    pub namespace: String,
    /// `namespace/name/rule` of the HTTPRoute rule, or empty.
    pub route: String,
    pub status_code: u16,
    pub classification: Classification,
    /// Whether the hop between proxies was mTLS.
    pub tls: Flag,
    /// The SPIFFE ID of the other proxy, when known.
    pub peer_identity: String,
    /// The `weft-error` reason when the proxy answered itself, else empty.
    pub error: &'static str,
}

impl RequestLabels {
    fn latency(&self) -> LatencyLabels {
        LatencyLabels {
            direction: self.direction,
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            route: self.route.clone(),
            classification: self.classification,
            tls: self.tls,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub service: String,
    pub namespace: String,
    pub route: String,
    pub classification: Classification,
    pub tls: Flag,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub direction: Direction,
    pub protocol: Detected,
}

/// Response latency buckets, seconds: sub-millisecond to 10 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label value for destinations discovery does not know.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// When each series last changed, for expiry.
#[derive(Debug)]
struct Tracked<L> {
    series: Mutex<HashMap<L, (u64, Instant)>>,
}

impl<L> Default for Tracked<L> {
    fn default() -> Self {
        Self {
            series: Mutex::new(HashMap::new()),
        }
    }
}

impl<L: Clone + Hash + Eq> Tracked<L> {
    fn add(&self, labels: &L) {
        self.series
            .lock()
            .expect("metrics lock")
            .entry(labels.clone())
            .or_insert((0, Instant::now()));
    }

    /// Removes series whose value has not moved for `idle`.
    fn expire(&self, idle: Duration, value: impl Fn(&L) -> Option<u64>, remove: impl Fn(&L)) -> usize {
        let now = Instant::now();
        let mut series = self.series.lock().expect("metrics lock");
        let before = series.len();
        series.retain(|labels, (last, since)| {
            let v = value(labels).unwrap_or(0);
            if v != *last {
                *last = v;
                *since = now;
                true
            } else if now.duration_since(*since) >= idle {
                remove(labels);
                false
            } else {
                true
            }
        });
        before - series.len()
    }
}

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub tcp_opened: Family<ProtocolLabels, Counter>,
    pub tcp_closed: Family<ProtocolLabels, Counter>,
    pub tcp_open: Family<DirectionLabels, Gauge>,
    pub tcp_read_bytes: Family<DirectionLabels, Counter>,
    pub tcp_written_bytes: Family<DirectionLabels, Counter>,
    pub tcp_limited: Family<LimitLabels, Counter>,
    pub access_log_dropped: Counter,
    pub resilience: crate::resilience::metrics::ResilienceMetrics,
    tracked_requests: Arc<Tracked<RequestLabels>>,
    /// Latency series created; each lives while a request series maps to it.
    latency_series: Arc<Mutex<std::collections::HashSet<LatencyLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_open: Family::default(),
            tcp_read_bytes: Family::default(),
            tcp_written_bytes: Family::default(),
            tcp_limited: Family::default(),
            access_log_dropped: Counter::default(),
            resilience: Default::default(),
            tracked_requests: Arc::default(),
            latency_series: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_requests",
            "HTTP requests completed, by destination, route, status, classification, TLS and peer",
            self.requests.clone(),
        );
        registry.register(
            "weft_response_latency_seconds",
            "Time from request to response headers",
            self.latency.clone(),
        );
        registry.register(
            "weft_tcp_connections_opened",
            "TCP connections accepted, by detected protocol",
            self.tcp_opened.clone(),
        );
        registry.register(
            "weft_tcp_connections_closed",
            "TCP connections closed, by detected protocol",
            self.tcp_closed.clone(),
        );
        registry.register(
            "weft_tcp_connections_open",
            "TCP connections open now",
            self.tcp_open.clone(),
        );
        registry.register(
            "weft_tcp_read_bytes",
            "Bytes read from accepted connections",
            self.tcp_read_bytes.clone(),
        );
        registry.register(
            "weft_tcp_written_bytes",
            "Bytes written to accepted connections",
            self.tcp_written_bytes.clone(),
        );
        registry.register(
            "weft_tcp_connections_limited",
            "Connections refused or closed to keep the proxy's bounds, by reason",
            self.tcp_limited.clone(),
        );
        registry.register(
            "weft_access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        // A gauge fixed at 1 rather than an OpenMetrics `info`, which
        // the Prometheus text format (and promtool) does not know.
        let build: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("weft_build_info", "Build information", build);
        self.resilience.register(registry);
        registry.register_collector(Box::new(weft_api::exposition::ProcessCollector::new()));
    }

    /// Records one finished request.
    pub fn request(&self, labels: RequestLabels, latency: Duration) {
        let latency_labels = labels.latency();
        if self.latency.get(&latency_labels).is_none() {
            self.latency_series
                .lock()
                .expect("metrics lock")
                .insert(latency_labels.clone());
        }
        self.latency
            .get_or_create(&latency_labels)
            .observe(latency.as_secs_f64());
        if self.requests.get(&labels).is_none() {
            self.tracked_requests.add(&labels);
        }
        self.requests.get_or_create(&labels).inc();
    }

    /// Removes request series idle for `idle`, and latency series no
    /// request series maps to any more; returns how many went.
    pub fn expire_idle(&self, idle: Duration) -> usize {
        let requests = &self.requests;
        let mut removed = self.tracked_requests.expire(
            idle,
            |l| requests.get(l).map(|c| c.get()),
            |l| {
                requests.remove(l);
            },
        );
        let live: std::collections::HashSet<LatencyLabels> = self
            .tracked_requests
            .series
            .lock()
            .expect("metrics lock")
            .keys()
            .map(RequestLabels::latency)
            .collect();
        self.latency_series.lock().expect("metrics lock").retain(|l| {
            let keep = live.contains(l);
            if !keep {
                self.latency.remove(l);
                removed += 1;
            }
            keep
        });
        removed
    }

    /// Counts one connection refused or closed by a bound.
    pub fn count_limited(&self, direction: Direction, reason: LimitReason) {
        self.tcp_limited
            .get_or_create(&LimitLabels { direction, reason })
            .inc();
    }

    /// Counts one accepted connection; the guard counts its close and bytes.
    pub fn connection(&self, direction: Direction) -> ConnectionGuard {
        let labels = DirectionLabels { direction };
        self.tcp_open.get_or_create(&labels).inc();
        let bytes = Arc::new(crate::io::ByteCounts {
            read_total: self.tcp_read_bytes.get_or_create(&labels).clone(),
            written_total: self.tcp_written_bytes.get_or_create(&labels).clone(),
            ..Default::default()
        });
        ConnectionGuard {
            metrics: self.clone(),
            direction,
            protocol: Detected::Undetected,
            bytes,
            opened: Instant::now(),
        }
    }
}

/// Tracks one connection from accept to close.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Metrics,
    direction: Direction,
    protocol: Detected,
    /// Bytes of the connection, counted by [`crate::io::Metered`].
    pub bytes: Arc<crate::io::ByteCounts>,
    pub opened: Instant,
}

impl ConnectionGuard {
    pub fn detected(&mut self, protocol: Detected) {
        self.protocol = protocol;
        self.metrics
            .tcp_opened
            .get_or_create(&ProtocolLabels {
                direction: self.direction,
                protocol,
            })
            .inc();
    }

    pub fn protocol(&self) -> Detected {
        self.protocol
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let direction = self.direction;
        let labels = DirectionLabels { direction };
        self.metrics.tcp_open.get_or_create(&labels).dec();
        self.metrics
            .tcp_closed
            .get_or_create(&ProtocolLabels {
                direction,
                protocol: self.protocol,
            })
            .inc();
    }
}

/// Renders the registry in the text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(service: &str) -> RequestLabels {
        RequestLabels {
            direction: Direction::Outbound,
            service: service.into(),
            namespace: "demo".into(),
            route: String::new(),
            status_code: 200,
            classification: Classification::Success,
            tls: Flag(false),
            peer_identity: String::new(),
            error: "",
        }
    }

    #[test]
    fn idle_series_expire_and_busy_ones_stay() {
        let m = Metrics::default();
        m.request(labels("busy"), Duration::from_millis(1));
        m.request(labels("idle"), Duration::from_millis(1));
        // First sweep records the values; nothing is idle for 0s... yet.
        assert_eq!(m.expire_idle(Duration::from_secs(3600)), 0);
        m.request(labels("busy"), Duration::from_millis(1));
        // "idle" has not moved since the last sweep; with a zero idle time it goes.
        let removed = m.expire_idle(Duration::ZERO);
        assert!(removed >= 2, "the idle request and latency series: {removed}");
        assert!(m.requests.get(&labels("idle")).is_none());
        assert!(
            m.requests.get(&labels("busy")).is_some(),
            "moved since the last sweep"
        );
    }

    #[test]
    fn renders_process_metrics() {
        let mut r = Registry::default();
        Metrics::default().register(&mut r);
        let text = render(&r);
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        assert!(text.contains("weft_build_info{version="), "{text}");
    }
}
