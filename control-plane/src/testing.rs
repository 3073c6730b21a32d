//! Helpers for tests: this crate's own (unit and `control-plane/tests/`)
//! and the end-to-end crate's (`tests/`). Built with the `testing` feature,
//! which only test code turns on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::{parse_file, Document};

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` (relative to the directory, whose
    /// subdirectories must exist); returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The documents of one YAML file, which must be valid.
pub fn documents(yaml: &str) -> Vec<Document> {
    let (docs, errors) = parse_file("test.yaml", yaml);
    assert!(errors.is_empty(), "{errors:?}");
    docs
}

/// A gRPC client of a running control plane over real TLS, as proxies and
/// other clients reach it: the server is verified by the standard WebPKI
/// rules against the trust anchors it wrote (`--trust-anchors-out`) and
/// one of its DNS names, so these tests also prove the DNS SANs work.
pub mod client {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::net::TcpStream;
    use tonic::transport::Channel;
    use weft_api::v1 as api;

    /// The name the control plane's certificate carries by default.
    pub const SERVER_NAME: &str = "weft-control.weft-system.svc.cluster.local";

    /// A mesh certificate and its key.
    pub struct MeshCert {
        pub chain: Vec<CertificateDer<'static>>,
        pub key: PrivateKeyDer<'static>,
    }

    /// TLS 1.3 to the control plane, presenting `cert` if given.
    pub fn tls(anchors: &Path, cert: Option<&MeshCert>) -> Arc<ClientConfig> {
        let pem = std::fs::read(anchors).expect("read trust anchors");
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.expect("PEM certificate")).expect("trust anchor");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    #[derive(Clone)]
    struct Connector {
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
    }

    impl tower_service::Service<http::Uri> for Connector {
        type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _uri: http::Uri) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                let tcp = TcpStream::connect(this.addr).await?;
                let name = ServerName::try_from(SERVER_NAME).expect("DNS name");
                let tls = tokio_rustls::TlsConnector::from(this.tls)
                    .connect(name, tcp)
                    .await?;
                Ok(TokioIo::new(tls))
            })
        }
    }

    /// A channel to `addr` over `tls` (connects now).
    pub async fn channel(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
    ) -> Result<Channel, tonic::transport::Error> {
        tonic::transport::Endpoint::from_static("https://weft-control")
            .connect_with_connector(Connector { addr, tls })
            .await
    }

    /// `Identity.Certify` for `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub async fn certify(
        channel: Channel,
        ns: &str,
        sa: &str,
        token: &str,
    ) -> Result<MeshCert, tonic::Status> {
        let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().expect("URI"))];
        let csr = params.serialize_request(&key).expect("CSR");
        let rsp = api::identity_client::IdentityClient::new(channel)
            .certify(api::CertifyRequest {
                identity: id,
                csr: csr.der().to_vec(),
                token: token.into(),
            })
            .await?
            .into_inner();
        let mut chain = vec![CertificateDer::from(rsp.certificate)];
        chain.extend(rsp.intermediates.into_iter().map(CertificateDer::from));
        Ok(MeshCert {
            chain,
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("PKCS#8"),
        })
    }
}
