//! An in-test Kubernetes API that answers only TokenReviews, with tokens
//! that expire like projected ServiceAccount tokens: each token minted by
//! [`TokenReviewApi::mint`] is accepted for `validity`, then refused.
//!
//! `weft-control --token-review` reaches it through the kubeconfig that
//! [`TokenReviewApi::kubeconfig`] writes; that is the path a cluster takes,
//! so no test-only switch is needed in the control plane.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::TempDir;

const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// How many reviews were answered each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reviews {
    pub accepted: usize,
    /// Tokens that were unknown or past their validity.
    pub refused: usize,
}

#[derive(Default)]
struct State {
    /// token → (username, minted at)
    tokens: HashMap<String, (String, Instant)>,
    reviews: Reviews,
}

/// The running fake API server (its task ends with the test's runtime).
#[derive(Clone)]
pub struct TokenReviewApi {
    addr: SocketAddr,
    validity: Duration,
    state: Arc<Mutex<State>>,
}

impl TokenReviewApi {
    pub async fn start(validity: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api = Self {
            addr: listener.local_addr().expect("bound"),
            validity,
            state: Arc::default(),
        };
        let server = api.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
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

    /// A new token for `namespace`/`service_account`, valid from now for
    /// the API's validity.
    pub fn mint(&self, namespace: &str, service_account: &str) -> String {
        let token = format!("{service_account}-{:032x}", rand::random::<u128>());
        let user = format!("system:serviceaccount:{namespace}:{service_account}");
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.clone(), (user, Instant::now()));
        token
    }

    pub fn reviews(&self) -> Reviews {
        self.state.lock().unwrap().reviews
    }

    /// A kubeconfig pointing at this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &TempDir) -> PathBuf {
        dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
                self.addr
            ),
        )
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST || req.uri().path() != PATH {
            return json_response(StatusCode::NOT_FOUND, &json!({"kind": "Status", "code": 404}));
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_response(StatusCode::BAD_REQUEST, &json!({})),
        };
        let Ok(mut review) = serde_json::from_slice::<Value>(&body) else {
            return json_response(StatusCode::BAD_REQUEST, &json!({}));
        };
        let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
        let audiences = review["spec"]["audiences"].clone();
        let status = {
            let mut state = self.state.lock().unwrap();
            let user = state
                .tokens
                .get(&token)
                .filter(|(_, minted)| minted.elapsed() < self.validity)
                .map(|(user, _)| user.clone());
            match user {
                Some(username) => {
                    state.reviews.accepted += 1;
                    json!({"authenticated": true, "audiences": audiences,
                        "user": {"username": username, "groups": ["system:serviceaccounts"]}})
                }
                None => {
                    state.reviews.refused += 1;
                    json!({"authenticated": false, "error": "[invalid bearer token, token expired or unknown]"})
                }
            }
        };
        review["status"] = status;
        json_response(StatusCode::CREATED, &review)
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(v.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}
