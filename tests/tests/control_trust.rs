//! The proxy trusts the control plane and nothing else: the channel is TLS
//! (no token crosses it in the clear), a control plane from another CA or
//! with another identity is refused, and the proxy keeps serving what the
//! real one told it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::apps::*;
use weft_tests::{eventually, series_sum, ControlProc, ProxyProc, TempDir};

/// A TCP relay to `to` that keeps every byte the client sent.
async fn recording_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_crosses_the_control_channel_in_the_clear() {
    let dir = TempDir::new();
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let (relay, seen) = recording_relay(control.grpc).await;
    let config = control
        .proxy_config("demo", "web")
        .replace(&control.grpc.to_string(), &relay.to_string());
    let proxy = ProxyProc::start(&config);
    proxy.ready().await;
    let token = std::fs::read(control.secrets.path().join("demo.web.token")).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > 500,
        "the certificate request went through the relay: {} bytes",
        seen.len()
    );
    assert_eq!(seen[0], 0x16, "the first byte opens a TLS handshake record");
    assert!(
        !seen.windows(token.len()).any(|w| w == token.as_slice()),
        "the token crossed the wire in the clear"
    );
    assert!(
        !seen.windows(24).any(|w| w == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "no plaintext HTTP/2 at all"
    );
}

async fn call(outbound: SocketAddr) -> (StatusCode, Option<String>) {
    get_echo(outbound, "echo").await
}

fn echo_service(app: SocketAddr) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  ports: [{{port: 80}}]\n  endpoints: [{{address: {app}}}]\n"
    )
}

/// The real control plane publishes `echo` → the good app; then it is
/// replaced on the same address by an impostor: `rogue_flags` decide how
/// it differs. The proxy must refuse it, keep sending to the good app, and
/// never reach the impostor's.
async fn impostor_is_refused(rogue_flags: impl Fn(&ControlProc) -> Vec<String>) {
    let (good, evil) = (echo_app().await, echo_app().await);
    let dir = TempDir::new();
    dir.write("mesh.yaml", &echo_service(good.addr));
    let mut real = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let client = ProxyProc::start(&format!(
        "{}destinationIdleTimeout: 60s\n",
        real.proxy_config("demo", "web")
    ));
    client.ready().await;
    let (status, server) = eventually(Duration::from_secs(5), "echo is served", || async {
        let r = call(client.addrs.outbound).await;
        (r.0 == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!((status, server), (StatusCode::OK, Some(good.addr.to_string())));

    let grpc = real.grpc;
    let flags = rogue_flags(&real);
    real.kill();
    let rogue_dir = TempDir::new();
    rogue_dir.write("mesh.yaml", &echo_service(evil.addr));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rogue = ControlProc::start_with(rogue_dir.path(), grpc, &flags);
    // Long enough for several reconnect attempts (backoff 100 ms → 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        let (status, server) = call(client.addrs.outbound).await;
        assert_eq!(status, StatusCode::OK, "served from the last good state");
        assert_eq!(server, Some(good.addr.to_string()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        evil.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the impostor's app"
    );
    let (_, proxies) = admin_get(rogue.admin, "/proxies").await;
    assert_eq!(proxies.trim(), "[]", "no watch reached the impostor");
    let (_, metrics) = admin_get(rogue.admin, "/metrics").await;
    assert!(
        !metrics.contains("weft_control_certificates_total{"),
        "no certificate request reached the impostor: {metrics}"
    );
    assert!(
        metrics.contains(r#"weft_control_grpc_connections_refused_total{reason="tls_handshake"}"#),
        "the proxy hung up in the handshake: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_from_another_ca_is_refused_and_the_last_state_kept() {
    // Same address, same SPIFFE ID, same DNS names: only its CA differs.
    impostor_is_refused(|_| Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_of_the_mesh_cannot_pose_as_the_control_plane() {
    // The mesh's own CA (a stolen workload key would do the same), but not
    // the control plane's identity.
    impostor_is_refused(|real| {
        let ca = real.secrets.path();
        vec![
            "--ca-cert".into(),
            ca.join("ca.pem").display().to_string(),
            "--ca-key".into(),
            ca.join("ca.key").display().to_string(),
            "--namespace".into(),
            "demo".into(),
            "--service-account".into(),
            "web".into(),
        ]
    })
    .await;
}

/// Requests that reached `proxy`'s app over plaintext inbound (by its
/// metrics: inbound requests with `tls="false"` that got a 2xx).
async fn plaintext_served(proxy: &ProxyProc) -> f64 {
    let (_, metrics) = admin_get(proxy.addrs.admin, "/metrics").await;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("weft_requests_total{")
                && l.contains(r#"direction="inbound""#)
                && l.contains(r#"connection_security_policy="none""#)
                && l.contains(r#"response_code="2"#)
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// A plaintext GET straight to a proxy's inbound listener, as an
/// unmeshed (or hostile) pod would send it.
async fn plaintext_get(inbound: SocketAddr) -> Option<StatusCode> {
    let stream = tokio::net::TcpStream::connect(inbound).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "echo")
        .body(full(Bytes::new()))
        .unwrap();
    Some(send.send_request(req).await.ok()?.status())
}

/// A strict AuthorizationPolicy, then the control plane goes away: the
/// running proxies keep enforcing it, a replica started meanwhile admits
/// nothing (its port has no policy yet) and a client started meanwhile
/// sends nothing (its destination is pending); no request reaches an app
/// in plaintext at any point. Once the control plane is back, both join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_control_plane_is_away_nothing_opens() {
    let (app, app2) = (echo_app().await, echo_app().await);
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let mut control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let server_for = |control: &ControlProc, app: &EchoApp| {
        ProxyProc::start(&format!(
            "appPorts: [{}]\nworkload: echo\n{}",
            app.addr.port(),
            control.proxy_config("demo", "echo")
        ))
    };
    let server = server_for(&control, &app);
    let mesh = |servers: &[(&EchoApp, &ProxyProc)]| {
        let eps: String = servers
            .iter()
            .map(|(a, p)| format!("    - {{address: {}, proxy: {}}}\n", a.addr, p.addrs.inbound))
            .collect();
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  serviceAccount: echo\n  ports: [{{port: 80}}]\n  endpoints:\n{eps}---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  targetRef: {{name: echo}}\n  mtls: strict\n  rules: [{{from: {{namespaces: [demo]}}}}]\n"
        )
    };
    std::fs::write(&file, mesh(&[(&app, &server)])).unwrap();
    let client = ProxyProc::start(&control.proxy_config("demo", "web"));
    server.ready().await;
    client.ready().await;
    eventually(Duration::from_secs(5), "echo is served over mTLS", || async {
        (call(client.addrs.outbound).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        plaintext_get(server.addrs.inbound).await,
        Some(StatusCode::FORBIDDEN)
    );

    control.kill();
    // The running proxies: the last known state and policy, still strict.
    for _ in 0..5 {
        assert_eq!(call(client.addrs.outbound).await.0, StatusCode::OK);
        assert_eq!(
            plaintext_get(server.addrs.inbound).await,
            Some(StatusCode::FORBIDDEN)
        );
    }
    // A replica started now has neither a certificate nor a policy: its
    // port admits nothing.
    let replica = server_for(&control, &app2);
    let late_client = ProxyProc::start(&control.proxy_config("demo", "web"));
    for _ in 0..3 {
        assert_ne!(plaintext_get(replica.addrs.inbound).await, Some(StatusCode::OK));
        assert_eq!(
            admin_get(replica.addrs.admin, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // And a client started now waits, then refuses: nothing is sent
        // on a guess.
        let mut c = h1_client(late_client.addrs.outbound).await;
        let req = Request::get("/")
            .header("host", "echo")
            .body(full(Bytes::new()))
            .unwrap();
        let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["weft-error"], "discovery-unavailable");
    }
    assert_eq!(app2.connections.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Back: the late proxies get certificates and policy and join in.
    std::fs::write(&file, mesh(&[(&app, &server), (&app2, &replica)])).unwrap();
    control.restart(&[]);
    replica.ready().await;
    late_client.ready().await;
    eventually(
        Duration::from_secs(10),
        "the replica serves over mTLS",
        || async {
            for _ in 0..10 {
                call(late_client.addrs.outbound).await;
            }
            (app2.connections.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        plaintext_get(replica.addrs.inbound).await,
        Some(StatusCode::FORBIDDEN)
    );
    for proxy in [&server, &replica] {
        assert_eq!(
            plaintext_served(proxy).await,
            0.0,
            "no plaintext request was served"
        );
    }
}

/// A service with a meshed and an unmeshed replica: each is dialled as
/// what it is (mTLS to the meshed one with its own identity, plaintext to
/// the other); with `mtls: required` the unmeshed one is never called, and
/// with only it left, callers get `503 not-meshed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_services_dial_each_endpoint_as_what_it_is_and_mtls_can_be_required() {
    let (meshed_app, plain_app) = (echo_app().await, echo_app().await);
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let server = ProxyProc::start(&format!(
        "appPorts: [{}]\nworkload: echo\n{}",
        meshed_app.addr.port(),
        control.proxy_config("demo", "cart-v2")
    ));
    let client = ProxyProc::start(&control.proxy_config("demo", "web"));
    let service = |endpoints: &str, mtls: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  serviceAccount: cart\n  ports: [{{port: 80}}]\n  endpoints:\n{endpoints}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  targetRef: {{name: echo}}\n  loadBalancer: roundRobin\n  mtls: {mtls}\n"
        )
    };
    let meshed = format!(
        "    - {{address: {}, proxy: {}, serviceAccount: cart-v2}}\n",
        meshed_app.addr, server.addrs.inbound
    );
    let plain = format!("    - {{address: {}}}\n", plain_app.addr);
    std::fs::write(&file, service(&format!("{meshed}{plain}"), "optional")).unwrap();
    server.ready().await;
    client.ready().await;
    let served = |n: usize| {
        let out = client.addrs.outbound;
        async move {
            let mut by = std::collections::BTreeMap::new();
            for _ in 0..n {
                let (status, server) = call(out).await;
                *by.entry((status, server)).or_insert(0) += 1;
            }
            by
        }
    };
    let by = eventually(Duration::from_secs(5), "both replicas serve", || async {
        let by = served(20).await;
        (by.len() == 2).then_some(by)
    })
    .await;
    assert!(
        by.keys().all(|(status, _)| *status == StatusCode::OK),
        "the meshed replica by its own identity (cart-v2, not cart): {by:?}"
    );
    let (_, metrics) = admin_get(server.addrs.admin, "/metrics").await;
    assert!(
        series_sum(
            &metrics,
            "weft_requests_total",
            &[
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", "spiffe://cluster.local/ns/demo/sa/web"),
            ]
        )
        .is_some(),
        "the meshed replica was called over mTLS: {metrics}"
    );

    std::fs::write(&file, service(&format!("{meshed}{plain}"), "required")).unwrap();
    let plain_before = plain_app.connections.load(std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(5), "only the meshed replica", || async {
        let by = served(20).await;
        (by.len() == 1 && by.contains_key(&(StatusCode::OK, Some(meshed_app.addr.to_string())))).then_some(())
    })
    .await;
    let plain_during = plain_app.connections.load(std::sync::atomic::Ordering::SeqCst);
    served(20).await;
    assert_eq!(
        plain_app.connections.load(std::sync::atomic::Ordering::SeqCst),
        plain_during,
        "no new plaintext connection once mTLS is required (before: {plain_before})"
    );

    std::fs::write(&file, service(&plain, "required")).unwrap();
    let out = client.addrs.outbound;
    let (status, headers) = eventually(Duration::from_secs(5), "refused as not meshed", || async move {
        let mut c = h1_client(out).await;
        let req = Request::get("/")
            .header("host", "echo")
            .body(full(Bytes::new()))
            .unwrap();
        let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some((status, headers))
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["weft-error"], "not-meshed");
}
