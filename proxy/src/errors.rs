//! Errors of the data path, classified once and mapped to a response in one
//! place: every response the proxy makes up carries `weft-error: <reason>`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::grpc::{self, Code};
use crate::http::{full_body, Body};
use crate::resilience::retry::Outcome;

/// Header naming why the proxy answered instead of the app.
pub const WEFT_ERROR: &str = "weft-error";
/// Set by a server-side proxy on its own error response when nothing
/// reached the app (it could not connect to it): the client-side proxy
/// may then send the request to another replica whatever its method. The
/// server-side proxy removes it from the app's responses, and the client
/// side honours it only from a peer proxy and never passes it on.
pub const WEFT_UNSENT: &str = "weft-unsent";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request names no service (no authority, no Host).
    #[error("the request names no destination (no authority or Host header)")]
    NoAuthority,
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
    /// The request's head has both `Content-Length` and
    /// `Transfer-Encoding`: a smuggling input the edge gateway refuses.
    #[error("the request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// On the edge gateway's TLS port, the request's host is served by
    /// another listener than the one the handshake's SNI chose: 421, so
    /// the client opens a connection for that host (RFC 9110 §15.5.20).
    #[error("{0} is not served on this connection (TLS server name {1})")]
    Misdirected(String, String),
    /// The service requires mTLS (TrafficPolicy `mtls: required`) and
    /// none of its endpoints is meshed.
    #[error("{0} requires mTLS and has no meshed endpoint")]
    NotMeshed(String),
    /// The control plane has not answered for the destination within the
    /// wait: the mesh cannot know where (or how securely) it would go.
    #[error("discovery has not answered for {0}")]
    DiscoveryUnavailable(String),
    #[error("connecting to {addr}: {source}")]
    ConnectFailed {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The upstream failed after the connection was made (reset, protocol
    /// error, closed mid-response).
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        addr: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTP/2 peer provably did not process the request (RFC 9113
    /// §8.7: `REFUSED_STREAM`, or a stream above a graceful GOAWAY's last
    /// stream id): safe to send again, whatever the method.
    #[error("upstream {addr} did not process the request: {source}")]
    Unprocessed {
        addr: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Inbound traffic for a port the app does not serve.
    #[error("port {0} is not one of this workload's app ports")]
    UnknownAppPort(u16),
    #[error("no route of {0} matches the request")]
    NoRoute(String),
    /// A route rule picked a backend the control plane could not resolve
    /// (another namespace's Service without a ReferenceGrant): 500, as the
    /// Gateway API specifies.
    #[error("route rule {0} picked a backend that is not permitted or does not exist")]
    UnresolvedBackend(String),
    /// A route rule with no backend to send to (none listed, or every
    /// weight 0): 500, as the Gateway API specifies.
    #[error("route rule {0} has no backend with a weight above 0")]
    NoBackend(String),
    /// A route rule with a filter this proxy cannot apply: 500 rather
    /// than routing without it.
    #[error("route rule {0} has a filter this proxy cannot apply")]
    UnsupportedFilter(String),
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// One try took longer than the per-try timeout (and no retry helped).
    #[error("no response within the per-try timeout of {0:?}")]
    PerTryTimeout(std::time::Duration),
    /// The peer's certificate does not name the identity discovery
    /// promised (or does not chain to our trust anchors).
    #[error("{addr} is not {expected}: {source}")]
    IdentityMismatch {
        addr: SocketAddr,
        expected: String,
        source: std::io::Error,
    },
    /// The endpoint needs mTLS and this proxy has no certificate yet.
    #[error("no certificate yet for mTLS to {0}")]
    NoIdentity(SocketAddr),
    /// The TLS handshake failed for another reason.
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server's policy does not allow this caller.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The edge gateway's JWT check refused the request: 401 with the
    /// `WWW-Authenticate` challenge.
    #[error("not authenticated: {reason}")]
    Unauthenticated {
        reason: &'static str,
        /// 401, or 503 while the signing keys cannot be had.
        status: StatusCode,
        challenge: HeaderValue,
    },
    /// Every endpoint is ejected by the circuit breaker.
    #[error("every endpoint of {0} is ejected by the circuit breaker")]
    CircuitOpen(String),
    /// The destination's bulkhead is full.
    #[error("{0} is at its concurrency limit")]
    LoadShed(String),
    /// The server's rate limit refused the request.
    #[error("rate limit exceeded ({scope}); retry after {retry_after:?}")]
    RateLimited {
        scope: &'static str,
        retry_after: std::time::Duration,
    },
    /// A TrafficPolicy fault drill aborted the request.
    #[error("aborted by fault injection")]
    FaultInjected(StatusCode),
}

impl ProxyError {
    /// The `weft-error` value.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoAuthority => "no-authority",
            ProxyError::AmbiguousFraming => "ambiguous-framing",
            ProxyError::Misdirected(..) => "misdirected",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::NotMeshed(_) => "not-meshed",
            ProxyError::DiscoveryUnavailable(_) => "discovery-unavailable",
            ProxyError::ConnectFailed { .. } => "connect-failed",
            ProxyError::ConnectTimeout(_) => "connect-timeout",
            ProxyError::Upstream { .. } | ProxyError::Unprocessed { .. } => "upstream-failed",
            ProxyError::UnknownAppPort(_) => "unknown-app-port",
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::UnresolvedBackend(_) => "unresolved-backend",
            ProxyError::NoBackend(_) => "no-backend",
            ProxyError::UnsupportedFilter(_) => "unsupported-filter",
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => "timeout",
            ProxyError::IdentityMismatch { .. } => "identity-mismatch",
            ProxyError::NoIdentity(_) => "no-identity",
            ProxyError::Tls { .. } => "tls-failed",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Unauthenticated { reason, .. } => reason,
            ProxyError::CircuitOpen(_) => "circuit-open",
            ProxyError::LoadShed(_) => "load-shed",
            ProxyError::RateLimited { .. } => "rate-limited",
            ProxyError::FaultInjected(_) => "fault-injected",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoAuthority | ProxyError::AmbiguousFraming => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected(..) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoEndpoints(_) | ProxyError::NotMeshed(_) | ProxyError::DiscoveryUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailed { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Unprocessed { .. }
            | ProxyError::UnknownAppPort(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout(_) | ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::UnresolvedBackend(_)
            | ProxyError::NoBackend(_)
            | ProxyError::UnsupportedFilter(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::IdentityMismatch { .. } | ProxyError::Tls { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::NoIdentity(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unauthorized(_) => StatusCode::FORBIDDEN,
            ProxyError::Unauthenticated { status, .. } => *status,
            ProxyError::CircuitOpen(_) | ProxyError::LoadShed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultInjected(s) => *s,
        }
    }

    /// The gRPC status for a gRPC caller (which reads `grpc-status`, not
    /// the HTTP status).
    pub fn grpc_status(&self) -> Code {
        match self {
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => Code::DeadlineExceeded,
            ProxyError::Unauthorized(_) => Code::PermissionDenied,
            ProxyError::Unauthenticated { .. } => Code::Unauthenticated,
            ProxyError::RateLimited { .. } => Code::ResourceExhausted,
            ProxyError::NoRoute(_) => Code::Unimplemented,
            ProxyError::NoAuthority
            | ProxyError::AmbiguousFraming
            | ProxyError::UnresolvedBackend(_)
            | ProxyError::NoBackend(_)
            | ProxyError::UnsupportedFilter(_) => Code::Internal,
            ProxyError::FaultInjected(s) => grpc::from_http(*s),
            _ => Code::Unavailable,
        }
    }

    /// How a try that failed with this error ended, for the retry policy,
    /// the latency estimate and the circuit breaker: the one place errors
    /// are classified. `None` for errors that say nothing about the
    /// endpoint (e.g. no certificate yet, no route).
    /// Whether nothing of the request reached the server: the connection
    /// to it could not be made.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout(_)
        )
    }

    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            // Nothing reached the server: always safe to send again.
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout(_)
            | ProxyError::Tls { .. }
            | ProxyError::IdentityMismatch { .. } => Some(Outcome::ConnectFailure),
            ProxyError::Upstream { .. } => Some(Outcome::Reset),
            ProxyError::Unprocessed { .. } => Some(Outcome::NotDelivered),
            ProxyError::PerTryTimeout(_) => Some(Outcome::PerTryTimeout),
            _ => None,
        }
    }

    /// The response the proxy sends in place of the app's. A gRPC caller
    /// gets a trailers-only gRPC response with the matching `grpc-status`.
    pub fn to_response(&self, grpc: bool) -> Response<Body> {
        let mut rsp = if grpc {
            let mut rsp = Response::new(crate::http::empty_body());
            let headers = rsp.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(grpc::GRPC_STATUS, HeaderValue::from(self.grpc_status() as i32));
            // grpc-message is percent-encoded; keep to the safe subset.
            let message: String = self
                .to_string()
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != '%' || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&message) {
                headers.insert(grpc::GRPC_MESSAGE, v);
            }
            rsp
        } else {
            let mut rsp = Response::new(full_body(Bytes::from(format!("{self}\n"))));
            *rsp.status_mut() = self.status();
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            rsp
        };
        let headers = rsp.headers_mut();
        headers.insert(WEFT_ERROR, HeaderValue::from_static(self.reason()));
        if let ProxyError::Unauthenticated {
            challenge,
            status: StatusCode::UNAUTHORIZED,
            ..
        } = self
        {
            headers.insert(http::header::WWW_AUTHENTICATE, challenge.clone());
        }
        if let ProxyError::RateLimited { retry_after, .. } = self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e_addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn responses_carry_the_reason() {
        let rsp = ProxyError::NoEndpoints("web".into()).to_response(false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[WEFT_ERROR], "no-endpoints");
        let e = ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.outcome(), Some(Outcome::ConnectFailure));
        assert_eq!(
            ProxyError::NoIdentity(e_addr()).outcome(),
            None,
            "says nothing about the endpoint"
        );
        assert_eq!(
            ProxyError::FaultInjected(StatusCode::TOO_MANY_REQUESTS).grpc_status(),
            Code::Unavailable
        );
        let limited = ProxyError::RateLimited {
            scope: "total",
            retry_after: std::time::Duration::from_millis(1200),
        };
        let rsp = limited.to_response(false);
        assert_eq!(rsp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rsp.headers()["retry-after"], "2");
        let rsp = limited.to_response(true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "8");
        assert_eq!(rsp.headers()[WEFT_ERROR], "rate-limited");
        let pending = ProxyError::DiscoveryUnavailable("web:80".into());
        assert_eq!(pending.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(pending.grpc_status(), Code::Unavailable);
        assert_eq!(pending.reason(), "discovery-unavailable");
        assert_eq!(pending.outcome(), None, "no endpoint was involved");
        let rsp = ProxyError::Timeout(std::time::Duration::from_secs(1)).to_response(true);
        assert_eq!(rsp.headers()["grpc-status"], "4");
    }
}
