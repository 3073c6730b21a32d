//! Connections to upstreams: TCP connect with a timeout, one pooled HTTP/2
//! connection per peer (other Weft proxies, HTTP/2 apps), and pooled
//! HTTP/1.1 connections to HTTP/1 apps.
//!
//! mTLS (the identity issue) slots in at [`Clients::connect`]: everything
//! above it only sees an I/O stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::{connect::HttpConnector, Client as LegacyClient};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::errors::ProxyError;
use crate::http::{Body, BoxError};

/// Everything the proxy uses to reach upstreams.
#[derive(Clone)]
pub struct Clients {
    connect_timeout: Duration,
    h2: Arc<Mutex<HashMap<SocketAddr, H2Slot>>>,
    h1: LegacyClient<HttpConnector, Body>,
}

#[derive(Default, Clone)]
struct H2Slot {
    conn: Option<http2::SendRequest<Body>>,
    /// Held while connecting, so a burst of requests opens one connection.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl Clients {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let h1 = LegacyClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            connect_timeout,
            h2: Default::default(),
            h1,
        }
    }

    /// Opens a TCP connection, bounded by the connect timeout.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => Err(ProxyError::ConnectTimeout(addr)),
            Ok(Err(source)) => Err(ProxyError::ConnectFailed { addr, source }),
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
        }
    }

    /// Sends a request over the pooled HTTP/2 connection to `addr`. The
    /// request URI carries the `:authority` and `:path` to send.
    pub async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut req = req;
        // One retry, only when the connection went away before the request
        // was written (e.g. the peer sent GOAWAY): nothing reached the peer.
        for attempt in 0..2 {
            let mut conn = self.h2_conn(addr, attempt > 0).await?;
            match conn.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempt == 0 => req = unsent,
                    _ => return Err(upstream(addr, e.into_error())),
                },
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn h2_conn(&self, addr: SocketAddr, fresh: bool) -> Result<http2::SendRequest<Body>, ProxyError> {
        let connecting = {
            let mut pool = self.h2.lock().expect("pool lock poisoned");
            let slot = pool.entry(addr).or_default();
            if let Some(conn) = &slot.conn {
                if !fresh && !conn.is_closed() && conn.is_ready() {
                    return Ok(conn.clone());
                }
            }
            slot.connecting.clone()
        };
        let _guard = connecting.lock().await;
        // Another task may have connected while this one waited.
        if !fresh {
            let pool = self.h2.lock().expect("pool lock poisoned");
            if let Some(conn) = pool.get(&addr).and_then(|s| s.conn.as_ref()) {
                if !conn.is_closed() && conn.is_ready() {
                    return Ok(conn.clone());
                }
            }
        }
        let io = self.connect(addr).await?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| upstream(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 client connection ended");
            }
        });
        self.h2
            .lock()
            .expect("pool lock poisoned")
            .entry(addr)
            .or_default()
            .conn = Some(send.clone());
        Ok(send)
    }

    /// Sends a request to an HTTP/1 app over a pooled keep-alive connection.
    /// The request must carry `Host`; its URI is rewritten to `addr`.
    pub async fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let path = crate::http::origin_form(req.uri());
        *req.uri_mut() = format!("http://{addr}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| upstream(addr, e))?;
        *req.version_mut() = http::Version::HTTP_11;
        self.h1.request(req).await.map_err(|e| {
            if e.is_connect() {
                ProxyError::ConnectFailed {
                    addr,
                    source: std::io::Error::other(e),
                }
            } else {
                upstream(addr, e)
            }
        })
    }
}

fn upstream(addr: SocketAddr, e: impl Into<BoxError>) -> ProxyError {
    ProxyError::Upstream {
        addr,
        source: e.into(),
    }
}
