//! The in-test Kubernetes API server the control-plane tests share.
//!
//! No real API server can run where these tests run, so `FakeApi` speaks
//! the parts of the API protocol kube-rs uses, with realistic JSON: lists
//! (`{"kind":"ServiceList","metadata":{"resourceVersion":..},"items":[..]}`),
//! watches (`?watch=true&resourceVersion=N`, newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":..}`), `410
//! Gone` for a resource version that was compacted away, 404 for a kind the
//! cluster does not serve, TokenReview creation, status patches, field
//! selectors (`metadata.name=…`), namespaced paths and single objects
//! (`/apis/apps/v1/namespaces/weft-system/deployments/weft-control`),
//! server-side apply of ConfigMaps (`PATCH` with
//! `application/apply-patch+yaml`), `/version`, SelfSubjectAccessReviews,
//! and the `services/…/proxy` and `pods/…/proxy` subresources (forwarded to
//! a real server the test names, or 503 as when nothing backs them).
// Each test file uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

mod proxy;

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One kind the fake API serves.
pub struct Kind {
    api_version: &'static str,
    list_kind: &'static str,
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, event) since `compacted`.
    history: Vec<(u64, Value)>,
    compacted: u64,
    live: broadcast::Sender<(u64, Value)>,
}

#[derive(Default)]
pub struct State {
    pub rv: u64,
    pub kinds: HashMap<&'static str, Kind>,
    /// token → username (authenticated) for TokenReview.
    pub tokens: HashMap<String, String>,
    /// TokenReviews answered.
    pub reviews: usize,
    /// (path, body) of every status patch.
    pub status_patches: Vec<(String, Value)>,
    /// Watch requests served, by path.
    pub watches: HashMap<String, usize>,
    pub lists: HashMap<String, usize>,
    /// How long every list waits before it answers (a slow API server).
    pub list_delay: Duration,
    /// Every server-side apply, in order.
    pub applies: Vec<Applied>,
    /// Namespaces whose applies are refused (403), as without RBAC.
    pub refuse_applies: std::collections::HashSet<String>,
    /// (path, fieldSelector) of every list and watch with a selector.
    pub selectors: Vec<(String, String)>,
    /// `services/<ns>/<name>:<port>` or `pods/<ns>/<name>:<port>` → the
    /// address its `…/proxy/…` requests go to.
    pub forwards: HashMap<String, SocketAddr>,
    /// Resources (`customresourcedefinitions`, …) a
    /// SelfSubjectAccessReview says the caller may not create.
    pub denied: std::collections::HashSet<String>,
    /// `gitVersion` at `/version`.
    pub version: String,
}

/// One server-side apply request, as received.
#[derive(Debug, Clone)]
pub struct Applied {
    pub path: String,
    pub query: HashMap<String, String>,
    pub content_type: String,
    pub body: Value,
    /// The HTTP status answered.
    pub status: u16,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    /// Bumped to end every open watch stream.
    pub cut: Arc<watch::Sender<u64>>,
    /// While set, open watches miss events (a partition): only a relist
    /// can catch up.
    pub mute: Arc<std::sync::atomic::AtomicBool>,
}

pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const PODS: &str = "/api/v1/pods";
pub const TRAFFIC: &str = "/apis/weft.dev/v1alpha1/trafficpolicies";
pub const AUTHZ: &str = "/apis/weft.dev/v1alpha1/authorizationpolicies";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const CONFIGMAPS: &str = "/api/v1/configmaps";
pub const SECRETS: &str = "/api/v1/secrets";
pub const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
pub const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
pub const HTTPROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
pub const GRANTS: &str = "/apis/gateway.networking.k8s.io/v1beta1/referencegrants";
pub const GRPCROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
pub const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
pub const GATEWAY_POLICIES: &str = "/apis/weft.dev/v1alpha1/gatewaypolicies";
const KINDS: [&str; 16] = [
    SERVICES,
    SLICES,
    PODS,
    TRAFFIC,
    AUTHZ,
    NAMESPACES,
    CONFIGMAPS,
    SECRETS,
    CRDS,
    DEPLOYMENTS,
    WEBHOOKS,
    HTTPROUTES,
    GRANTS,
    GRPCROUTES,
    GATEWAYS,
    GATEWAY_POLICIES,
];

/// Which kind a request path names: the kind's cluster-wide path, the
/// namespace (`…/namespaces/<ns>/<plural>`) and the object's name, if any.
fn resolve(path: &str) -> Option<(&'static str, Option<String>, Option<String>)> {
    for kind in KINDS {
        if path == kind {
            return Some((kind, None, None));
        }
        let (prefix, plural) = kind.rsplit_once('/').unwrap();
        let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let segs: Vec<&str> = rest.split('/').collect();
        match segs[..] {
            ["namespaces", ns, p] if p == plural => return Some((kind, Some(ns.into()), None)),
            ["namespaces", ns, p, name] if p == plural => {
                return Some((kind, Some(ns.into()), Some(name.into())))
            }
            [p, name] if p == plural => return Some((kind, None, Some(name.into()))),
            _ => {}
        }
    }
    None
}

fn not_found(message: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "NotFound", "details": {}, "code": 404}),
    )
}

/// A namespace as the API server shows it.
pub fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-ns-{name}"),
                        "creationTimestamp": "2026-11-01T09:00:00Z",
                        "labels": {"kubernetes.io/metadata.name": name}},
           "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}

/// Whether `obj` matches a field selector (`metadata.name=x`,
/// `metadata.namespace=y`, comma-separated); other fields are not served.
fn selected(selector: Option<&String>, obj: &Value) -> bool {
    let Some(selector) = selector else { return true };
    selector.split(',').all(|term| {
        let (field, value) = term.split_once('=').expect("field=value");
        let pointer = match field {
            "metadata.name" => "/metadata/name",
            "metadata.namespace" => "/metadata/namespace",
            other => panic!("field selector on {other} is not served by the fake API"),
        };
        obj.pointer(pointer).and_then(Value::as_str) == Some(value)
    })
}

/// `%3D` → `=` and the like (query values are form-urlencoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl FakeApi {
    /// A cluster without the Gateway API CRDs (HTTPRoutes are 404).
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A cluster with the Gateway API CRDs installed.
    pub async fn start_with_gateway_api() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(gateway_api: bool) -> Self {
        let mut state = State {
            rv: 100,
            version: "v1.33.2".into(),
            ..State::default()
        };
        for (path, api_version, list_kind) in [
            (SERVICES, "v1", "ServiceList"),
            (SLICES, "discovery.k8s.io/v1", "EndpointSliceList"),
            (PODS, "v1", "PodList"),
            (TRAFFIC, "weft.dev/v1alpha1", "TrafficPolicyList"),
            (AUTHZ, "weft.dev/v1alpha1", "AuthorizationPolicyList"),
            (NAMESPACES, "v1", "NamespaceList"),
            (CONFIGMAPS, "v1", "ConfigMapList"),
            (SECRETS, "v1", "SecretList"),
            (CRDS, "apiextensions.k8s.io/v1", "CustomResourceDefinitionList"),
            (DEPLOYMENTS, "apps/v1", "DeploymentList"),
            (
                WEBHOOKS,
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfigurationList",
            ),
            (HTTPROUTES, "gateway.networking.k8s.io/v1", "HTTPRouteList"),
            (GRANTS, "gateway.networking.k8s.io/v1beta1", "ReferenceGrantList"),
            (GRPCROUTES, "gateway.networking.k8s.io/v1", "GRPCRouteList"),
            (GATEWAYS, "gateway.networking.k8s.io/v1", "GatewayList"),
            (GATEWAY_POLICIES, "weft.dev/v1alpha1", "GatewayPolicyList"),
        ] {
            if !gateway_api && [HTTPROUTES, GRANTS, GRPCROUTES, GATEWAYS].contains(&path) {
                continue;
            }
            state.kinds.insert(
                path,
                Kind {
                    api_version,
                    list_kind,
                    objects: BTreeMap::new(),
                    history: Vec::new(),
                    compacted: 0,
                    live: broadcast::channel(1024).0,
                },
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = FakeApi {
            addr,
            state: Arc::new(Mutex::new(state)),
            cut: Arc::new(watch::channel(0).0),
            mute: Arc::default(),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (ADDED / MODIFIED).
    pub fn apply(&self, path: &'static str, obj: Value) {
        let mut s = self.state.lock().unwrap();
        self.put(&mut s, path, obj);
    }

    /// The object at `path` (a kind) in `namespace` (`""` for cluster
    /// objects) named `name`.
    pub fn get(&self, path: &'static str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.kinds[path]
            .objects
            .get(&(namespace.into(), name.into()))
            .cloned()
    }

    fn put(&self, s: &mut State, path: &'static str, mut obj: Value) -> Value {
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            obj["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
            obj["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let kind = s.kinds.get_mut(path).unwrap();
        let kind_name = kind.list_kind.trim_end_matches("List");
        obj["kind"] = json!(kind_name);
        obj["apiVersion"] = json!(kind.api_version);
        let ty = if kind.objects.insert(key, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let event = json!({"type": ty, "object": obj});
        kind.history.push((rv, event.clone()));
        if !self.mute.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = kind.live.send((rv, event));
        }
        obj
    }

    /// `PATCH /api/v1/namespaces/{ns}/configmaps/{name}` with
    /// `application/apply-patch+yaml`: the applied fields (labels, data)
    /// are merged over what the object has, which is what the API server
    /// does with fields other managers own; the manager is recorded in
    /// `managedFields`. An apply that changes nothing stores nothing and
    /// sends no event. Every request is recorded in `applies`.
    fn server_side_apply(
        &self,
        path: &str,
        query: &HashMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        let mut s = self.state.lock().unwrap();
        let (code, answer) = self.apply_config_map(&mut s, path, query, content_type, &body);
        s.applies.push(Applied {
            path: path.to_string(),
            query: query.clone(),
            content_type: content_type.to_string(),
            body,
            status: code.as_u16(),
        });
        json_response(code, &answer)
    }

    fn apply_config_map(
        &self,
        s: &mut State,
        path: &str,
        query: &HashMap<String, String>,
        content_type: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let failure = |code: StatusCode, reason: &str, message: String| {
            (
                code,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "details": {}, "code": code.as_u16()}),
            )
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ["api", "v1", "namespaces", ns, "configmaps", name] = parts[..] else {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no such resource: {path}"),
            );
        };
        if content_type != "application/apply-patch+yaml" {
            return failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("{content_type} is not an apply patch"),
            );
        }
        let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "fieldManager is required for apply requests".into(),
            );
        };
        let names_it = body["apiVersion"] == "v1"
            && body["kind"] == "ConfigMap"
            && body["metadata"]["name"] == name
            && body["metadata"]["namespace"].as_str().is_none_or(|n| n == ns);
        if !names_it {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the body is not v1 ConfigMap {ns}/{name}: {body}"),
            );
        }
        if s.refuse_applies.contains(ns) {
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "configmaps \"{name}\" is forbidden: User \"system:serviceaccount:weft-system:weft-control\" \
                     cannot patch resource \"configmaps\" in API group \"\" in the namespace \"{ns}\""
                ),
            );
        }
        if !s.kinds[NAMESPACES]
            .objects
            .contains_key(&(String::new(), ns.to_string()))
        {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            );
        }
        let existing = s.kinds[CONFIGMAPS]
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned();
        let mut obj = existing.clone().unwrap_or_else(|| {
            json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-cm-{ns}-{name}"),
                                "creationTimestamp": "2026-11-01T10:00:00Z"}})
        });
        let mut owned = serde_json::Map::new();
        if let Some(Value::Object(labels)) = body.pointer("/metadata/labels") {
            merge(&mut obj["metadata"]["labels"], labels);
            owned.insert("f:metadata".into(), json!({"f:labels": field_set(labels)}));
        }
        if let Some(Value::Object(data)) = body.pointer("/data") {
            merge(&mut obj["data"], data);
            owned.insert("f:data".into(), field_set(data));
        }
        let entry = json!({"manager": manager, "operation": "Apply", "apiVersion": "v1",
                           "time": "2026-11-01T10:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": owned});
        let mut managed = obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match managed
            .iter_mut()
            .find(|m| m["manager"] == manager.as_str() && m["operation"] == "Apply")
        {
            Some(m) => *m = entry,
            None => managed.push(entry),
        }
        obj["metadata"]["managedFields"] = json!(managed);
        match existing {
            Some(e) if e == obj => (StatusCode::OK, obj),
            Some(_) => (StatusCode::OK, self.put(s, CONFIGMAPS, obj)),
            None => (StatusCode::CREATED, self.put(s, CONFIGMAPS, obj)),
        }
    }

    pub fn delete(&self, path: &'static str, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let kind = s.kinds.get_mut(path).unwrap();
        let mut obj = kind.objects.remove(&(namespace.into(), name.into())).unwrap();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": "DELETED", "object": obj});
        kind.history.push((rv, event.clone()));
        if !self.mute.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = kind.live.send((rv, event));
        }
    }

    /// Forgets all history (as etcd compaction does) and ends every open
    /// watch: clients resuming from an older version get `410 Gone`.
    pub fn compact_and_cut(&self) {
        self.compact_and_cut_kinds(&KINDS);
    }

    /// [`Self::compact_and_cut`] for some kinds only: watches of the others
    /// resume where they were.
    pub fn compact_and_cut_kinds(&self, paths: &[&str]) {
        {
            let mut s = self.state.lock().unwrap();
            let rv = s.rv;
            for (path, kind) in s.kinds.iter_mut() {
                if paths.contains(path) {
                    kind.history.clear();
                    kind.compacted = rv;
                }
            }
        }
        self.cut.send_modify(|g| *g += 1);
    }

    /// Ends every open watch (clients resume from their last version).
    pub fn cut_watches(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn count(&self, what: &str, path: &str) -> usize {
        let s = self.state.lock().unwrap();
        let map = if what == "watch" { &s.watches } else { &s.lists };
        map.get(path).copied().unwrap_or(0)
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if std::env::var_os("FAKE_API_LOG").is_some() {
            eprintln!("fake api: {} {}", req.method(), req.uri());
        }
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), percent_decode(v)))
            })
            .collect();
        if req.method() == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body: Value =
                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
            let token = body["spec"]["token"].as_str().unwrap_or("");
            let audiences = body["spec"]["audiences"].clone();
            let user = {
                let mut state = self.state.lock().unwrap();
                state.reviews += 1;
                state.tokens.get(token).cloned()
            };
            let status = match user {
                Some(username) => json!({"authenticated": true, "audiences": audiences,
                    "user": {"username": username, "uid": "5d3c", "groups": ["system:serviceaccounts"]}}),
                None => {
                    json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]"})
                }
            };
            let mut answer = body.clone();
            answer["status"] = status;
            return json_response(StatusCode::CREATED, &answer);
        }
        if req.method() == Method::PATCH
            && path.starts_with("/api/v1/namespaces/")
            && path.contains("/configmaps/")
        {
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            // JSON is YAML; kube-rs sends JSON.
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return self.server_side_apply(&path, &query, &content_type, body);
        }
        if req.method() == Method::PATCH && path.ends_with("/status") {
            let body: Value =
                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
            self.state
                .lock()
                .unwrap()
                .status_patches
                .push((path, body.clone()));
            return json_response(StatusCode::OK, &body);
        }
        if path == "/version" {
            let git = self.state.lock().unwrap().version.clone();
            let (major, minor) = git.trim_start_matches('v').split_once('.').unwrap_or(("1", "0"));
            let minor = minor.split('.').next().unwrap_or("0");
            return json_response(
                StatusCode::OK,
                &json!({"major": major, "minor": minor, "gitVersion": git, "platform": "linux/amd64"}),
            );
        }
        if req.method() == Method::POST && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
            let mut review: Value =
                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
            let resource = review["spec"]["resourceAttributes"]["resource"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let allowed = !self.state.lock().unwrap().denied.contains(&resource);
            review["status"] = json!({"allowed": allowed});
            return json_response(StatusCode::CREATED, &review);
        }
        if let Some(rsp) = self.forward_proxy(&req).await {
            return rsp;
        }
        let Some((kind_path, in_namespace, name)) = resolve(&path) else {
            return not_found("the server could not find the requested resource");
        };
        // A kind this cluster does not serve (its CRD is not installed).
        if !self.state.lock().unwrap().kinds.contains_key(kind_path) {
            return not_found("the server could not find the requested resource");
        }
        if let Some(name) = name {
            let s = self.state.lock().unwrap();
            let kind = &s.kinds[kind_path];
            let key = (in_namespace.unwrap_or_default(), name.clone());
            return match kind.objects.get(&key) {
                Some(obj) => json_response(StatusCode::OK, obj),
                None => {
                    let plural = kind_path.rsplit('/').next().unwrap();
                    not_found(&format!("{plural} \"{name}\" not found"))
                }
            };
        }
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let mut selector = query.get("fieldSelector").cloned();
        if let Some(sel) = &selector {
            self.state
                .lock()
                .unwrap()
                .selectors
                .push((path.clone(), sel.clone()));
        }
        if let Some(ns) = in_namespace {
            let term = format!("metadata.namespace={ns}");
            selector = Some(match selector {
                Some(sel) => format!("{sel},{term}"),
                None => term,
            });
        }
        if !watching {
            let delay = self.state.lock().unwrap().list_delay;
            tokio::time::sleep(delay).await;
            let mut s = self.state.lock().unwrap();
            *s.lists.entry(path.clone()).or_default() += 1;
            let rv = s.rv;
            let kind = &s.kinds[kind_path];
            let list = json!({
                "kind": kind.list_kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": rv.to_string()},
                "items": kind.objects.values().filter(|o| selected(selector.as_ref(), o)).cloned().collect::<Vec<_>>(),
            });
            return json_response(StatusCode::OK, &list);
        }
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let send = |tx: &mpsc::Sender<_>, v: &Value| {
            let mut line = serde_json::to_vec(v).unwrap();
            line.push(b'\n');
            tx.try_send(Ok(Frame::data(Bytes::from(line)))).is_ok()
        };
        let (backlog, mut live, gone) = {
            let mut s = self.state.lock().unwrap();
            *s.watches.entry(path.clone()).or_default() += 1;
            let rv = s.rv;
            let kind = &s.kinds[kind_path];
            let gone = since < kind.compacted;
            let backlog: Vec<Value> = kind
                .history
                .iter()
                .filter(|(v, e)| *v > since && selected(selector.as_ref(), &e["object"]))
                .map(|(_, e)| e.clone())
                .collect();
            let mut backlog = backlog;
            if bookmarks {
                backlog.insert(
                    0,
                    json!({"type": "BOOKMARK", "object": {"kind": kind.list_kind.trim_end_matches("List"),
                        "apiVersion": kind.api_version, "metadata": {"resourceVersion": since.max(1).to_string()}}}),
                );
            }
            let _ = rv;
            (backlog, kind.live.subscribe(), gone)
        };
        if gone {
            *self
                .state
                .lock()
                .unwrap()
                .lists
                .entry(format!("gone {path}"))
                .or_default() += 1;
            send(
                &tx,
                &json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": format!("too old resource version: {since}"),
                    "reason": "Expired", "code": 410}}),
            );
            drop(tx);
        } else {
            for e in &backlog {
                send(&tx, e);
            }
            let mut cut = self.cut.subscribe();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        event = live.recv() => match event {
                            Ok((rv, e)) if rv > since && selected(selector.as_ref(), &e["object"]) => if !send(&tx, &e) { return },
                            Ok(_) => {}
                            Err(_) => return,
                        },
                        _ = cut.changed() => return,
                        _ = tx.closed() => return,
                    }
                }
            });
        }
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .unwrap()
    }
}

/// `applied`'s keys set over `target` (made a map if it is not one).
fn merge(target: &mut Value, applied: &serde_json::Map<String, Value>) {
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in applied {
        target[k] = v.clone();
    }
}

/// A `fieldsV1` set of `map`'s keys: `{"f:key": {}}`.
fn field_set(map: &serde_json::Map<String, Value>) -> Value {
    Value::Object(map.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(
            serde_json::to_vec(v).unwrap(),
        ))))
        .unwrap()
}

/// The status code of `GET path` on `addr`; `None` when it does not answer.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A kubeconfig in `dir` for `api` (no credentials, default namespace
/// `shop`), for the weft-control binary.
pub fn kubeconfig(api: &FakeApi, dir: &weft_control::testing::TempDir) -> std::path::PathBuf {
    dir.write(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test, namespace: shop}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            api.addr
        ),
    )
}

/// A child process, killed and reaped on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
