//! JWT authentication at the edge: a request's `Authorization: Bearer`
//! token checked against the issuer's JSON Web Key Set.
//!
//! One request, in [`Authenticator::verify`]:
//!
//! ```text
//! bearer (≤ 8 KiB) ─► Token (header: asymmetric alg, kid) ─► KeySet::check (kid, key type, signature) ─► claims (exp, nbf, iat, iss, aud) ─► Claims
//! ```
//!
//! The key set, from a file or a URL and kept current, is [`jwks`]'s.

mod jwks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{Map, Value};

use jwks::{Keys, Timing, TIMING};

/// The longest `Authorization` value looked at; longer is [`JwtError::Malformed`], unparsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
const REALM: &str = r#"Bearer realm="weft""#;

/// JWT authentication of a listener or route.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// The `iss` every token must carry, compared exactly.
    pub issuer: String,
    /// A token's `aud` (a string or an array) must name at least one of
    /// these; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Where the issuer's public keys are.
    pub jwks: JwksSource,
    /// Leeway for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Claim → request header set from it on success. Clients' own values
    /// of these headers are always removed.
    pub forward_claims: Vec<(String, HeaderName)>,
}

/// Where a JWKS is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A file (e.g. a mounted ConfigMap), re-read when it changes.
    File(PathBuf),
    /// An `https://` URL; `http://` only for a loopback host.
    Url(String),
}

impl JwtConfig {
    /// What [`Authenticator::new`] cannot refuse: call it where config is
    /// loaded, so a bad URL fails there, once.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer: expected a non-empty issuer".into());
        }
        match &self.jwks {
            JwksSource::Url(url) => jwks::check_url(url),
            JwksSource::File(_) => Ok(()),
        }
    }
}

/// Why a request is not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("bad signature")]
    BadSignature,
    #[error("unknown signing key")]
    UnknownKey,
    /// No key set was ever loaded: the gateway's fault, not the client's.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl JwtError {
    /// The `weft-error` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Missing => "jwt-missing",
            JwtError::Malformed => "jwt-malformed",
            JwtError::Expired => "jwt-expired",
            JwtError::NotYetValid => "jwt-not-yet-valid",
            JwtError::WrongIssuer => "jwt-wrong-issuer",
            JwtError::WrongAudience => "jwt-wrong-audience",
            JwtError::BadSignature => "jwt-bad-signature",
            JwtError::UnknownKey => "jwt-unknown-key",
            JwtError::KeysUnavailable => "jwt-keys-unavailable",
        }
    }

    /// 401, but 503 when the keys are unavailable (retrying may help).
    pub fn status(&self) -> StatusCode {
        match self {
            JwtError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 challenge: bare for [`JwtError::Missing`], else with
    /// `error="invalid_token"` and this error's text.
    pub fn www_authenticate(&self) -> HeaderValue {
        if *self == JwtError::Missing {
            return HeaderValue::from_static(REALM);
        }
        let challenge = format!(r#"{REALM}, error="invalid_token", error_description="{self}""#);
        HeaderValue::try_from(challenge).unwrap_or(HeaderValue::from_static(REALM))
    }
}

/// A verified token's claims.
#[derive(Clone, Debug)]
pub struct Claims {
    values: Map<String, Value>,
    forward: Arc<[(String, HeaderName)]>,
}

impl Claims {
    /// A claim as a header-safe string: strings as they are, numbers and
    /// booleans as JSON text; `None` when absent, null, an array or an object.
    pub fn get(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            Value::String(s) => Some(s.clone()),
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    /// Sets each forwarded claim as its header, after removing every value
    /// the client sent for those headers (even when the claim is absent, so
    /// none can be forged). Values that are not valid header values are skipped.
    pub fn forward(&self, headers: &mut HeaderMap) {
        strip(&self.forward, headers);
        for (claim, header) in self.forward.iter() {
            if let Some(value) = self.get(claim).and_then(|v| HeaderValue::try_from(v).ok()) {
                headers.append(header.clone(), value);
            }
        }
    }
}

fn strip(forward: &[(String, HeaderName)], headers: &mut HeaderMap) {
    for (_, header) in forward {
        headers.remove(header);
    }
}

/// Verifies bearer tokens for one listener or route; shared behind an `Arc`.
pub struct Authenticator {
    issuer: String,
    audiences: Vec<String>,
    clock_skew: Duration,
    forward: Arc<[(String, HeaderName)]>,
    keys: Keys,
}

impl Authenticator {
    pub fn new(config: JwtConfig) -> Self {
        Self::with_timing(config, TIMING)
    }

    fn with_timing(config: JwtConfig, timing: Timing) -> Self {
        Authenticator {
            issuer: config.issuer,
            audiences: config.audiences,
            clock_skew: config.clock_skew,
            forward: config.forward_claims.into(),
            keys: Keys::new(config.jwks, timing),
        }
    }

    /// The headers [`Claims::forward`] sets: strip them from requests that
    /// are let through without a token.
    pub fn forward_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward.iter().map(|(_, header)| header)
    }

    /// Removes the [`forward_headers`](Self::forward_headers) from `headers`.
    pub fn strip(&self, headers: &mut HeaderMap) {
        strip(&self.forward, headers);
    }

    /// Verifies the request's `Authorization: Bearer <token>`.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Claims, JwtError> {
        let token = Token::parse(bearer(headers)?)?;
        let mut checked = self.keys.get(false).await?.check(&token);
        if checked == Err(JwtError::UnknownKey) && token.kid.is_some() {
            // Perhaps a rotation the set has not caught up with.
            checked = self.keys.get(true).await?.check(&token);
        }
        checked?;
        let values: Map<String, Value> = decode_json(token.payload)?;
        self.check_claims(&values)?;
        Ok(Claims {
            values,
            forward: self.forward.clone(),
        })
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), JwtError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let skew = self.clock_skew.as_secs_f64();
        let time = |name| match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(JwtError::Malformed),
        };
        let exp = time("exp")?.ok_or(JwtError::Malformed)?;
        if now >= exp + skew {
            return Err(JwtError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| now + skew < nbf)
            || time("iat")?.is_some_and(|iat| now + skew < iat)
        {
            return Err(JwtError::NotYetValid);
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
        let wanted = |aud: &Value| {
            aud.as_str()
                .is_some_and(|a| self.audiences.iter().any(|w| w == a))
        };
        let audience_ok = self.audiences.is_empty()
            || match claims.get("aud") {
                Some(Value::Array(auds)) => auds.iter().any(wanted),
                Some(aud) => wanted(aud),
                None => false,
            };
        if !audience_ok {
            return Err(JwtError::WrongAudience);
        }
        Ok(())
    }
}

/// The token of the request's one `Authorization` header, if its scheme is `Bearer`.
fn bearer(headers: &HeaderMap) -> Result<&str, JwtError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(JwtError::Missing),
        (Some(value), None) if value.len() <= MAX_TOKEN_LEN => value,
        _ => return Err(JwtError::Malformed),
    };
    let value = value.to_str().map_err(|_| JwtError::Malformed)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(JwtError::Missing);
    }
    match token.trim_matches(' ') {
        "" => Err(JwtError::Malformed),
        token => Ok(token),
    }
}

/// A compact JWS, split, with its header read; nothing verified yet.
#[derive(Debug)]
struct Token<'a> {
    /// `header.payload`, what the signature covers.
    message: &'a str,
    payload: &'a str,
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
}

impl<'a> Token<'a> {
    fn parse(token: &'a str) -> Result<Self, JwtError> {
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: Option<String>,
            crit: Option<IgnoredAny>,
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = decode_json(header)?;
        // No extension is understood, so none marked critical may be accepted (RFC 7515 §4.1.11).
        if header.crit.is_some() || URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(JwtError::Malformed);
        }
        Ok(Token {
            message: &token[..token.len() - signature.len() - 1],
            payload,
            signature,
            alg: signing_alg(&header.alg).ok_or(JwtError::Malformed)?,
            kid: header.kid,
        })
    }
}

fn decode_json<T: DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let json = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)
}

/// The algorithms a token may be signed with: asymmetric only. No `none`,
/// and no HMAC, whose "secret" an attacker would have verified against
/// the public key.
fn signing_alg(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    pub(super) const ISS: &str = "https://issuer.example";

    /// A key pair made with rcgen, and its public JWK.
    pub(super) struct Signer {
        kid: &'static str,
        alg: Algorithm,
        key: EncodingKey,
        pub(super) jwk: Value,
        public: Vec<u8>,
    }

    pub(super) fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(super) fn ed25519(kid: &'static str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let public = pair.public_key_raw().to_vec();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&public)});
        let key = EncodingKey::from_ed_der(&pair.serialize_der());
        Signer {
            kid,
            alg: Algorithm::EdDSA,
            key,
            jwk,
            public,
        }
    }

    pub(super) fn p256(kid: &'static str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = pair.public_key_raw().to_vec(); // 0x04 ‖ x ‖ y
        let (x, y) = (b64(&public[1..33]), b64(&public[33..65]));
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig", "x": x, "y": y});
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        Signer {
            kid,
            alg: Algorithm::ES256,
            key,
            jwk,
            public,
        }
    }

    impl Signer {
        pub(super) fn sign(&self, claims: &Value) -> String {
            let header = Header {
                kid: Some(self.kid.into()),
                ..Header::new(self.alg)
            };
            jsonwebtoken::encode(&header, claims, &self.key).unwrap()
        }
    }

    pub(super) fn jwks(signers: &[&Signer]) -> String {
        json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    pub(super) fn claims() -> Value {
        json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": now() + 600, "admin": true,
            "n": 7, "groups": ["a"], "evil": "x\ny"})
    }

    /// [`claims`], with some replaced (`null`: removed).
    fn with(changes: Value) -> Value {
        let mut claims = claims();
        for (k, v) in changes.as_object().unwrap() {
            match v {
                Value::Null => claims.as_object_mut().unwrap().remove(k),
                v => claims.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        claims
    }

    pub(super) fn request(token: &str) -> HeaderMap {
        let value = HeaderValue::try_from(format!("Bearer {token}")).unwrap();
        HeaderMap::from_iter([(AUTHORIZATION, value)])
    }

    /// A JWKS file under the temp dir, removed on drop.
    pub(super) struct JwksFile(pub(super) PathBuf);

    impl JwksFile {
        pub(super) fn new(json: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!("weft-jwks-{}-{}.json", std::process::id(), N.fetch_add(1, SeqCst));
            let file = JwksFile(std::env::temp_dir().join(name));
            file.replace(json);
            file
        }

        /// Replaced as a ConfigMap update does: written aside, renamed over.
        pub(super) fn replace(&self, json: &str) {
            let aside = self.0.with_extension("new");
            std::fs::write(&aside, json).unwrap();
            std::fs::rename(&aside, &self.0).unwrap();
        }
    }

    impl Drop for JwksFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub(super) fn config(jwks: JwksSource) -> JwtConfig {
        JwtConfig {
            issuer: ISS.into(),
            audiences: vec!["api".into(), "other".into()],
            jwks,
            clock_skew: Duration::from_secs(30),
            forward_claims: vec![],
        }
    }

    pub(super) fn from_file(file: &JwksFile) -> Authenticator {
        Authenticator::new(config(JwksSource::File(file.0.clone())))
    }

    /// Verifies `token` as the only `Authorization: Bearer`.
    pub(super) async fn verify(auth: &Authenticator, token: impl AsRef<str>) -> Result<(), JwtError> {
        auth.verify(&request(token.as_ref())).await.map(drop)
    }

    #[tokio::test]
    async fn valid_tokens_pass_with_their_claims() {
        let (ed, ec) = (ed25519("ed"), p256("ec"));
        let file = JwksFile::new(&jwks(&[&ed, &ec]));
        let auth = from_file(&file);
        for signer in [&ed, &ec] {
            let claims = auth.verify(&request(&signer.sign(&claims()))).await.unwrap();
            assert_eq!(claims.get("sub").as_deref(), Some("alice"));
            assert_eq!(claims.get("admin").as_deref(), Some("true"));
            assert_eq!(claims.get("n").as_deref(), Some("7"));
            assert_eq!((claims.get("groups"), claims.get("absent")), (None, None));
        }
        // Without a kid: tried against the keys its alg fits.
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &ec.key).unwrap();
        assert_eq!(verify(&auth, &no_kid).await, Ok(()));
        fn shared<T: Send + Sync>() {}
        shared::<Authenticator>();
    }

    #[tokio::test]
    async fn authorization_header_shapes() {
        let file = JwksFile::new(&jwks(&[&ed25519("ed")]));
        let auth = from_file(&file);
        let with_header = |value: &'static str| {
            let headers = HeaderMap::from_iter([(AUTHORIZATION, HeaderValue::from_static(value))]);
            let auth = &auth;
            async move { auth.verify(&headers).await.unwrap_err() }
        };
        assert_eq!(
            auth.verify(&HeaderMap::new()).await.unwrap_err(),
            JwtError::Missing
        );
        assert_eq!(with_header("Basic YWxpY2U6c2VjcmV0").await, JwtError::Missing);
        for malformed in ["Bearer ", "Bearer a.b.c", "Bearer only.two", "bearer a.b.c.d"] {
            assert_eq!(with_header(malformed).await, JwtError::Malformed, "{malformed}");
        }
        let mut twice = request("a.b.c");
        twice.append(AUTHORIZATION, HeaderValue::from_static("Bearer d.e.f"));
        assert_eq!(auth.verify(&twice).await.unwrap_err(), JwtError::Malformed);
        assert_eq!(
            verify(&auth, &"a".repeat(MAX_TOKEN_LEN)).await,
            Err(JwtError::Malformed)
        );
    }

    #[tokio::test]
    async fn time_issuer_and_audience() {
        let ed = ed25519("ed");
        let file = JwksFile::new(&jwks(&[&ed]));
        let auth = from_file(&file);
        let (past, soon, later) = (now() - 120, now() + 10, now() + 300);
        let cases = [
            (json!({"exp": past}), Err(JwtError::Expired)),
            (json!({"exp": now() - 10}), Ok(())), // within the skew
            (json!({"nbf": later}), Err(JwtError::NotYetValid)),
            (json!({"iat": later}), Err(JwtError::NotYetValid)),
            (json!({"nbf": soon, "iat": soon}), Ok(())),
            (json!({"exp": null}), Err(JwtError::Malformed)),
            (json!({"exp": "soon"}), Err(JwtError::Malformed)),
            (json!({"iss": "https://evil"}), Err(JwtError::WrongIssuer)),
            (json!({"iss": [ISS]}), Err(JwtError::WrongIssuer)),
            (json!({"iss": null}), Err(JwtError::WrongIssuer)),
            (json!({"aud": "else"}), Err(JwtError::WrongAudience)),
            (json!({"aud": ["else", "other"]}), Ok(())),
            (json!({"aud": ["else", 1]}), Err(JwtError::WrongAudience)),
            (json!({"aud": null}), Err(JwtError::WrongAudience)),
        ];
        for (changes, expected) in cases {
            assert_eq!(
                verify(&auth, &ed.sign(&with(changes.clone()))).await,
                expected,
                "{changes}"
            );
        }
        let any_audience = JwtConfig {
            audiences: vec![],
            ..config(JwksSource::File(file.0.clone()))
        };
        let token = ed.sign(&with(json!({"aud": null})));
        assert_eq!(verify(&Authenticator::new(any_audience), &token).await, Ok(()));
    }

    #[tokio::test]
    async fn signatures_keys_and_algorithms() {
        let (ed, ec) = (ed25519("ed"), p256("ec"));
        let file = JwksFile::new(&jwks(&[&ed, &ec]));
        let auth = from_file(&file);
        let check = |token: String| verify(&auth, token);
        assert_eq!(
            check(ed25519("ed").sign(&claims())).await,
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            check(ed25519("other").sign(&claims())).await,
            Err(JwtError::UnknownKey)
        );
        // An ES256 token naming the Ed25519 key: the key does not fit the alg.
        assert_eq!(
            check(p256("ed").sign(&claims())).await,
            Err(JwtError::BadSignature)
        );
        let payload = b64(claims().to_string().as_bytes());
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"ed"}"#));
        assert_eq!(check(none).await, Err(JwtError::Malformed));
        let crit = b64(br#"{"alg":"EdDSA","kid":"ed","crit":["b64"]}"#);
        assert_eq!(
            check(format!("{crit}.{payload}.{}", b64(b"sig"))).await,
            Err(JwtError::Malformed)
        );
        // Algorithm confusion: HMAC keyed with a public key, or with the JWKS text.
        for secret in [
            ec.public.clone(),
            ed.public.clone(),
            jwks(&[&ed, &ec]).into_bytes(),
        ] {
            let header = Header {
                kid: Some("ec".into()),
                ..Header::new(Algorithm::HS256)
            };
            let key = EncodingKey::from_secret(&secret);
            let token = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
            assert_eq!(check(token).await, Err(JwtError::Malformed));
        }
        let good = ed.sign(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let root = b64(with(json!({"sub": "root"})).to_string().as_bytes());
        let tampered = format!("{}.{root}.{}", parts[0], parts[2]);
        assert_eq!(check(tampered).await, Err(JwtError::BadSignature));
    }

    #[tokio::test]
    async fn forwarded_claims_replace_what_the_client_sent() {
        let ed = ed25519("ed");
        let file = JwksFile::new(&jwks(&[&ed]));
        let forward = ["sub", "admin", "groups", "absent", "evil"].map(|claim| {
            (
                claim.to_string(),
                HeaderName::try_from(format!("x-jwt-{claim}")).unwrap(),
            )
        });
        let config = JwtConfig {
            forward_claims: forward.to_vec(),
            ..config(JwksSource::File(file.0.clone()))
        };
        let auth = Authenticator::new(config);
        let mut headers = request(&ed.sign(&claims()));
        for (_, header) in &forward {
            headers.append(header.clone(), HeaderValue::from_static("forged"));
            headers.append(header.clone(), HeaderValue::from_static("forged too"));
        }
        auth.verify(&headers).await.unwrap().forward(&mut headers);
        let values = |name| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(values("x-jwt-sub"), ["alice"]);
        assert_eq!(values("x-jwt-admin"), ["true"]);
        for stripped in ["x-jwt-groups", "x-jwt-absent", "x-jwt-evil"] {
            assert!(values(stripped).is_empty(), "{stripped}");
        }
        let names: Vec<_> = auth.forward_headers().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-jwt-sub",
                "x-jwt-admin",
                "x-jwt-groups",
                "x-jwt-absent",
                "x-jwt-evil"
            ]
        );
    }

    #[test]
    fn challenges_and_reasons() {
        assert_eq!(JwtError::Missing.www_authenticate(), r#"Bearer realm="weft""#);
        assert_eq!(
            JwtError::Expired.www_authenticate(),
            r#"Bearer realm="weft", error="invalid_token", error_description="token expired""#
        );
        assert_eq!(JwtError::NotYetValid.reason(), "jwt-not-yet-valid");
        assert_eq!(JwtError::BadSignature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            JwtError::KeysUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
