//! The in-test Kubernetes API server the control-plane tests share.
//!
//! No real API server can run where these tests run, so `FakeApi` speaks
//! the parts of the API protocol kube-rs uses, with realistic JSON: lists
//! (`{"kind":"ServiceList","metadata":{"resourceVersion":..},"items":[..]}`),
//! watches (`?watch=true&resourceVersion=N`, newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":..}`), `410
//! Gone` for a resource version that was compacted away, 404 for a kind the
//! cluster does not serve, TokenReview creation and status patches.
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
    /// (path, body) of every status patch.
    pub status_patches: Vec<(String, Value)>,
    /// Watch requests served, by path.
    pub watches: HashMap<String, usize>,
    pub lists: HashMap<String, usize>,
    /// How long every list waits before it answers (a slow API server).
    pub list_delay: Duration,
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

impl FakeApi {
    pub async fn start() -> Self {
        let mut state = State {
            rv: 100,
            ..State::default()
        };
        for (path, api_version, list_kind) in [
            (SERVICES, "v1", "ServiceList"),
            (SLICES, "discovery.k8s.io/v1", "EndpointSliceList"),
            (PODS, "v1", "PodList"),
            (TRAFFIC, "weft.dev/v1alpha1", "TrafficPolicyList"),
            (AUTHZ, "weft.dev/v1alpha1", "AuthorizationPolicyList"),
            // No Gateway API CRDs in this cluster: HTTPRoutes are 404.
        ] {
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
    pub fn apply(&self, path: &'static str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
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
        let _ = kind.live.send((rv, event));
    }

    /// Forgets all history (as etcd compaction does) and ends every open
    /// watch: clients resuming from an older version get `410 Gone`.
    pub fn compact_and_cut(&self) {
        {
            let mut s = self.state.lock().unwrap();
            let rv = s.rv;
            for kind in s.kinds.values_mut() {
                kind.history.clear();
                kind.compacted = rv;
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
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        if req.method() == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body: Value =
                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
            let token = body["spec"]["token"].as_str().unwrap_or("");
            let audiences = body["spec"]["audiences"].clone();
            let user = self.state.lock().unwrap().tokens.get(token).cloned();
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
        let Some(kind_path) = [SERVICES, SLICES, PODS, TRAFFIC, AUTHZ]
            .into_iter()
            .find(|p| *p == path)
        else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "the server could not find the requested resource", "reason": "NotFound",
                        "details": {}, "code": 404}),
            );
        };
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
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
                "items": kind.objects.values().cloned().collect::<Vec<_>>(),
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
                .filter(|(v, _)| *v > since)
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
                            Ok((rv, e)) if rv > since => if !send(&tx, &e) { return },
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

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(
            serde_json::to_vec(v).unwrap(),
        ))))
        .unwrap()
}
