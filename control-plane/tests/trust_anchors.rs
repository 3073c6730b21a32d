//! The trust anchors published into every namespace (ConfigMap
//! `weft-trust-anchors`, key `ca.crt`), against the in-test API server of
//! `common/`: the publisher on its own, then the weft-control binary in
//! Kubernetes mode with a CA and a two-root bundle from files.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use weft_control::kubernetes::trust_anchors::CONFIGMAP;
use weft_control::kubernetes::TrustAnchorPublisher;
use weft_control::metrics::{ControlMetrics, PublishLabels};
use weft_control::testing::TempDir;

const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

/// The ConfigMap `kubectl` makes for this bundle: the output of
/// `kubectl create configmap weft-trust-anchors -n <ns> --from-file=ca.crt=<bundle> --dry-run=client -o json`
/// piped through `kubectl label --local -f - app.kubernetes.io/managed-by=weft-control -o json`,
/// without the client-side `creationTimestamp: null`.
fn as_kubectl_makes_it(ns: &str, pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "weft-trust-anchors",
            "namespace": ns,
            "labels": {"app.kubernetes.io/managed-by": "weft-control"},
        },
        "data": {"ca.crt": pem},
    })
}

/// What a namespace's ConfigMap holds under `ca.crt`, if it exists.
fn published(api: &FakeApi, ns: &str) -> Option<String> {
    let cm = api.get(CONFIGMAPS, ns, CONFIGMAP)?;
    cm["data"]["ca.crt"].as_str().map(String::from)
}

/// Applies sent for `ns`, whatever their answer.
fn applies_to(api: &FakeApi, ns: &str) -> usize {
    let suffix = format!("/namespaces/{ns}/configmaps/{CONFIGMAP}");
    let s = api.state.lock().unwrap();
    s.applies.iter().filter(|a| a.path.ends_with(&suffix)).count()
}

async fn eventually(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_the_bundle_and_keeps_it() {
    let api = FakeApi::start().await;
    for ns in [
        "default",
        "shop",
        "web",
        "billing",
        "weft-system",
        "kube-system",
        "kube-public",
        "kube-node-lease",
    ] {
        api.apply(NAMESPACES, namespace(ns));
    }
    // An older control plane's bundle in web; the right one in billing.
    let mut stale = as_kubectl_makes_it("web", "an older bundle\n");
    stale["metadata"]["uid"] = json!("uid-cm-web");
    api.apply(CONFIGMAPS, stale);
    api.apply(CONFIGMAPS, as_kubectl_makes_it("billing", BUNDLE));
    // Another team's ConfigMap, which is none of ours.
    api.apply(
        CONFIGMAPS,
        json!({"metadata": {"name": "settings", "namespace": "shop"}, "data": {"ca.crt": "theirs"}}),
    );

    let metrics = Arc::new(ControlMetrics::default());
    let publisher =
        TrustAnchorPublisher::new(api.client(), BUNDLE.into()).with_holdoff(Duration::from_millis(300));
    let task = tokio::spawn(publisher.run(metrics.clone()));

    // Each existing namespace but the system ones, as kubectl would store it.
    eventually("the first round", Duration::from_secs(10), || {
        ["default", "shop", "web", "weft-system"]
            .iter()
            .all(|ns| published(&api, ns).as_deref() == Some(BUNDLE))
    })
    .await;
    for ns in ["kube-system", "kube-public", "kube-node-lease"] {
        assert_eq!(api.get(CONFIGMAPS, ns, CONFIGMAP), None, "{ns}");
        assert_eq!(applies_to(&api, ns), 0, "{ns}");
    }
    assert_eq!(
        applies_to(&api, "billing"),
        0,
        "no write where it was right already"
    );
    assert_eq!(
        api.get(CONFIGMAPS, "shop", "settings").unwrap()["data"]["ca.crt"],
        "theirs"
    );
    {
        let s = api.state.lock().unwrap();
        let apply = s
            .applies
            .iter()
            .find(|a| a.path == "/api/v1/namespaces/shop/configmaps/weft-trust-anchors")
            .expect("an apply to shop");
        assert_eq!(apply.content_type, "application/apply-patch+yaml");
        assert_eq!(apply.query["fieldManager"], "weft-control");
        assert_eq!(apply.query["force"], "true");
        assert_eq!(apply.body, as_kubectl_makes_it("shop", BUNDLE));
        assert_eq!(apply.status, 201);
        assert!(
            s.selectors
                .iter()
                .any(|(path, sel)| path == CONFIGMAPS && sel == "metadata.name=weft-trust-anchors"),
            "ConfigMaps are watched by name only: {:?}",
            s.selectors
        );
        assert!(
            !s.selectors.iter().any(|(path, _)| path == NAMESPACES),
            "every namespace is watched"
        );
    }
    let stored = api.get(CONFIGMAPS, "shop", CONFIGMAP).unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "weft-control"
    );
    assert_eq!(stored["metadata"]["managedFields"][0]["manager"], "weft-control");
    assert_eq!(stored["metadata"]["managedFields"][0]["operation"], "Apply");

    // A namespace created later.
    api.apply(NAMESPACES, namespace("payments"));
    eventually("the new namespace's ConfigMap", Duration::from_secs(5), || {
        published(&api, "payments").as_deref() == Some(BUNDLE)
    })
    .await;

    // A deleted ConfigMap is put back.
    api.delete(CONFIGMAPS, "shop", CONFIGMAP);
    eventually("the deleted ConfigMap back", Duration::from_secs(5), || {
        published(&api, "shop").as_deref() == Some(BUNDLE)
    })
    .await;

    // An edit (`kubectl edit`: an Update by another manager) is taken
    // back, once the hold-off since the last write is over; the edit's
    // other keys stay, they are not ours.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut edited = api.get(CONFIGMAPS, "default", CONFIGMAP).unwrap();
    edited["data"]["ca.crt"] = json!("-----BEGIN CERTIFICATE-----\nMIIBrogue\n-----END CERTIFICATE-----\n");
    edited["data"]["extra"] = json!("kept");
    edited["metadata"]["managedFields"].as_array_mut().unwrap().push(
        json!({"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1",
                     "time": "2026-11-01T11:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:data": {"f:ca.crt": {}, "f:extra": {}}}}),
    );
    api.apply(CONFIGMAPS, edited);
    eventually("the edit taken back", Duration::from_secs(5), || {
        published(&api, "default").as_deref() == Some(BUNDLE)
    })
    .await;
    assert_eq!(
        api.get(CONFIGMAPS, "default", CONFIGMAP).unwrap()["data"]["extra"],
        "kept"
    );

    // A namespace where applies are refused: counted, logged, retried
    // with backoff (1 s, 2 s, ...), and published once allowed.
    api.state.lock().unwrap().refuse_applies.insert("locked".into());
    api.apply(NAMESPACES, namespace("locked"));
    let failed = || {
        metrics
            .trust_anchors
            .get_or_create(&PublishLabels { result: "failed" })
            .get()
    };
    eventually("two refused applies, counted", Duration::from_secs(5), || {
        failed() >= 2
    })
    .await;
    assert!(applies_to(&api, "locked") >= 2);
    api.state.lock().unwrap().refuse_applies.clear();
    eventually(
        "the namespace published once allowed",
        Duration::from_secs(10),
        || published(&api, "locked").as_deref() == Some(BUNDLE),
    )
    .await;

    // A deletion missed (a partition), the ConfigMaps' history compacted,
    // the watches ended: the relist of ConfigMaps (namespaces resume
    // without one) shows it gone, and it is put back.
    api.mute.store(true, std::sync::atomic::Ordering::SeqCst);
    api.delete(CONFIGMAPS, "web", CONFIGMAP);
    let namespace_lists = api.count("list", NAMESPACES);
    api.compact_and_cut_kinds(&[CONFIGMAPS]);
    api.mute.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        "the ConfigMap back after a relist",
        Duration::from_secs(10),
        || published(&api, "web").as_deref() == Some(BUNDLE),
    )
    .await;
    assert_eq!(
        api.count("list", NAMESPACES),
        namespace_lists,
        "no relist of namespaces"
    );

    // default, shop, web, weft-system, payments, shop again, default
    // again, locked, web again: nothing written twice for nothing. (The
    // count follows the API server's answer, so it may trail a moment.)
    let applied = || {
        metrics
            .trust_anchors
            .get_or_create(&PublishLabels { result: "applied" })
            .get()
    };
    eventually("the applies counted", Duration::from_secs(2), || applied() >= 9).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(applied(), 9, "applies: {:#?}", api.state.lock().unwrap().applies);
    task.abort();
}

/// A self-signed CA: (certificate PEM, PKCS#8 key PEM, certificate DER).
fn ca(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn weft_control(
    api: &FakeApi,
    dir: &TempDir,
    (grpc, admin): (std::net::SocketAddr, std::net::SocketAddr),
    extra: &[&str],
) -> Child {
    let (cert, key, _) = ca("weft test CA");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .args(["--kubernetes", "--grpc-listen", &grpc.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--ca-cert")
        .arg(dir.write("ca.crt", &cert))
        .arg("--ca-key")
        .arg(dir.write("ca.key", &key))
        .args(extra)
        .env("KUBECONFIG", kubeconfig(api, dir))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WEFT_PUBLISH_TRUST_ANCHORS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Child(child)
}

/// The binary publishes by default, exactly the `--trust-anchors` bundle
/// (here two roots, as during a rotation) it hands proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_control_publishes_its_trust_anchors_in_kubernetes_mode() {
    let api = FakeApi::start().await;
    for ns in ["shop", "kube-system"] {
        api.apply(NAMESPACES, namespace(ns));
    }
    let dir = TempDir::new();
    let (old, _, old_der) = ca("old root");
    let (new, _, new_der) = ca("new root");
    let anchors = dir.write("anchors.pem", &format!("{old}{new}"));
    let _control = weft_control(
        &api,
        &dir,
        (free_port(), free_port()),
        &["--trust-anchors", anchors.to_str().unwrap()],
    );
    let mut pem = None;
    eventually("the ConfigMap in shop", Duration::from_secs(20), || {
        pem = published(&api, "shop");
        pem.is_some()
    })
    .await;
    let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem.unwrap().as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(ders, [old_der, new_der], "the bundle, both roots, in order");
    assert_eq!(api.get(CONFIGMAPS, "kube-system", CONFIGMAP), None);
}

/// `--publish-trust-anchors=false`: weft-control turns ready and writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_can_be_turned_off() {
    let api = FakeApi::start().await;
    api.apply(NAMESPACES, namespace("shop"));
    let dir = TempDir::new();
    let admin = free_port();
    let _control = weft_control(
        &api,
        &dir,
        (free_port(), admin),
        &["--publish-trust-anchors=false"],
    );
    let mut ready = false;
    for _ in 0..200 {
        if http_status(admin, "/ready").await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "weft-control ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applies_to(&api, "shop"), 0);
    assert_eq!(api.count("list", NAMESPACES), 0, "namespaces not even listed");
}

/// The SPIFFE ID (URI SAN) weft-control at `addr` serves, after a TLS
/// handshake that checked its chain against the bundle in `anchors`.
async fn served_identity(addr: std::net::SocketAddr, anchors: &std::path::Path) -> std::io::Result<String> {
    use weft_control::testing::client;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(client::SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client::tls(anchors, None))
        .connect(name, tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    Ok(san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .unwrap())
}

/// The published `ca.crt` is all a proxy needs to trust the control plane:
/// weft-control's gRPC certificate chains to it and names the identity the
/// injector tells proxies to expect; another CA's bundle is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_bundle_verifies_the_control_planes_certificate() {
    let api = FakeApi::start().await;
    api.apply(NAMESPACES, namespace("shop"));
    let dir = TempDir::new();
    let grpc = free_port();
    let _control = weft_control(&api, &dir, (grpc, free_port()), &[]);
    let mut pem = None;
    eventually("the ConfigMap in shop", Duration::from_secs(20), || {
        pem = published(&api, "shop");
        pem.is_some()
    })
    .await;
    let mounted = dir.write("ca.crt", &pem.unwrap());
    assert_eq!(
        served_identity(grpc, &mounted).await.unwrap(),
        weft_control::inject::DEFAULT_CONTROL_PLANE_IDENTITY
    );
    let (other, _, _) = ca("someone else's CA");
    let refused = served_identity(grpc, &dir.write("other.crt", &other))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
}
