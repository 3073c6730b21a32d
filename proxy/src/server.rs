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

use crate::bounds::{Activity, Admission, Admitted, HeadTimer, Tracked};
use crate::drain;
use crate::http::{AppProtocol, Body};
use crate::metrics::{Direction, LimitReason, Metrics};

/// Streams one HTTP/2 connection may have open at once (the
/// `SETTINGS_MAX_CONCURRENT_STREAMS` the proxy announces).
pub const H2_MAX_STREAMS: u32 = 200;
/// Streams a client may open and reset before they are accepted, past
/// which the connection is closed (rapid reset, CVE-2023-44487).
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may reset for the client's protocol errors before it
/// closes the connection.
pub const H2_MAX_ERROR_RESETS: usize = 1024;

/// Limits applied to every connection one listener serves.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections the listener holds at once; more are closed at accept.
    pub max_connections: usize,
    /// A spliced TCP stream (opaque, CONNECT, WebSocket) that moves no
    /// byte either way for this long is closed. `None`: never.
    pub tcp_idle_timeout: Option<Duration>,
    /// Destination ports whose TCP streams are long-lived and quiet by
    /// design: no TCP idle timeout.
    pub long_lived_ports: Arc<[u16]>,
    /// Largest HTTP/1 head and HTTP/2 header list (CONTINUATION frames
    /// included).
    pub max_header_bytes: usize,
    /// An HTTP/1 head must be complete this long after its first byte,
    /// or the connection is closed with 408.
    pub head_timeout: Duration,
    /// A connection with no request in progress for this long is closed
    /// (HTTP/2 with GOAWAY).
    pub idle_timeout: Duration,
    /// Counts connections closed by these limits.
    pub metrics: Metrics,
    pub direction: Direction,
}

impl Limits {
    /// The TCP idle timeout for a stream to `port`.
    pub fn tcp_idle(&self, port: u16) -> Option<Duration> {
        self.tcp_idle_timeout
            .filter(|_| !self.long_lived_ports.contains(&port))
    }
}

/// Serves HTTP on `io` with `handler` until the client closes or a drain
/// completes. On drain, HTTP/1 finishes the request in progress and closes;
/// HTTP/2 sends GOAWAY and finishes open streams. A connection that has not
/// yet sent its first request gets a short grace to do so, so a request
/// already on the wire when the drain starts is still answered. An HTTP/2
/// connection drains the same way when `ends` resolves (an mTLS
/// connection whose authentication ended: a certificate expired, or the
/// trust anchors changed). A connection idle for the idle timeout is
/// closed the same way; an HTTP/1 head slower than the head timeout gets
/// 408.
pub async fn serve_http<I, F, Fut>(
    io: I,
    protocol: AppProtocol,
    limits: &Limits,
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
    let activity = Activity::new();
    let tracker = activity.clone();
    let svc = service_fn(move |req| {
        notify.notify_one();
        let guard = tracker.start();
        // Boxed: the connection's task then carries a request's state only
        // while the request runs, not for as long as the connection lives.
        let rsp = Box::pin(handler(req));
        async move { Ok::<_, Infallible>(rsp.await.map(|b| Tracked::new(b, guard))) }
    });
    let idle = activity.idle_for(limits.idle_timeout);
    tokio::pin!(idle);
    let limited = |reason| limits.metrics.count_limited(limits.direction, reason);
    let grace = limits.head_timeout.min(Duration::from_secs(2));
    let result = match protocol {
        AppProtocol::Http1 => {
            let io = HeadTimer::new(io, activity.clone(), limits.head_timeout);
            let head_timed_out = io.fired.clone();
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // The head's deadline is `HeadTimer`'s (answered with a
                // 408); hyper's own would arm a second timer per request.
                .header_read_timeout(None)
                .max_header_size(limits.max_header_bytes)
                .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                res = conn.as_mut() => res,
                () = &mut idle => {
                    limited(LimitReason::IdleTimeout);
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
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
            };
            if head_timed_out.load(std::sync::atomic::Ordering::Relaxed) {
                limited(LimitReason::HeadTimeout);
            }
            result
        }
        // Boxed: an HTTP/2 connection's state would otherwise size every
        // connection's task, HTTP/1 ones (most of them) included.
        AppProtocol::Http2 => {
            Box::pin(async {
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                    .max_concurrent_streams(H2_MAX_STREAMS)
                    .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
                    .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
                    .keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(io), svc);
                tokio::pin!(conn);
                tokio::pin!(ends);
                tokio::select! {
                    res = conn.as_mut() => res,
                    () = &mut idle => {
                        limited(LimitReason::IdleTimeout);
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
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
            })
            .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Accepts until the drain starts, then drops the listener so new
/// connections are refused. Each connection is a task the drain waits for.
/// A connection past the listener's `admission` is closed at once (and
/// counted).
pub async fn accept_loop<F, Fut>(
    mut listener: crate::listener::Listener,
    drain: &drain::Watch,
    admission: &Admission,
    limits: &Limits,
    handle: F,
) where
    F: Fn(Admitted<tokio::net::TcpStream>, std::net::SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => match admission.admit(stream) {
                Some(stream) => {
                    drain.spawn(handle(stream, peer));
                }
                None => {
                    limits
                        .metrics
                        .count_limited(limits.direction, LimitReason::MaxConnections);
                    tracing::debug!(%peer, "listener full; connection closed");
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                let listener = limits.direction.as_str();
                tracing::warn!(listener, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every HTTP/1 connection's task is sized by `serve_http`'s future,
    /// so the HTTP/2 branch (twice the HTTP/1 one's state) is boxed; this
    /// keeps it so. At 10,000 idle keep-alive connections each byte here
    /// is 10 kB of RSS.
    #[test]
    fn an_http1_connection_task_is_not_sized_for_http2() {
        let limits = Limits {
            max_connections: 1,
            max_header_bytes: 65536,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            tcp_idle_timeout: None,
            long_lived_ports: Arc::from(vec![]),
            metrics: Metrics::default(),
            direction: Direction::Outbound,
        };
        let (_signal, drain) = drain::channel();
        let (io, _peer) = tokio::io::duplex(16);
        let conn = serve_http(
            io,
            AppProtocol::Http1,
            &limits,
            &drain,
            std::future::pending(),
            |_req| async { Response::new(crate::http::empty_body()) },
        );
        let size = std::mem::size_of_val(&conn);
        // 2,984 bytes with the HTTP/2 branch inline, 1,464 boxed.
        assert!(size <= 2048, "serve_http's future is {size} bytes");
    }
}
