//! Admin endpoints and graceful drain: nothing accepted is dropped.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::net::TcpStream;
use weft_tests::apps::*;
use weft_tests::{eventually, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let admin = mesh.client.addrs.admin;
    assert_eq!(admin_get(admin, "/live").await.0, StatusCode::OK);
    mesh.client.ready().await;

    let (status, config) = admin_get(admin, "/config").await;
    assert_eq!(status, StatusCode::OK);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["config"]["outboundListen"], "127.0.0.1:0");
    assert_eq!(
        config["endpoints"]["echo"][0]["proxy"],
        mesh.server.addrs.inbound.to_string(),
        "/config shows the endpoints in force"
    );

    let mut c = h1_client(mesh.client.addrs.outbound).await;
    let req = Request::get("/m")
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let (_, client_metrics) = admin_get(admin, "/metrics").await;
    assert!(
        weft_tests::series_sum(
            &client_metrics,
            "weft_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "unknown"),
                ("response_code", "200"),
                ("classification", "success"),
                ("connection_security_policy", "none"),
                ("error", ""),
            ]
        ) == Some(1.0),
        "{client_metrics}"
    );
    assert!(
        client_metrics
            .contains(r#"weft_tcp_connections_opened_total{direction="outbound",protocol="http1"} 1"#),
        "{client_metrics}"
    );
    let (_, server_metrics) = admin_get(mesh.server.addrs.admin, "/metrics").await;
    // Bytes count while the pooled mesh connection is still open.
    let read: f64 = server_metrics
        .lines()
        .find(|l| l.starts_with(r#"weft_tcp_read_bytes_total{direction="inbound"}"#))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    assert!(read > 0.0, "live byte counts: {server_metrics}");
    assert!(
        weft_tests::series_sum(
            &server_metrics,
            "weft_requests_total",
            &[
                ("direction", "inbound"),
                ("destination_workload", "echo"),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "default"),
                ("response_code", "200"),
                ("classification", "success"),
            ]
        )
        .is_some(),
        "{server_metrics}"
    );
    assert!(
        server_metrics
            .contains(r#"weft_tcp_connections_opened_total{direction="inbound",protocol="http2"} 1"#),
        "the mesh hop is HTTP/2: {server_metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_from_loopback_exits_zero() {
    let mut proxy = weft_tests::ProxyProc::start("");
    let mut c = h1_client(proxy.addrs.admin).await;
    let req = Request::post("/shutdown")
        .header("host", "admin")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0));
}

/// Sends `n` slow requests, each on its own connection, and returns their
/// handles once the app has them all.
async fn slow_requests(
    outbound: std::net::SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, Bytes)>> {
    let mut handles = Vec::new();
    for i in 0..n {
        let mut c = h1_client(outbound).await;
        handles.push(tokio::spawn(async move {
            let req = Request::post("http://echo/slow?ms=1500")
                .body(full(format!("request {i}")))
                .unwrap();
            let (status, _, body, _) = collect(c.send_request(req).await.unwrap()).await;
            (status, body)
        }));
    }
    // Let the requests reach the app.
    tokio::time::sleep(Duration::from_millis(400)).await;
    handles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_on_the_client_proxy() {
    let app = echo_app().await;
    let mut mesh = Mesh::start("echo", app.addr, "shutdownGrace: 10s\n");
    let outbound = mesh.client.addrs.outbound;
    let admin = mesh.client.addrs.admin;

    // HTTP/1 requests on their own connections, plus HTTP/2 streams on one.
    let h1 = slow_requests(outbound, 6).await;
    let mut h2 = h2_client(outbound).await;
    let h2_streams: Vec<_> = (0..4)
        .map(|i| {
            let req = Request::get(format!("http://echo/slow?ms=1500&s={i}"))
                .body(full(Bytes::new()))
                .unwrap();
            let fut = h2.send_request(req);
            tokio::spawn(async move { collect(fut.await.unwrap()).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    mesh.client.sigterm();

    // Draining: not ready, and new connections are refused.
    eventually(Duration::from_secs(2), "new connections refused", || async {
        TcpStream::connect(outbound).await.is_err().then_some(())
    })
    .await;
    let (ready, _) = admin_get(admin, "/ready").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "not ready while draining");

    for (i, h) in h1.into_iter().enumerate() {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "in-flight HTTP/1 request {i} completed");
        assert_eq!(body, format!("request {i}"));
    }
    for h in h2_streams {
        assert_eq!(
            h.await.unwrap(),
            StatusCode::OK,
            "in-flight HTTP/2 stream completed"
        );
    }
    let status = tokio::task::block_in_place(|| mesh.client.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0), "{}", mesh.client.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_server_proxy_finishes_mesh_streams() {
    let app = echo_app().await;
    let mut mesh = Mesh::start("echo", app.addr, "shutdownGrace: 10s\n");
    let h1 = slow_requests(mesh.client.addrs.outbound, 8).await;
    mesh.server.sigterm();
    for (i, h) in h1.into_iter().enumerate() {
        let (status, body) = h.await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} finished across the server proxy's drain"
        );
        assert_eq!(body, format!("request {i}"));
    }
    let status = tokio::task::block_in_place(|| mesh.server.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0), "{}", mesh.server.logs());

    // The peer is gone: new requests fail fast with a clear reason.
    let mut c = h1_client(mesh.client.addrs.outbound).await;
    let req = Request::get("http://echo/").body(full(Bytes::new())).unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["weft-error"], "connect-failed");
}
