//! The outbound listener: accept, detect the protocol, and hand each
//! connection on — HTTP to [`Outbound::request`], which strings the
//! stages together for one request; anything else to [`super::tunnel`].

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::call::{self, Call, Called, Deadline};
use super::lookup::Via;
use super::route::{self, To};
use super::upstream::{dialled, Upstream};
use super::Outbound;
use crate::bounds::{Admission, Admitted};
use crate::detect::detect;
use crate::discover::Endpoint;
use crate::errors::ProxyError;
use crate::grpc;
use crate::http::{incoming, AppProtocol, Body, WEFT_WORKLOAD};
use crate::listener::Listener;
use crate::metrics::{unknown_service, Detected, Direction};
use crate::server::{accept_loop, serve_http};
use crate::telemetry::{workload_name, Observation, Target};

impl Outbound {
    /// Accepts until the drain starts, then drops the listener so new
    /// connections are refused.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        let drain = self.drain.clone();
        let admission = Admission::new(self.limits.max_connections);
        let limits = self.limits.clone();
        accept_loop(listener, &drain, &admission, &limits, move |stream, peer| {
            self.clone().connection(stream, peer)
        })
        .await;
    }

    async fn connection(self: Arc<Self>, stream: Admitted<TcpStream>, peer: SocketAddr) {
        let _ = stream.get_ref().set_nodelay(true);
        let orig_dst = crate::orig_dst::original_dst(stream.get_ref());
        let mut guard = self.telemetry.connection(Direction::Outbound, peer);
        if let Some(dst) = orig_dst.filter(|d| self.interception.is_opaque_port(d.port())) {
            // Server-speaks-first: nothing to detect. (The forwarding is
            // boxed here and below: its state, an mTLS connection, would
            // otherwise size every connection's task, HTTP ones included.)
            let io = guard.meter(stream);
            return Box::pin(self.forward(io, dst, guard)).await;
        }
        let (protocol, io) = match detect(guard.meter(stream), self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "outbound detection failed");
                return;
            }
        };
        let Some(app) = protocol.http() else {
            if let Some(dst) = orig_dst {
                return Box::pin(self.forward(io, dst, guard)).await;
            }
            // Without the original destination (explicit mode) an opaque
            // connection names no target. Apps tunnel opaque bytes with
            // CONNECT instead.
            guard.detected(Detected::Opaque);
            tracing::debug!(%peer, "outbound opaque connection has no destination; closing");
            return;
        };
        guard.detected(app.into());
        let via = orig_dst.map_or(Via::Explicit, Via::Redirected);
        self.serve_requests(io, app, via).await;
    }

    /// Serves HTTP on a detected connection; each request goes where `via`
    /// says.
    pub(super) async fn serve_requests<I>(self: Arc<Self>, io: I, app: AppProtocol, via: Via)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        serve_http(
            io,
            app,
            &self.limits,
            &self.drain,
            std::future::pending(),
            move |req| this.clone().request(req, app, via.clone()),
        )
        .await;
    }

    /// One HTTP request: answered by the upstream, or by the proxy with
    /// the error's response; observed either way.
    pub(crate) async fn request(
        self: Arc<Self>,
        req: Request<Incoming>,
        app: AppProtocol,
        via: Via,
    ) -> Response<Body> {
        let mut req = req.map(incoming);
        let grpc = grpc::is_grpc(req.headers());
        let mut obs = Observation::start(&self.telemetry, via.direction(), &mut req);
        if let Via::Gateway(entry) = &via {
            obs.at_gateway(&entry.listener.gateway, &entry.listener.name);
        }
        let (mut target, result) = self.route_and_call(req, app, &via).await;
        match result {
            Ok(mut rsp) => {
                // The workload that answered, as its proxy said: believed
                // only over mTLS; never passed to the app.
                if let Some(said) = rsp.headers_mut().remove(WEFT_WORKLOAD) {
                    if target.tls {
                        target.peer_workload = workload_name(&said).unwrap_or_default();
                    }
                }
                obs.respond(target, rsp, None)
            }
            Err(e) => {
                tracing::info!(error = %e, reason = e.reason(), "outbound request failed");
                obs.respond(target, e.to_response(grpc), Some(e.reason()))
            }
        }
    }

    /// The stages for one request: lookup → plan → the backend's
    /// destination → call (or tunnel). Returns where the request went as
    /// far as it got, for telemetry.
    async fn route_and_call(
        self: &Arc<Self>,
        mut req: Request<Body>,
        app: AppProtocol,
        via: &Via,
    ) -> (Target, Result<Response<Body>, ProxyError>) {
        let start = Instant::now();
        let target = Target {
            service: unknown_service(),
            ..Target::default()
        };
        let planned = match self.lookup(crate::http::authority(&req), req.uri(), via).await {
            Ok(named) => route::plan(&mut req, named),
            Err(e) => Err(e),
        };
        let mut plan = match planned {
            Ok(plan) => plan,
            Err(e) => return (target, Err(e)),
        };
        let target = Target {
            route: plan.route.take().unwrap_or_default(),
            ..target
        };
        if let Via::Gateway(entry) = via {
            let edge = plan.edge.as_ref().or(entry.listener.policy.as_ref());
            if let Some(edge) = edge {
                // Boxed, like the tunnel below: its state (an external
                // authorisation call) would otherwise size every request's
                // future, gateway or not.
                if let Err(e) = Box::pin(edge.check(req.headers_mut(), entry.client)).await {
                    return (target, Err(e));
                }
            }
        }
        let dest = match &plan.to {
            To::Destination(dest) => dest.clone(),
            To::Backend { host, port } => match self.resolve(host, *port).await {
                Ok(dest) => dest,
                Err(e) => return (target, Err(e)),
            },
            To::Redirect { status, location } => return (target, Ok(redirect(*status, location))),
        };
        let target = Target {
            service: dest.service.clone(),
            namespace: dest.namespace.clone(),
            ..target
        };
        let Called { mut result, last } = if plan.tunnel {
            Box::pin(self.tunnel(req, &dest)).await
        } else {
            if !plan.mirrors.is_empty() {
                req = self.mirror(req, &plan, app);
            }
            let grpc = grpc::is_grpc(req.headers());
            let call = Call {
                dest: &dest,
                app,
                authority: &plan.authority,
                deadline: Deadline::new(start, plan.timeout),
                per_try: plan.try_timeout,
                grpc,
            };
            call::call(&self.clients, &call, req, &self.telemetry.metrics.resilience).await
        };
        if let Ok(rsp) = &mut result {
            for m in &plan.response_headers {
                m.apply(rsp.headers_mut());
            }
        }
        (self.describe(target, last.as_ref()), result)
    }

    /// Adds the endpoint a request went to, for telemetry.
    pub(super) fn describe(&self, target: Target, endpoint: Option<&Endpoint>) -> Target {
        let Some(endpoint) = endpoint else {
            return target;
        };
        let tls = self.clients.sends_mtls(endpoint);
        Target {
            upstream: Some(dialled(endpoint)),
            tls,
            peer_identity: if tls {
                endpoint.identity.clone().unwrap_or_default()
            } else {
                Arc::default()
            },
            ..target
        }
    }
}

/// The proxy's own answer to a `RequestRedirect`.
fn redirect(status: http::StatusCode, location: &str) -> Response<Body> {
    let mut rsp = Response::new(crate::http::empty_body());
    *rsp.status_mut() = status;
    match http::HeaderValue::from_str(location) {
        Ok(v) => {
            rsp.headers_mut().insert(http::header::LOCATION, v);
        }
        Err(_) => *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR,
    }
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn returned_size<A, B, C, D, Fut>(_f: impl FnOnce(A, B, C, D) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_request_future_holds_each_stage_once() {
        // Every request's future is built, then copied into its box. With
        // the timeouts and the probe cut as `async fn`s taking the future
        // they bound, each nesting held it twice: 23,608 bytes (release).
        let size = returned_size(Outbound::request);
        println!("Outbound::request's future: {size} bytes");
        assert!(size <= 12 * 1024, "Outbound::request's future is {size} bytes");
    }
}
