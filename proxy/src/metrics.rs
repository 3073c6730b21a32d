//! The proxy's Prometheus metrics: one struct, registered into one registry
//! at construction, served at `admin:/metrics`.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: Direction,
    /// The destination service (outbound: the name discovery knows, else
    /// `unknown`; inbound: the service the peer called, or `unmeshed`).
    pub service: String,
    /// HTTP status code.
    pub status_code: u16,
    /// The `weft-error` reason when the proxy answered itself, else empty.
    pub error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub direction: Direction,
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub direction: Direction,
    /// What detection found: `http1`, `http2`, `mesh_tcp`, `opaque`.
    pub protocol: &'static str,
}

/// Response latency buckets, seconds: sub-millisecond to 10 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label value for destinations discovery does not know.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<DirectionLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    pub tcp_opened: Family<ProtocolLabels, Counter>,
    pub tcp_closed: Family<ProtocolLabels, Counter>,
    pub tcp_open: Family<DirectionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_open: Family::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_response_latency_seconds",
            "Time from request to response headers, by destination service",
            self.latency.clone(),
        );
        registry.register("weft_requests", "HTTP requests received", self.requests.clone());
        registry.register(
            "weft_responses",
            "HTTP responses sent, by status code and weft-error reason",
            self.responses.clone(),
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
            "weft_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
    }

    /// Counts one accepted connection; the guard counts its close.
    pub fn connection(&self, direction: Direction) -> ConnectionGuard {
        self.tcp_open.get_or_create(&DirectionLabels { direction }).inc();
        ConnectionGuard {
            metrics: self.clone(),
            direction,
            protocol: "undetected",
        }
    }

    /// Records one response and its latency since `start`.
    pub fn response(
        &self,
        direction: Direction,
        service: &str,
        status: http::StatusCode,
        error: Option<&'static str>,
        start: std::time::Instant,
    ) {
        let service = service.to_string();
        self.latency
            .get_or_create(&ServiceLabels {
                direction,
                service: service.clone(),
            })
            .observe(start.elapsed().as_secs_f64());
        self.responses
            .get_or_create(&ResponseLabels {
                direction,
                service,
                status_code: status.as_u16(),
                error: error.unwrap_or(""),
            })
            .inc();
    }
}

/// Tracks one connection from accept to close.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Metrics,
    direction: Direction,
    protocol: &'static str,
}

impl ConnectionGuard {
    pub fn detected(&mut self, protocol: &'static str) {
        self.protocol = protocol;
        self.metrics
            .tcp_opened
            .get_or_create(&ProtocolLabels {
                direction: self.direction,
                protocol,
            })
            .inc();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let direction = self.direction;
        self.metrics
            .tcp_open
            .get_or_create(&DirectionLabels { direction })
            .dec();
        self.metrics
            .tcp_closed
            .get_or_create(&ProtocolLabels {
                direction,
                protocol: self.protocol,
            })
            .inc();
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}
