//! How the proxy dials the control plane: TCP, then TLS 1.3 that must
//! prove the control plane's SPIFFE ID under the trust anchors in
//! [`ControlTls::anchors`] (read afresh at every dial, so a rotated bundle
//! is picked up by the next connection).
//!
//! Two kinds of connection, two channels in [`super::ControlClient`]:
//! - bootstrap (no client certificate): only for the first
//!   `Identity.Certify`, and again if the certificate ever expired;
//! - mesh (the proxy's current certificate): every other call, renewals
//!   included. Dialling waits for the first certificate.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::{self, Identity};

/// What the proxy trusts the control plane by.
#[derive(Debug, Clone)]
pub struct ControlTls {
    /// PEM bundle of trust anchors the control plane's chain must reach.
    pub anchors: PathBuf,
    /// The SPIFFE ID its certificate must carry.
    pub identity: String,
}

impl ControlTls {
    /// The trust anchors now in the file.
    pub fn roots(&self) -> io::Result<RootCertStore> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let pem = std::fs::read(&self.anchors)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.anchors.display())))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| invalid(format!("{}: {e}", self.anchors.display())))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("{}: {e}", self.anchors.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!(
                "{}: expected at least one PEM certificate",
                self.anchors.display()
            )));
        }
        Ok(roots)
    }
}

/// A tonic connector: `Uri` → TLS stream to the control plane.
#[derive(Clone)]
pub(crate) struct Connector {
    pub tls: Arc<ControlTls>,
    /// With it: present its current certificate (the mesh channel).
    pub client: Option<Arc<Identity>>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

impl Connector {
    async fn connect(self, uri: http::Uri) -> io::Result<TlsStream<TcpStream>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let config = self.config().await?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    }

    async fn config(&self) -> io::Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = identity::expecting(Arc::new(self.tls.roots()?), provider.clone(), &self.tls.identity);
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                identity.ready().await;
                let creds = identity.current().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no certificate yet for the control plane",
                    )
                })?;
                builder
                    .with_client_auth_cert(creds.chain.clone(), creds.key())
                    .map_err(io::Error::other)?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}
