//! In-test upstream apps and client helpers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body fed frame by frame through the returned sender.
pub fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, TestBody) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|f| (Ok::<_, Box<dyn std::error::Error + Send + Sync>>(f), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// Accepts on an ephemeral port until the runtime ends, handing each
/// connection (with the server's own address) to `handle` on a task of its
/// own.
async fn serve_tcp<F, Fut>(mut handle: F) -> SocketAddr
where
    F: FnMut(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(handle(stream, addr));
        }
    });
    addr
}

/// A running echo app: counts the connections it accepted.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

/// HTTP/1.1 + HTTP/2 app:
/// - any path: 200, streams the request body back (trailers included) and
///   reports what it saw in `x-echo-*` headers;
/// - request headers named `x-header*` or `some-*` come back as
///   `x-echo-req-<name>`; `traceparent` and `x-request-id` as
///   `x-echo-traceparent` and `x-echo-request-id`;
/// - `?ms=N`: waits N ms first; `?status=N`: answers status N;
/// - gRPC (`content-type: application/grpc`): echoes each frame as it
///   arrives, then trailers `grpc-status: 0`; path `/test.Echo/Fail` answers
///   trailers-only `grpc-status: 13`.
pub async fn echo_app() -> EchoApp {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let addr = serve_tcp(move |stream, addr| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(move |req| echo(req, addr)))
                .await;
        }
    })
    .await;
    EchoApp { addr, connections }
}

async fn echo(req: Request<Incoming>, me: SocketAddr) -> Result<Response<TestBody>, Infallible> {
    let query = |key: &str| -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    if let Some(ms) = query("ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = query("status")
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Ok(grpc_echo(req, me));
    }
    let mut rsp = Response::builder()
        .status(status)
        .header("x-echo-server", me.to_string())
        .header("x-echo-method", req.method().as_str())
        .header(
            "x-echo-path",
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
        )
        .header("x-echo-version", format!("{:?}", req.version()))
        .header(
            "x-echo-host",
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .or(req.uri().authority().map(|a| a.as_str()))
                .unwrap_or(""),
        )
        .header(
            "x-echo-weft-headers",
            req.headers()
                .keys()
                .filter(|k| k.as_str().starts_with("weft-"))
                .count()
                .to_string(),
        );
    if let Some(t) = req.headers().get("traceparent") {
        rsp = rsp.header("x-echo-traceparent", t);
    }
    if let Some(id) = req.headers().get("x-request-id") {
        rsp = rsp.header("x-echo-request-id", id);
    }
    // The headers the Gateway API conformance cases set and check, as
    // the app received them (repeated ones joined with `,`).
    for name in req.headers().keys() {
        if name.as_str().starts_with("x-header") || name.as_str().starts_with("some-") {
            let joined: Vec<&str> = req
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            rsp = rsp.header(format!("x-echo-req-{name}"), joined.join(","));
        }
    }
    if let Some(t) = req.headers().get("trailer") {
        rsp = rsp.header("trailer", t);
    }
    if let Some(len) = req.headers().get("content-length") {
        rsp = rsp.header("x-echo-content-length", len);
    }
    Ok(rsp.body(req.into_body().map_err(Into::into).boxed()).unwrap())
}

fn grpc_echo(req: Request<Incoming>, me: SocketAddr) -> Response<TestBody> {
    let mut trailers = HeaderMap::new();
    if req.uri().path() == "/test.Echo/Fail" {
        let rsp = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "13")
            .header("grpc-message", "boom")
            .body(full(Bytes::new()))
            .unwrap();
        return rsp;
    }
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-trailer", HeaderValue::from_static("kept"));
    let mut rsp = Response::builder()
        .header("content-type", "application/grpc")
        .header("x-echo-server", me.to_string());
    for name in req.headers().keys() {
        if name.as_str().starts_with("x-header") {
            let joined: Vec<&str> = req
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            rsp = rsp.header(format!("x-echo-req-{name}"), joined.join(","));
        }
    }
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut incoming = req.into_body();
        while let Some(Ok(frame)) = incoming.frame().await {
            // Not the empty DATA frame an END_STREAM may come in: echoing
            // it as a non-final one would be a peer h2 closes the
            // connection of after 100.
            if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                if tx.send(Frame::data(data)).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    rsp.body(body).unwrap()
}

/// A gRPC length-prefixed message.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(5 + msg.len());
    v.push(0);
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v.into()
}

/// TCP echo that echoes until the client half-closes, then sends `bye` and
/// closes.
pub async fn tcp_echo() -> SocketAddr {
    serve_tcp(|mut s, _| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The client half-closed: answer after its EOF, then close.
        let _ = s.write_all(b"bye").await;
        let _ = s.shutdown().await;
    })
    .await
}

/// A server that speaks first: sends `greeting` on accept, then echoes one
/// line.
pub async fn tcp_greeter(greeting: &'static [u8]) -> SocketAddr {
    serve_tcp(move |mut s, _| async move {
        let _ = s.write_all(greeting).await;
        let mut buf = [0u8; 1024];
        if let Ok(n) = s.read(&mut buf).await {
            let _ = s.write_all(&buf[..n]).await;
        }
    })
    .await
}

/// WebSocket echo server.
pub async fn ws_echo() -> SocketAddr {
    serve_tcp(|s, _| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// An HTTP/1.1 client connection to `addr`.
pub async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

/// An HTTP/2 prior-knowledge client connection to `addr`.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Collects a response: status, headers, body bytes, trailers.
pub async fn collect(rsp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let (parts, body) = rsp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// `GET /` with `Host: host` through a client proxy's `outbound` listener,
/// on a fresh connection: the status, and which [`echo_app`] served it.
pub async fn get_echo(outbound: SocketAddr, host: &str) -> (StatusCode, Option<String>) {
    let mut c = h1_client(outbound).await;
    let req = Request::get("/")
        .header("host", host)
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    (
        status,
        headers
            .get("x-echo-server")
            .map(|v| v.to_str().unwrap().to_string()),
    )
}

/// Writes `request` on a fresh connection and reads until the server closes
/// (or 5 s pass). Returns what came back.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// GET `path` on the proxy's admin listener; returns status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let mut c = h1_client(admin).await;
    let req = Request::get(path)
        .header("host", "admin")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, _, body, _) = collect(c.send_request(req).await.unwrap()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// How a [`FlakyApp`] answers, changeable while it runs.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Share of requests (0.0–1.0) answered with `fail_status`.
    pub fail_ratio: f64,
    pub fail_status: StatusCode,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            fail_ratio: 0.0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A misbehaving HTTP/1+2 app for resilience tests. Counts every request
/// it receives; answers per its [`Behaviour`] with `x-echo-server` (its
/// address) and `x-seen-grpc-timeout` (the `grpc-timeout` it received).
/// gRPC requests get a trailers-only reply: `grpc-status: 0`, or 14
/// (UNAVAILABLE) when failing.
pub struct FlakyApp {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    behaviour: Arc<std::sync::Mutex<Behaviour>>,
}

impl FlakyApp {
    pub async fn start(behaviour: Behaviour) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(std::sync::Mutex::new(behaviour));
        let (count, b) = (requests.clone(), behaviour.clone());
        let addr = serve_tcp(move |stream, addr| {
            let (count, b) = (count.clone(), b.clone());
            async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (count, b) = (count.clone(), b.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        let now = b.lock().unwrap().clone();
                        if !now.delay.is_zero() {
                            tokio::time::sleep(now.delay).await;
                        }
                        let fail = now.fail_ratio > 0.0 && rand::random::<f64>() < now.fail_ratio;
                        let grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        let mut rsp = Response::builder().header("x-echo-server", addr.to_string());
                        if let Some(t) = req.headers().get("grpc-timeout") {
                            rsp = rsp.header("x-seen-grpc-timeout", t);
                        }
                        // Read the request body so clients see it consumed.
                        let _ = req.into_body().collect().await;
                        let rsp = if grpc {
                            rsp.header("content-type", "application/grpc")
                                .header("grpc-status", if fail { "14" } else { "0" })
                                .body(full(Bytes::new()))
                        } else {
                            rsp.status(if fail { now.fail_status } else { StatusCode::OK })
                                .body(full(Bytes::from_static(b"ok")))
                        };
                        Ok::<_, Infallible>(rsp.unwrap())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        Self {
            addr,
            requests,
            behaviour,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
