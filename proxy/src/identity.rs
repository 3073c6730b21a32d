//! The proxy's workload identity: an ECDSA P-256 key made in memory (never
//! written anywhere), a certificate for its SPIFFE ID from the control
//! plane's `Identity.Certify` (over the shared [`ControlClient`]), renewed
//! at ~70% of its lifetime (with jitter; a failure is retried after a
//! [`Backoff`], 400 ms → 10 s), and the rustls configs built from it.
//!
//! New connections use the newest certificate; open ones keep theirs.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tonic::transport::Channel;
use weft_api::v1 as api;
use weft_api::v1::identity_client::IdentityClient;

use crate::control::{Backoff, ControlClient};

/// ALPN of the HTTP/2 channel between proxies.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of opaque TCP tunnels between proxies.
pub const ALPN_TCP: &[u8] = b"weft-tcp/1";

/// TLS material of one certificate generation.
pub struct Creds {
    pub client_h2: Arc<ClientConfig>,
    pub client_tcp: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
    pub valid_until: SystemTime,
}

pub struct Identity {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`
    pub id: String,
    token: String,
    current: RwLock<Option<Arc<Creds>>>,
    ready: tokio::sync::watch::Sender<bool>,
    /// Unix time the current certificate expires.
    pub expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the control plane refused the certificate: {0}")]
    Refused(tonic::Status),
    #[error("building the certificate request: {0}")]
    Csr(String),
    #[error("the issued certificate cannot be used: {0}")]
    Unusable(String),
}

impl Identity {
    pub fn new(id: String, token: String) -> Arc<Self> {
        Arc::new(Self {
            id,
            token,
            current: RwLock::new(None),
            ready: tokio::sync::watch::channel(false).0,
            expiry: Gauge::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The newest credentials, once there are any.
    pub fn current(&self) -> Option<Arc<Creds>> {
        self.current.read().expect("identity lock").clone()
    }

    /// Resolves once the first certificate is in.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Obtains a certificate, then keeps renewing it. Never returns.
    pub async fn run(self: Arc<Self>, control: ControlClient) {
        let mut client = control.identity();
        let mut backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(10));
        loop {
            match self.renew(&mut client).await {
                Ok(creds) => {
                    backoff.reset();
                    let lifetime = creds
                        .valid_until
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    *self.current.write().expect("identity lock") = Some(creds);
                    self.ready.send_replace(true);
                    // Renew at 70% of the lifetime, ±10%, so a fleet does not
                    // renew in lockstep.
                    let at = lifetime.mul_f64(0.7 + rand::random_range(-0.1..0.1));
                    tracing::info!(identity = %self.id, renew_in = ?at, "certificate issued");
                    tokio::time::sleep(at).await;
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(identity = %self.id, error = %e, retry_in = ?wait, "certificate request failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn renew(&self, client: &mut IdentityClient<Channel>) -> Result<Arc<Creds>, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IdentityError::Csr(e.to_string()))?;
        // Only the SPIFFE ID: the CA sets the subject and everything else.
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = self
            .id
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| IdentityError::Csr(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| IdentityError::Csr(e.to_string()))?;
        let rsp = client
            .certify(api::CertifyRequest {
                identity: self.id.clone(),
                csr: csr.der().to_vec(),
                token: self.token.clone(),
            })
            .await
            .map_err(IdentityError::Refused)?
            .into_inner();
        let creds = self.creds(rsp, key)?;
        self.expiry.set(
            creds
                .valid_until
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        Ok(Arc::new(creds))
    }

    fn creds(&self, rsp: api::CertifyResponse, key: KeyPair) -> Result<Creds, IdentityError> {
        let unusable = |e: &dyn std::fmt::Display| IdentityError::Unusable(e.to_string());
        let mut chain = vec![CertificateDer::from(rsp.certificate)];
        chain.extend(rsp.intermediates.into_iter().map(CertificateDer::from));
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut roots = RootCertStore::empty();
        for anchor in rsp.trust_anchors {
            roots
                .add(CertificateDer::from(anchor))
                .map_err(|e| unusable(&e))?;
        }
        let roots = Arc::new(roots);
        let verifier = Arc::new(SpiffeVerifier {
            roots: roots.clone(),
            provider: self.provider.clone(),
        });
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, IdentityError> {
            let mut c = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| unusable(&e))?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_client_auth_cert(chain.clone(), key_der.clone_key())
                .map_err(|e| unusable(&e))?;
            c.alpn_protocols = vec![alpn.to_vec()];
            // Every connection checks the peer's certificate afresh: a
            // resumed session would skip that (and outlive an expired or
            // rotated-out certificate). Connections are pooled, so full
            // handshakes are rare.
            c.resumption = rustls::client::Resumption::disabled();
            Ok(Arc::new(c))
        };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| unusable(&e))?;
        let mut server = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| unusable(&e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(|e| unusable(&e))?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec()];
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Creds {
            client_h2: client(ALPN_H2)?,
            client_tcp: client(ALPN_TCP)?,
            server: Arc::new(server),
            valid_until: SystemTime::UNIX_EPOCH + Duration::from_secs(rsp.valid_until.max(0) as u64),
        })
    }
}

/// The SPIFFE ID in a certificate's URI SANs, if exactly one.
pub fn spiffe_id_of(cert: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    });
    let first = uris.next()?;
    uris.next().is_none().then_some(first)
}

/// The TLS server name that carries an expected SPIFFE ID to the verifier:
/// `spiffe://td/ns/NS/sa/SA` ↔ `SA.NS.td` (both are DNS labels).
pub fn server_name_for(spiffe_id: &str) -> Option<ServerName<'static>> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    ServerName::try_from(format!("{sa}.{ns}.{td}")).ok()
}

fn spiffe_id_from_server_name(name: &ServerName<'_>) -> Option<String> {
    let ServerName::DnsName(dns) = name else {
        return None;
    };
    let mut labels = dns.as_ref().splitn(3, '.');
    let (sa, ns, td) = (labels.next()?, labels.next()?, labels.next()?);
    Some(format!("spiffe://{td}/ns/{ns}/sa/{sa}"))
}

/// Checks the server's chain against the trust anchors, and that it names
/// exactly the SPIFFE ID discovery promised (carried in the server name).
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let expected = spiffe_id_from_server_name(server_name).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ))?;
        if spiffe_id_of(end_entity).as_deref() != Some(expected.as_str()) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a TLS error means the peer was not who discovery said.
pub fn is_identity_mismatch(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

/// For logs: who is on the other side of an accepted TLS connection.
pub fn describe_peer(peer: SocketAddr, id: Option<&str>) -> String {
    format!("{peer} ({})", id.unwrap_or("no identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_carry_spiffe_ids() {
        let id = "spiffe://cluster.local/ns/demo/sa/web";
        let name = server_name_for(id).unwrap();
        assert_eq!(spiffe_id_from_server_name(&name).as_deref(), Some(id));
        assert!(server_name_for("spiffe://cluster.local/ns/demo").is_none());
        assert!(server_name_for("https://example.com").is_none());
    }
}
