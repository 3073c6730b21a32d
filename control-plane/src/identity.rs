//! The issuer: signs short-lived workload certificates for
//! `Identity.Certify`, after checking the workload's token and that the CSR
//! asks for exactly that workload's SPIFFE ID.
//!
//! The CA comes from files (PEM certificate and key), or is generated at
//! start in local/dev mode (logged loudly). The trust bundle handed to
//! proxies may hold several roots, which is how trust anchors rotate
//! without an outage (docs/operations.md).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::Deserialize;
use weft_api::v1 as api;

use crate::index::spiffe_id;

/// Why a certificate request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the token is not valid")]
    BadToken,
    #[error("the token is for {allowed}, not {asked}")]
    WrongIdentity { asked: String, allowed: String },
    #[error("the CSR cannot be used: {0}")]
    BadCsr(String),
    #[error("the CSR must name exactly {expected} (one URI SAN, nothing else)")]
    CsrIdentity { expected: String },
    #[error("signing failed: {0}")]
    Signing(String),
    /// The token could not be checked now (e.g. the API server is down).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn to_status(&self) -> tonic::Status {
        match self {
            Refusal::BadToken => tonic::Status::unauthenticated(self.to_string()),
            Refusal::WrongIdentity { .. } | Refusal::CsrIdentity { .. } => {
                tonic::Status::permission_denied(self.to_string())
            }
            Refusal::BadCsr(_) => tonic::Status::invalid_argument(self.to_string()),
            Refusal::Signing(_) => tonic::Status::internal(self.to_string()),
            Refusal::Unavailable(_) => tonic::Status::unavailable(self.to_string()),
        }
    }

    /// Label value for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadToken => "bad_token",
            Refusal::WrongIdentity { .. } => "wrong_identity",
            Refusal::BadCsr(_) => "bad_csr",
            Refusal::CsrIdentity { .. } => "csr_identity",
            Refusal::Signing(_) => "signing",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// One workload token (file mode), from the `--tokens` YAML list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenEntry {
    pub namespace: String,
    pub service_account: String,
    pub token: String,
}

/// Reads a tokens file: a YAML list of `{namespace, serviceAccount, token}`.
pub fn read_tokens(path: &Path) -> Result<Vec<TokenEntry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let entries: Vec<TokenEntry> = serde_saphyr::from_str(&text).map_err(|e| {
        format!(
            "{}: expected a list of {{namespace, serviceAccount, token}}: {e}",
            path.display()
        )
    })?;
    for (i, e) in entries.iter().enumerate() {
        if e.token.len() < 16 {
            return Err(format!(
                "{}: [{i}].token: expected at least 16 characters",
                path.display()
            ));
        }
    }
    Ok(entries)
}

/// One certificate as PEM (64-character base64 lines).
pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A certificate the CA issued to the control plane itself, with its key.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
    pub valid_until: SystemTime,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// DER of every trust anchor handed out.
    trust_anchors: Vec<Vec<u8>>,
    trust_domain: String,
    lifetime: Duration,
    tokens: std::sync::Mutex<Tokens>,
}

/// The tokens file's entries, re-read when the file changes (checked at
/// each request: a stat), so workloads can be added or tokens rotated
/// without a restart. A file that turns unreadable or invalid keeps the
/// last good entries in force, with an error logged.
#[derive(Debug, Default)]
struct Tokens {
    path: Option<std::path::PathBuf>,
    /// (modification time, length) when last read: two writes within one
    /// timestamp tick still differ in length when entries are added.
    modified: Option<(SystemTime, u64)>,
    /// token → (namespace, service account)
    by_token: HashMap<String, (String, String)>,
}

impl Tokens {
    fn refresh(&mut self) {
        let Some(path) = &self.path else { return };
        let modified = file_version(path);
        if modified.is_none() || modified == self.modified {
            return;
        }
        match read_tokens(path) {
            Ok(entries) => {
                self.by_token = by_token(entries);
                self.modified = modified;
                tracing::info!(path = %path.display(), tokens = self.by_token.len(), "tokens file loaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "tokens file not reloaded; the last good one stays in force");
                self.modified = modified;
            }
        }
    }
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn by_token(entries: Vec<TokenEntry>) -> HashMap<String, (String, String)> {
    entries
        .into_iter()
        .map(|t| (t.token, (t.namespace, t.service_account)))
        .collect()
}

impl Ca {
    /// A fresh self-signed CA, for local use only.
    pub fn generate(trust_domain: &str) -> Result<Self, String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("weft dev CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let ca_der = cert.der().clone();
        Ok(Self {
            issuer: Issuer::new(params, key),
            trust_anchors: vec![ca_der.to_vec()],
            ca_der,
            trust_domain: trust_domain.to_string(),
            lifetime: Duration::from_secs(24 * 3600),
            tokens: Default::default(),
        })
    }

    /// The CA from PEM files; `anchors` (a PEM bundle) defaults to the CA
    /// certificate itself.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        anchors: Option<&Path>,
        trust_domain: &str,
    ) -> Result<Self, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()));
        let cert_pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)
            .map_err(|e| format!("{}: not a usable private key: {e}", key.display()))?;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("{}: expected a PEM certificate: {e}", cert.display()))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| format!("{}: not a CA certificate: {e}", cert.display()))?;
        let trust_anchors = match anchors {
            Some(path) => {
                let pem = read(path)?;
                let all: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
                let all = all.map_err(|e| format!("{}: expected PEM certificates: {e}", path.display()))?;
                if all.is_empty() {
                    return Err(format!("{}: expected at least one certificate", path.display()));
                }
                all.into_iter().map(|c| c.to_vec()).collect()
            }
            None => vec![ca_der.to_vec()],
        };
        Ok(Self {
            issuer,
            ca_der: ca_der.into_owned(),
            trust_anchors,
            trust_domain: trust_domain.to_string(),
            lifetime: Duration::from_secs(24 * 3600),
            tokens: Default::default(),
        })
    }

    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub fn with_tokens(self, tokens: Vec<TokenEntry>) -> Self {
        self.tokens.lock().expect("tokens lock").by_token = by_token(tokens);
        self
    }

    /// Reads the tokens from `path` now and again whenever it changes.
    pub fn with_tokens_file(self, path: &Path) -> Result<Self, String> {
        let entries = read_tokens(path)?;
        {
            let mut tokens = self.tokens.lock().expect("tokens lock");
            tokens.by_token = by_token(entries);
            tokens.modified = file_version(path);
            tokens.path = Some(path.to_path_buf());
        }
        Ok(self)
    }

    /// Checks the token (from the tokens file) and the CSR, and signs.
    pub fn certify(&self, identity: &str, csr: &[u8], token: &str) -> Result<api::CertifyResponse, Refusal> {
        let (ns, sa) = {
            let mut tokens = self.tokens.lock().expect("tokens lock");
            tokens.refresh();
            tokens.by_token.get(token).cloned().ok_or(Refusal::BadToken)?
        };
        self.certify_as(identity, csr, &ns, &sa)
    }

    /// Signs a CSR for the workload `ns`/`sa` (whose token was already
    /// checked), if it asks for exactly that workload's identity.
    pub fn certify_as(
        &self,
        identity: &str,
        csr: &[u8],
        ns: &str,
        sa: &str,
    ) -> Result<api::CertifyResponse, Refusal> {
        let allowed = spiffe_id(&self.trust_domain, ns, sa);
        if identity != allowed {
            return Err(Refusal::WrongIdentity {
                asked: identity.to_string(),
                allowed,
            });
        }
        let der = CertificateSigningRequestDer::from(csr.to_vec());
        let req =
            CertificateSigningRequestParams::from_der(&der).map_err(|e| Refusal::BadCsr(e.to_string()))?;
        let wanted = SanType::URI(allowed.as_str().try_into().map_err(|_| Refusal::CsrIdentity {
            expected: allowed.clone(),
        })?);
        if req.params.subject_alt_names != [wanted.clone()] {
            return Err(Refusal::CsrIdentity { expected: allowed });
        }
        // Only the public key comes from the CSR (and the SAN, checked
        // above): subject, usages, basic constraints and every other
        // extension are the CA's, whatever the CSR asked for.
        let issued = CertificateSigningRequestParams {
            params: self.leaf_params(vec![wanted])?,
            public_key: req.public_key,
        };
        let cert = issued
            .signed_by(&self.issuer)
            .map_err(|e| Refusal::Signing(e.to_string()))?;
        let valid_until = SystemTime::now() + self.lifetime;
        Ok(api::CertifyResponse {
            certificate: cert.der().to_vec(),
            intermediates: if self.anchors_hold_the_ca() {
                Vec::new()
            } else {
                vec![self.ca_der.to_vec()]
            },
            trust_anchors: self.trust_anchors.clone(),
            valid_until: valid_until
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        })
    }

    /// The control plane's own serving certificate: `spiffe_id` in the URI
    /// SAN (what proxies check), `dns_names` for clients that check a host
    /// name, a fresh key, and otherwise what workload certificates say.
    pub fn issue_self(&self, spiffe_id: &str, dns_names: &[String]) -> Result<Issued, Refusal> {
        let mut sans = vec![SanType::URI(
            spiffe_id
                .try_into()
                .map_err(|e: rcgen::Error| Refusal::Signing(e.to_string()))?,
        )];
        for name in dns_names {
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|e: rcgen::Error| Refusal::Signing(format!("{name}: {e}")))?,
                ),
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Refusal::Signing(e.to_string()))?;
        let cert = self
            .leaf_params(sans)?
            .signed_by(&key, &self.issuer)
            .map_err(|e| Refusal::Signing(e.to_string()))?;
        let mut chain = vec![cert.der().clone()];
        if !self.anchors_hold_the_ca() {
            chain.push(self.ca_der.clone());
        }
        Ok(Issued {
            chain,
            key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            valid_until: SystemTime::now() + self.lifetime,
        })
    }

    /// The trust anchors handed to proxies (DER).
    pub fn trust_anchors(&self) -> &[Vec<u8>] {
        &self.trust_anchors
    }

    /// The trust anchors as a PEM bundle, as proxies read them from
    /// `--trust-anchors`.
    pub fn trust_anchors_pem(&self) -> String {
        self.trust_anchors
            .iter()
            .map(|der| pem_certificate(der))
            .collect()
    }

    /// When the CA's certificate expires, and when the first of the trust
    /// anchors does (Unix seconds).
    pub fn expiry(&self) -> (Option<i64>, Option<i64>) {
        let not_after = |der: &[u8]| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        };
        let anchors = self.trust_anchors.iter().filter_map(|a| not_after(a)).min();
        (not_after(&self.ca_der), anchors)
    }

    fn anchors_hold_the_ca(&self) -> bool {
        self.trust_anchors.iter().any(|a| *a == *self.ca_der)
    }

    /// What every leaf certificate says besides its key: an empty
    /// subject (the identity is the SPIFFE ID in the URI SAN, which is then
    /// critical, as X.509-SVIDs do), not a CA, digital signatures for TLS
    /// client and server authentication, valid from a minute ago (clock
    /// skew) for the configured lifetime.
    fn leaf_params(&self, sans: Vec<SanType>) -> Result<CertificateParams, Refusal> {
        let now = time::OffsetDateTime::now_utc();
        let not_after =
            now + time::Duration::try_from(self.lifetime).map_err(|e| Refusal::Signing(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = not_after;
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Ca {
        Ca::generate("cluster.local")
            .unwrap()
            .with_tokens(vec![TokenEntry {
                namespace: "demo".into(),
                service_account: "web".into(),
                token: "web-token-0123456789".into(),
            }])
    }

    #[test]
    fn the_ca_and_its_anchors_say_when_they_expire() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (ca_until, anchors_until) = ca().expiry();
        let ca_until = ca_until.expect("the CA's expiry");
        // The dev CA lives a year; its certificate is the one anchor.
        assert!((ca_until - now - 365 * 86_400).abs() < 120, "{ca_until} vs {now}");
        assert_eq!(anchors_until, Some(ca_until));
    }

    fn csr(sans: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

    #[test]
    fn signs_exactly_the_tokens_identity() {
        let ca = ca().with_lifetime(Duration::from_secs(60));
        let rsp = ca.certify(WEB, &csr(&[WEB]), "web-token-0123456789").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&rsp.certificate).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!("{:?}", vec![x509_parser::extensions::GeneralName::URI(WEB)])
        );
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!((60..=130).contains(&lifetime), "{lifetime}");
        assert_eq!(rsp.trust_anchors.len(), 1);
        assert!(!cert.is_ca());
    }

    /// A CSR that asks for more than its SPIFFE ID: an admin subject, CA
    /// powers, certificate signing, code signing.
    fn greedy_csr() -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.subject_alt_names = vec![SanType::URI(WEB.try_into().unwrap())];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_ca_sets_subject_usages_and_constraints_never_the_csr() {
        let ca = ca();
        let rsp = ca.certify(WEB, &greedy_csr(), "web-token-0123456789").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&rsp.certificate).unwrap();
        assert_eq!(
            cert.subject().iter().count(),
            0,
            "empty subject: {}",
            cert.subject()
        );
        assert!(!cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign() && !ku.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.code_signing && !eku.any && eku.other.is_empty());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.critical,
            "with an empty subject the SAN is critical (RFC 5280 4.2.1.6)"
        );
        use x509_parser::oid_registry as oid;
        let mut extensions: Vec<String> = cert.extensions().iter().map(|e| e.oid.to_id_string()).collect();
        extensions.sort();
        let mut expected: Vec<String> = [
            oid::OID_X509_EXT_SUBJECT_ALT_NAME,
            oid::OID_X509_EXT_KEY_USAGE,
            oid::OID_X509_EXT_EXTENDED_KEY_USAGE,
            oid::OID_X509_EXT_BASIC_CONSTRAINTS,
            oid::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
            oid::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        ]
        .iter()
        .map(|o| o.to_id_string())
        .collect();
        expected.sort();
        assert_eq!(extensions, expected, "only the extensions the CA chose");
    }

    #[test]
    fn trust_anchors_as_pem_are_the_anchors_handed_out() {
        let mut ca = ca();
        ca.trust_anchors
            .push(Ca::generate("cluster.local").unwrap().ca_der.to_vec());
        let pem = ca.trust_anchors_pem();
        let back: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(back, ca.trust_anchors);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), 2);
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
    }

    #[test]
    fn refusals() {
        let ca = ca();
        assert_eq!(
            ca.certify(WEB, &csr(&[WEB]), "nope").unwrap_err(),
            Refusal::BadToken
        );
        let other = "spiffe://cluster.local/ns/demo/sa/db";
        assert!(matches!(
            ca.certify(other, &csr(&[other]), "web-token-0123456789"),
            Err(Refusal::WrongIdentity { .. })
        ));
        assert!(matches!(
            ca.certify(WEB, &csr(&[other]), "web-token-0123456789"),
            Err(Refusal::CsrIdentity { .. })
        ));
        assert!(matches!(
            ca.certify(WEB, &csr(&[WEB, other]), "web-token-0123456789"),
            Err(Refusal::CsrIdentity { .. })
        ));
        assert!(matches!(
            ca.certify(WEB, b"garbage", "web-token-0123456789"),
            Err(Refusal::BadCsr(_))
        ));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn spki(der: &[u8]) -> Vec<u8> {
            let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
            cert.public_key().raw.to_vec()
        }

        fn csr_spki(der: &[u8]) -> Vec<u8> {
            use x509_parser::prelude::FromDer;
            let (_, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(der).unwrap();
            csr.certification_request_info.subject_pki.raw.to_vec()
        }

        proptest! {
            #[test]
            fn a_damaged_csr_is_refused_or_signed_for_exactly_its_own_key_and_identity(
                flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
                cut in prop::option::weighted(0.2, any::<prop::sample::Index>()),
                pem in any::<bool>(),
            ) {
                // One CA and CSR for all cases: key generation is the slow part.
                thread_local!(static FIXTURE: (Ca, Vec<u8>) = (ca(), csr(&[WEB])));
                FIXTURE.with(|(ca, good)| {
                    let mut bad = good.clone();
                    for (at, x) in &flips {
                        let i = at.index(bad.len());
                        bad[i] ^= x;
                    }
                    if let Some(cut) = cut {
                        bad.truncate(cut.index(bad.len()));
                    }
                    if pem {
                        // A PEM CSR where DER is expected.
                        bad = pem_certificate(&bad).replace("CERTIFICATE", "CERTIFICATE REQUEST").into_bytes();
                    }
                    match ca.certify(WEB, &bad, "web-token-0123456789") {
                        Err(Refusal::BadCsr(e)) => prop_assert!(!e.is_empty()),
                        Err(Refusal::CsrIdentity { expected }) => prop_assert_eq!(expected, WEB),
                        Err(other) => prop_assert!(false, "unexpected refusal {:?}", other),
                        Ok(rsp) => {
                            // Only what the signature covers can have changed
                            // without a refusal: then it is still this key.
                            prop_assert_eq!(spki(&rsp.certificate), csr_spki(good));
                            let (_, cert) = x509_parser::parse_x509_certificate(&rsp.certificate).unwrap();
                            let san = cert.subject_alternative_name().unwrap().unwrap();
                            prop_assert_eq!(
                                format!("{:?}", san.value.general_names),
                                format!("{:?}", vec![x509_parser::extensions::GeneralName::URI(WEB)])
                            );
                        }
                    }
                    Ok(())
                })?;
            }
        }
    }
}
