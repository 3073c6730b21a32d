//! The admin listener: `/live`, `/ready`, `/metrics`, `/config` and
//! `POST /shutdown` (loopback callers only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::listener::Listener;
use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::admin_merge::{merge, AppMetrics};
use crate::http::{full_body, Body};
use crate::readiness::Readiness;
use prometheus_client::metrics::counter::Counter;

/// What the admin endpoints read and trigger.
pub struct Admin {
    /// What `/ready` answers.
    pub ready: Arc<Readiness>,
    pub registry: Arc<Registry>,
    /// Produces the `/config` document.
    pub config: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Notified by `POST /shutdown`.
    pub shutdown: Arc<Notify>,
    /// The app's own metrics, merged into `/metrics`.
    pub app_metrics: Option<AppMetrics>,
    /// Scrapes whose app metrics could not be fetched.
    pub app_metrics_errors: Counter,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, mut listener: Listener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    let merging = this.app_metrics.is_some()
                        && req.method() == Method::GET
                        && req.uri().path() == "/metrics";
                    let rsp = (!merging).then(|| {
                        this.handle(
                            req.method(),
                            req.uri().path(),
                            req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()),
                            peer,
                        )
                    });
                    async move {
                        Ok::<_, Infallible>(match rsp {
                            Some(rsp) => rsp,
                            None => this.merged_metrics().await,
                        })
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection error");
                }
            });
        }
    }

    /// `/metrics` with the app's own metrics after the proxy's, in the
    /// text format. Without the app's (it is down, slow or refuses), the
    /// proxy's alone, and the failure counted.
    async fn merged_metrics(&self) -> Response<Body> {
        use weft_api::exposition;
        let ours = || exposition::openmetrics_to_text(&crate::metrics::render(&self.registry));
        let body = match self.app_metrics.as_ref().map(AppMetrics::fetch) {
            Some(fetch) => match fetch.await {
                Ok(app) => merge(&ours(), &app),
                Err(e) => {
                    self.app_metrics_errors.inc();
                    tracing::debug!(error = %e, "the app's metrics could not be fetched");
                    ours()
                }
            },
            None => ours(),
        };
        let mut rsp = text(StatusCode::OK, body);
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(exposition::TEXT_CONTENT_TYPE),
        );
        rsp
    }

    fn handle(&self, method: &Method, path: &str, accept: Option<&str>, peer: SocketAddr) -> Response<Body> {
        match (method, path) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => match self.ready.check(SystemTime::now()) {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            },
            (&Method::GET, "/metrics") => {
                use weft_api::exposition;
                let om = crate::metrics::render(&self.registry);
                let (body, content_type) = if exposition::wants_openmetrics(accept) {
                    (om, exposition::OPENMETRICS_CONTENT_TYPE)
                } else {
                    (
                        exposition::openmetrics_to_text(&om),
                        exposition::TEXT_CONTENT_TYPE,
                    )
                };
                let mut rsp = text(StatusCode::OK, body);
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                rsp
            }
            (&Method::GET, "/config") => {
                let body = serde_json::to_string_pretty(&(self.config)()).unwrap_or_default();
                let mut rsp = text(StatusCode::OK, body + "\n");
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                rsp
            }
            (&Method::POST, "/shutdown") => {
                if peer.ip().is_loopback() {
                    tracing::info!(%peer, "shutdown requested through the admin endpoint");
                    self.shutdown.notify_one();
                    text(StatusCode::OK, "shutting down\n")
                } else {
                    text(StatusCode::FORBIDDEN, "shutdown is only accepted from loopback\n")
                }
            }
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live /ready /metrics /config\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(full_body(body.into()));
    *rsp.status_mut() = status;
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let ready = Readiness::new(None);
        ready.started();
        Admin {
            ready: Arc::new(ready),
            registry: Arc::new(Registry::default()),
            config: Box::new(|| serde_json::json!({"ok": true})),
            shutdown: Arc::new(Notify::new()),
            app_metrics: None,
            app_metrics_errors: Counter::default(),
        }
    }

    #[tokio::test]
    async fn shutdown_only_from_loopback() {
        let a = admin();
        let remote: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        assert_eq!(
            a.handle(&Method::POST, "/shutdown", None, remote).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            a.handle(&Method::GET, "/shutdown", None, local).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let notified = a.shutdown.clone();
        let waiter = tokio::spawn(async move { notified.notified().await });
        tokio::task::yield_now().await;
        assert_eq!(
            a.handle(&Method::POST, "/shutdown", None, local).status(),
            StatusCode::OK
        );
        waiter.await.unwrap();
    }

    #[test]
    fn ready_follows_the_flag() {
        let a = admin();
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            a.handle(&Method::GET, "/ready", None, local).status(),
            StatusCode::OK
        );
        a.ready.drain();
        assert_eq!(
            a.handle(&Method::GET, "/ready", None, local).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            a.handle(&Method::GET, "/nope", None, local).status(),
            StatusCode::NOT_FOUND
        );
    }
}
