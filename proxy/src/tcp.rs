//! Opaque TCP: splicing two streams (half-close included), the mesh TCP
//! preamble, and HTTP/1 upgrades (WebSocket, CONNECT) that turn a request
//! into a byte stream.

use std::net::SocketAddr;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::bounds::IdleClock;
use crate::client::{BoxIo, Clients};
use crate::detect::MESH_TCP_PREFIX;
use crate::drain;
use crate::errors::ProxyError;
use crate::http::{incoming, origin_form, strip_hop_by_hop, Body};
use crate::metrics::{LimitReason, StreamGuard};
use crate::server::Limits;

/// Copies both ways until both sides are done. When one side finishes
/// writing, the other side's write half is shut down (half-close), and
/// reading continues the other way. A stream to `port` that moves no byte
/// for the limits' TCP idle timeout is closed (and counted). `a` is the
/// connecting side: `stream` counts its bytes, and the close when done.
pub async fn splice<A, B>(a: A, b: B, limits: &Limits, port: u16, stream: StreamGuard)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = IdleClock::new();
    let (mut a, mut b) = (clock.wrap(stream.meter(a)), clock.wrap(b));
    let idle = async {
        match limits.tcp_idle(port) {
            Some(timeout) => clock.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "TCP stream ended with an error");
            }
        }
        () = idle => {
            limits.metrics.count_limited(limits.direction, LimitReason::TcpIdleTimeout);
            tracing::debug!(port, "TCP stream idle; closed");
        }
    }
}

/// Opens an opaque TCP stream to `port` on a peer through its proxy's
/// inbound listener at `peer`.
pub async fn connect_mesh(
    clients: &Clients,
    peer: SocketAddr,
    identity: Option<&str>,
    port: u16,
) -> Result<BoxIo, ProxyError> {
    let mut io = clients
        .connect_peer(peer, identity, crate::identity::ALPN_TCP)
        .await?;
    let mut preamble = Vec::with_capacity(24);
    preamble.extend_from_slice(MESH_TCP_PREFIX);
    preamble.extend_from_slice(format!("{port}\r\n").as_bytes());
    io.write_all(&preamble)
        .await
        .map_err(|source| ProxyError::ConnectFailed { addr: peer, source })?;
    Ok(io)
}

/// Answers a CONNECT: the upstream is already connected, so reply 200 and
/// splice the tunnel once the client's side is upgraded (when `stream`
/// opens its metrics).
pub fn tunnel<U>(
    mut req: Request<Body>,
    upstream: U,
    port: u16,
    limits: &Limits,
    drain: &drain::Watch,
    stream: impl FnOnce() -> StreamGuard + Send + 'static,
) -> Response<Body>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = limits.clone();
    drain.spawn(async move {
        match on_upgrade.await {
            Ok(downstream) => {
                splice(TokioIo::new(downstream), upstream, &limits, port, stream()).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(crate::http::empty_body())
}

/// Sends an HTTP/1.1 upgrade request over its own connection `io` and, if
/// the upstream switches protocols, splices the two upgraded streams
/// (opening `stream`'s metrics then).
pub async fn upgrade<I>(
    mut req: Request<Body>,
    io: I,
    addr: SocketAddr,
    limits: &Limits,
    drain: &drain::Watch,
    stream: impl FnOnce() -> StreamGuard + Send + 'static,
) -> Result<Response<Body>, ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let fail = |e: hyper::Error| ProxyError::Upstream {
        addr,
        source: e.into(),
    };
    let downstream = hyper::upgrade::on(&mut req);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(fail)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let (mut parts, body) = req.into_parts();
    let protocol = parts.headers.get(UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = protocol {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol);
    }
    parts.uri = origin_form(&parts.uri);
    let mut rsp = send
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(fail)?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        let limits = limits.clone();
        drain.spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((d, u)) => {
                    splice(TokioIo::new(d), TokioIo::new(u), &limits, addr.port(), stream()).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    } else {
        strip_hop_by_hop(rsp.headers_mut());
    }
    Ok(rsp.map(incoming))
}
