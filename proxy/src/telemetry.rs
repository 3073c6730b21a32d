//! Per-request telemetry: an [`Observation`] follows each request from its
//! arrival to the end of its response body, then records the metrics and
//! (opt-in) one JSON access-log line. Also W3C trace context.
//!
//! Recording at the end of the body (not at the response headers) lets
//! gRPC calls be classified by the `grpc-status` in their trailers, and
//! counts the response bytes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::grpc::{self, Code};
use crate::http::{Body, BoxError};
use crate::metrics::{
    Classification, Detected, Direction, GatewayLabels, Metrics, RequestKey, RequestProtocol, SecurityPolicy,
    StreamGuard, StreamLabels,
};

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// The label value of what is not known.
pub const UNKNOWN: &str = "unknown";

/// Shared by every request of a proxy.
pub struct Telemetry {
    pub metrics: Metrics,
    /// This proxy's workload: the source of its outbound requests, the
    /// destination of its inbound ones.
    pub me: Party,
    pub access_log: Option<AccessLog>,
    /// Create a `traceparent` when a request has none.
    pub create_trace_context: bool,
}

/// One end of a request: a workload, its namespace and its SPIFFE ID
/// (each `unknown` when not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
}

impl Party {
    /// A party from what may be missing: empty values become `unknown`.
    pub fn new(workload: &str, namespace: &str, principal: &str) -> Self {
        let p = PartyRef::new(workload, namespace, principal);
        Self {
            workload: p.workload.to_string(),
            namespace: p.namespace.to_string(),
            principal: p.principal.to_string(),
        }
    }

    fn as_ref(&self) -> PartyRef<'_> {
        PartyRef {
            workload: &self.workload,
            namespace: &self.namespace,
            principal: &self.principal,
        }
    }
}

/// A [`Party`] borrowed from where its values live.
#[derive(Debug, Clone, Copy)]
struct PartyRef<'a> {
    workload: &'a str,
    namespace: &'a str,
    principal: &'a str,
}

impl<'a> PartyRef<'a> {
    /// Empty values become `unknown`.
    fn new(workload: &'a str, namespace: &'a str, principal: &'a str) -> Self {
        Self {
            workload: or_unknown(workload),
            namespace: or_unknown(namespace),
            principal: or_unknown(principal),
        }
    }
}

/// Where a request went (outbound) or came from (inbound), as far as
/// routing got.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The destination service and its namespace.
    pub service: Arc<str>,
    pub namespace: Arc<str>,
    pub route: String,
    pub upstream: Option<SocketAddr>,
    pub tls: bool,
    /// The other proxy's SPIFFE ID (proven over mTLS), or empty.
    pub peer_identity: Arc<str>,
    /// The other proxy's workload as it said over mTLS (the
    /// `weft-source-workload` / `weft-workload` headers), or empty.
    pub peer_workload: String,
}

impl Target {
    /// The other end: its workload and SPIFFE ID as proven over mTLS,
    /// its namespace from that ID (outbound, else the service's).
    fn peer(&self, direction: Direction) -> PartyRef<'_> {
        let namespace = spiffe_namespace(&self.peer_identity)
            .or((direction != Direction::Inbound).then_some(&*self.namespace))
            .unwrap_or_default();
        PartyRef::new(&self.peer_workload, namespace, &self.peer_identity)
    }
}

/// A label value: `unknown` when empty.
fn or_unknown(v: &str) -> &str {
    if v.is_empty() {
        UNKNOWN
    } else {
        v
    }
}

/// The namespace in a Kubernetes-style SPIFFE ID
/// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut parts = path.split('/');
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// A workload name as a peer proxy sent it, when it is one (a DNS label
/// or subdomain of at most 63 bytes): anything else is not a label value.
pub fn workload_name(value: &http::HeaderValue) -> Option<String> {
    let v = value.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then(|| v.to_string())
}

/// The request's fields only the access log writes.
struct Logged {
    method: String,
    authority: String,
    path: String,
    trace_id: Option<String>,
    /// `x-request-id` as the request carried it (the edge gateway sets one).
    request_id: Option<String>,
}

/// One request in flight.
pub struct Observation {
    telemetry: Arc<Telemetry>,
    direction: Direction,
    start: Instant,
    grpc: bool,
    /// What only the access log reads: taken when there is one.
    logged: Option<Box<Logged>>,
    /// What the request body has sent so far; `None` for a request
    /// without a body.
    request_bytes: Option<Arc<AtomicU64>>,
    target: Target,
    status: u16,
    headers_after: Duration,
    error: Option<&'static str>,
    grpc_status: Option<Code>,
    response_bytes: u64,
    /// The edge gateway's (gateway, listener) the request came in by.
    gateway: Option<(String, String)>,
}

impl Observation {
    /// Starts observing `req`: makes sure it carries trace context, and
    /// wraps its body (when it has one) to count the bytes sent upstream.
    pub fn start(telemetry: &Arc<Telemetry>, direction: Direction, req: &mut http::Request<Body>) -> Self {
        ensure_trace_context(req.headers_mut(), telemetry.create_trace_context);
        // A request without a body (most GETs) has nothing to count: no
        // counter, no wrapper.
        let request_bytes = (!http_body::Body::is_end_stream(req.body())).then(|| {
            let count = Arc::new(AtomicU64::new(0));
            let body = std::mem::replace(req.body_mut(), crate::http::empty_body());
            *req.body_mut() = http_body_util::BodyExt::boxed_unsync(CountingBody {
                inner: body,
                count: count.clone(),
            });
            count
        });
        Self {
            telemetry: telemetry.clone(),
            direction,
            start: Instant::now(),
            grpc: grpc::is_grpc(req.headers()),
            // No copies of the request's strings per request without a log.
            logged: telemetry.access_log.as_ref().map(|_| {
                Box::new(Logged {
                    method: req.method().to_string(),
                    authority: crate::http::authority(req)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    path: req
                        .uri()
                        .path_and_query()
                        .map_or_else(|| "/".into(), |p| p.to_string()),
                    trace_id: req
                        .headers()
                        .get(TRACEPARENT)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_traceparent),
                    request_id: req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                })
            }),
            request_bytes,
            target: Target::default(),
            status: 0,
            headers_after: Duration::ZERO,
            error: None,
            grpc_status: None,
            response_bytes: 0,
            gateway: None,
        }
    }

    /// The request body's bytes sent so far.
    fn request_bytes(&self) -> u64 {
        self.request_bytes
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Marks a request the edge gateway took in by `listener` (empty when
    /// its host chose none): counted in `weft_gateway_requests_total` too.
    pub fn at_gateway(&mut self, gateway: &str, listener: &str) {
        self.gateway = Some((gateway.to_string(), listener.to_string()));
    }

    /// Attaches the observation to the response; it is recorded when the
    /// body ends (or is dropped).
    pub fn respond(
        mut self,
        target: Target,
        rsp: http::Response<Body>,
        error: Option<&'static str>,
    ) -> http::Response<Body> {
        self.target = target;
        self.status = rsp.status().as_u16();
        self.headers_after = self.start.elapsed();
        self.error = error;
        self.grpc_status = grpc::status(rsp.headers());
        rsp.map(|inner| {
            http_body_util::BodyExt::boxed_unsync(ObservedBody {
                inner,
                obs: Some(self),
            })
        })
    }

    fn finish(self) {
        let failed =
            self.error.is_some() || self.status >= 500 || self.grpc_status.is_some_and(|s| s != Code::Ok);
        let classification = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        let request_bytes = self.request_bytes();
        let t = &self.telemetry;
        let (source, destination) = t.ends(self.direction, self.target.peer(self.direction));
        t.metrics.request_by(
            RequestKey {
                direction: self.direction,
                source_workload: source.workload,
                source_workload_namespace: source.namespace,
                source_principal: source.principal,
                destination_workload: destination.workload,
                destination_workload_namespace: destination.namespace,
                destination_principal: destination.principal,
                destination_service_name: or_unknown(&self.target.service),
                destination_service_namespace: or_unknown(&self.target.namespace),
                route: &self.target.route,
                response_code: self.status,
                grpc_response_status: self.grpc_status.map(grpc::code_label).unwrap_or_default(),
                request_protocol: if self.grpc {
                    RequestProtocol::Grpc
                } else {
                    RequestProtocol::Http
                },
                connection_security_policy: SecurityPolicy(self.target.tls),
                classification,
                error: self.error.unwrap_or(""),
            },
            self.headers_after,
            (request_bytes, self.response_bytes),
        );
        if let Some((gateway, listener)) = &self.gateway {
            t.metrics
                .gateway_requests
                .get_or_create(&GatewayLabels {
                    gateway: gateway.clone(),
                    listener: listener.clone(),
                    route: self.target.route.clone(),
                    response_code: self.status,
                    error: self.error.unwrap_or(""),
                })
                .inc();
        }
        if let (Some(log), Some(logged)) = (&t.access_log, self.logged) {
            let mut line = serde_json::json!({
                "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "kind": "http",
                "direction": self.direction.as_str(),
                "method": logged.method,
                "authority": logged.authority,
                "path": logged.path,
                "status": self.status,
                "grpc_status": self.grpc_status.map(|c| c as i32),
                "classification": if failed { "failure" } else { "success" },
                "duration_ms": self.start.elapsed().as_secs_f64() * 1e3,
                "response_headers_ms": self.headers_after.as_secs_f64() * 1e3,
                "request_bytes": request_bytes,
                "response_bytes": self.response_bytes,
                "service": self.target.service,
                "namespace": self.target.namespace,
                "route": self.target.route,
                "upstream": self.target.upstream.map(|a| a.to_string()),
                "tls": self.target.tls,
                "peer_identity": self.target.peer_identity,
                "error": self.error,
                "trace_id": logged.trace_id,
                "request_id": logged.request_id,
            });
            if let Some((gateway, listener)) = self.gateway {
                line["gateway"] = gateway.into();
                line["listener"] = listener.into();
            }
            log.write(line);
        }
    }
}

/// Counts the bytes of a request body.
struct CountingBody {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records its [`Observation`] when it ends.
struct ObservedBody {
    inner: Body,
    obs: Option<Observation>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(obs) = self.obs.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        obs.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        obs.grpc_status = grpc::status(trailers).or(obs.grpc_status);
                    }
                }
                if self.inner.is_end_stream() {
                    if let Some(obs) = self.obs.take() {
                        obs.finish();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut obs) = self.obs.take() {
                    obs.error = obs.error.or(Some("response-stream-failed"));
                    obs.finish();
                }
            }
            Poll::Ready(None) => {
                if let Some(obs) = self.obs.take() {
                    obs.finish();
                }
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Ended without being read to the end (empty body, or the client
        // went away): record what we know.
        if let Some(obs) = self.obs.take() {
            obs.finish();
        }
    }
}

/// Makes sure the request carries a valid `traceparent` when `create` is
/// set (a new trace replaces an invalid one); leaves it alone otherwise.
///
/// A `traceparent` is unique to its request, so HPACK must not index it:
/// an indexed one would evict a reusable entry from both proxies' tables
/// on every request. h2 sends a value marked sensitive as a never-indexed
/// literal, so the kept and the created one are both marked.
fn ensure_trace_context(headers: &mut HeaderMap, create: bool) {
    if let Some(v) = headers.get_mut(TRACEPARENT) {
        if v.to_str().ok().and_then(valid_trace_id).is_some() {
            v.set_sensitive(true);
            return;
        }
    }
    if !create {
        return;
    }
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    // `00-{trace:032x}-{span:016x}-00`, written without the formatter
    // (which cost more than the rest of the trace context per request).
    let mut value = *b"00-________________________________-________________-00";
    hex_into(&mut value[3..35], trace);
    hex_into(&mut value[36..52], u128::from(span));
    let mut value = http::HeaderValue::from_bytes(&value).expect("hex is a valid header value");
    value.set_sensitive(true);
    headers.insert(TRACEPARENT, value);
}

/// Writes `n`'s low `out.len()` hex digits into `out`, lowercase, zero-padded.
fn hex_into(out: &mut [u8], mut n: u128) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The trace id of a valid version-00 `traceparent`.
fn parse_traceparent(v: &str) -> Option<String> {
    valid_trace_id(v).map(str::to_string)
}

/// The trace id of a valid version-00 `traceparent`, borrowed from it.
fn valid_trace_id(v: &str) -> Option<&str> {
    let (version, rest) = v.trim().split_once('-')?;
    let (trace, rest) = rest.split_once('-')?;
    // A fifth part would leave a `-` in the flags, which are then not hex.
    let (span, flags) = rest.split_once('-')?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

enum LogMsg {
    Line(String),
    Flush(oneshot::Sender<()>),
}

/// JSON access-log lines on stdout, written by one task so the data path
/// never waits on I/O; when the writer falls behind, lines are dropped and
/// counted (`weft_access_log_dropped_total`).
pub struct AccessLog {
    tx: mpsc::Sender<LogMsg>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl AccessLog {
    pub fn spawn(dropped: prometheus_client::metrics::counter::Counter) -> Self {
        let (tx, mut rx) = mpsc::channel::<LogMsg>(8192);
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Some(msg) = rx.recv().await {
                let mut flushes = Vec::new();
                let mut next = Some(msg);
                while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
                    match m {
                        LogMsg::Line(l) => {
                            buf.extend_from_slice(l.as_bytes());
                            buf.push(b'\n');
                        }
                        LogMsg::Flush(done) => flushes.push(done),
                    }
                    if buf.len() > 60 * 1024 {
                        break;
                    }
                }
                let _ = out.write_all(&buf).await;
                let _ = out.flush().await;
                buf.clear();
                for f in flushes {
                    let _ = f.send(());
                }
            }
        });
        Self { tx, dropped }
    }

    pub fn write(&self, line: serde_json::Value) {
        if self.tx.try_send(LogMsg::Line(line.to_string())).is_err() {
            self.dropped.inc();
        }
    }

    /// Waits until every line written so far is on stdout.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(LogMsg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }
}

/// One accepted connection: its metrics, and one access-log line when it
/// closes.
pub struct ConnectionObservation {
    guard: crate::metrics::ConnectionGuard,
    telemetry: Arc<Telemetry>,
    direction: Direction,
    client: SocketAddr,
}

impl Telemetry {
    /// (source, destination) of a call in `direction` whose far end is
    /// `peer`: this proxy's workload is the other.
    fn ends<'a>(&'a self, direction: Direction, peer: PartyRef<'a>) -> (PartyRef<'a>, PartyRef<'a>) {
        match direction {
            Direction::Outbound | Direction::Gateway => (self.me.as_ref(), peer),
            Direction::Inbound => (peer, self.me.as_ref()),
        }
    }

    /// Counts a TCP stream between this proxy's workload and `target`'s
    /// peer (the stream metrics); the guard counts its bytes and close.
    pub fn stream(&self, direction: Direction, target: &Target) -> StreamGuard {
        let (source, destination) = self.ends(direction, target.peer(direction));
        self.metrics.stream(StreamLabels {
            direction,
            source_workload: source.workload.to_string(),
            source_workload_namespace: source.namespace.to_string(),
            source_principal: source.principal.to_string(),
            destination_workload: destination.workload.to_string(),
            destination_workload_namespace: destination.namespace.to_string(),
            destination_principal: destination.principal.to_string(),
            destination_service_name: or_unknown(&target.service).to_string(),
            destination_service_namespace: or_unknown(&target.namespace).to_string(),
            connection_security_policy: SecurityPolicy(target.tls),
        })
    }

    pub fn connection(self: &Arc<Self>, direction: Direction, client: SocketAddr) -> ConnectionObservation {
        ConnectionObservation {
            guard: self.metrics.connection(direction),
            telemetry: self.clone(),
            direction,
            client,
        }
    }
}

impl ConnectionObservation {
    pub fn detected(&mut self, protocol: Detected) {
        self.guard.detected(protocol);
    }

    /// Counts the connection's bytes.
    pub fn meter<I>(&self, io: I) -> crate::io::Metered<I> {
        crate::io::Metered::new(io, self.guard.bytes.clone())
    }
}

impl Drop for ConnectionObservation {
    fn drop(&mut self) {
        if let Some(log) = &self.telemetry.access_log {
            log.write(serde_json::json!({
                "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "kind": "tcp",
                "direction": self.direction.as_str(),
                "protocol": self.guard.protocol().as_str(),
                "client": self.client.to_string(),
                "duration_ms": self.guard.opened.elapsed().as_secs_f64() * 1e3,
                "bytes_read": self.guard.bytes.read.load(Ordering::Relaxed),
                "bytes_written": self.guard.bytes.written.load(Ordering::Relaxed),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's trace id after [`ensure_trace_context`].
    fn trace_context(headers: &mut HeaderMap, create: bool) -> Option<String> {
        ensure_trace_context(headers, create);
        headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
    }

    #[test]
    fn hex_is_written_as_the_formatter_would() {
        for n in [
            0,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let mut out = [0u8; 32];
            hex_into(&mut out, n);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{n:032x}"));
            let mut out = [0u8; 16];
            hex_into(&mut out, n & u128::from(u64::MAX));
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{:016x}", n as u64));
        }
    }

    #[test]
    fn traceparent_is_kept_or_created() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_context(&mut h, true).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            h[TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "propagated as is"
        );
        assert!(h[TRACEPARENT].is_sensitive(), "kept out of HPACK's tables");

        let mut h = HeaderMap::new();
        assert_eq!(trace_context(&mut h, false), None);
        assert!(h.get(TRACEPARENT).is_none());
        let id = trace_context(&mut h, true).unwrap();
        let v = h[TRACEPARENT].to_str().unwrap().to_string();
        assert!(v.starts_with(&format!("00-{id}-")) && v.len() == 55, "{v}");
        assert!(h[TRACEPARENT].is_sensitive(), "kept out of HPACK's tables");
        assert_eq!(parse_traceparent(&v), Some(id));

        // Invalid values are replaced.
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let id = trace_context(&mut h, true).unwrap();
        assert_ne!(id, "00000000000000000000000000000000");
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use super::trace_context;

        fn hex_ok(s: &str, n: usize) -> bool {
            s.len() == n
                && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                && s.bytes().any(|b| b != b'0')
        }

        /// Values shaped like a `traceparent` (right and wrong lengths,
        /// cases, versions, zero ids, blanks around), and arbitrary text.
        fn traceparents() -> impl Strategy<Value = String> {
            prop_oneof![
                "[ \t]?(00|01|ff)-[0-9a-fA-F]{31,33}-[0-9a-f]{15,17}-[0-9a-f]{2}[ \t]?",
                "00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
                "00-0{32}-[0-9a-f]{16}-01",
                "00-[0-9a-f]{32}-0{16}-01",
                "00-[0-9a-f]{32}-[0-9a-f]{16}-01-[a-z]{0,3}",
                "[ -~]{0,60}",
            ]
        }

        proptest! {
            #[test]
            fn a_valid_traceparent_is_kept_and_anything_else_replaced(v in traceparents(), create in any::<bool>()) {
                let Ok(value) = http::HeaderValue::from_str(&v) else { return Ok(()) };
                let parts: Vec<&str> = v.trim().split('-').collect();
                let valid = matches!(parts.as_slice(), [version, trace, span, flags]
                    if *version == "00" && hex_ok(trace, 32) && hex_ok(span, 16)
                        && flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                let mut h = HeaderMap::new();
                h.insert(TRACEPARENT, value.clone());
                let id = trace_context(&mut h, create);
                if valid {
                    prop_assert_eq!(id.as_deref(), Some(parts[1]));
                    prop_assert_eq!(&h[TRACEPARENT], &value, "propagated as is");
                } else if create {
                    let id = id.unwrap();
                    let now = h[TRACEPARENT].to_str().unwrap();
                    prop_assert_eq!(parse_traceparent(now), Some(id.clone()), "a valid one replaced it: {}", now);
                    let head = format!("00-{id}-");
                    prop_assert!(now.starts_with(&head) && now.len() == 55, "{}", now);
                } else {
                    prop_assert_eq!(id, None);
                    prop_assert_eq!(&h[TRACEPARENT], &value, "left alone");
                }
            }
        }
    }
}
