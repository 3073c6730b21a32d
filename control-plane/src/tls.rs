//! The gRPC listener's TLS, and who is calling.
//!
//! weft-control serves gRPC only over TLS 1.3, with a certificate its own
//! CA issues to itself ([`ServingCert`]: its SPIFFE ID, which proxies
//! check, plus DNS SANs for its Service names), renewed at ~70% of its
//! lifetime. A client certificate is optional at the TLS layer, because
//! `Identity.Certify` is how a proxy gets its first one; every other RPC
//! asks [`caller`] for the verified identity and refuses without one.
//!
//! [`incoming`] accepts at most `max_connections` connections at once and
//! gives each handshake `handshake_timeout`. A connection authenticated by
//! a client certificate ends when that certificate expires: the proxy
//! reconnects with its renewed one.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::Ca;
use crate::metrics::ControlMetrics;

/// The control plane's own certificate, swapped in place when renewed.
pub struct ServingCert {
    ca: Arc<Ca>,
    spiffe_id: String,
    dns_names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("spiffe_id", &self.spiffe_id)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Issues the first certificate.
    pub fn issue(ca: Arc<Ca>, spiffe_id: String, dns_names: Vec<String>) -> Result<Arc<Self>, String> {
        let first = Self::sign(&ca, &spiffe_id, &dns_names)?;
        Ok(Arc::new(Self {
            ca,
            spiffe_id,
            dns_names,
            current: RwLock::new(first),
        }))
    }

    fn sign(
        ca: &Ca,
        spiffe_id: &str,
        dns_names: &[String],
    ) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
        let issued = ca
            .issue_self(spiffe_id, dns_names)
            .map_err(|e| format!("issuing the control plane's own certificate: {e}"))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(issued.chain, issued.key, &provider)
            .map_err(|e| format!("the control plane's own certificate: {e}"))?;
        Ok((Arc::new(key), issued.valid_until))
    }

    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// When the certificate now served expires.
    pub fn valid_until(&self) -> SystemTime {
        self.current.read().expect("serving cert lock").1
    }

    /// Renews at 70% of each certificate's lifetime (a failure is logged
    /// and retried after 10 s, until it expires and beyond). Never returns.
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            let left = self
                .valid_until()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left.mul_f64(0.7)).await;
            loop {
                match Self::sign(&self.ca, &self.spiffe_id, &self.dns_names) {
                    Ok(next) => {
                        tracing::info!(identity = %self.spiffe_id, "renewed the control plane's own certificate");
                        *self.current.write().expect("serving cert lock") = next;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the control plane's own certificate; retrying in 10s");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("serving cert lock").0.clone())
    }
}

/// TLS 1.3 only, ALPN `h2`, a client certificate verified against the
/// trust anchors when one is sent, no session resumption (every
/// connection checks certificates afresh).
pub fn server_config(ca: &Ca, cert: Arc<ServingCert>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for anchor in ca.trust_anchors() {
        roots
            .add(CertificateDer::from(anchor.clone()))
            .map_err(|e| format!("trust anchor: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Who is on the other end of a gRPC connection (a request extension).
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The SPIFFE ID of a verified client certificate.
    pub identity: Option<String>,
}

/// A caller authenticated by its mesh certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    pub remote: SocketAddr,
}

/// The verified identity behind `request`: UNAUTHENTICATED without a
/// client certificate, PERMISSION_DENIED for one outside `trust_domain`.
pub fn caller<T>(request: &tonic::Request<T>, trust_domain: &str) -> Result<Caller, tonic::Status> {
    let peer = request
        .extensions()
        .get::<Peer>()
        .ok_or_else(|| tonic::Status::unauthenticated("no TLS connection"))?;
    let id = peer.identity.as_deref().ok_or_else(|| {
        tonic::Status::unauthenticated(
            "expected a mesh client certificate (Identity.Certify issues one; only Certify is served without)",
        )
    })?;
    let (namespace, service_account) = parse_spiffe_id(id, trust_domain).ok_or_else(|| {
        tonic::Status::permission_denied(format!(
            "{id}: expected spiffe://{trust_domain}/ns/<namespace>/sa/<service account>"
        ))
    })?;
    Ok(Caller {
        id: id.to_string(),
        namespace,
        service_account,
        remote: peer.remote,
    })
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` → (ns, sa), for this trust domain only.
pub fn parse_spiffe_id(id: &str, trust_domain: &str) -> Option<(String, String)> {
    let path = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let mut parts = path.strip_prefix('/')?.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some((ns.to_string(), sa.to_string()))
        }
        _ => None,
    }
}

/// The SPIFFE ID and expiry of a verified client certificate.
fn client_identity(tls: &TlsStream<TcpStream>) -> (Option<String>, Option<SystemTime>) {
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return (None, None);
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return (None, None);
    };
    let expires = u64::try_from(cert.validity().not_after.timestamp())
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let mut uris = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
            _ => None,
        });
    let id = uris.next().filter(|_| uris.next().is_none());
    (id, expires)
}

/// Bounds on the gRPC listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// One accepted, handshaken connection.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    peer: Peer,
    /// Fires when the client certificate expires: the connection then
    /// fails its next read, and hyper closes it.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.expiry
            .as_mut()
            .is_some_and(|e| e.as_mut().poll(cx).is_ready())
    }
}

fn expired_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the client certificate expired")
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Accepts TCP connections, handshakes TLS on each in its own task, and
/// yields the ones that complete. A failed handshake (a plaintext client,
/// an untrusted certificate) is counted and logged at debug: it never
/// reaches gRPC.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: Limits,
    metrics: Arc<ControlMetrics>,
) -> ReceiverStream<Result<Conn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.grpc_connection_refused("too_many_connections");
                tracing::warn!(%remote, max = limits.max_connections, "gRPC connection refused: too many open");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics.grpc_connection_refused("tls_handshake");
                        tracing::debug!(%remote, error = %e, "gRPC TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.grpc_connection_refused("handshake_timeout");
                        return;
                    }
                };
                let (identity, expires) = client_identity(&tls);
                let expiry = expires.map(|at| {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    Box::pin(tokio::time::sleep(left))
                });
                let conn = Conn {
                    tls,
                    peer: Peer { remote, identity },
                    expiry,
                    _slot: slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_only_in_the_trust_domain() {
        let td = "cluster.local";
        assert_eq!(
            parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/api", td),
            Some(("shop".into(), "api".into()))
        );
        for bad in [
            "spiffe://other.local/ns/shop/sa/api",
            "spiffe://cluster.localx/ns/shop/sa/api",
            "spiffe://cluster.local/ns/shop/sa/api/extra",
            "spiffe://cluster.local/ns//sa/api",
            "spiffe://cluster.local/sa/api/ns/shop",
            "https://cluster.local/ns/shop/sa/api",
        ] {
            assert_eq!(parse_spiffe_id(bad, td), None, "{bad}");
        }
    }
}
