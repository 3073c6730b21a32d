//! Bad input gets the right status, never a crash: malformed requests,
//! unknown services, unreachable endpoints, bad config.

use std::process::Command;

use bytes::Bytes;
use http::{Request, StatusCode};
use weft_tests::apps::*;
use weft_tests::{bin, series_sum, Mesh, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let out = mesh.client.addrs.outbound;

    let rsp = raw_exchange(out, b"GET /a b c HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "malformed request line: {rsp}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let rsp = raw_exchange(out, big.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "oversized headers: {rsp}");

    let rsp = raw_exchange(out, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        rsp.starts_with("HTTP/1.0 400") || rsp.starts_with("HTTP/1.1 400"),
        "no Host: {rsp}"
    );
    assert!(
        rsp.to_ascii_lowercase().contains("weft-error: no-authority"),
        "{rsp}"
    );

    // The proxy is still serving after all that.
    let mut c = h1_client(out).await;
    let req = Request::get("/still-alive")
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_and_unreachable_endpoints() {
    let app = echo_app().await;
    let mesh = Mesh::start("echo", app.addr, "");
    let mut c = h1_client(mesh.client.addrs.outbound).await;

    let req = Request::get("http://nobody.example/")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["weft-error"], "no-endpoints");

    // `unreachable` is an unmeshed endpoint on a closed port.
    c.ready()
        .await
        .expect("the connection stays open after a proxy error");
    let req = Request::get("http://unreachable/")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["weft-error"], "connect-failed");

    // The same over HTTP/2.
    let mut c2 = h2_client(mesh.client.addrs.outbound).await;
    let req = Request::get("http://nobody.example/")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c2.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["weft-error"], "no-endpoints");

    let (_, metrics) = admin_get(mesh.client.addrs.admin, "/metrics").await;
    assert!(
        series_sum(
            &metrics,
            "weft_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_service_name", "unknown"),
                ("destination_service_namespace", "unknown"),
                ("response_code", "503"),
                ("classification", "failure"),
                ("connection_security_policy", "none"),
                ("error", "no-endpoints"),
            ]
        ) == Some(2.0),
        "{metrics}"
    );
    assert!(
        series_sum(
            &metrics,
            "weft_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_service_name", "unreachable"),
                ("response_code", "502"),
                ("classification", "failure"),
                ("error", "connect-failed"),
            ]
        ) == Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_proxy_is_connect_failed() {
    let dir = TempDir::new();
    let eps = dir.write(
        "eps.yaml",
        "svc:\n  - addr: 127.0.0.1:8080\n    proxy: 127.0.0.1:1\n",
    );
    let client = weft_tests::ProxyProc::start(&format!("endpointsFile: {}\n", eps.display()));
    let mut c = h1_client(client.addrs.outbound).await;
    let req = Request::get("http://svc/").body(full(Bytes::new())).unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["weft-error"], "connect-failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_ports_the_app_does_not_serve() {
    let app = echo_app().await;
    let server = weft_tests::ProxyProc::start(&format!("appPorts: [{}]\n", app.addr.port()));
    let mut c = h2_client(server.addrs.inbound).await;
    let req = Request::get("http://echo/")
        .header("weft-proto", "http/1.1")
        .header("weft-port", "22")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["weft-error"], "unknown-app-port");
}

fn run_proxy_with(config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new();
    let path = dir.write("proxy.yaml", config);
    let out = Command::new(bin("weft-proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_64_naming_file_field_and_expectation() {
    let (code, err) = run_proxy_with("appPorts: [8080, http]\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("proxy.yaml"), "names the file: {err}");
    assert!(err.contains("appPorts[1]"), "names the field: {err}");
    assert!(
        err.contains("u16") || err.contains("integer"),
        "says what was expected: {err}"
    );

    let (code, err) = run_proxy_with("shutdownGrace: forever\n");
    assert_eq!(code, Some(64));
    assert!(
        err.contains("shutdownGrace") && err.contains("expected a duration"),
        "{err}"
    );

    let (code, err) = run_proxy_with("inbound_listen: 1.2.3.4:5\n");
    assert_eq!(code, Some(64));
    assert!(
        err.contains("unknown field `inbound_listen`") && err.contains("inboundListen"),
        "{err}"
    );

    let (code, err) = run_proxy_with("endpointsFile: /nonexistent/eps.yaml\n");
    assert_eq!(code, Some(64));
    assert!(
        err.contains("endpointsFile") && err.contains("/nonexistent/eps.yaml"),
        "{err}"
    );

    let (code, err) = run_proxy_with("appPorts: [\n");
    assert_eq!(code, Some(64));
    assert!(err.contains("not valid YAML"), "{err}");
}

/// A control plane is trusted only over TLS, by its trust anchors, with a
/// token for the first certificate: each missing piece stops the proxy at
/// start (exit 64) with the field named, never a plaintext channel.
#[test]
fn a_control_plane_without_tls_or_trust_anchors_is_refused_at_start() {
    let dir = TempDir::new();
    let token = dir.write("token", "a-token-0123456789");
    let not_pem = dir.write("anchors.pem", "not a certificate");
    for (config, field, says) in [
        (
            "controlPlane: http://127.0.0.1:8086\n".to_string(),
            "controlPlane",
            "always TLS",
        ),
        (
            format!(
                "controlPlane: https://127.0.0.1:8086\nidentityTokenFile: {}\n",
                token.display()
            ),
            "trustAnchors",
            "trust anchors",
        ),
        (
            format!(
                "controlPlane: https://127.0.0.1:8086\nidentityTokenFile: {}\ntrustAnchors: {}\n",
                token.display(),
                not_pem.display()
            ),
            "trustAnchors",
            "PEM certificate",
        ),
        (
            format!(
                "controlPlane: https://127.0.0.1:8086\ntrustAnchors: {}\n",
                not_pem.display()
            ),
            "identityTokenFile",
            "token file",
        ),
    ] {
        let (code, err) = run_proxy_with(&config);
        assert_eq!(code, Some(64), "{config}: {err}");
        assert!(err.contains(field) && err.contains(says), "{config}: {err}");
    }
}

#[test]
fn bad_endpoints_file_exits_64_naming_it() {
    let dir = TempDir::new();
    let eps = dir.write(
        "eps.yaml",
        "web:\n  - addr: 127.0.0.1:80\n    porxy: 127.0.0.1:4143\n",
    );
    let (code, err) = run_proxy_with(&format!("endpointsFile: {}\n", eps.display()));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("eps.yaml") && err.contains("web[0]") && err.contains("porxy"),
        "{err}"
    );
}

#[test]
fn bad_flag_exits_64() {
    let out = Command::new(bin("weft-proxy"))
        .args(["--admin-listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_among_live_ones_costs_no_request() {
    let app = echo_app().await;
    let server = weft_tests::ProxyProc::start(&format!("appPorts: [{}]\n", app.addr.port()));
    let dir = TempDir::new();
    // Two replicas: one whose proxy is gone (nothing listens on port 1).
    let eps = dir.write(
        "eps.yaml",
        &format!(
            "echo:\n  - addr: {0}\n    proxy: 127.0.0.1:1\n  - addr: {0}\n    proxy: {1}\n",
            app.addr, server.addrs.inbound
        ),
    );
    let client = weft_tests::ProxyProc::start(&format!("endpointsFile: {}\n", eps.display()));
    for i in 0..20 {
        let mut c = h1_client(client.addrs.outbound).await;
        let req = Request::post("http://echo/x")
            .body(full(format!("body {i}")))
            .unwrap();
        let (status, _, body, _) = collect(c.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(
            body,
            format!("body {i}"),
            "the body went to the live replica intact"
        );
    }
}
