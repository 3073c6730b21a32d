//! Identity: every connection between two proxies is mTLS with workload
//! certificates from the control plane; each side knows who the other is;
//! a peer that is not who discovery promised is refused, never downgraded.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use weft_tests::apps::*;
use weft_tests::{eventually, series_sum, ControlProc, ProxyProc, TempDir, TokenReviewApi};

const TOKENS: &str = "- {namespace: demo, serviceAccount: web, token: web-token-0123456789}\n- {namespace: demo, serviceAccount: echo, token: echo-token-0123456789}\n";
const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const ECHO: &str = "spiffe://cluster.local/ns/demo/sa/echo";

struct Setup {
    dir: TempDir,
    control: ControlProc,
}

impl Setup {
    fn start(extra: &[&str]) -> Self {
        let dir = TempDir::new();
        dir.write("tokens.yaml", TOKENS);
        dir.write("web.token", "web-token-0123456789\n");
        dir.write("echo.token", "echo-token-0123456789\n");
        dir.write("bad.token", "not-the-token-0123456789\n");
        std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
        let control = Self::control(&dir, "127.0.0.1:0".parse().unwrap(), extra);
        Self { dir, control }
    }

    fn control(dir: &TempDir, grpc: std::net::SocketAddr, extra: &[&str]) -> ControlProc {
        let tokens = dir.path().join("tokens.yaml");
        let mut flags = vec!["--tokens", tokens.to_str().unwrap()];
        flags.extend_from_slice(extra);
        ControlProc::start_with(&dir.path().join("mesh"), grpc, &flags)
    }

    /// Stops the control plane and starts another on the same address.
    fn restart_control(&mut self, extra: &[&str]) {
        let tokens = self.dir.path().join("tokens.yaml");
        let mut flags = vec!["--tokens", tokens.to_str().unwrap()];
        flags.extend_from_slice(extra);
        self.control.restart(&flags);
    }

    fn proxy(&self, workload: &str, token: &str, extra: &str) -> ProxyProc {
        ProxyProc::start(&format!(
            "{}namespace: demo\nworkload: {workload}\nidentityTokenFile: {}\n{extra}",
            self.control.client_config(),
            self.dir.path().join(token).display()
        ))
    }

    fn mesh_service(&self, app: std::net::SocketAddr, server: &ProxyProc, service_account: &str) {
        self.dir.write(
            "mesh/echo.yaml",
            &format!(
                "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  serviceAccount: {service_account}\n  endpoints:\n    - address: {app}\n      proxy: {}\n",
                server.addrs.inbound
            ),
        );
    }
}

async fn ready(proxy: &ProxyProc) {
    eventually(
        Duration::from_secs(15),
        "the proxy has its certificate",
        || async { (admin_get(proxy.addrs.admin, "/ready").await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
}

async fn call(outbound: std::net::SocketAddr) -> (StatusCode, http::HeaderMap) {
    let mut c = h1_client(outbound).await;
    let req = Request::get("/who")
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_between_proxies_are_mtls_with_verified_identities() {
    let app = echo_app().await;
    let setup = Setup::start(&[]);
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;

    let (status, _) = eventually(Duration::from_secs(5), "the service is known", || async {
        let r = call(client.addrs.outbound).await;
        (r.0 == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(status, StatusCode::OK);

    let (_, server_metrics) = admin_get(server.addrs.admin, "/metrics").await;
    assert!(
        series_sum(
            &server_metrics,
            "weft_requests_total",
            &[
                ("direction", "inbound"),
                ("source_workload", "web"),
                ("source_workload_namespace", "demo"),
                ("source_principal", WEB),
                ("destination_workload", "echo"),
                ("destination_principal", ECHO),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "demo"),
                ("response_code", "200"),
                ("connection_security_policy", "mutual_tls"),
                ("classification", "success"),
            ]
        )
        .is_some(),
        "the server proxy saw the client's SPIFFE ID over mTLS: {server_metrics}"
    );
    let (_, client_metrics) = admin_get(client.addrs.admin, "/metrics").await;
    assert!(
        series_sum(
            &client_metrics,
            "weft_requests_total",
            &[
                ("direction", "outbound"),
                ("source_workload", "web"),
                ("source_principal", WEB),
                ("destination_workload", "echo"),
                ("destination_workload_namespace", "demo"),
                ("destination_principal", ECHO),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "demo"),
                ("response_code", "200"),
                ("connection_security_policy", "mutual_tls"),
            ]
        )
        .is_some(),
        "the client proxy verified the server's SPIFFE ID: {client_metrics}"
    );
    assert!(
        client_metrics.contains("weft_identity_cert_expiration_timestamp_seconds "),
        "{client_metrics}"
    );
    let tls =
        server_metrics.contains(r#"weft_tcp_connections_opened_total{direction="inbound",protocol="tls"} 1"#);
    assert!(tls, "{server_metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_identity_is_refused() {
    let app = echo_app().await;
    let setup = Setup::start(&[]);
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    // Discovery promises `web`; the server is `echo`.
    setup.mesh_service(app.addr, &server, "web");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    let (status, headers) = eventually(Duration::from_secs(5), "the service is known", || async {
        let r = call(client.addrs.outbound).await;
        (r.0 != StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["weft-error"], "identity-mismatch");
    assert_eq!(
        app.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_a_foreign_ca_is_refused() {
    let app = echo_app().await;
    let ours = Setup::start(&[]);
    let foreign = Setup::start(&[]);
    // Same names and tokens, but the foreign control plane has its own CA.
    let server = foreign.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    ours.mesh_service(app.addr, &server, "echo");
    let client = ours.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    let (status, headers) = eventually(Duration::from_secs(5), "the service is known", || async {
        let r = call(client.addrs.outbound).await;
        (r.0 != StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["weft-error"], "identity-mismatch");
    assert_eq!(app.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_gets_no_certificate_and_the_proxy_stays_unready() {
    let setup = Setup::start(&[]);
    let mut proxy = setup.proxy("web", "bad.token", "");
    proxy.proc.wait_line(
        &["certificate request failed", "token is not valid"],
        Duration::from_secs(10),
    );
    assert_eq!(
        admin_get(proxy.addrs.admin, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (_, cp) = admin_get(setup.control.admin, "/metrics").await;
    assert!(
        cp.contains(r#"weft_control_certificates_total{result="bad_token"}"#),
        "{cp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_by_identity_path_and_method_with_strict_mtls() {
    let app = echo_app().await;
    let setup = Setup::start(&[]);
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    setup.dir.write(
        "mesh/authz.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: echo-authz, namespace: demo}}\nspec:\n  targetRef: {{name: echo}}\n  mtls: strict\n  rules:\n    - from: {{identities: [\"{WEB}\"]}}\n      to: {{paths: [/allowed], methods: [GET]}}\n"
        ),
    );
    let web = setup.proxy("web", "web.token", "");
    // Another workload, with its own valid identity, also calling echo.
    let other = setup.proxy("echo", "echo.token", "");
    for p in [&server, &web, &other] {
        ready(p).await;
    }
    let send = |out: std::net::SocketAddr, method: &'static str, path: &'static str| async move {
        let mut c = h1_client(out).await;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "echo")
            .body(full(Bytes::new()))
            .unwrap();
        let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
        (
            status,
            headers.get("weft-error").map(|v| v.to_str().unwrap().to_string()),
        )
    };
    eventually(Duration::from_secs(10), "the policy is in force", || async {
        (send(web.addrs.outbound, "GET", "/other").await.0 == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    assert_eq!(
        send(web.addrs.outbound, "GET", "/allowed").await.0,
        StatusCode::OK,
        "allowed identity, path, method"
    );
    assert_eq!(
        send(web.addrs.outbound, "GET", "/other").await,
        (StatusCode::FORBIDDEN, Some("unauthorized".into()))
    );
    assert_eq!(
        send(web.addrs.outbound, "POST", "/allowed").await,
        (StatusCode::FORBIDDEN, Some("unauthorized".into()))
    );
    assert_eq!(
        send(other.addrs.outbound, "GET", "/allowed").await,
        (StatusCode::FORBIDDEN, Some("unauthorized".into()))
    );

    // Strict: a client without a certificate (plaintext, straight to the
    // inbound listener) is refused.
    let mut c = h1_client(server.addrs.inbound).await;
    let req = Request::get("/allowed")
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["weft-error"], "unauthorized");

    // TCP: no rule allows a stream (the rule is HTTP-only): the tunnel closes.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(web.addrs.outbound).await.unwrap();
    s.write_all(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"\r\n\r\n") {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the denied tunnel is closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("x-echo-server"),
        "nothing reached the app through it"
    );

    let (_, metrics) = admin_get(server.addrs.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"weft_authorization_total{result="allow",kind="http"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_authorization_total{result="deny",kind="tcp"} 1"#),
        "{metrics}"
    );
}

/// The CA the Helm chart generates when the user brings none
/// (charts/weft/templates/issuer.yaml: Sprig's `genCAWithKey` over
/// `genPrivateKey "ed25519"`): an Ed25519 key in PKCS#8 (the only key form
/// weft-control's signer loads), and Go's CA template: key usages
/// digitalSignature, keyEncipherment and keyCertSign, extended key usages
/// serverAuth and clientAuth, no path length. It must sign certificates
/// that proxies accept from each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_kind_the_helm_chart_generates_carries_mtls() {
    let ca_dir = TempDir::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem = key.serialize_pem();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8, as Sprig writes Ed25519: {pem}"
    );
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft mesh CA (cluster.local)");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    let ca_key = ca_dir.write("tls.key", &pem).display().to_string();
    let ca_crt = ca_dir.write("tls.crt", &cert.pem()).display().to_string();

    let app = echo_app().await;
    let setup = Setup::start(&["--ca-cert", &ca_crt, "--ca-key", &ca_key]);
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    let (status, _) = eventually(Duration::from_secs(5), "the service is known", || async {
        let r = call(client.addrs.outbound).await;
        (r.0 == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = admin_get(server.addrs.admin, "/metrics").await;
    assert!(
        series_sum(
            &metrics,
            "weft_requests_total",
            &[
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", WEB)
            ]
        )
        .is_some(),
        "mTLS with the Ed25519-signed certificates: {metrics}"
    );
}

/// One request through a fresh CONNECT tunnel: a new mTLS handshake
/// between the proxies every time.
async fn tunnel_request(outbound: std::net::SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(outbound)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed: {}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if !sent && text.contains("\r\n\r\n") {
            if !text.starts_with("HTTP/1.1 200") {
                return Err(text);
            }
            got.clear();
            s.write_all(b"GET /via-tunnel HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            sent = true;
        } else if sent && text.contains("x-echo-path: /via-tunnel") {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let app = echo_app().await;
    let setup = Setup::start(&["--cert-lifetime", "2s"]);
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    let mut last = Err(String::new());
    for _ in 0..50 {
        last = tunnel_request(client.addrs.outbound).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_ok(),
        "traffic flows before expiry: {last:?}\n{}",
        client.logs()
    );
    // No control plane, no renewal: both certificates expire.
    setup.control.proc.signal("KILL");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let err = match tunnel_request(client.addrs.outbound).await {
        Ok(()) => panic!("an expired certificate was accepted"),
        Err(e) => e,
    };
    assert!(err.contains("502") || err.starts_with("closed"), "{err}");
    assert!(
        err.contains("weft-error: identity-mismatch") || err.contains("weft-error: tls-failed"),
        "{err}"
    );
}

mod rotation;
