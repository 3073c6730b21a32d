//! The admission webhook with AdmissionReview JSON as the API server sends
//! it: the review logic directly, then the real server over HTTPS (h2 and
//! HTTP/1.1) on an ephemeral port with a throw-away certificate.
//!
//! `WEFT_BLESS=1` rewrites `testdata/webhook/*.injected.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use weft_control::inject::InjectConfig;
use weft_control::testing::TempDir;
use weft_control::webhook::{review, Mode, Webhook};

const HOST: &str = "weft-webhook.weft-system.svc";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/webhook")
        .join(name)
}

fn pod_create() -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata("pod-create.json")).unwrap()).unwrap()
}

fn cfg() -> InjectConfig {
    InjectConfig {
        proxy_image: "registry.example.com/weft/weft:0.1.0".into(),
        control_plane: "https://weft-control.weft-system.svc.cluster.local:8086".into(),
        trust_domain: "cluster.local".into(),
        ..InjectConfig::default()
    }
}

/// The response of a review of `body`, checked for the fields every
/// answer has.
fn answer(mode: Mode, review_json: &Value) -> Value {
    let out = review(&cfg(), mode, review_json.to_string().as_bytes()).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], review_json["request"]["uid"]);
    assert_eq!(
        out["response"]["allowed"], true,
        "a mutating webhook never denies"
    );
    out["response"].clone()
}

/// Applies the response's patch (if any) to `object`.
fn patched(response: &Value, object: &Value) -> Option<Value> {
    let patch = response.get("patch")?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = object.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    Some(out)
}

fn golden(name: &str, actual: &Value) {
    let path = testdata(name);
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WEFT_BLESS=1 writes it)", path.display()));
    assert_eq!(
        text,
        expected,
        "{} differs (WEFT_BLESS=1 rewrites it)",
        path.display()
    );
}

#[test]
fn the_patch_turns_the_pod_into_the_injected_pod() {
    let review_json = pod_create();
    let object = &review_json["request"]["object"];
    let response = answer(Mode::All, &review_json);
    let injected = patched(&response, object).expect("a patch");
    golden("pod-create.injected.json", &injected);

    // What the golden file says, spelled out.
    let init = injected["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "weft-init");
    assert_eq!(init[1]["name"], "weft-proxy");
    assert_eq!(init[1]["restartPolicy"], "Always");
    assert_eq!(init[1]["image"], "registry.example.com/weft/weft:0.1.0");
    let app_ports = init[1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WEFT_APP_PORTS")
        .unwrap();
    assert_eq!(app_ports["value"], "8080,9090");
    assert_eq!(injected["metadata"]["annotations"]["weft.dev/injected"], "true");
    assert_eq!(
        injected["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
        "2025-05-02T10:14:07Z"
    );
    assert_eq!(injected["spec"]["containers"], object["spec"]["containers"]);
    let volumes: Vec<_> = injected["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        [
            "kube-api-access-x7k2p",
            "weft-token",
            "weft-trust-anchors",
            "weft-init-run"
        ]
    );

    // The opted-in path injects the same pod once it opted in.
    let mut opted = review_json.clone();
    opted["request"]["object"]["metadata"]["annotations"]["weft.dev/inject"] = json!("enabled");
    let response = answer(Mode::OptedIn, &opted);
    assert!(patched(&response, &opted["request"]["object"]).is_some());
}

/// What the webhook's flags inject: by default the control plane's own
/// Service (https) and SPIFFE ID, from its namespace, service account,
/// trust and cluster domains; the flags override the URL and the
/// trust-anchor ConfigMap.
#[test]
fn the_webhook_injects_its_own_url_identity_and_trust_anchors() {
    use clap::Parser;
    use weft_control::app::Config;
    use weft_control::inject::ControlPlane;
    let cp = ControlPlane {
        trust_domain: "example.org".into(),
        cluster_domain: "corp.internal".into(),
        ..ControlPlane::default()
    };
    let defaults = Config::try_parse_from(["weft-control", "--kubernetes"]).unwrap();
    let cfg = defaults.webhook.inject_config(&cp);
    assert_eq!(
        cfg.control_plane,
        "https://weft-control.weft-system.svc.corp.internal:8086"
    );
    assert_eq!(
        cfg.control_plane_identity,
        "spiffe://example.org/ns/weft-system/sa/weft-control"
    );
    assert_eq!(cfg.trust_anchors_configmap, "weft-trust-anchors");
    assert_eq!(cfg.trust_domain, "example.org");

    let flags = Config::try_parse_from([
        "weft-control",
        "--kubernetes",
        "--inject-control-plane",
        "https://weft-control.mesh.svc:8086",
        "--inject-trust-anchors-configmap",
        "mesh-roots",
    ])
    .unwrap();
    let cfg = flags.webhook.inject_config(&cp);
    assert_eq!(cfg.control_plane, "https://weft-control.mesh.svc:8086");
    assert_eq!(cfg.trust_anchors_configmap, "mesh-roots");
}

#[test]
fn a_second_review_of_the_injected_pod_has_no_patch() {
    let mut review_json = pod_create();
    let response = answer(Mode::All, &review_json);
    let injected = patched(&response, &review_json["request"]["object"]).unwrap();
    review_json["request"]["object"] = injected;
    let again = answer(Mode::All, &review_json);
    assert!(again.get("patch").is_none(), "{again}");
    assert!(again.get("warnings").is_none(), "{again}");
}

#[test]
fn pods_that_are_not_for_injection_are_allowed_unchanged() {
    let base = pod_create();
    let mut cases: Vec<(&str, Mode, Value)> = Vec::new();
    cases.push(("not opted in, opted-in path", Mode::OptedIn, base.clone()));
    let mut v = base.clone();
    v["request"]["object"]["metadata"]["annotations"]["weft.dev/inject"] = json!("disabled");
    cases.push(("annotated disabled", Mode::All, v));
    let mut v = base.clone();
    v["request"]["object"]["metadata"]["annotations"]["weft.dev/inject"] = json!("disabled");
    v["request"]["object"]["metadata"]["labels"]["weft.dev/inject"] = json!("enabled");
    cases.push(("labelled enabled but annotated disabled", Mode::OptedIn, v));
    let mut v = base.clone();
    v["request"]["namespace"] = json!("kube-system");
    cases.push(("kube-system", Mode::All, v));
    let mut v = base.clone();
    v["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    cases.push(("host network", Mode::All, v));
    let mut v = base.clone();
    v["request"]["operation"] = json!("UPDATE");
    v["request"]["oldObject"] = v["request"]["object"].clone();
    cases.push(("an update", Mode::All, v));
    let mut v = base.clone();
    v["request"]["subResource"] = json!("ephemeralcontainers");
    cases.push(("a subresource", Mode::All, v));
    let mut v = base.clone();
    v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    v["request"]["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    cases.push(("a Deployment", Mode::All, v));
    let mut v = base.clone();
    v["request"]["object"] = Value::Null;
    cases.push(("a Pod review without its object", Mode::All, v));
    for (what, mode, v) in cases {
        let response = answer(mode, &v);
        assert!(response.get("patch").is_none(), "{what}: {response}");
        assert!(response.get("patchType").is_none(), "{what}: {response}");
    }
}

#[test]
fn a_pod_that_cannot_be_injected_is_allowed_with_a_warning() {
    let mut v = pod_create();
    v["request"]["object"]["metadata"]["annotations"]["weft.dev/proxy-memory-limit"] = json!("plenty");
    let response = answer(Mode::All, &v);
    assert!(response.get("patch").is_none());
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("weft: the proxy was not injected: annotation `weft.dev/proxy-memory-limit`:"),
        "{warning}"
    );
}

#[test]
fn malformed_reviews_are_refused_with_a_message() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "expected an AdmissionReview as JSON"),
        (b"{\"kind\": ", "expected an AdmissionReview as JSON"),
        (b"[1, 2]", "admission.k8s.io/v1"),
        (
            br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}"#,
            "admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {"kind": "Pod"}}}"#,
            "request.uid",
        ),
    ];
    for (body, expected) in cases {
        let e = review(&cfg(), Mode::All, body).unwrap_err();
        assert!(e.contains(expected), "{e}");
    }
}

/// Writes a fresh self-signed serving certificate for [`HOST`]; returns its
/// DER for the client's root store.
fn write_cert(dir: &Path) -> rustls_pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
    ck.cert.der().clone()
}

/// POSTs (or `method`s) `body` to the webhook over TLS trusting only
/// `root`, speaking h2 or HTTP/1.1.
async fn call(
    addr: SocketAddr,
    root: &rustls_pki_types::CertificateDer<'static>,
    h2: bool,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(http::StatusCode, Bytes), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://{HOST}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let rsp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let status = rsp.status();
    Ok((status, rsp.into_body().collect().await.unwrap().to_bytes()))
}

/// A webhook serving a fresh self-signed certificate (in `dir`, trusted
/// as `root`) on `addr`, counting into the metrics returned last.
async fn serve_webhook() -> (
    TempDir,
    rustls_pki_types::CertificateDer<'static>,
    SocketAddr,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<weft_control::metrics::ControlMetrics>,
) {
    let dir = TempDir::new();
    let root = write_cert(dir.path());
    let webhook = Webhook::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        cfg(),
    )
    .await
    .unwrap();
    let addr = webhook.local_addr();
    let metrics = std::sync::Arc::new(weft_control::metrics::ControlMetrics::default());
    (
        dir,
        root,
        addr,
        tokio::spawn(webhook.serve(metrics.clone())),
        metrics,
    )
}

#[tokio::test]
async fn over_https_the_api_server_gets_a_patch_and_the_certificate_reloads() {
    let (dir, root, addr, server, metrics) = serve_webhook().await;

    let review_json = pod_create();
    let body = review_json.to_string().into_bytes();
    for h2 in [true, false] {
        let (status, rsp) = call(addr, &root, h2, "POST", "/inject", body.clone())
            .await
            .unwrap();
        assert_eq!(status, 200, "h2={h2}");
        let rsp: Value = serde_json::from_slice(&rsp).unwrap();
        assert_eq!(rsp["response"]["uid"], review_json["request"]["uid"]);
        let injected = patched(&rsp["response"], &review_json["request"]["object"]).expect("a patch");
        assert_eq!(injected["spec"]["initContainers"][1]["name"], "weft-proxy");
    }
    // Not opted in: allowed, no patch.
    let (status, rsp) = call(addr, &root, true, "POST", "/inject/opted-in", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let rsp: Value = serde_json::from_slice(&rsp).unwrap();
    assert_eq!(rsp["response"]["allowed"], true);
    assert!(rsp["response"].get("patch").is_none());

    // Confusion is answered, and the server keeps serving.
    let (status, msg) = call(addr, &root, true, "POST", "/inject", b"not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&msg).contains("expected an AdmissionReview"));
    let (status, _) = call(addr, &root, false, "GET", "/inject", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = call(addr, &root, false, "POST", "/mutate", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 404);

    // A rotated certificate is served on the next connection; a broken
    // one keeps the last good one.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let (status, _) = call(addr, &root, true, "POST", "/inject", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 200, "the previous certificate is still served");
    let new_root = write_cert(dir.path());
    let (status, _) = call(addr, &new_root, true, "POST", "/inject", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let old = call(addr, &root, true, "POST", "/inject", body).await;
    assert!(
        old.unwrap_err().contains("handshake"),
        "the old certificate is gone"
    );
    // Every review counted by its result; wrong paths and methods are not
    // reviews.
    let reviews = |result| {
        metrics
            .webhook_reviews
            .get_or_create(&weft_control::metrics::WebhookLabels { result })
            .get()
    };
    assert_eq!(
        (reviews("injected"), reviews("skipped"), reviews("bad_request")),
        (4, 1, 1)
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &{
        let mut r = prometheus_client::registry::Registry::default();
        metrics.register(&mut r);
        r
    })
    .unwrap();
    assert!(
        text.contains("weft_control_webhook_review_duration_seconds_count 6"),
        "{text}"
    );
    server.abort();
}

/// Hostile input to the webhook: an oversized body gets 413 and the server
/// keeps serving; connections beyond its limit are closed at once while
/// the first ones stay usable.
#[tokio::test]
async fn the_webhook_bounds_bodies_and_connections() {
    let (_dir, root, addr, server, _) = serve_webhook().await;
    let (status, msg) = call(addr, &root, true, "POST", "/inject", vec![b'x'; 5 * 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&msg));
    // 64 idle connections hold every slot; the 65th is closed unanswered.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        call(
            addr,
            &root,
            true,
            "POST",
            "/inject",
            pod_create().to_string().into_bytes()
        )
        .await
        .is_err(),
        "a connection past the limit is refused"
    );
    drop(idle);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, _) = call(
        addr,
        &root,
        true,
        "POST",
        "/inject",
        pod_create().to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "slots free again");
    server.abort();
}
