//! The sidecar injector's mutating admission webhook: HTTPS, AdmissionReview
//! v1 in, AdmissionReview v1 out with a JSON Patch (RFC 6902, computed by
//! `json_patch::diff` between the pod and its [`crate::inject`]ed copy).
//!
//! - `POST /inject`: injects every Pod it is sent, unless the pod is
//!   annotated `weft.dev/inject: disabled` (or in kube-system, or on the
//!   host network, or already injected). The MutatingWebhookConfiguration's
//!   selectors decide which pods are sent: the webhook cannot see namespace
//!   labels. Point the entry selecting namespaces labelled
//!   `weft.dev/inject=enabled` here.
//! - `POST /inject/opted-in`: injects only pods that opted in themselves
//!   (annotation or label `weft.dev/inject: enabled`), for an entry that
//!   sees pods of the other namespaces.
//!
//! A mutating webhook must never block pod creation when it is confused:
//! every review with a `request.uid` is answered `allowed: true`, with a
//! patch or without one; a pod that cannot be injected (a bad annotation)
//! is allowed unchanged, with a warning for the client and a log line. A
//! body that is not an AdmissionReview v1 at all (no uid to answer) gets
//! HTTP 400 with a message; the chart's `failurePolicy: Ignore` then
//! admits the pod unchanged too. docs/injection.md has the rest.
//!
//! The serving certificate and key are PEM files, re-read when either
//! changes (checked at each TLS handshake), so a rotated Secret is picked
//! up without a restart; a broken pair keeps the last good one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::{self, InjectConfig, Outcome};

/// The largest AdmissionReview read (a Pod is far smaller; etcd caps
/// objects at 1.5 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a review's body may take to arrive (the API server sends it at
/// once; its own timeout for the webhook is at most 30 s).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (the API server opens a few; more are
/// closed at accept). With `MAX_BODY` this bounds the memory reviews can
/// take: 64 × 4 MiB.
const MAX_CONNECTIONS: usize = 64;
/// HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 16;

/// `weft-control` flags for the injector.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// HTTPS listener for the API server's admission reviews, e.g.
    /// `0.0.0.0:9443`. Without it the webhook is off.
    #[arg(long, env = "WEFT_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key"])]
    pub webhook_listen: Option<SocketAddr>,
    /// The webhook's serving certificate chain (PEM), re-read when it
    /// changes.
    #[arg(long, env = "WEFT_WEBHOOK_CERT")]
    pub webhook_cert: Option<PathBuf>,
    /// The serving certificate's private key (PEM).
    #[arg(long, env = "WEFT_WEBHOOK_KEY")]
    pub webhook_key: Option<PathBuf>,
    /// Image of the injected `weft-proxy` (and `weft-proxy init`).
    #[arg(long, env = "WEFT_INJECT_PROXY_IMAGE", default_value = inject::DEFAULT_PROXY_IMAGE)]
    pub inject_proxy_image: String,
    /// The control plane's gRPC URL as injected proxies reach it
    /// (`https://`). Default:
    /// `https://weft-control.<its namespace>.svc.<cluster domain>:8086`.
    #[arg(long, env = "WEFT_INJECT_CONTROL_PLANE", value_name = "URL")]
    pub inject_control_plane: Option<String>,
    /// The ConfigMap, in each pod's namespace, whose `ca.crt` injected
    /// proxies verify the control plane with (what `--kubernetes`
    /// publishes).
    #[arg(
        long,
        env = "WEFT_INJECT_TRUST_ANCHORS_CONFIGMAP",
        default_value = inject::DEFAULT_TRUST_ANCHORS_CONFIGMAP
    )]
    pub inject_trust_anchors_configmap: String,
}

impl WebhookArgs {
    /// What the webhook injects for proxies of the control plane `cp`:
    /// its URL (unless `--inject-control-plane` says otherwise) and the
    /// SPIFFE ID its certificate names.
    pub fn inject_config(&self, cp: &inject::ControlPlane) -> InjectConfig {
        InjectConfig {
            proxy_image: self.inject_proxy_image.clone(),
            control_plane: self.inject_control_plane.clone().unwrap_or_else(|| cp.url()),
            control_plane_identity: cp.identity(),
            trust_anchors_configmap: self.inject_trust_anchors_configmap.clone(),
            trust_domain: cp.trust_domain.clone(),
            ..InjectConfig::default()
        }
    }
}

/// Which pods a path injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every pod sent (`/inject`).
    All,
    /// Only pods annotated or labelled `weft.dev/inject: enabled`
    /// (`/inject/opted-in`).
    OptedIn,
}

/// The webhook with its listener bound and its certificate loaded.
pub struct Webhook {
    listener: TcpListener,
    tls: TlsAcceptor,
    inject: Arc<InjectConfig>,
}

impl Webhook {
    /// Binds the webhook when `--webhook-listen` is set; it injects proxies
    /// of the control plane `cp`.
    pub async fn bind(args: &WebhookArgs, cp: &inject::ControlPlane) -> Result<Option<Self>, String> {
        let (Some(listen), Some(cert), Some(key)) =
            (args.webhook_listen, &args.webhook_cert, &args.webhook_key)
        else {
            return Ok(None);
        };
        let inject = args.inject_config(cp);
        Self::bind_with(listen, cert, key, inject).await.map(Some)
    }

    /// Binds `listen`, serving `cert`/`key` and injecting as `inject` says.
    pub async fn bind_with(
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        inject: InjectConfig,
    ) -> Result<Self, String> {
        let resolver = Arc::new(ReloadingCert::load(cert, key)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("webhook TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("--webhook-listen {listen}: {e}"))?;
        Ok(Self {
            listener,
            tls: TlsAcceptor::from(Arc::new(config)),
            inject: Arc::new(inject),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// Serves until the task is dropped, counting reviews in `metrics`.
    pub async fn serve(self, metrics: Arc<crate::metrics::ControlMetrics>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = MAX_CONNECTIONS, "webhook: too many connections; closing this one");
                continue;
            };
            let (tls, inject, metrics) = (self.tls.clone(), self.inject.clone(), metrics.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let svc = service_fn(move |req| {
                    let (inject, metrics) = (inject.clone(), metrics.clone());
                    async move {
                        let started = std::time::Instant::now();
                        let (rsp, result) = handle(&inject, req).await;
                        if let Some(result) = result {
                            metrics
                                .webhook_reviews
                                .get_or_create(&crate::metrics::WebhookLabels { result })
                                .inc();
                            metrics.webhook_duration.observe(started.elapsed().as_secs_f64());
                        }
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .http2()
                    .max_concurrent_streams(MAX_STREAMS)
                    .max_header_list_size(64 * 1024)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

/// Answers one request to the webhook, and what a review's result was for
/// the metrics (`None`: not a review, e.g. a wrong path).
async fn handle(
    inject: &InjectConfig,
    req: Request<hyper::body::Incoming>,
) -> (Response<Full<Bytes>>, Option<&'static str>) {
    let mode = match req.uri().path() {
        "/inject" => Mode::All,
        "/inject/opted-in" => Mode::OptedIn,
        _ => {
            return (
                text(
                    StatusCode::NOT_FOUND,
                    "not found; POST /inject or /inject/opted-in\n",
                ),
                None,
            )
        }
    };
    if req.method() != Method::POST {
        return (
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "expected POST with an AdmissionReview\n",
            ),
            None,
        );
    }
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return (
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("expected an AdmissionReview of at most {MAX_BODY} bytes\n"),
                    ),
                    Some("bad_request"),
                )
            }
            Ok(Err(e)) => {
                return (
                    text(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}\n")),
                    Some("bad_request"),
                )
            }
            Err(_) => {
                return (
                    text(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!("the body did not arrive within {BODY_TIMEOUT:?}\n"),
                    ),
                    Some("bad_request"),
                )
            }
        };
    match review(inject, mode, &body) {
        Ok(answer) => {
            let response = &answer["response"];
            let result = if response.get("patch").is_some() {
                "injected"
            } else if response.get("warnings").is_some() {
                "failed"
            } else {
                "skipped"
            };
            let mut rsp = Response::new(Full::new(Bytes::from(answer.to_string())));
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            (rsp, Some(result))
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook: not an AdmissionReview");
            (
                text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
                Some("bad_request"),
            )
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Answers one AdmissionReview (the request body). `Err` only when the
/// body is not an AdmissionReview v1 with a `request.uid`: there is no
/// review to answer, and the caller replies HTTP 400.
pub fn review(cfg: &InjectConfig, mode: Mode, body: &[u8]) -> Result<Value, String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("expected an AdmissionReview as JSON: {e}"))?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err("expected `apiVersion: admission.k8s.io/v1`, `kind: AdmissionReview`".into());
    }
    let request = review.get("request").unwrap_or(&Value::Null);
    let Some(uid) = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return Err("expected `request.uid`".into());
    };
    let mut response = json!({"uid": uid, "allowed": true});
    match decide(cfg, mode, request) {
        Decision::Patch(patch) => {
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
        }
        Decision::Unchanged => {}
        Decision::Warn(warning) => response["warnings"] = json!([warning]),
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

enum Decision {
    /// The JSON Patch, serialized.
    Patch(Vec<u8>),
    Unchanged,
    /// Allowed unchanged, with a warning for the client.
    Warn(String),
}

fn decide(cfg: &InjectConfig, mode: Mode, request: &Value) -> Decision {
    let s = |p: &str| request.pointer(p).and_then(Value::as_str).unwrap_or("");
    let is_pod = s("/kind/group").is_empty() && s("/kind/kind") == "Pod";
    if !is_pod || s("/operation") != "CREATE" || !s("/subResource").is_empty() {
        return Decision::Unchanged;
    }
    let Some(pod @ Value::Object(_)) = request.get("object") else {
        tracing::warn!(
            uid = s("/uid"),
            "webhook: a Pod CREATE without an object; allowed unchanged"
        );
        return Decision::Unchanged;
    };
    let namespace = match s("/namespace") {
        "" => pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        ns => ns,
    };
    let name = [
        pod.pointer("/metadata/name"),
        pod.pointer("/metadata/generateName"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_str)
    .find(|n| !n.is_empty())
    .unwrap_or("");
    if mode == Mode::OptedIn && !inject::opted_in(pod) {
        return Decision::Unchanged;
    }
    let mut injected = pod.clone();
    match inject::inject_pod(cfg, namespace, &mut injected) {
        Ok(Outcome::Injected) => {
            let patch = json_patch::diff(pod, &injected);
            tracing::info!(namespace, pod = name, "webhook: injected the proxy");
            Decision::Patch(serde_json::to_vec(&patch).expect("a patch serializes"))
        }
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(
                namespace,
                pod = name,
                reason = why.reason(),
                "webhook: not injected"
            );
            Decision::Unchanged
        }
        Err(e) => {
            tracing::warn!(namespace, pod = name, error = %e, "webhook: cannot inject; allowed without the proxy");
            Decision::Warn(format!("weft: the proxy was not injected: {e}"))
        }
    }
}

/// The serving certificate, re-read when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

/// What tells a file changed: its modification time and length.
type Stamp = [(Option<SystemTime>, u64); 2];

impl ReloadingCert {
    fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let stamp = stamp(cert, key);
        let current = read_pair(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new((stamp, current)),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.cert, &self.key);
        if now != state.0 {
            // Remember the stamp either way: a broken pair is reported
            // once, and retried when the files change again.
            state.0 = now;
            match read_pair(&self.cert, &self.key) {
                Ok(fresh) => {
                    tracing::info!(cert = %self.cert.display(), "webhook: serving certificate reloaded");
                    state.1 = fresh;
                }
                Err(e) => tracing::warn!(error = %e, "webhook: keeping the previous serving certificate"),
            }
        }
        state.1.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}

fn read_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--webhook-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--webhook-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--webhook-key {}: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, key_der, &rustls::crypto::ring::default_provider())
        .map_err(|e| {
            format!(
                "--webhook-key {}: does not fit the certificate: {e}",
                key.display()
            )
        })?;
    Ok(Arc::new(certified))
}

/// Property tests (`bench/fuzz.sh` runs them long).
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// An AdmissionReview for a Pod CREATE, as the API server sends it.
    fn review_of(pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
            },
        })
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"app": "web"},
                         "annotations": {"weft.dev/inject": "enabled", "weft.dev/skip-inbound-ports": "22"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}],
            },
        })
    }

    /// Odd JSON values to put where a field was.
    fn odd_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
            Just(json!("enabled")),
            Just(json!("Pod")),
            Just(json!("CREATE")),
            Just(json!("99999,0,-1,http")),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON pointers into a review: the fields the webhook reads.
    const FIELDS: &[&str] = &[
        "/apiVersion",
        "/kind",
        "/request",
        "/request/uid",
        "/request/kind",
        "/request/kind/kind",
        "/request/kind/group",
        "/request/operation",
        "/request/subResource",
        "/request/namespace",
        "/request/object",
        "/request/object/metadata",
        "/request/object/metadata/annotations",
        "/request/object/metadata/annotations/weft.dev~1inject",
        "/request/object/metadata/annotations/weft.dev~1skip-inbound-ports",
        "/request/object/metadata/labels",
        "/request/object/spec",
        "/request/object/spec/containers",
        "/request/object/spec/containers/0",
        "/request/object/spec/containers/0/ports",
        "/request/object/spec/containers/0/ports/0/containerPort",
        "/request/object/spec/initContainers",
        "/request/object/spec/serviceAccountName",
    ];

    /// Replaces the value at `pointer` (or removes it when `value` is
    /// `None`), when its parent exists.
    fn mutate(v: &mut Value, pointer: &str, value: Option<Value>) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let key = key.replace("~1", "/");
        match (v.pointer_mut(parent), value) {
            (Some(Value::Object(m)), Some(x)) => {
                m.insert(key, x);
            }
            (Some(Value::Object(m)), None) => {
                m.remove(&key);
            }
            (Some(Value::Array(a)), x) => {
                if let Ok(i) = key.parse::<usize>() {
                    if i < a.len() {
                        match x {
                            Some(x) => a[i] = x,
                            None => drop(a.remove(i)),
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        let mutations = prop::collection::vec(
            (
                prop::sample::select(FIELDS),
                prop::option::weighted(0.8, odd_value()),
            ),
            0..4,
        );
        prop_oneof![
            4 => mutations.prop_map(|m| {
                let mut review = review_of(pod());
                for (pointer, value) in m {
                    mutate(&mut review, pointer, value);
                }
                serde_json::to_vec(&review).unwrap()
            }),
            1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, b)| {
                let mut body = serde_json::to_vec(&review_of(pod())).unwrap();
                let i = at.index(body.len());
                body[i] = b;
                body
            }),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    /// Whether `body` is what `review` must answer: an AdmissionReview v1
    /// with a non-empty string `request.uid`.
    fn answerable(body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        (v["apiVersion"] == "admission.k8s.io/v1" && v["kind"] == "AdmissionReview").then_some(())?;
        v.pointer("/request/uid")?
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_string)
    }

    proptest! {
        #[test]
        fn every_review_is_answered_allowed_with_a_patch_that_applies(
            body in bodies(),
            opted_in in any::<bool>(),
        ) {
            let mode = if opted_in { Mode::OptedIn } else { Mode::All };
            let answer = review(&InjectConfig::default(), mode, &body);
            let Some(uid) = answerable(&body) else {
                prop_assert!(answer.is_err(), "{:?}", answer);
                return Ok(());
            };
            let answer = answer.unwrap();
            prop_assert_eq!(&answer["apiVersion"], "admission.k8s.io/v1");
            prop_assert_eq!(&answer["kind"], "AdmissionReview");
            let response = &answer["response"];
            prop_assert_eq!(response["uid"].as_str(), Some(uid.as_str()));
            prop_assert_eq!(&response["allowed"], true, "never refused: a pod without the proxy beats no pod");
            if let Some(patch) = response.get("patch") {
                prop_assert_eq!(&response["patchType"], "JSONPatch");
                let patch = base64::engine::general_purpose::STANDARD.decode(patch.as_str().unwrap()).unwrap();
                let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
                let request: Value = serde_json::from_slice::<Value>(&body).unwrap()["request"].clone();
                let mut pod = request["object"].clone();
                prop_assert!(json_patch::patch(&mut pod, &patch).is_ok(), "the patch applies to the pod sent");
                prop_assert!(
                    pod.pointer("/spec/initContainers").and_then(Value::as_array)
                        .is_some_and(|c| c.iter().any(|c| c["name"] == "weft-proxy")),
                    "a patch injects the proxy"
                );
            }
        }
    }
}
