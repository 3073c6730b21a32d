//! The outbound side: what the local app sends out.
//!
//! Apps use the outbound listener explicitly, as an HTTP proxy
//! (absolute-form URIs, `CONNECT host:port`) or by naming the service in
//! `Host` / `:authority`. Per request: find the destination → pick an
//! endpoint → send it over the mesh (HTTP/2 to the peer proxy) or directly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};

use crate::client::Clients;
use crate::detect::{detect, Protocol};
use crate::discover::{Destination, Discover, Endpoint};
use crate::drain;
use crate::errors::ProxyError;
use crate::http::{absolute_uri, incoming, is_upgrade, strip_hop_by_hop, AppProtocol, Body};
use crate::http::{WEFT_PORT, WEFT_PROTO};
use crate::metrics::{Direction, UNKNOWN_SERVICE};
use crate::server::{accept_loop, serve_http, HttpSettings};
use crate::tcp;
use crate::telemetry::{Observation, Target, Telemetry};

mod transparent;
pub use transparent::{Interception, PASSTHROUGH};

pub struct Outbound {
    pub discover: Arc<dyn Discover>,
    pub clients: Clients,
    pub telemetry: Arc<Telemetry>,
    pub http: HttpSettings,
    pub detect_timeout: std::time::Duration,
    pub drain: drain::Watch,
    /// Redirected connections (`weft-proxy init`): see [`transparent`].
    pub interception: Interception,
    next: AtomicUsize,
}

impl Outbound {
    pub fn new(
        discover: Arc<dyn Discover>,
        clients: Clients,
        telemetry: Arc<Telemetry>,
        http: HttpSettings,
        detect_timeout: std::time::Duration,
        drain: drain::Watch,
    ) -> Self {
        Self {
            discover,
            clients,
            telemetry,
            http,
            detect_timeout,
            drain,
            interception: Interception::default(),
            next: AtomicUsize::new(0),
        }
    }

    /// Accepts until the drain starts, then drops the listener so new
    /// connections are refused.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = self.drain.clone();
        accept_loop(listener, &drain, "outbound", move |stream, peer| {
            self.clone().connection(stream, peer)
        })
        .await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let orig_dst = crate::orig_dst::original_dst(&stream);
        let mut guard = self.telemetry.connection(Direction::Outbound, peer);
        if let Some(dst) = orig_dst.filter(|d| self.interception.is_opaque_port(d.port())) {
            // Server-speaks-first: nothing to detect.
            let io = guard.meter(stream);
            return self.forward(io, dst, &mut guard).await;
        }
        let (protocol, io) = match detect(guard.meter(stream), self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "outbound detection failed");
                return;
            }
        };
        let app = match protocol {
            Protocol::Http1 => AppProtocol::Http1,
            Protocol::Http2 => AppProtocol::Http2,
            Protocol::MeshTcp { .. } | Protocol::Opaque | Protocol::Tls => {
                if let Some(dst) = orig_dst {
                    return self.forward(io, dst, &mut guard).await;
                }
                // Without the original destination (transparent mode) an
                // opaque connection names no target. Apps tunnel opaque
                // bytes with CONNECT instead.
                guard.detected("opaque");
                tracing::debug!(%peer, "outbound opaque connection has no destination; closing");
                return;
            }
        };
        guard.detected(if app == AppProtocol::Http1 {
            "http1"
        } else {
            "http2"
        });
        let this = self.clone();
        serve_http(io, app, &self.http, &self.drain, move |req| {
            this.clone().request(req, app, orig_dst)
        })
        .await;
    }

    async fn request(
        self: Arc<Self>,
        req: Request<Incoming>,
        app: AppProtocol,
        orig_dst: Option<SocketAddr>,
    ) -> Response<Body> {
        let mut req = req.map(incoming);
        let obs = Observation::start(&self.telemetry, Direction::Outbound, &mut req);
        let mut target = Target {
            service: UNKNOWN_SERVICE.into(),
            ..Target::default()
        };
        match self.route(req, app, &mut target, orig_dst).await {
            Ok(rsp) => obs.respond(target, rsp, None),
            Err(e) => {
                tracing::info!(error = %e, reason = e.reason(), "outbound request failed");
                obs.respond(target, e.to_response(), Some(e.reason()))
            }
        }
    }

    /// Sends the request on; fills in `target` (for telemetry) as routing
    /// learns where the request goes.
    async fn route(
        &self,
        mut req: Request<Body>,
        app: AppProtocol,
        target: &mut Target,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let (authority, host, port, mut dest) = self
            .destination(crate::http::authority(&req), req.uri(), orig_dst)
            .await?;
        let mut timeout = dest.request_timeout;
        if !dest.routes.is_empty() {
            // HTTPRoutes: the first matching rule picks a backend service by
            // weight.
            let route = dest
                .routes
                .iter()
                .find(|r| r.matches(&req))
                .ok_or_else(|| ProxyError::NoRoute(format!("{host}:{port}")))?;
            let backend = route
                .pick_backend()
                .ok_or_else(|| ProxyError::NoEndpoints(route.name.clone()))?;
            timeout = route.timeout.or(timeout);
            target.route = route.name.clone();
            let (bhost, bport) = backend
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse().ok()?)))
                .unwrap_or((backend, port));
            dest = self.resolve(bhost, bport).await?;
        }
        target.service = dest.service.clone();
        target.namespace = dest.namespace.clone();
        let endpoint = self.pick(&dest)?;
        target.upstream = Some(endpoint.proxy.unwrap_or(endpoint.addr));
        if endpoint.proxy.is_some() && self.clients.uses_tls(endpoint.identity.as_deref()) {
            target.tls = true;
            target.peer_identity = endpoint.identity.clone().unwrap_or_default();
        }

        if req.method() == Method::CONNECT {
            let upstream = match endpoint.proxy {
                Some(peer) => {
                    tcp::connect_mesh(
                        &self.clients,
                        peer,
                        endpoint.identity.as_deref(),
                        endpoint.addr.port(),
                    )
                    .await?
                }
                None => Box::new(self.clients.connect(endpoint.addr).await?) as crate::client::BoxIo,
            };
            return Ok(tcp::tunnel(req, upstream, &self.drain));
        }
        if is_upgrade(&req) {
            return match endpoint.proxy {
                Some(peer) => {
                    let io = tcp::connect_mesh(
                        &self.clients,
                        peer,
                        endpoint.identity.as_deref(),
                        endpoint.addr.port(),
                    )
                    .await?;
                    tcp::upgrade(req, io, peer, &self.drain).await
                }
                None => {
                    let io = self.clients.connect(endpoint.addr).await?;
                    tcp::upgrade(req, io, endpoint.addr, &self.drain).await
                }
            };
        }

        // A peer we cannot connect to got nothing: try one other endpoint
        // before giving up (the resilience work adds budgets and backoff).
        let mut endpoint = endpoint;
        if let Some(peer) = endpoint.proxy {
            if let Err(e) = self.clients.ready_h2(peer, endpoint.identity.as_deref()).await {
                match self.pick_other(&dest, &endpoint) {
                    Some(other) if e.is_retryable() => {
                        tracing::debug!(error = %e, next = %other.addr, "connect failed; trying another endpoint");
                        target.upstream = Some(other.proxy.unwrap_or(other.addr));
                        target.tls =
                            other.proxy.is_some() && self.clients.uses_tls(other.identity.as_deref());
                        target.peer_identity = if target.tls {
                            other.identity.clone().unwrap_or_default()
                        } else {
                            String::new()
                        };
                        endpoint = other;
                    }
                    _ => return Err(e),
                }
            }
        }
        strip_hop_by_hop(req.headers_mut());
        let send = self.send(req, app, &authority, &endpoint);
        let rsp = match timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .map_err(|_| ProxyError::Timeout(t))??,
            None => send.await?,
        };
        let mut rsp = rsp.map(incoming);
        strip_hop_by_hop(rsp.headers_mut());
        Ok(rsp)
    }

    async fn send(
        &self,
        mut req: Request<Body>,
        app: AppProtocol,
        authority: &http::uri::Authority,
        endpoint: &Endpoint,
    ) -> Result<Response<Incoming>, ProxyError> {
        let rsp = match endpoint.proxy {
            Some(peer) => {
                // Over the mesh: always HTTP/2, with the app's protocol and
                // port for the far proxy.
                let headers = req.headers_mut();
                headers.insert(WEFT_PROTO, app.header_value());
                headers.insert(WEFT_PORT, endpoint.addr.port().into());
                *req.uri_mut() = absolute_uri(authority, req.uri());
                *req.version_mut() = Version::HTTP_2;
                self.clients
                    .send_h2(peer, endpoint.identity.as_deref(), req)
                    .await?
            }
            None => match app {
                AppProtocol::Http2 => {
                    *req.uri_mut() = absolute_uri(authority, req.uri());
                    self.clients.send_h2(endpoint.addr, None, req).await?
                }
                AppProtocol::Http1 => {
                    if !req.headers().contains_key(http::header::HOST) {
                        req.headers_mut().insert(
                            http::header::HOST,
                            authority.as_str().parse().expect("authority is a valid header"),
                        );
                    }
                    self.clients.send_h1(endpoint.addr, req).await?
                }
            },
        };
        Ok(rsp)
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Arc<Destination>, ProxyError> {
        self.discover
            .resolve(host, port)
            .await
            .ok_or_else(|| ProxyError::NoEndpoints(format!("{host}:{port}")))
    }

    /// Round robin over the service's endpoints (the resilience work brings
    /// P2C over peak-EWMA).
    /// Another endpoint than `not` (the next one in round-robin order).
    fn pick_other(&self, dest: &Destination, not: &Endpoint) -> Option<Endpoint> {
        let n = dest.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &dest.endpoints[(start + i) % n])
            .find(|e| *e != not)
            .cloned()
    }

    fn pick(&self, dest: &Destination) -> Result<Endpoint, ProxyError> {
        let endpoints = &dest.endpoints;
        if endpoints.is_empty() {
            return Err(ProxyError::NoEndpoints(dest.service.clone()));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Ok(endpoints[i].clone())
    }
}
