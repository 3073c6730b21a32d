//! The real `weft-control` binary's gRPC listener, from outside: TLS 1.3
//! only, its own certificate (SPIFFE ID + Service DNS names), nothing but
//! `Identity.Certify` without a mesh certificate, calls scoped by the
//! caller's identity, and bounded input.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use weft_api::v1 as api;
use weft_control::testing::client::{self, MeshCert};
use weft_control::testing::TempDir;

const MESH: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: api, namespace: shop}\nspec:\n  serviceAccount: api\n  endpoints: [{address: 10.0.0.7:8080, proxy: 10.0.0.7:4143}]\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: db, namespace: shop}\nspec:\n  serviceAccount: db\n  endpoints: [{address: 10.0.0.8:5432}]\n";
const TOKENS: &str = "- {namespace: shop, serviceAccount: api, token: api-token-0123456789}\n- {namespace: shop, serviceAccount: db, token: db-token-0123456789}\n";

/// A running weft-control, killed on drop.
struct Control {
    child: std::process::Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    anchors: PathBuf,
    _dir: TempDir,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Control {
    fn start() -> Self {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
        dir.write("mesh/mesh.yaml", MESH);
        let tokens = dir.write("tokens.yaml", TOKENS);
        let anchors = dir.path().join("trust-anchors.pem");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
            .arg("--config")
            .arg(dir.path().join("mesh"))
            .arg("--tokens")
            .arg(&tokens)
            .arg("--trust-anchors-out")
            .arg(&anchors)
            .args(["--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("weft-control starts");
            if line.contains("listening") && line.contains("grpc=") {
                break line;
            }
        };
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
            line[start..].split_whitespace().next().unwrap().parse().unwrap()
        };
        Self {
            grpc: field("grpc"),
            admin: field("admin"),
            child,
            anchors,
            _dir: dir,
        }
    }

    async fn channel(&self, cert: Option<&MeshCert>) -> tonic::transport::Channel {
        client::channel(self.grpc, client::tls(&self.anchors, cert))
            .await
            .unwrap()
    }

    async fn cert(&self, sa: &str) -> MeshCert {
        client::certify(
            self.channel(None).await,
            "shop",
            sa,
            &format!("{sa}-token-0123456789"),
        )
        .await
        .unwrap()
    }

    async fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

#[tokio::test]
async fn a_plaintext_client_gets_a_tls_alert_never_service() {
    let cp = Control::start();
    let mut s = TcpStream::connect(cp.grpc).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame, as a plaintext gRPC
    // client opens.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(!got.is_empty(), "an answer, not silence");
    assert_eq!(got[0], 0x15, "a TLS alert record: {got:02x?}");
    assert_eq!(got.len(), 7, "one alert and nothing else: {got:02x?}");
    // Counted once the server has finished with the connection, which may
    // be a moment after the client read the alert.
    let counted = r#"weft_control_grpc_connections_refused_total{reason="tls_handshake"} 1"#;
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = cp.metrics().await;
        if metrics.contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.contains(counted), "counted: {metrics}");
}

#[tokio::test]
async fn the_server_proves_its_spiffe_id_and_service_names_over_tls_1_3() {
    let cp = Control::start();
    let tcp = TcpStream::connect(cp.grpc).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(client::SERVER_NAME).unwrap();
    // Standard WebPKI verification by DNS name, as grpcurl would.
    let tls = tokio_rustls::TlsConnector::from(client::tls(&cp.anchors, None))
        .connect(name, tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    let cert = &conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "URI(spiffe://cluster.local/ns/weft-system/sa/weft-control)",
            "DNSName(weft-control.weft-system.svc)",
            "DNSName(weft-control.weft-system.svc.cluster.local)",
        ],
    );

    // TLS 1.2 is not spoken.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cp.anchors).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(cp.grpc).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(client::SERVER_NAME).unwrap();
    assert!(tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12))
        .connect(name, tcp)
        .await
        .is_err());
}

#[tokio::test]
async fn only_certify_is_served_without_a_mesh_certificate() {
    let cp = Control::start();
    let anonymous = cp.channel(None).await;
    let watch = api::destination_client::DestinationClient::new(anonymous.clone())
        .watch(api::DestinationRequest {
            target: "api.shop:80".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(watch.code(), tonic::Code::Unauthenticated, "{watch:?}");
    let inbound = api::inbound_client::InboundClient::new(anonymous.clone())
        .watch(api::InboundRequest {
            workload: "shop/api".into(),
            port: 8080,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(inbound.code(), tonic::Code::Unauthenticated);
    let bad = client::certify(anonymous.clone(), "shop", "api", "not-the-token-0123456789")
        .await
        .err()
        .unwrap();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    assert!(client::certify(anonymous, "shop", "api", "api-token-0123456789")
        .await
        .is_ok());
}

#[tokio::test]
async fn callers_see_and_change_only_what_their_certificate_allows() {
    let cp = Control::start();
    let (api_cert, db_cert) = (cp.cert("api").await, cp.cert("db").await);
    let as_api = cp.channel(Some(&api_cert)).await;
    let as_db = cp.channel(Some(&db_cert)).await;

    let inbound = |channel: &tonic::transport::Channel, workload: &str| {
        let mut c = api::inbound_client::InboundClient::new(channel.clone());
        let req = api::InboundRequest {
            workload: workload.into(),
            port: 8080,
            ..Default::default()
        };
        async move {
            let mut stream = c.watch(req).await?.into_inner();
            stream.next().await.expect("a first message")
        }
    };
    let own = inbound(&as_api, "shop/api").await.unwrap();
    assert!(
        own.default_allow,
        "no AuthorizationPolicy: allowed, for its own port"
    );
    let theirs = inbound(&as_api, "shop/db").await.unwrap_err();
    assert_eq!(theirs.code(), tonic::Code::PermissionDenied, "{theirs:?}");
    let elsewhere = inbound(&as_api, "web/api").await.unwrap_err();
    assert_eq!(elsewhere.code(), tonic::Code::PermissionDenied);

    // Destinations resolve in the caller's own namespace only.
    let watch = |channel: &tonic::transport::Channel, namespace: &str, admin: &str| {
        let mut c = api::destination_client::DestinationClient::new(channel.clone());
        let req = api::DestinationRequest {
            target: "api:80".into(),
            namespace: namespace.into(),
            proxy_id: "shared-id".into(),
            admin_address: admin.into(),
            proxy_version: String::new(),
        };
        async move { c.watch(req).await.map(|r| r.into_inner()) }
    };
    let denied = watch(&as_api, "web", "").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let mut api_stream = watch(&as_api, "shop", "127.0.0.1:4191").await.unwrap();
    assert!(matches!(
        api_stream.next().await.unwrap().unwrap().kind,
        Some(api::destination_update::Kind::Snapshot(_))
    ));
    // db reports the same proxy id with another admin address: a second
    // entry under its own identity, never an overwrite of api's.
    let mut db_stream = watch(&as_db, "shop", "127.0.0.1:9999").await.unwrap();
    db_stream.next().await.unwrap().unwrap();
    let mut s = TcpStream::connect(cp.admin).await.unwrap();
    s.write_all(b"GET /proxies HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(rsp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let entries: Vec<(String, String)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["identity"].as_str().unwrap().into(),
                e["admin"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "spiffe://cluster.local/ns/shop/sa/api".into(),
                "127.0.0.1:4191".into()
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/db".into(),
                "127.0.0.1:9999".into()
            ),
        ]
    );

    // A renewal over mutual TLS is for the caller's own identity only,
    // even with a valid token for another.
    let other = client::certify(as_api.clone(), "shop", "db", "db-token-0123456789")
        .await
        .err()
        .unwrap();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    assert!(client::certify(as_api, "shop", "api", "api-token-0123456789")
        .await
        .is_ok());
}

/// 100 streams, each opening with a 4 MiB proxy id (the attack that used
/// to cost the control plane ~4 MiB per stream): each is refused, and the
/// control plane's memory does not follow the 400 MiB sent (measured:
/// +5 MiB peak; the bound is 64 MiB, an eighth of the chart's limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_proxy_ids_are_refused_and_memory_stays_bounded() {
    const STREAMS: usize = 100;
    const BOUND_KIB: u64 = 64 * 1024;
    let cp = Control::start();
    let cert = cp.cert("api").await;
    let before = cp.rss_kib();
    let huge = "x".repeat(4 * 1024 * 1024);
    // Ten connections, ten streams each.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(cp.channel(Some(&cert)).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let channel = channels[i % channels.len()].clone();
        let req = api::DestinationRequest {
            target: "api:80".into(),
            proxy_id: huge.clone(),
            ..Default::default()
        };
        calls.spawn(async move {
            api::destination_client::DestinationClient::new(channel)
                .watch(req)
                .await
                .map(|_| ())
        });
    }
    let mut codes = std::collections::BTreeMap::new();
    let mut peak = before;
    while let Some(result) = tokio::time::timeout(Duration::from_secs(60), calls.join_next())
        .await
        .expect("every call ends")
    {
        peak = peak.max(cp.rss_kib());
        let code = result.unwrap().unwrap_err().code();
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    let after = cp.rss_kib();
    eprintln!(
        "weft-control RSS: {before} KiB before, peak {peak} KiB, {after} KiB after {STREAMS} x 4 MiB proxy ids; codes {codes:?}"
    );
    assert_eq!(codes.len(), 1, "{codes:?}");
    // tonic's code for a message over the decoding limit (grpc-go says
    // RESOURCE_EXHAUSTED): refused before it is read, either way.
    assert_eq!(codes.get("OutOfRange"), Some(&STREAMS), "{codes:?}");
    assert!(
        peak - before < BOUND_KIB,
        "RSS grew by {} KiB (bound {BOUND_KIB} KiB)",
        peak - before
    );
}
