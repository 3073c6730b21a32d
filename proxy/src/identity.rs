//! The proxy's workload identity: an ECDSA P-256 key made in memory (never
//! written anywhere), a certificate for its SPIFFE ID from the control
//! plane's `Identity.Certify` (over the shared [`ControlClient`]), renewed
//! at ~70% of its lifetime (with jitter; a failure is counted and retried
//! after a [`Backoff`], 400 ms → 10 s, until one succeeds), and the rustls
//! configs built from it.
//!
//! The token is read from its file before every request ([`TokenFile`]):
//! Kubernetes rotates projected tokens long before a certificate is due
//! for renewal.
//!
//! New connections use the newest certificate; open ones keep theirs.
//! [`Identity::state`] says whether the certificate is still [`CertState::Fresh`]
//! (more than [`UNREADY_WHEN_LEFT`] of its lifetime left); `/ready` needs it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
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
    /// When the certificate arrived: its usable lifetime starts here.
    pub received: SystemTime,
    pub valid_until: SystemTime,
    /// The certificate and its intermediates, as sent to peers.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The trust anchors (DER) peers are checked against. A renewal that
    /// brings the same anchors shares this allocation, so "did the anchors
    /// change" is a pointer comparison ([`Arc::ptr_eq`]) on the data path.
    pub anchors: Arc<[Vec<u8>]>,
}

impl Creds {
    /// The certificate's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// `/ready` turns 503 when less than this share of the certificate's
/// lifetime is left (2.4 h of 24 h). Renewal starts at 60–80%, so only
/// renewals failing for a fifth of the lifetime or more get here.
pub const UNREADY_WHEN_LEFT: f64 = 0.1;

/// How usable the current certificate is at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// None issued yet.
    Pending,
    /// More than [`UNREADY_WHEN_LEFT`] of its lifetime left.
    Fresh,
    /// Still valid for `left`, but renewal is overdue.
    Expiring {
        left: Duration,
    },
    Expired,
}

impl CertState {
    /// The state of a certificate received at `received` and valid until
    /// `valid_until`, at `now`.
    pub fn at(received: SystemTime, valid_until: SystemTime, now: SystemTime) -> Self {
        let lifetime = valid_until.duration_since(received).unwrap_or_default();
        match valid_until.duration_since(now) {
            Ok(left) if left > lifetime.mul_f64(UNREADY_WHEN_LEFT) => CertState::Fresh,
            Ok(left) if !left.is_zero() => CertState::Expiring { left },
            _ => CertState::Expired,
        }
    }
}

impl std::fmt::Display for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertState::Pending => f.write_str("no certificate yet"),
            CertState::Fresh => f.write_str("certificate valid"),
            CertState::Expiring { left } => write!(
                f,
                "certificate expires in {:.1}s and has not been renewed",
                left.as_secs_f64()
            ),
            CertState::Expired => f.write_str("certificate expired"),
        }
    }
}

/// The file holding the token that proves this workload's identity (a
/// projected ServiceAccount token in Kubernetes, rewritten by the kubelet
/// as it rotates). Read afresh for every certificate request.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// Checks once that the file can be read (so a bad path fails at start).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = Self {
            path: path.to_path_buf(),
        };
        file.read()?;
        Ok(file)
    }

    /// The token now in the file, without surrounding whitespace.
    pub fn read(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(&self.path)?.trim().to_string())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub struct Identity {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`
    pub id: String,
    token: TokenFile,
    current: RwLock<Option<Arc<Creds>>>,
    ready: tokio::sync::watch::Sender<bool>,
    /// Unix time the current certificate expires.
    pub expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Certificate requests that failed (the first one and renewals).
    pub failures: Counter,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the token file {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("the control plane refused the certificate: {0}")]
    Refused(tonic::Status),
    #[error("building the certificate request: {0}")]
    Csr(String),
    #[error("the issued certificate cannot be used: {0}")]
    Unusable(String),
}

impl Identity {
    pub fn new(id: String, token: TokenFile) -> Arc<Self> {
        Arc::new(Self {
            id,
            token,
            current: RwLock::new(None),
            ready: tokio::sync::watch::channel(false).0,
            expiry: Gauge::default(),
            failures: Counter::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The newest credentials, once there are any.
    pub fn current(&self) -> Option<Arc<Creds>> {
        self.current.read().expect("identity lock").clone()
    }

    /// Whether the current credentials trust exactly `anchors` (the same
    /// allocation): asked per request of a pooled connection, so it
    /// neither clones nor takes the lock exclusively.
    pub fn trusts(&self, anchors: &Arc<[Vec<u8>]>) -> bool {
        self.current
            .read()
            .expect("identity lock")
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.anchors, anchors))
    }

    /// How usable the current certificate is at `now`.
    pub fn state(&self, now: SystemTime) -> CertState {
        match self.current() {
            Some(creds) => CertState::at(creds.received, creds.valid_until, now),
            None => CertState::Pending,
        }
    }

    /// Resolves when a connection authenticated with `creds` on this side
    /// and a peer certificate valid until `peer_until` must stop being
    /// used: when either certificate expires, or when newer credentials
    /// bring other trust anchors (a root was added or removed: the peer's
    /// chain is checked again on a new connection).
    pub async fn authentication_ends(&self, creds: &Arc<Creds>, peer_until: Option<SystemTime>) {
        let until = peer_until.map_or(creds.valid_until, |p| p.min(creds.valid_until));
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        let expiry = tokio::time::sleep(left);
        tokio::pin!(expiry);
        let mut renewed = self.ready.subscribe();
        loop {
            tokio::select! {
                () = &mut expiry => return,
                changed = renewed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if self.current().is_some_and(|c| !Arc::ptr_eq(&c.anchors, &creds.anchors)) {
                        return;
                    }
                }
            }
        }
    }

    /// Resolves once the first certificate is in.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Obtains a certificate, then keeps renewing it; a failed request is
    /// retried after a jittered backoff for as long as it takes, also past
    /// the certificate's expiry. Never returns.
    pub async fn run(self: Arc<Self>, control: ControlClient) {
        let mut backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(10));
        loop {
            // Renewals go over mutual TLS with the certificate being
            // renewed; the first request (and one after an expiry) over
            // server-authenticated TLS, with the token as the only proof.
            let mut client = match self.state(SystemTime::now()) {
                CertState::Fresh | CertState::Expiring { .. } => control.identity(),
                CertState::Pending | CertState::Expired => control.bootstrap_identity(),
            };
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
                    self.failures.inc();
                    let wait = backoff.next_wait();
                    let state = self.state(SystemTime::now());
                    tracing::warn!(identity = %self.id, error = %e, retry_in = ?wait, %state, "certificate request failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn renew(&self, client: &mut IdentityClient<Channel>) -> Result<Arc<Creds>, IdentityError> {
        let token = self.token.read().map_err(|source| IdentityError::Token {
            path: self.token.path().to_path_buf(),
            source,
        })?;
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
                token,
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
        let pkcs8 = PrivatePkcs8KeyDer::from(key.serialize_der());
        let key_der = PrivateKeyDer::Pkcs8(pkcs8.clone_key());
        let mut roots = RootCertStore::empty();
        for anchor in &rsp.trust_anchors {
            roots
                .add(CertificateDer::from(anchor.clone()))
                .map_err(|e| unusable(&e))?;
        }
        let roots = Arc::new(roots);
        let verifier = Arc::new(SpiffeVerifier {
            roots: roots.clone(),
            provider: self.provider.clone(),
            expected: None,
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
            received: SystemTime::now(),
            valid_until: SystemTime::UNIX_EPOCH + Duration::from_secs(rsp.valid_until.max(0) as u64),
            chain,
            key: pkcs8,
            anchors: match self.current() {
                Some(prev) if *prev.anchors == rsp.trust_anchors[..] => prev.anchors.clone(),
                _ => rsp.trust_anchors.into(),
            },
        })
    }
}

/// When a certificate (DER) expires.
pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
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

/// A verifier for a server that must prove `spiffe_id` (whatever name
/// was dialled): the control plane.
pub fn expecting(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    spiffe_id: &str,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(SpiffeVerifier {
        roots,
        provider,
        expected: Some(spiffe_id.to_string()),
    })
}

/// Checks the server's chain against the trust anchors, and that it names
/// exactly the expected SPIFFE ID: `expected`, or else the one discovery
/// promised (carried in the server name).
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Option<String>,
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
        let expected = self
            .expected
            .clone()
            .or_else(|| spiffe_id_from_server_name(server_name))
            .ok_or(rustls::Error::InvalidCertificate(
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

    #[test]
    fn a_certificate_stops_being_fresh_with_a_tenth_of_its_lifetime_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let until = t0 + Duration::from_secs(100);
        let at = |s: f64| CertState::at(t0, until, t0 + Duration::from_secs_f64(s));
        assert_eq!(at(0.0), CertState::Fresh);
        assert_eq!(at(80.0), CertState::Fresh, "renewal is due, not overdue");
        assert_eq!(at(89.9), CertState::Fresh);
        assert_eq!(
            at(90.5),
            CertState::Expiring {
                left: Duration::from_secs_f64(9.5)
            }
        );
        assert_eq!(at(100.0), CertState::Expired);
        assert_eq!(at(150.0), CertState::Expired);
        let day = Duration::from_secs(24 * 3600);
        let left = |d: Duration| CertState::at(t0, t0 + day, t0 + day - d);
        assert_eq!(left(Duration::from_secs(3 * 3600)), CertState::Fresh);
        assert!(
            matches!(left(Duration::from_secs(2 * 3600)), CertState::Expiring { .. }),
            "24 h certificates: not ready with 2.4 h left"
        );
    }

    #[test]
    fn the_token_file_is_read_afresh() {
        let dir = std::env::temp_dir().join(format!("weft-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        assert!(TokenFile::open(&path).is_err(), "a missing file fails at start");
        std::fs::write(&path, "first-token\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.read().unwrap(), "first-token");
        std::fs::write(&path, "  second-token\n").unwrap();
        assert_eq!(file.read().unwrap(), "second-token");
        std::fs::remove_file(&path).unwrap();
        assert!(file.read().is_err());
        let _ = std::fs::remove_dir(&dir);
    }
}
