//! Errors of the data path, classified once and mapped to a response in one
//! place: every response the proxy makes up carries `weft-error: <reason>`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::http::{full_body, Body};

/// Header naming why the proxy answered instead of the app.
pub const WEFT_ERROR: &str = "weft-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request names no service (no authority, no Host).
    #[error("the request names no destination (no authority or Host header)")]
    NoAuthority,
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
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
    /// Inbound traffic for a port the app does not serve.
    #[error("port {0} is not one of this workload's app ports")]
    UnknownAppPort(u16),
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("no route of {0} matches the request")]
    NoRoute(String),
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
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
}

impl ProxyError {
    /// The `weft-error` value.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoAuthority => "no-authority",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::ConnectFailed { .. } => "connect-failed",
            ProxyError::ConnectTimeout(_) => "connect-timeout",
            ProxyError::Upstream { .. } => "upstream-failed",
            ProxyError::UnknownAppPort(_) => "unknown-app-port",
            ProxyError::ShuttingDown => "shutting-down",
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::IdentityMismatch { .. } => "identity-mismatch",
            ProxyError::NoIdentity(_) => "no-identity",
            ProxyError::Tls { .. } => "tls-failed",
            ProxyError::Unauthorized(_) => "unauthorized",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoAuthority => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoints(_) | ProxyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnknownAppPort(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout(_) | ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::IdentityMismatch { .. } | ProxyError::Tls { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::NoIdentity(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unauthorized(_) => StatusCode::FORBIDDEN,
        }
    }

    /// Whether the request may be safely sent again (nothing reached the
    /// app). The retry layer builds on this.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout(_)
        )
    }

    /// The response the proxy sends in place of the app's.
    pub fn to_response(&self) -> Response<Body> {
        let mut rsp = Response::new(full_body(Bytes::from(format!("{self}\n"))));
        *rsp.status_mut() = self.status();
        let headers = rsp.headers_mut();
        headers.insert(WEFT_ERROR, HeaderValue::from_static(self.reason()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_the_reason() {
        let rsp = ProxyError::NoEndpoints("web".into()).to_response();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[WEFT_ERROR], "no-endpoints");
        let e = ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.is_retryable());
    }
}
