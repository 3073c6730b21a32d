//! Rotation: certificates renewing under load, trust anchors rotated with
//! traffic flowing, renewals that fail and recover, and tokens that expire
//! as projected ServiceAccount tokens do.

use super::*;

const EXPIRY: &str = "weft_identity_cert_expiration_timestamp_seconds";
const RENEWAL_FAILURES: &str = "weft_identity_renewal_failures_total";

/// One unlabelled sample from a proxy's `/metrics`.
async fn metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = admin_get(admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Replaces a token file the way the kubelet does: a new file renamed over
/// the old one, so a reader never sees half a token.
fn write_token(path: &std::path::Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let app = echo_app().await;
    let setup = Setup::start(&["--cert-lifetime", "4s"]);
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    eventually(Duration::from_secs(5), "the service is known", || async {
        (call(client.addrs.outbound).await.0 == StatusCode::OK).then_some(())
    })
    .await;

    // Steady traffic on fresh connections (so new TLS handshakes happen
    // with each new certificate) for 15 s: ~5 rotations per proxy.
    let out = client.addrs.outbound;
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let (status, headers) = call(out).await;
        sent += 1;
        if status != StatusCode::OK {
            failures.push((status, headers.get("weft-error").cloned()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent > 200, "{sent}");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    let (_, cp) = admin_get(setup.control.admin, "/metrics").await;
    let issued: f64 = cp
        .lines()
        .find(|l| l.starts_with(r#"weft_control_certificates_total{result="issued"}"#))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        issued >= 8.0,
        "two proxies renewing every ~3 s for 15 s: {issued} certificates"
    );
    // The pooled mTLS connection does not outlive its certificates: each
    // expiry drains it and the next request opens a new one, with the
    // certificates then current.
    let opened = weft_tests::bed::metric_sum(
        server.addrs.admin,
        r#"weft_tcp_connections_opened_total{direction="inbound",protocol="tls"}"#,
    )
    .await;
    assert!(
        opened >= 3.0,
        "4 s certificates over 15 s: {opened} mTLS connections"
    );
}

/// A CA written to `dir` as `<name>.pem` / `<name>.key`.
fn write_ca(dir: &TempDir, name: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test root {name}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    dir.write(&format!("{name}.key"), &key.serialize_pem());
    dir.write(&format!("{name}.pem"), &cert.pem());
    cert.pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchor_rotation_with_traffic_flowing() {
    let app = echo_app().await;
    let ca_dir = TempDir::new();
    let old = write_ca(&ca_dir, "old");
    let new = write_ca(&ca_dir, "new");
    let both = ca_dir.write("both.pem", &format!("{old}{new}"));
    let p = |f: &str| ca_dir.path().join(f).display().to_string();
    let (old_pem, old_key, new_pem, new_key, both) = (
        p("old.pem"),
        p("old.key"),
        p("new.pem"),
        p("new.key"),
        both.display().to_string(),
    );
    let flags = |cert: &str, key: &str, anchors: &str| -> Vec<String> {
        [
            "--cert-lifetime",
            "5s",
            "--ca-cert",
            cert,
            "--ca-key",
            key,
            "--trust-anchors",
            anchors,
        ]
        .map(String::from)
        .to_vec()
    };
    // Phase 0: the old root signs, and is the only anchor.
    let phase0 = flags(&old_pem, &old_key, &old_pem);
    let mut setup = Setup::start(&phase0.iter().map(String::as_str).collect::<Vec<_>>());
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    eventually(Duration::from_secs(5), "traffic flows", || async {
        tunnel_request(client.addrs.outbound).await.ok()
    })
    .await;

    // Traffic throughout: every request is a new mTLS handshake.
    let out = client.addrs.outbound;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tunnel_request(out).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    // Each step waits more than one certificate lifetime, so every proxy renews.
    let settle = || tokio::time::sleep(Duration::from_secs(6));
    let steps = [
        // 1: add the new root to the bundle; proxies pick it up on renewal.
        flags(&old_pem, &old_key, &both),
        // 2: the new root signs; every bundle already trusts it.
        flags(&new_pem, &new_key, &both),
        // 3: remove the old root.
        flags(&new_pem, &new_key, &new_pem),
    ];
    for step in &steps {
        setup.restart_control(&step.iter().map(String::as_str).collect::<Vec<_>>());
        settle().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(ok > 100, "{ok} requests");
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    let (_, cp) = admin_get(setup.control.admin, "/metrics").await;
    assert!(
        cp.contains(r#"weft_control_certificates_total{result="issued"}"#),
        "the last control plane issued certificates: {cp}"
    );
}

/// A proxy whose renewals fail turns unready before its certificate
/// expires (with a tenth of its lifetime left), and ready again as soon as
/// a renewal succeeds. The proxy re-reads its token file for every
/// request, so swapping the file's token is what breaks and mends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_renewals_turn_ready_off_before_expiry_and_a_good_one_back_on() {
    let setup = Setup::start(&["--cert-lifetime", "10s"]);
    let token = setup.dir.path().join("rotating.token");
    write_token(&token, "web-token-0123456789");
    let proxy = setup.proxy("web", "rotating.token", "");
    ready(&proxy).await;
    let admin = proxy.addrs.admin;
    let first = metric(admin, EXPIRY).await.expect("expiry exported");
    assert_eq!(metric(admin, RENEWAL_FAILURES).await, Some(0.0));

    // The token is no longer accepted: every renewal is refused.
    write_token(&token, "not-the-token-0123456789");
    let (body, at) = eventually(Duration::from_secs(15), "/ready turns 503", || async {
        let (status, body) = admin_get(admin, "/ready").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then(|| (body, unix_now()))
    })
    .await;
    assert!(
        at < first,
        "unready {:.1}s before the certificate expired, not after",
        first - at
    );
    assert!(body.contains("has not been renewed"), "{body}");
    assert_eq!(metric(admin, EXPIRY).await, Some(first), "no new certificate");
    let failures = metric(admin, RENEWAL_FAILURES).await.unwrap_or(0.0);
    assert!(failures >= 1.0, "failed renewals are counted: {failures}");

    // A good token again: the next retry gets a certificate, /ready is back.
    write_token(&token, "web-token-0123456789");
    eventually(Duration::from_secs(20), "/ready is 200 again", || async {
        (admin_get(admin, "/ready").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let renewed = metric(admin, EXPIRY).await.unwrap_or(0.0);
    assert!(renewed > first, "a new certificate: {first} → {renewed}");
    eprintln!(
        "unready {:.1}s before expiry after {failures} failed renewals; ready again with a certificate until {renewed}",
        first - at
    );
}

/// Tokens that expire, as Kubernetes' projected tokens do: the in-test
/// TokenReview API accepts each token for 10 s, the test writes a new one
/// into each proxy's token file every 5 s, certificates last 20 s (renewed
/// every 12–16 s, so a token read at start would be refused by the first
/// renewal). Steady traffic through a proxy pair for 90 s: every request
/// succeeds and both proxies renew several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_tokens_keep_certificates_renewing_under_steady_traffic() {
    const TOKEN_VALIDITY: Duration = Duration::from_secs(10);
    const ROTATE_EVERY: Duration = Duration::from_secs(5);
    const TRAFFIC: Duration = Duration::from_secs(90);
    let api = TokenReviewApi::start(TOKEN_VALIDITY).await;
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
    let kubeconfig = api.kubeconfig(&dir);
    let control = ControlProc::start_with_env(
        &dir.path().join("mesh"),
        "127.0.0.1:0".parse().unwrap(),
        &["--token-review", "--cert-lifetime", "20s"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let setup = Setup { dir, control };
    let token_files = ["echo", "web"].map(|sa| (sa, setup.dir.path().join(format!("{sa}.token"))));
    for (sa, path) in &token_files {
        write_token(path, &api.mint("demo", sa));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotator = tokio::spawn({
        let (api, stop, files) = (api.clone(), stop.clone(), token_files.clone());
        async move {
            let mut rotations = 0;
            // Bounded: the test stops it after ~70 s at most.
            while rotations < 30 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(ROTATE_EVERY).await;
                for (sa, path) in &files {
                    write_token(path, &api.mint("demo", sa));
                }
                rotations += 1;
            }
            rotations
        }
    });

    let app = echo_app().await;
    let server = setup.proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    setup.mesh_service(app.addr, &server, "echo");
    let client = setup.proxy("web", "web.token", "");
    ready(&server).await;
    ready(&client).await;
    eventually(Duration::from_secs(5), "the service is known", || async {
        (call(client.addrs.outbound).await.0 == StatusCode::OK).then_some(())
    })
    .await;

    // Pooled HTTP/2 requests and fresh CONNECT tunnels (a new mTLS
    // handshake each, so new certificates are used), in turn.
    let mut expiries = [
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    ];
    let (mut sent, mut failures) = (0usize, Vec::new());
    let started = std::time::Instant::now();
    while started.elapsed() < TRAFFIC && sent < 10_000 {
        let result = if sent % 2 == 0 {
            match call(client.addrs.outbound).await {
                (StatusCode::OK, _) => Ok(()),
                (status, headers) => Err(format!("{status} {:?}", headers.get("weft-error"))),
            }
        } else {
            tunnel_request(client.addrs.outbound).await
        };
        if let Err(e) = result {
            failures.push(e);
        }
        if sent % 25 == 0 {
            for (seen, proxy) in expiries.iter_mut().zip([&server, &client]) {
                if let Some(e) = metric(proxy.addrs.admin, EXPIRY).await {
                    seen.insert(e as u64);
                }
            }
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rotations = rotator.await.unwrap();

    let renewals = expiries.map(|seen| seen.len().saturating_sub(1));
    let reviews = api.reviews();
    eprintln!(
        "{sent} requests, {} failed; renewals: echo {}, web {}; {rotations} token rotations; reviews {reviews:?}",
        failures.len(),
        renewals[0],
        renewals[1]
    );
    assert!(sent > 500, "{sent}");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        renewals.iter().all(|&r| r >= 2),
        "every proxy renewed at least twice in {TRAFFIC:?}: {renewals:?}"
    );
    assert_eq!(
        reviews.refused, 0,
        "no proxy ever sent an expired token: {reviews:?}"
    );
    for proxy in [&server, &client] {
        assert_eq!(metric(proxy.addrs.admin, RENEWAL_FAILURES).await, Some(0.0));
    }
}
