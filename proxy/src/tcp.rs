//! Opaque TCP: splicing two streams (half-close included), the mesh TCP
//! preamble, and HTTP/1 upgrades (WebSocket, CONNECT) that turn a request
//! into a byte stream.

use std::net::SocketAddr;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::client::{BoxIo, Clients};
use crate::detect::MESH_TCP_PREFIX;
use crate::drain;
use crate::errors::ProxyError;
use crate::http::{incoming, origin_form, strip_hop_by_hop, Body};

/// Copies both ways until both sides are done. When one side finishes
/// writing, the other side's write half is shut down (half-close), and
/// reading continues the other way.
pub async fn splice<A, B>(mut a: A, mut b: B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error = %e, "TCP stream ended with an error");
            (0, 0)
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
/// splice the tunnel once the client's side is upgraded.
pub fn tunnel<U>(mut req: Request<Body>, upstream: U, drain: &drain::Watch) -> Response<Body>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    drain.spawn(async move {
        match on_upgrade.await {
            Ok(downstream) => {
                splice(TokioIo::new(downstream), upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(crate::http::empty_body())
}

/// Sends an HTTP/1.1 upgrade request over its own connection `io` and, if
/// the upstream switches protocols, splices the two upgraded streams.
pub async fn upgrade<I>(
    mut req: Request<Body>,
    io: I,
    addr: SocketAddr,
    drain: &drain::Watch,
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
        drain.spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((d, u)) => {
                    splice(TokioIo::new(d), TokioIo::new(u)).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    } else {
        strip_hop_by_hop(rsp.headers_mut());
    }
    Ok(rsp.map(incoming))
}
