//! The fake API server's `services/…/proxy` and `pods/…/proxy`
//! subresources, and its SelfSubjectAccessReview answers' switch.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{json_response, Body, FakeApi};

impl FakeApi {
    /// Sends `…/proxy/…` requests of `key` (`services/<ns>/<name>:<port>`
    /// or `pods/<ns>/<name>:<port>`) to `addr`.
    pub fn forward(&self, key: &str, addr: SocketAddr) {
        self.state.lock().unwrap().forwards.insert(key.into(), addr);
    }

    /// A SelfSubjectAccessReview for `resource` is answered "not allowed".
    pub fn deny(&self, resource: &str) {
        self.state.lock().unwrap().denied.insert(resource.into());
    }

    /// The `services/…/proxy` and `pods/…/proxy` subresources: a GET
    /// forwarded to the address the test gave, or 503 as the API server
    /// answers when nothing backs it. `None`: not such a path.
    pub(super) async fn forward_proxy(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        let path = req.uri().path();
        let rest = path.strip_prefix("/api/v1/namespaces/")?;
        let mut segs = rest.splitn(5, '/');
        let (ns, what, target, proxy) = (segs.next()?, segs.next()?, segs.next()?, segs.next()?);
        if proxy != "proxy" || !(what == "services" || what == "pods") {
            return None;
        }
        let tail = segs.next().unwrap_or("");
        let key = format!("{what}/{ns}/{target}");
        let addr = self.state.lock().unwrap().forwards.get(&key).copied();
        let Some(addr) = addr else {
            return Some(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("no endpoints available for {} \"{target}\"", what.trim_end_matches('s')),
                        "reason": "ServiceUnavailable", "code": 503}),
            ));
        };
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let url = format!("http://{addr}/{tail}{query}");
        let (status, body) = http_get(&url).await;
        Some(
            Response::builder()
                .status(status)
                .body(BodyExt::boxed(Full::new(body)))
                .unwrap(),
        )
    }
}

/// A plain HTTP/1.1 GET: status and body (502 when it cannot connect).
async fn http_get(url: &str) -> (StatusCode, Bytes) {
    let uri: http::Uri = url.parse().unwrap();
    let addr = uri.authority().unwrap().as_str().to_string();
    let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
        return (StatusCode::BAD_GATEWAY, Bytes::from_static(b"connection refused"));
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri.path_and_query().unwrap().as_str())
        .header("host", addr)
        .body(Full::new(Bytes::new()))
        .unwrap();
    match send.send_request(req).await {
        Ok(rsp) => {
            let status = rsp.status();
            (
                status,
                rsp.into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default(),
            )
        }
        Err(_) => (StatusCode::BAD_GATEWAY, Bytes::new()),
    }
}
