//! Serving one accepted HTTP connection (either direction), and winding it
//! down gracefully on drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::drain;
use crate::http::{AppProtocol, Body};

/// Limits applied to every HTTP connection the proxy serves.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
}

/// Serves HTTP on `io` with `handler` until the client closes or a drain
/// completes. On drain, HTTP/1 finishes the request in progress and closes;
/// HTTP/2 sends GOAWAY and finishes open streams. A connection that has not
/// yet sent its first request gets a short grace to do so, so a request
/// already on the wire when the drain starts is still answered. An HTTP/2
/// connection drains the same way when `ends` resolves (an mTLS
/// connection whose authentication ended: a certificate expired, or the
/// trust anchors changed).
pub async fn serve_http<I, F, Fut>(
    io: I,
    protocol: AppProtocol,
    settings: &HttpSettings,
    drain: &drain::Watch,
    ends: impl Future<Output = ()>,
    handler: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let first_request = Arc::new(Notify::new());
    let notify = first_request.clone();
    let svc = service_fn(move |req| {
        notify.notify_one();
        let rsp = handler(req);
        async move { Ok::<_, Infallible>(rsp.await) }
    });
    let io = TokioIo::new(io);
    let grace = settings.header_read_timeout.min(Duration::from_secs(2));
    let result = match protocol {
        AppProtocol::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .max_header_size(settings.max_header_bytes)
                .max_buf_size(settings.max_header_bytes.max(8192) + 8192)
                .header_read_timeout(settings.header_read_timeout)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                () = drain.signaled() => {
                    // Keep serving while waiting, so a request already on
                    // the wire is read (and then answered) before closing.
                    let first = tokio::time::timeout(grace, first_request.notified());
                    tokio::pin!(first);
                    tokio::select! {
                        res = conn.as_mut() => res,
                        _ = &mut first => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            }
        }
        AppProtocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .max_header_list_size(settings.max_header_bytes as u32)
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::pin!(ends);
            tokio::select! {
                res = conn.as_mut() => res,
                () = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = &mut ends => {
                    tracing::debug!("the connection's authentication ended; draining it");
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Accepts until the drain starts, then drops the listener so new
/// connections are refused. Each connection is a task the drain waits for.
pub async fn accept_loop<F, Fut>(
    mut listener: crate::listener::Listener,
    drain: &drain::Watch,
    name: &str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                drain.spawn(handle(stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
