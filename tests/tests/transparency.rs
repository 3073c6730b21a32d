//! Traffic through the two-proxy path (client proxy outbound → HTTP/2 mesh
//! channel → server proxy inbound → app) arrives byte-exact, whatever the
//! app speaks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use weft_tests::apps::*;
use weft_tests::Mesh;

fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_bodies_arrive_byte_exact_as_proxy_and_by_host() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    for len in [0usize, 1, 1024 * 1024] {
        let body = pattern(len);
        let mut c = h1_client(mesh.client.addrs.outbound).await;
        // HTTP_PROXY style: absolute-form URI.
        let req = Request::post("http://echo/upload?x=1")
            .body(full(body.clone()))
            .unwrap();
        let (status, headers, got, _) = collect(c.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{len} bytes");
        assert_eq!(got, body, "{len} bytes came back byte-exact");
        assert_eq!(headers["x-echo-path"], "/upload?x=1");
        assert_eq!(headers["x-echo-host"], "echo");
        assert_eq!(
            headers["x-echo-version"], "HTTP/1.1",
            "the app speaks HTTP/1.1 again"
        );
        assert_eq!(
            headers["x-echo-weft-headers"], "0",
            "mesh headers are stripped before the app"
        );
        assert_eq!(headers["x-echo-content-length"], len.to_string().as_str());
    }
    // Host-header style GET with an empty body.
    let mut c = h1_client(mesh.client.addrs.outbound).await;
    let req = Request::get("/hello")
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, got, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-echo-method"], "GET");
    assert!(got.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunked_body_with_trailers() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut c = h1_client(mesh.client.addrs.outbound).await;
    let (tx, body) = channel_body();
    let req = Request::post("/chunked")
        .header("host", "echo")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .body(body)
        .unwrap();
    let rsp = tokio::spawn(c.send_request(req));
    let mut expected = Vec::new();
    for i in 0..20 {
        let chunk = pattern(1000 + i);
        expected.extend_from_slice(&chunk);
        tx.send(Frame::data(chunk)).await.unwrap();
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    tx.send(Frame::trailers(trailers)).await.unwrap();
    drop(tx);
    let (status, headers, got, trailers) = collect(rsp.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !headers.contains_key("x-echo-content-length"),
        "the app saw a chunked body"
    );
    assert_eq!(got, Bytes::from(expected));
    assert_eq!(trailers.expect("trailers came back")["x-checksum"], "abc123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_reuses_connections() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut s = TcpStream::connect(mesh.client.addrs.outbound).await.unwrap();
    for i in 0..3 {
        let req = format!("GET /ka/{i} HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "request {i} on the same connection: {head}"
        );
        assert!(head.contains(&format!("x-echo-path: /ka/{i}")), "{head}");
    }
    assert_eq!(
        app.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the server proxy reuses its app connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_expect_100_continue() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut s = TcpStream::connect(mesh.client.addrs.outbound).await.unwrap();
    s.write_all(b"PUT /c HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("100 Continue in time")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").await.unwrap();
    let mut rsp = Vec::new();
    while !String::from_utf8_lossy(&rsp).ends_with("hello")
        && !String::from_utf8_lossy(&rsp).contains("0\r\n\r\n")
    {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&rsp)
        );
        rsp.extend_from_slice(&buf[..n]);
    }
    let rsp = String::from_utf8_lossy(&rsp);
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(rsp.contains("hello"), "{rsp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut c = h2_client(mesh.client.addrs.outbound).await;
    let body = pattern(200_000);
    let req = Request::post("http://echo/h2").body(full(body.clone())).unwrap();
    let (status, headers, got, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-echo-version"], "HTTP/2.0",
        "the app speaks HTTP/2 again"
    );
    assert_eq!(headers["x-echo-host"], "echo");
    assert_eq!(got, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_bidi_streaming_with_trailers() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut c = h2_client(mesh.client.addrs.outbound).await;

    // Unary.
    let req = Request::post("http://echo/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(grpc_frame(b"ping")))
        .unwrap();
    let (status, _, body, trailers) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, grpc_frame(b"ping"));
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "kept");

    // Bidirectional: each message comes back before the next is sent.
    let (tx, body) = channel_body();
    let req = Request::post("http://echo/test.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let mut rsp_body = rsp.into_body();
    for i in 0..5 {
        let msg = grpc_frame(format!("message {i}").as_bytes());
        tx.send(Frame::data(msg.clone())).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), rsp_body.frame())
            .await
            .expect("echo streams back before the request ends")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), msg);
    }
    drop(tx);
    let rest = rsp_body.collect().await.unwrap();
    assert_eq!(rest.trailers().expect("trailers")["grpc-status"], "0");

    // Non-OK status in a trailers-only response.
    let req = Request::post("http://echo/test.Echo/Fail")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(grpc_frame(b"x")))
        .unwrap();
    let (status, headers, _, trailers) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let status_field = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or(headers.get("grpc-status"));
    assert_eq!(status_field.unwrap(), "13");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo() {
    let ws = ws_echo().await;
    let mesh = Mesh::start("ws", ws, "");
    let stream = TcpStream::connect(mesh.client.addrs.outbound).await.unwrap();
    let (mut socket, rsp) = tokio_tungstenite::client_async("ws://ws/chat", stream)
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for msg in [Message::text("hello"), Message::binary(pattern(70_000))] {
        socket.send(msg.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    socket.close(None).await.unwrap();
}

/// `CONNECT` through the outbound, then raw bytes.
async fn connect_tunnel(outbound: std::net::SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "tunnel closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_through_connect_with_half_close() {
    let echo = tcp_echo().await;
    let mesh = Mesh::start("tcp-echo", echo, "");
    let mut s = connect_tunnel(mesh.client.addrs.outbound, &format!("tcp-echo:{}", echo.port())).await;
    let data = pattern(300_000);
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: we are done sending
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let ((), n) = tokio::join!(write, read);
    n.unwrap();
    assert_eq!(got.len(), data.len() + 3);
    assert_eq!(&got[..data.len()], &data[..], "echoed byte-exact");
    assert_eq!(
        &got[data.len()..],
        b"bye",
        "the server still wrote after our half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_without_stall() {
    let greeter = tcp_greeter(b"220 smtp.test ready\r\n").await;
    // A long detection timeout: a stall would show.
    let mesh = Mesh::start("smtp", greeter, "detectTimeout: 10s\n");
    let started = Instant::now();
    let mut s = connect_tunnel(mesh.client.addrs.outbound, &format!("smtp:{}", greeter.port())).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("greeting without stall")
        .unwrap();
    assert_eq!(&buf[..n], b"220 smtp.test ready\r\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    s.write_all(b"QUIT\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"QUIT\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmeshed_client_reaches_the_app_through_the_inbound() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut c = h1_client(mesh.server.addrs.inbound).await;
    let req = Request::get("/direct")
        .header("host", "echo")
        .body(full("x"))
        .unwrap();
    let (status, headers, body, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-echo-path"], "/direct");
    assert_eq!(body, "x");
}
