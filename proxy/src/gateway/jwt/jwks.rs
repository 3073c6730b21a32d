//! The key set [`super::Authenticator`] checks signatures against: one
//! JWKS document's usable keys, and keeping them current from a file or a URL.
//!
//! A file is looked at at most once a second and re-read when its
//! modification time or length changes (a ConfigMap update swaps a symlink,
//! which changes both). A URL is fetched every 5 minutes, 10 s after a
//! failure, and when a token names an unknown `kid` at most every 30 s. One
//! refresh runs at a time; a failed one keeps the last good set.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, HOST};
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;

use super::{signing_alg, JwksSource, JwtError, Token};

/// The largest JWKS document read, from a file or a URL.
const MAX_JWKS_LEN: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The signature-verification keys of one JWKS document.
pub(super) struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One JWK as published: the members used (others are ignored).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl KeySet {
    /// The usable keys of a JWKS; keys of other types or uses are skipped,
    /// and a document with none is refused (it would lock everyone out).
    fn parse(json: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let keys: Vec<Key> = document
            .keys
            .into_iter()
            .filter_map(|jwk| {
                Key::parse(jwk)
                    .map_err(|e| tracing::debug!(error = %e, "JWK skipped"))
                    .ok()
            })
            .collect();
        if keys.is_empty() {
            return Err("no usable signing key".into());
        }
        Ok(KeySet { keys })
    }

    /// Whether a key of this set signed the token: those named by its `kid`,
    /// or without one every key that fits its `alg`.
    pub(super) fn check(&self, token: &Token<'_>) -> Result<(), JwtError> {
        let named = || {
            self.keys
                .iter()
                .filter(|k| token.kid.is_none() || k.kid == token.kid)
        };
        if named().next().is_none() {
            return Err(JwtError::UnknownKey);
        }
        let mut fitting = named().filter(|k| k.fits(token.alg)).peekable();
        if fitting.peek().is_none() && token.kid.is_some() {
            // The named key is of another type than the token's alg:
            // algorithm confusion, or a misconfigured issuer.
            return Err(JwtError::BadSignature);
        }
        if fitting.peek().is_none() {
            return Err(JwtError::UnknownKey);
        }
        match fitting.any(|key| key.verifies(token)) {
            true => Ok(()),
            false => Err(JwtError::BadSignature),
        }
    }
}

impl Key {
    fn parse(jwk: Value) -> Result<Key, String> {
        let jwk: Jwk = serde_json::from_value(jwk).map_err(|e| e.to_string())?;
        if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signature key".into());
        }
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(name) => Some(signing_alg(name).ok_or_else(|| format!("alg {name} not accepted"))?),
        };
        let bad = |e: jsonwebtoken::errors::Error| e.to_string();
        let (kind, decoding) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => {
                let key =
                    DecodingKey::from_rsa_components(member(&jwk.n, "n", None)?, member(&jwk.e, "e", None)?);
                (KeyKind::Rsa, key.map_err(bad)?)
            }
            ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                let (kind, len) = if curve == "P-256" {
                    (KeyKind::P256, 32)
                } else {
                    (KeyKind::P384, 48)
                };
                let key = DecodingKey::from_ec_components(
                    member(&jwk.x, "x", Some(len))?,
                    member(&jwk.y, "y", Some(len))?,
                );
                (kind, key.map_err(bad)?)
            }
            ("OKP", Some("Ed25519")) => {
                let key = DecodingKey::from_ed_components(member(&jwk.x, "x", Some(32))?);
                (KeyKind::Ed25519, key.map_err(bad)?)
            }
            (kty, crv) => return Err(format!("key type {kty} (curve {crv:?}) not accepted")),
        };
        let key = Key {
            kid: jwk.kid,
            kind,
            alg,
            decoding,
        };
        match alg.is_none_or(|alg| key.fits(alg)) {
            true => Ok(key),
            false => Err(format!("alg {alg:?} does not fit a {kind:?} key")),
        }
    }

    fn verifies(&self, token: &Token<'_>) -> bool {
        let message = token.message.as_bytes();
        // `fits` first: jsonwebtoken panics on an RSA key given another alg.
        self.fits(token.alg)
            && jsonwebtoken::crypto::verify(token.signature, message, &self.decoding, token.alg)
                .unwrap_or(false)
    }

    /// Whether a token of this alg may be checked with this key.
    fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let kind_fits = match self.kind {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        };
        kind_fits && self.alg.is_none_or(|a| a == alg)
    }
}

/// A base64url JWK member, present and (if given) of this decoded length.
fn member<'a>(value: &'a Option<String>, name: &str, len: Option<usize>) -> Result<&'a str, String> {
    let value = value.as_deref().ok_or_else(|| format!("no {name}"))?;
    let decoded = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| format!("{name}: {e}"))?;
    match len.is_none_or(|len| decoded.len() == len) {
        true => Ok(value),
        false => Err(format!("{name}: {} bytes, expected {len:?}", decoded.len())),
    }
}

/// How often the key set's source is looked at.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    file_check: Duration,
    url_refresh: Duration,
    url_retry: Duration,
    unknown_kid: Duration,
}

pub(super) const TIMING: Timing = Timing {
    file_check: Duration::from_secs(1),
    url_refresh: Duration::from_secs(5 * 60),
    url_retry: Duration::from_secs(10),
    unknown_kid: Duration::from_secs(30),
};

/// The last good key set and the refreshing of it.
pub(super) struct Keys {
    source: Source,
    timing: Timing,
    /// Never held across an `.await`.
    state: Mutex<State>,
    /// Held by the one request refreshing the set.
    refreshing: tokio::sync::Mutex<()>,
}

enum Source {
    File(PathBuf),
    Url(JwksUrl),
    /// A URL [`JwtConfig::validate`] would have refused, and why.
    Unusable(String),
}

#[derive(Default)]
struct State {
    set: Option<Arc<KeySet>>,
    /// When the source is next looked at; `None`: at first use.
    next_check: Option<Instant>,
    /// When the URL was last fetched (for the unknown-`kid` limit).
    fetched: Option<Instant>,
    /// The file's modification time and length when last read.
    stamp: Option<Stamp>,
}

impl Keys {
    pub(super) fn new(source: JwksSource, timing: Timing) -> Self {
        let source = match source {
            JwksSource::File(path) => Source::File(path),
            JwksSource::Url(url) => JwksUrl::new(&url).map(Source::Url).unwrap_or_else(|e| {
                tracing::error!(%url, error = %e, "JWKS URL refused; every token will be refused");
                Source::Unusable(e)
            }),
        };
        Keys {
            source,
            timing,
            state: Mutex::default(),
            refreshing: Default::default(),
        }
    }

    /// The current key set, refreshed first when due. `unknown_kid` asks a
    /// URL source for a refetch, at most every `timing.unknown_kid`.
    pub(super) async fn get(&self, unknown_kid: bool) -> Result<Arc<KeySet>, JwtError> {
        let (has_set, due) = self.due(unknown_kid);
        if due {
            // One refresh at a time. A request holding a set does not wait
            // for a routine refresh; the others wait, then see whether the
            // one they waited for made theirs unnecessary.
            let guard = match has_set && !unknown_kid {
                true => self.refreshing.try_lock().ok(),
                false => Some(self.refreshing.lock().await),
            };
            if guard.is_some() && self.due(unknown_kid).1 {
                self.refresh().await;
            }
        }
        self.state().set.clone().ok_or(JwtError::KeysUnavailable)
    }

    fn due(&self, unknown_kid: bool) -> (bool, bool) {
        let now = Instant::now();
        let state = self.state();
        let routine = state.next_check.is_none_or(|at| now >= at);
        let refetch = unknown_kid
            && matches!(self.source, Source::Url(_))
            && state.fetched.is_none_or(|at| now >= at + self.timing.unknown_kid);
        (state.set.is_some(), routine || refetch)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn refresh(&self) {
        let started = Instant::now();
        match &self.source {
            Source::File(path) => {
                let (file, seen) = (path.clone(), self.state().stamp);
                let read = tokio::task::spawn_blocking(move || read_file(&file, seen))
                    .await
                    .unwrap_or_else(|e| FileRead::Failed(None, e.to_string()));
                let mut state = self.state();
                state.next_check = Some(started + self.timing.file_check);
                match read {
                    FileRead::Unchanged => {}
                    FileRead::Loaded(stamp, set) => {
                        tracing::info!(file = %path.display(), keys = set.keys.len(), "JWKS loaded");
                        state.stamp = Some(stamp);
                        state.set = Some(Arc::new(set));
                    }
                    FileRead::Failed(stamp, error) => {
                        tracing::warn!(file = %path.display(), %error, "JWKS not loaded; keeping the last good one");
                        state.stamp = stamp.or(state.stamp);
                    }
                }
            }
            Source::Url(url) => {
                let fetched = url.fetch().await;
                let mut state = self.state();
                state.fetched = Some(started);
                match fetched {
                    Ok(set) => {
                        tracing::debug!(url = %url.text, keys = set.keys.len(), "JWKS fetched");
                        state.set = Some(Arc::new(set));
                        state.next_check = Some(started + self.timing.url_refresh);
                    }
                    Err(error) => {
                        tracing::warn!(url = %url.text, %error, "JWKS not fetched; keeping the last good one");
                        state.next_check = Some(started + self.timing.url_retry);
                    }
                }
            }
            Source::Unusable(error) => {
                tracing::warn!(%error, "JWKS URL refused");
                self.state().next_check = Some(started + self.timing.url_refresh);
            }
        }
    }
}

type Stamp = (SystemTime, u64);

/// What looking at the JWKS file found.
enum FileRead {
    Unchanged,
    Loaded(Stamp, KeySet),
    /// The version that failed, when known (not read again until it changes), and why.
    Failed(Option<Stamp>, String),
}

/// Reads the file if it changed since `seen`. Blocking: run off the runtime.
fn read_file(path: &Path, seen: Option<Stamp>) -> FileRead {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return FileRead::Failed(None, e.to_string()),
    };
    let stamp = (meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
    if seen == Some(stamp) {
        return FileRead::Unchanged;
    }
    if meta.len() > MAX_JWKS_LEN as u64 {
        return FileRead::Failed(Some(stamp), format!("larger than {MAX_JWKS_LEN} bytes"));
    }
    let parsed = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|json| KeySet::parse(&json));
    match parsed {
        Ok(set) => FileRead::Loaded(stamp, set),
        Err(e) => FileRead::Failed(Some(stamp), e),
    }
}

/// Why a JWKS URL is refused: not `https://` (nor `http://` to a loopback host).
pub(super) fn check_url(url: &str) -> Result<(), String> {
    JwksUrl::parse(url).map(drop)
}

/// A JWKS URL, checked once.
struct JwksUrl {
    text: String,
    host: String,
    port: u16,
    /// `host[:port]` for the `Host` header.
    authority: String,
    path: String,
    /// `None`: plain HTTP to a loopback host.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl JwksUrl {
    /// The URI and whether it is `https`; `http` only for loopback hosts.
    fn parse(text: &str) -> Result<(http::Uri, bool), String> {
        let refuse = |why: &str| Err(format!("jwks url {text:?}: {why}"));
        let Ok(uri) = text.parse::<http::Uri>() else {
            return refuse("expected an absolute URL");
        };
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match (uri.scheme_str(), host) {
            (_, "") => refuse("expected a host"),
            (Some("https"), _) => Ok((uri, true)),
            (Some("http"), _) if loopback => Ok((uri, false)),
            _ => refuse("expected https:// (http:// only for a loopback host)"),
        }
    }

    fn new(text: &str) -> Result<Self, String> {
        let (uri, https) = Self::parse(text)?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(JwksUrl {
            text: text.to_string(),
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: uri
                .authority()
                .map_or(host, |a| a.as_str().rsplit('@').next().unwrap_or(host))
                .to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            tls: if https { Some(client_tls()?) } else { None },
        })
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let get = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let Some(tls) = &self.tls else {
                return self.get(tcp).await;
            };
            let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            self.get(tls).await
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, get)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        KeySet::parse(&body)
    }

    async fn get<Io>(&self, io: Io) -> Result<Bytes, String>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        let _conn = AbortOnDropHandle::new(tokio::spawn(conn));
        let request = http::Request::get(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send.send_request(request).await.map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_LEN).collect().await;
        Ok(body.map_err(|e| format!("body: {e}"))?.to_bytes())
    }
}

/// TLS to an identity provider: the system's trusted roots.
fn client_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted roots in the system store ({:?})",
            found.errors.first()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{claims, config, ed25519, from_file, jwks, p256, verify, JwksFile, Signer};
    use super::super::{Authenticator, JwtConfig, JwtError};
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn jwk_parameters_are_checked() {
        let ed = ed25519("ed");
        let changed = |member: &str, value: Value| {
            let mut jwk = ed.jwk.clone();
            jwk[member] = value;
            jwk
        };
        let refused = [
            changed("alg", json!("ES256")),
            changed("alg", json!("HS256")),
            changed("use", json!("enc")),
            changed("x", json!("AQID")),
            changed("crv", json!("Ed448")),
            json!({"kty": "oct", "k": "c2VjcmV0"}),
        ];
        for jwk in refused {
            assert!(
                KeySet::parse(json!({"keys": [jwk]}).to_string().as_bytes()).is_err(),
                "{jwk}"
            );
        }
        let mixed = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, ed.jwk, 5]}).to_string();
        assert_eq!(
            KeySet::parse(mixed.as_bytes()).unwrap().keys.len(),
            1,
            "the others skipped"
        );
    }

    #[tokio::test]
    async fn rotated_and_broken_files() {
        let (first, second) = (ed25519("first"), ed25519("second-key"));
        let file = JwksFile::new(&jwks(&[&first]));
        let auth = from_file(&file);
        let check = |signer: &Signer| verify(&auth, signer.sign(&claims()));
        assert_eq!(check(&first).await, Ok(()));
        file.replace(&jwks(&[&second]));
        assert_eq!(
            check(&second).await,
            Err(JwtError::UnknownKey),
            "looked at once a second"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(check(&second).await, Ok(()));
        assert_eq!(check(&first).await, Err(JwtError::UnknownKey));
        file.replace("{not json");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(check(&second).await, Ok(()), "the last good set is kept");

        let token = first.sign(&claims());
        let empty = JwksFile::new(r#"{"keys": []}"#);
        assert_eq!(
            verify(&from_file(&empty), &token).await,
            Err(JwtError::KeysUnavailable)
        );
        let absent = Authenticator::new(config(JwksSource::File("/nonexistent/jwks.json".into())));
        assert_eq!(verify(&absent, &token).await, Err(JwtError::KeysUnavailable));
    }

    /// An HTTP server on 127.0.0.1:0 answering every request with `body`, counting them.
    async fn serve(body: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> (String, AbortOnDropHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (body, hits) = (body.clone(), hits.clone());
                let service = hyper::service::service_fn(move |_| {
                    hits.fetch_add(1, SeqCst);
                    let body = http_body_util::Full::new(Bytes::from(body.lock().unwrap().clone()));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let connection = hyper::server::conn::http1::Builder::new();
                tokio::spawn(connection.serve_connection(TokioIo::new(tcp), service));
            }
        });
        (url, AbortOnDropHandle::new(server))
    }

    #[tokio::test]
    async fn url_is_fetched_once_and_again_for_an_unknown_kid() {
        let (one, two, three) = (ed25519("one"), p256("two"), ed25519("three"));
        let (body, hits) = (Arc::new(Mutex::new(jwks(&[&one]))), Arc::new(AtomicUsize::new(0)));
        let (url, _server) = serve(body.clone(), hits.clone()).await;
        let timing = Timing {
            unknown_kid: Duration::from_millis(500),
            ..TIMING
        };
        let auth = Authenticator::with_timing(config(JwksSource::Url(url)), timing);
        let check = |signer: &Signer| verify(&auth, signer.sign(&claims()));
        let (a, b) = tokio::join!(check(&one), check(&one));
        assert_eq!(
            (a, b, hits.load(SeqCst)),
            (Ok(()), Ok(()), 1),
            "one fetch for both"
        );
        *body.lock().unwrap() = jwks(&[&one, &two]);
        assert_eq!(
            check(&two).await,
            Err(JwtError::UnknownKey),
            "refetched at most every 500 ms"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(check(&two).await, Ok(()));
        assert_eq!(check(&three).await, Err(JwtError::UnknownKey));
        assert_eq!(hits.load(SeqCst), 2);

        let huge = Arc::new(Mutex::new("x".repeat(MAX_JWKS_LEN + 1)));
        let (url, _server) = serve(huge, Arc::new(AtomicUsize::new(0))).await;
        let too_large = Authenticator::new(config(JwksSource::Url(url)));
        assert_eq!(
            verify(&too_large, &one.sign(&claims())).await,
            Err(JwtError::KeysUnavailable)
        );
    }

    #[test]
    fn urls_are_https_or_loopback() {
        let check = |url: &str| JwtConfig::validate(&config(JwksSource::Url(url.into())));
        for good in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/k",
            "http://localhost/k",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [
            "http://idp.example/jwks",
            "ftp://idp.example/jwks",
            "/jwks",
            "https:///jwks",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
