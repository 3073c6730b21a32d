//! Connections to upstreams: TCP connect with a timeout, one pooled HTTP/2
//! connection per peer (other Weft proxies, HTTP/2 apps), and pooled
//! HTTP/1.1 connections to HTTP/1 apps.
//!
//! mTLS (the identity issue) slots in at [`Clients::connect`]: everything
//! above it only sees an I/O stream.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::{connect::HttpConnector, Client as LegacyClient};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::errors::ProxyError;
use crate::identity::{is_identity_mismatch, server_name_for, Identity, ALPN_H2, ALPN_TCP};

/// Any byte stream to a peer: plaintext TCP or mTLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;
use crate::http::{Body, BoxError};

/// Everything the proxy uses to reach upstreams.
#[derive(Clone)]
pub struct Clients {
    connect_timeout: Duration,
    /// This proxy's identity, when it has one: connections to endpoints
    /// that have an identity are then mTLS.
    identity: Option<Arc<Identity>>,
    /// Read-shared on the request path: only opening (or replacing) a
    /// connection takes it exclusively.
    h2: Arc<RwLock<Pool>>,
    h1: LegacyClient<HttpConnector, Body>,
    /// This proxy's workload, sent to peer proxies as
    /// `weft-source-workload`.
    pub(crate) source_workload: Option<http::HeaderValue>,
}

/// HTTP/2 connections by peer address, then by the identity the peer must
/// present (if mTLS; one per address in practice). Looked up without
/// building an owned key: twice per request.
#[derive(Default)]
struct Pool(foldhash::HashMap<SocketAddr, Vec<H2Slot>>);

impl Pool {
    /// The slot for `addr` and `identity`, if there is one.
    fn get(&self, addr: SocketAddr, identity: Option<&str>) -> Option<&H2Slot> {
        self.0
            .get(&addr)?
            .iter()
            .find(|s| s.identity.as_deref() == identity)
    }

    /// The slot for `addr` and `identity`, created empty if missing.
    fn slot(&mut self, addr: SocketAddr, identity: Option<&str>) -> &mut H2Slot {
        let slots = self.0.entry(addr).or_default();
        let i = match slots.iter().position(|s| s.identity.as_deref() == identity) {
            Some(i) => i,
            None => {
                slots.push(H2Slot {
                    identity: identity.map(Into::into),
                    ..H2Slot::default()
                });
                slots.len() - 1
            }
        };
        &mut slots[i]
    }
}

/// For an mTLS connection: until when its authentication holds (the
/// earlier of the two certificates' expiry) and the trust anchors it was
/// checked under. `None` for plaintext.
type Authenticated = Option<(SystemTime, Arc<[Vec<u8>]>)>;

#[derive(Default, Clone)]
struct H2Slot {
    /// The identity the peer must present (mTLS), if any.
    identity: Option<Box<str>>,
    conn: Option<http2::SendRequest<Body>>,
    /// Past its time, or once the anchors change, the connection is not
    /// reused; dropping it lets its streams finish.
    authenticated: Authenticated,
    /// Held while connecting, so a burst of requests opens one connection.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl Clients {
    pub fn new(connect_timeout: Duration, identity: Option<Arc<Identity>>) -> Self {
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
            identity,
            h2: Default::default(),
            h1,
            source_workload: None,
        }
    }

    /// Names this proxy's workload to peer proxies on mesh requests.
    pub fn with_source_workload(mut self, workload: Option<http::HeaderValue>) -> Self {
        self.source_workload = workload;
        self
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

    /// Connects to a peer proxy: mTLS when the endpoint has an identity
    /// and so does this proxy (checking that the peer presents exactly that
    /// identity), plaintext otherwise. Never falls back to plaintext once
    /// mTLS is called for.
    pub async fn connect_peer(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        alpn: &[u8],
    ) -> Result<BoxIo, ProxyError> {
        self.connect_peer_authenticated(addr, identity, alpn)
            .await
            .map(|(io, _)| io)
    }

    /// [`connect_peer`](Self::connect_peer), saying for an mTLS
    /// connection until when its authentication holds and under which
    /// trust anchors.
    async fn connect_peer_authenticated(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        alpn: &[u8],
    ) -> Result<(BoxIo, Authenticated), ProxyError> {
        let tcp = self.connect(addr).await?;
        let (Some(expected), Some(me)) = (identity, &self.identity) else {
            return Ok((Box::new(tcp), None));
        };
        let creds = me.current().ok_or(ProxyError::NoIdentity(addr))?;
        let config = if alpn == ALPN_TCP {
            creds.client_tcp.clone()
        } else {
            creds.client_h2.clone()
        };
        let name = server_name_for(expected).ok_or_else(|| ProxyError::IdentityMismatch {
            addr,
            expected: expected.to_string(),
            source: std::io::Error::other("not a SPIFFE ID"),
        })?;
        let connecting = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => Err(ProxyError::ConnectTimeout(addr)),
            Ok(Ok(tls)) => {
                let peer_until = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::identity::not_after(c));
                let until = peer_until.map_or(creds.valid_until, |p| p.min(creds.valid_until));
                Ok((Box::new(tls), Some((until, creds.anchors.clone()))))
            }
            Ok(Err(source)) if is_identity_mismatch(&source) => Err(ProxyError::IdentityMismatch {
                addr,
                expected: expected.to_string(),
                source,
            }),
            Ok(Err(source)) => Err(ProxyError::Tls { addr, source }),
        }
    }

    /// Whether requests to an endpoint with this identity travel over mTLS.
    pub fn uses_tls(&self, identity: Option<&str>) -> bool {
        identity.is_some() && self.identity.is_some()
    }

    /// Sends a request over the pooled HTTP/2 connection to `addr` (mTLS
    /// with `identity` when [`uses_tls`](Self::uses_tls)). The request URI
    /// carries the `:authority` and `:path` to send.
    pub async fn send_h2(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut req = req;
        // One retry, only when the connection went away before the request
        // was written (e.g. the peer sent GOAWAY): nothing reached the peer.
        for attempt in 0..2 {
            let mut conn = self.h2_conn(addr, identity, attempt > 0).await?;
            match conn.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempt == 0 => req = unsent,
                    _ => return Err(h2_failure(addr, e.into_error())),
                },
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Makes sure a pooled HTTP/2 connection to `addr` exists (connecting
    /// if needed), so a connection failure surfaces before a request is
    /// committed to this peer.
    pub async fn ready_h2(&self, addr: SocketAddr, identity: Option<&str>) -> Result<(), ProxyError> {
        self.h2_conn(addr, identity, false).await.map(|_| ())
    }

    async fn h2_conn(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        fresh: bool,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let identity = identity.filter(|_| self.identity.is_some());
        {
            let pool = self.h2.read().expect("pool lock poisoned");
            if let Some(conn) = pool.get(addr, identity).and_then(|s| self.reusable(s, fresh)) {
                return Ok(conn);
            }
        }
        let connecting = {
            let mut pool = self.h2.write().expect("pool lock poisoned");
            pool.slot(addr, identity).connecting.clone()
        };
        let _guard = connecting.lock().await;
        // Another task may have connected while this one waited.
        {
            let mut pool = self.h2.write().expect("pool lock poisoned");
            let slot = pool.slot(addr, identity);
            if let Some(conn) = self.reusable(slot, fresh) {
                return Ok(conn);
            }
            // Not reusable: dropped here, so it closes once its streams
            // are done.
            slot.conn = None;
        }
        // Boxed: the handshakes' futures are large, and inline they would
        // size every request's future, which passes here on its way to a
        // pooled connection.
        let (send, authenticated) = Box::pin(self.connect_h2(addr, identity)).await?;
        let mut pool = self.h2.write().expect("pool lock poisoned");
        let slot = pool.slot(addr, identity);
        slot.conn = Some(send.clone());
        slot.authenticated = authenticated;
        Ok(send)
    }

    /// A new HTTP/2 connection to `addr` (mTLS when the proxy has an
    /// identity), its driver spawned.
    async fn connect_h2(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Result<(http2::SendRequest<Body>, Authenticated), ProxyError> {
        let (io, authenticated) = self.connect_peer_authenticated(addr, identity, ALPN_H2).await?;
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
        Ok((send, authenticated))
    }

    /// The slot's connection, if it is open, ready, and (mTLS) still
    /// authenticated under the current trust anchors.
    fn reusable(&self, slot: &H2Slot, fresh: bool) -> Option<http2::SendRequest<Body>> {
        let conn = slot
            .conn
            .as_ref()
            .filter(|c| !fresh && !c.is_closed() && c.is_ready())?;
        if let Some((until, anchors)) = &slot.authenticated {
            let trusted = self.identity.as_ref().is_some_and(|i| i.trusts(anchors));
            if SystemTime::now() >= *until || !trusted {
                return None;
            }
        }
        Some(conn.clone())
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

/// A failed HTTP/2 request. h2 tells a stream the peer provably did not
/// process: reset with `REFUSED_STREAM`, or failed by the peer's graceful
/// GOAWAY (h2 gives that error only to streams above its last stream id
/// and to streams opened after it; a GOAWAY with an error code fails all
/// streams, processed or not, and is an ordinary failure).
fn h2_failure(addr: SocketAddr, e: hyper::Error) -> ProxyError {
    let unprocessed = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR))
        });
    if unprocessed {
        ProxyError::Unprocessed {
            addr,
            source: e.into(),
        }
    } else {
        upstream(addr, e)
    }
}

fn upstream(addr: SocketAddr, e: impl Into<BoxError>) -> ProxyError {
    ProxyError::Upstream {
        addr,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::full_body;

    /// An HTTP/2 server (plain, as an endpoint without identity is
    /// reached) that treats each connection with `act`.
    async fn h2_server<F>(act: F) -> SocketAddr
    where
        F: Fn(h2::server::Connection<TcpStream, bytes::Bytes>) -> tokio::task::JoinHandle<()>
            + Send
            + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(conn) = h2::server::handshake(tcp).await {
                    act(conn);
                }
            }
        });
        addr
    }

    fn post() -> Request<Body> {
        Request::post("http://web/orders")
            .body(full_body(bytes::Bytes::from_static(b"order")))
            .unwrap()
    }

    #[tokio::test]
    async fn a_refused_stream_is_unprocessed() {
        let addr = h2_server(|mut conn| {
            tokio::spawn(async move {
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            })
        })
        .await;
        let clients = Clients::new(Duration::from_secs(1), None);
        let e = clients.send_h2(addr, None, post()).await.unwrap_err();
        assert!(matches!(e, ProxyError::Unprocessed { .. }), "{e}");
        assert_eq!(e.outcome(), Some(crate::resilience::retry::Outcome::NotDelivered));
        assert_eq!(e.status(), http::StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn a_graceful_goaway_before_the_stream_is_unprocessed_an_error_goaway_is_not() {
        // GOAWAY(NO_ERROR) before any stream: whatever the client sends is
        // above its last stream id.
        let graceful = h2_server(|mut conn| {
            tokio::spawn(async move {
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                while conn.accept().await.is_some() {}
                // Keep the socket open a while, as a draining server does:
                // closing it with the request unread would reset it.
                tokio::time::sleep(Duration::from_secs(1)).await;
            })
        })
        .await;
        let clients = Clients::new(Duration::from_secs(1), None);
        let e = clients.send_h2(graceful, None, post()).await.unwrap_err();
        assert!(matches!(e, ProxyError::Unprocessed { .. }), "{e}");
        // A request the server took, then a GOAWAY with an error: it may
        // have been processed.
        let failing = h2_server(|mut conn| {
            tokio::spawn(async move {
                if let Some(Ok(_stream)) = conn.accept().await {
                    conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                    while conn.accept().await.is_some() {}
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        })
        .await;
        let e = clients.send_h2(failing, None, post()).await.unwrap_err();
        assert!(matches!(e, ProxyError::Upstream { .. }), "{e}");
    }
}
