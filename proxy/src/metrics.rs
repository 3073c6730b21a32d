//! The proxy's Prometheus metrics: one struct, registered into one registry
//! at construction, served at `admin:/metrics`. See docs/metrics.md.
//!
//! Cardinality is bounded by construction: the destination service is a
//! name discovery knows (or `unknown` / `external`), workloads and
//! principals are the mesh's; series that see no traffic for `idle` are
//! removed by [`Metrics::expire_idle`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[path = "metrics_key.rs"]
mod key;
use key::AsRequestKey;
pub use key::RequestKey;

/// Which listener the traffic came through.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    /// An edge gateway's requests from outside clients.
    Gateway,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Gateway => "gateway",
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// Who called whom, and how it went: Istio's standard-metric labels (so
/// tools written for them need only the metric name changed), none named
/// like a target label Kubernetes scrape configs add (`namespace`, `pod`,
/// `service`, `container`, `endpoint`, `job`, `instance`, `node`), plus
/// Weft's `direction`, `route`, `classification` and `error`. Values that
/// are not known are `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub source_workload: String,
    pub source_workload_namespace: String,
    /// The caller's SPIFFE ID.
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    /// The SPIFFE ID the server proved.
    pub destination_principal: String,
    /// Outbound: the destination service routing chose (the backend of an
    /// HTTPRoute rule); `unknown` when discovery has no such name,
    /// `external` for DNS names. Inbound: the service this proxy fronts.
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `namespace/name/rule` of the HTTPRoute rule, or empty.
    pub route: String,
    pub response_code: u16,
    /// The gRPC status code (`0`, `14`, …), empty for plain HTTP.
    pub grpc_response_status: String,
    pub request_protocol: RequestProtocol,
    pub connection_security_policy: SecurityPolicy,
    pub classification: Classification,
    /// The `weft-error` reason when the proxy answered itself, else empty.
    pub error: &'static str,
}

impl RequestLabels {
    fn latency(&self) -> LatencyLabels {
        LatencyLabels {
            direction: self.direction,
            source_workload: self.source_workload.clone(),
            source_workload_namespace: self.source_workload_namespace.clone(),
            destination_workload: self.destination_workload.clone(),
            destination_workload_namespace: self.destination_workload_namespace.clone(),
            destination_service_name: self.destination_service_name.clone(),
            destination_service_namespace: self.destination_service_namespace.clone(),
            route: self.route.clone(),
            request_protocol: self.request_protocol,
            connection_security_policy: self.connection_security_policy,
            classification: self.classification,
        }
    }
}

/// The edge gateway's requests, as an operator of the Gateway reads
/// them: its listener and route, the status and the proxy's own error.
/// Requests the gateway refused before routing (no listener, no route)
/// are here too, with what was known.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub gateway: String,
    /// The Gateway listener the request's host chose; empty when none.
    pub listener: String,
    /// `namespace/name/rule` of the route rule, or empty.
    pub route: String,
    pub response_code: u16,
    /// The `weft-error` reason when the proxy answered itself, else empty.
    pub error: &'static str,
}

/// The labels of the latency and size histograms: the request labels
/// without principals, codes and error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub route: String,
    pub request_protocol: RequestProtocol,
    pub connection_security_policy: SecurityPolicy,
    pub classification: Classification,
}

/// `http` or `grpc`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RequestProtocol {
    Http,
    Grpc,
}

impl EncodeLabelValue for RequestProtocol {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        })
    }
}

/// Whether the hop between proxies was mutual TLS: `mutual_tls` or `none`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct SecurityPolicy(pub bool);

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(if self.0 { "mutual_tls" } else { "none" })
    }
}

/// Who a TCP stream connects (the proxy carried its bytes without
/// reading them: opaque TCP, mesh TCP, CONNECT and upgrade tunnels,
/// passthrough): the request labels that a byte stream has.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub direction: Direction,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub connection_security_policy: SecurityPolicy,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub direction: Direction,
    pub protocol: Detected,
}

/// Request and response size buckets, bytes: 64 B to 16 MiB, ×4.
pub const SIZE_BUCKETS: [f64; 10] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Response latency buckets, seconds: sub-millisecond to 10 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label value for destinations discovery does not know.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// [`UNKNOWN_SERVICE`] as a shared name: cloned per request without
/// allocating.
pub fn unknown_service() -> Arc<str> {
    static NAME: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| UNKNOWN_SERVICE.into());
    NAME.clone()
}

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

    /// Removes series whose value has not moved for `idle`; `value` is
    /// `None` for a series in use (kept whatever its value).
    fn expire(&self, idle: Duration, value: impl Fn(&L) -> Option<u64>, remove: impl Fn(&L)) -> usize {
        let now = Instant::now();
        let mut series = self.series.lock().expect("metrics lock");
        let before = series.len();
        series.retain(|labels, (last, since)| {
            let Some(v) = value(labels) else {
                *since = now;
                return true;
            };
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

/// One request series resolved: its counter, the histograms of its
/// latency labels, and when its count last moved (for expiry).
#[derive(Debug)]
struct RequestSeries {
    requests: Counter,
    latency: Histogram,
    request_size: Histogram,
    response_size: Histogram,
    /// The count at the last expiry sweep, and since when it has been so.
    last: u64,
    since: Instant,
}

impl RequestSeries {
    fn record(&self, latency: Duration, (request_bytes, response_bytes): (u64, u64)) {
        self.requests.inc();
        self.latency.observe(latency.as_secs_f64());
        self.request_size.observe(request_bytes as f64);
        self.response_size.observe(response_bytes as f64);
    }
}

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub request_size: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub response_size: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub tcp_opened: Family<ProtocolLabels, Counter>,
    pub tcp_closed: Family<ProtocolLabels, Counter>,
    pub tcp_open: Family<DirectionLabels, Gauge>,
    pub tcp_read_bytes: Family<DirectionLabels, Counter>,
    pub tcp_written_bytes: Family<DirectionLabels, Counter>,
    pub tcp_limited: Family<LimitLabels, Counter>,
    pub gateway_requests: Family<GatewayLabels, Counter>,
    /// TCP streams by who they connect: opened, closed, and bytes the
    /// connecting side sent (received) and got back (sent), counted live.
    pub streams_opened: Family<StreamLabels, Counter>,
    pub streams_closed: Family<StreamLabels, Counter>,
    pub stream_received_bytes: Family<StreamLabels, Counter>,
    pub stream_sent_bytes: Family<StreamLabels, Counter>,
    tracked_streams: Arc<Tracked<StreamLabels>>,
    pub access_log_dropped: Counter,
    pub resilience: crate::resilience::metrics::ResilienceMetrics,
    /// Every request series, resolved to its handles: a request costs one
    /// lookup here, not one per family.
    request_series: Arc<RwLock<foldhash::HashMap<RequestLabels, RequestSeries>>>,
    /// Latency series created; each lives while a request series maps to it.
    latency_series: Arc<Mutex<std::collections::HashSet<LatencyLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            request_size: Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS)),
            response_size: Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS)),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_open: Family::default(),
            tcp_read_bytes: Family::default(),
            tcp_written_bytes: Family::default(),
            tcp_limited: Family::default(),
            gateway_requests: Family::default(),
            streams_opened: Family::default(),
            streams_closed: Family::default(),
            stream_received_bytes: Family::default(),
            stream_sent_bytes: Family::default(),
            tracked_streams: Arc::default(),
            access_log_dropped: Counter::default(),
            resilience: Default::default(),
            request_series: Arc::default(),
            latency_series: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_requests",
            "HTTP requests completed, by source, destination, route, status, protocol, security and classification",
            self.requests.clone(),
        );
        registry.register(
            "weft_response_latency_seconds",
            "Time from request to response headers",
            self.latency.clone(),
        );
        registry.register(
            "weft_request_bytes",
            "Request body sizes",
            self.request_size.clone(),
        );
        registry.register(
            "weft_response_bytes",
            "Response body sizes",
            self.response_size.clone(),
        );
        registry.register(
            "weft_gateway_requests",
            "HTTP requests the edge gateway answered, by gateway, listener, route, status and error",
            self.gateway_requests.clone(),
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
            "weft_tcp_streams_opened",
            "TCP streams carried as bytes (opaque, mesh TCP, tunnels, passthrough), by source and destination",
            self.streams_opened.clone(),
        );
        registry.register(
            "weft_tcp_streams_closed",
            "TCP streams carried as bytes that ended, by source and destination",
            self.streams_closed.clone(),
        );
        registry.register(
            "weft_tcp_stream_received_bytes",
            "Bytes of TCP streams from the connecting side, by source and destination",
            self.stream_received_bytes.clone(),
        );
        registry.register(
            "weft_tcp_stream_sent_bytes",
            "Bytes of TCP streams back to the connecting side, by source and destination",
            self.stream_sent_bytes.clone(),
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

    /// Records one finished request: its latency to the response headers
    /// and the bytes of its request and response bodies.
    pub fn request(&self, labels: RequestLabels, latency: Duration, sizes: (u64, u64)) {
        self.request_by(labels.key(), latency, sizes);
    }

    /// Records a request by its borrowed labels: they are copied only
    /// when the series is new.
    pub fn request_by(&self, key: RequestKey<'_>, latency: Duration, sizes: (u64, u64)) {
        // Recorded under the lock (read-shared), so an expiry sweep (which
        // takes it exclusively) never removes a series between its lookup
        // and its update.
        let found = self.request_series.read().expect("metrics lock");
        if let Some(series) = found.get(&key as &dyn AsRequestKey) {
            return series.record(latency, sizes);
        }
        drop(found);
        let mut all = self.request_series.write().expect("metrics lock");
        all.entry(key.to_labels())
            .or_insert_with_key(|labels| self.resolve(labels))
            .record(latency, sizes);
    }

    /// The handles of a new request series, creating its series (and its
    /// latency series, if no other request series made them) in the
    /// families.
    fn resolve(&self, labels: &RequestLabels) -> RequestSeries {
        let latency_labels = labels.latency();
        let histogram = |f: &Family<LatencyLabels, Histogram, fn() -> Histogram>| {
            f.get_or_create(&latency_labels).clone()
        };
        let series = RequestSeries {
            requests: self.requests.get_or_create(labels).clone(),
            latency: histogram(&self.latency),
            request_size: histogram(&self.request_size),
            response_size: histogram(&self.response_size),
            last: 0,
            since: Instant::now(),
        };
        self.latency_series
            .lock()
            .expect("metrics lock")
            .insert(latency_labels);
        series
    }

    /// Removes request series idle for `idle`, and latency series no
    /// request series maps to any more; returns how many went.
    pub fn expire_idle(&self, idle: Duration) -> usize {
        // Held to the end: no request series is resolved (and no latency
        // series created) while the live ones are being worked out.
        let mut requests = self.request_series.write().expect("metrics lock");
        let now = Instant::now();
        let before = requests.len();
        requests.retain(|labels, series| {
            let v = series.requests.get();
            if v != series.last {
                series.last = v;
                series.since = now;
                true
            } else if now.duration_since(series.since) >= idle {
                self.requests.remove(labels);
                false
            } else {
                true
            }
        });
        let mut removed = before - requests.len();
        let live: std::collections::HashSet<LatencyLabels> =
            requests.keys().map(RequestLabels::latency).collect();
        let (opened, closed) = (&self.streams_opened, &self.streams_closed);
        removed += self.tracked_streams.expire(
            idle,
            |l| {
                let count = |f: &Family<StreamLabels, Counter>| f.get(l).map_or(0, |c| c.get());
                let (o, c) = (count(opened), count(closed));
                // An open stream keeps its series, however quiet.
                (o == c).then_some(c)
            },
            |l| {
                for f in [
                    &self.streams_opened,
                    &self.streams_closed,
                    &self.stream_received_bytes,
                    &self.stream_sent_bytes,
                ] {
                    f.remove(l);
                }
            },
        );
        self.latency_series.lock().expect("metrics lock").retain(|l| {
            let keep = live.contains(l);
            if !keep {
                self.latency.remove(l);
                self.request_size.remove(l);
                self.response_size.remove(l);
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

    /// Counts one TCP stream opened between the parties of `labels`; the
    /// guard counts its bytes (through [`StreamGuard::meter`]) and close.
    pub fn stream(&self, labels: StreamLabels) -> StreamGuard {
        if self.streams_opened.get(&labels).is_none() {
            self.tracked_streams.add(&labels);
        }
        self.streams_opened.get_or_create(&labels).inc();
        let bytes = Arc::new(crate::io::ByteCounts {
            read_total: self.stream_received_bytes.get_or_create(&labels).clone(),
            written_total: self.stream_sent_bytes.get_or_create(&labels).clone(),
            ..Default::default()
        });
        StreamGuard {
            closed: self.streams_closed.get_or_create(&labels).clone(),
            bytes,
        }
    }

    /// Counts one accepted connection; the guard counts its close and bytes.
    pub fn connection(&self, direction: Direction) -> ConnectionGuard {
        let labels = DirectionLabels { direction };
        let open = self.tcp_open.get_or_create(&labels).clone();
        open.inc();
        let bytes = Arc::new(crate::io::ByteCounts {
            read_total: self.tcp_read_bytes.get_or_create(&labels).clone(),
            written_total: self.tcp_written_bytes.get_or_create(&labels).clone(),
            ..Default::default()
        });
        ConnectionGuard {
            open,
            opened_total: self.tcp_opened.clone(),
            closed_total: self.tcp_closed.clone(),
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
    /// The three series it moves (not a clone of every family: this lives
    /// as long as the connection, in every connection's task).
    open: Gauge,
    opened_total: Family<ProtocolLabels, Counter>,
    closed_total: Family<ProtocolLabels, Counter>,
    direction: Direction,
    protocol: Detected,
    /// Bytes of the connection, counted by [`crate::io::Metered`].
    pub bytes: Arc<crate::io::ByteCounts>,
    pub opened: Instant,
}

impl ConnectionGuard {
    pub fn detected(&mut self, protocol: Detected) {
        self.protocol = protocol;
        self.opened_total
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
        self.open.dec();
        self.closed_total
            .get_or_create(&ProtocolLabels {
                direction: self.direction,
                protocol: self.protocol,
            })
            .inc();
    }
}

/// One TCP stream from open to close.
#[derive(Debug)]
pub struct StreamGuard {
    closed: Counter,
    bytes: Arc<crate::io::ByteCounts>,
}

impl StreamGuard {
    /// The connecting side's I/O, its bytes counted into the stream's.
    pub fn meter<I>(&self, io: I) -> crate::io::Metered<I> {
        crate::io::Metered::new(io, self.bytes.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.closed.inc();
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
#[path = "metrics_tests.rs"]
mod tests;
