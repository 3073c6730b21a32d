//! The keys and certificates Helm generates (Sprig's `genCAWithKey`,
//! `genSignedCertWithKey`, `genPrivateKey`), used as weft-control uses
//! them: the issuer CA signs, and the injector serves its certificate to a
//! client that trusts only the webhook's `caBundle` and checks the name
//! the API server dials. tests/tests/identity/main.rs checks a CA made by
//! rcgen the way Sprig makes one; these are Helm's own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use weft_control::identity::Ca;
use weft_control::inject::InjectConfig;
use weft_control::webhook::Webhook;
use weft_tests::TempDir;

use crate::{of_kind, renders, str_of, Render};

/// The render of the defaults (generated CA and webhook certificate).
fn defaults() -> Option<&'static Render> {
    let renders = renders()?;
    Some(
        renders
            .iter()
            .find(|r| r.case.name == "defaults")
            .expect("the defaults case"),
    )
}

/// Writes the Secret `name`'s `keys`, decoded, into `dir`.
fn write_secret(docs: &[Value], name: &str, keys: &[&str], dir: &Path) {
    let secret = of_kind(docs, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("Secret {name} rendered"));
    for key in keys {
        let pem = STANDARD
            .decode(str_of(&secret["data"][*key]))
            .unwrap_or_else(|e| panic!("{name} {key}: not base64: {e}"));
        std::fs::write(dir.join(key), pem).unwrap();
    }
}

#[test]
fn the_generated_issuer_loads_in_weft_control_and_signs() {
    let Some(render) = defaults() else { return };
    let dir = TempDir::new();
    write_secret(&render.docs, "weft-issuer", &["tls.crt", "tls.key"], dir.path());
    let key = std::fs::read_to_string(dir.path().join("tls.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8: {key}");
    let ca = Ca::from_files(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        None,
        "cluster.local",
    )
    .expect("weft-control loads the generated CA");
    let issued = ca
        .issue_self(
            "spiffe://cluster.local/ns/weft-system/sa/weft-control",
            &["weft-control.weft-system.svc".to_string()],
        )
        .expect("and signs with it");
    assert!(!issued.chain.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_webhook_certificate_serves_to_a_client_trusting_the_ca_bundle() {
    let Some(render) = defaults() else { return };
    let dir = TempDir::new();
    write_secret(
        &render.docs,
        "weft-webhook-tls",
        &["tls.crt", "tls.key", "ca.crt"],
        dir.path(),
    );
    let webhook = Webhook::bind_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        InjectConfig::default(),
    )
    .await
    .expect("weft-control's webhook loads the generated certificate and key");
    let addr = webhook.local_addr();
    let server = tokio::spawn(webhook.serve(Default::default()));

    // What the API server trusts: the caBundle of each webhook (the same
    // CA as the Secret's ca.crt).
    let hooks = of_kind(&render.docs, "MutatingWebhookConfiguration")[0]["webhooks"]
        .as_array()
        .unwrap();
    let bundle = str_of(&hooks[0]["clientConfig"]["caBundle"]);
    assert!(hooks.iter().all(|h| h["clientConfig"]["caBundle"] == bundle));
    let pem = STANDARD.decode(bundle).expect("caBundle is base64");
    assert_eq!(pem, std::fs::read(dir.path().join("ca.crt")).unwrap());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("PEM certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The name the API server checks for a service reference:
    // <service>.<namespace>.svc.
    let name = ServerName::try_from("weft-control.weft-system.svc").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("handshake within 10 s")
        .expect("the certificate verifies against the caBundle for weft-control.weft-system.svc");
    server.abort();
}
