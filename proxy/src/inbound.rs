//! The inbound side: traffic for the local app, from peer proxies over the
//! mesh or (permissive) from unmeshed clients.
//!
//! Per connection: detect → HTTP (from a peer: HTTP/2 with `weft-proto` and
//! `weft-port`, turned back into the app's protocol) or opaque TCP (from a
//! peer: the `WEFT-TCP/1 <port>` preamble) → the app on `app_ip:port`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};

use crate::client::Clients;
use crate::detect::{detect, Protocol};
use crate::drain;
use crate::errors::ProxyError;
use crate::http::{absolute_uri, authority, incoming, is_upgrade, strip_hop_by_hop, AppProtocol, Body};
use crate::http::{WEFT_PORT, WEFT_PROTO};
use crate::metrics::Direction;
use crate::server::{serve_http, HttpSettings};
use crate::tcp;
use crate::telemetry::{Observation, Target, Telemetry};

pub struct Inbound {
    /// (service, namespace) this proxy fronts, for metrics.
    pub workload: (String, String),
    pub app_ip: IpAddr,
    /// The app's ports; the first is the default.
    pub app_ports: Vec<u16>,
    pub clients: Clients,
    pub telemetry: Arc<Telemetry>,
    pub http: HttpSettings,
    pub detect_timeout: std::time::Duration,
    pub drain: drain::Watch,
}

impl Inbound {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = self.drain.signaled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    self.drain
                        .spawn(async move { this.connection(stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The app address for `port` (the default port when `None`).
    fn app_addr(&self, port: Option<u16>) -> Result<SocketAddr, ProxyError> {
        let port = match port {
            Some(p) if self.app_ports.contains(&p) => p,
            Some(p) => return Err(ProxyError::UnknownAppPort(p)),
            None => *self.app_ports.first().ok_or(ProxyError::UnknownAppPort(0))?,
        };
        Ok(SocketAddr::new(self.app_ip, port))
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut guard = self.telemetry.connection(Direction::Inbound, peer);
        let (protocol, mut io) = match detect(guard.meter(stream), self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "inbound detection failed");
                return;
            }
        };
        let (port, name) = match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let app = if protocol == Protocol::Http1 {
                    AppProtocol::Http1
                } else {
                    AppProtocol::Http2
                };
                guard.detected(if app == AppProtocol::Http1 {
                    "http1"
                } else {
                    "http2"
                });
                let this = self.clone();
                serve_http(io, app, &self.http, &self.drain, move |req| {
                    this.clone().request(req, app)
                })
                .await;
                return;
            }
            Protocol::MeshTcp { port } => {
                let line = io.prefix().iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
                io.consume_prefix(line);
                (Some(port), "mesh_tcp")
            }
            Protocol::Opaque => (None, "opaque"),
        };
        guard.detected(name);
        let addr = match self.app_addr(port) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%peer, error = %e, "inbound TCP refused");
                return;
            }
        };
        match self.clients.connect(addr).await {
            Ok(app) => {
                tcp::splice(io, app).await;
            }
            Err(e) => tracing::info!(%peer, error = %e, "inbound TCP could not reach the app"),
        }
    }

    async fn request(self: Arc<Self>, req: Request<Incoming>, conn: AppProtocol) -> Response<Body> {
        let mut req = req.map(incoming);
        let obs = Observation::start(&self.telemetry, Direction::Inbound, &mut req);
        // The service this proxy fronts, from its own config: callers
        // cannot mint label values.
        let mut target = Target {
            service: self.workload.0.clone(),
            namespace: self.workload.1.clone(),
            ..Target::default()
        };
        match self.route(req, conn, &mut target).await {
            Ok(rsp) => obs.respond(target, rsp, None),
            Err(e) => {
                tracing::info!(error = %e, reason = e.reason(), "inbound request failed");
                obs.respond(target, e.to_response(), Some(e.reason()))
            }
        }
    }

    async fn route(
        &self,
        mut req: Request<Body>,
        conn: AppProtocol,
        target: &mut Target,
    ) -> Result<Response<Body>, ProxyError> {
        let headers = req.headers_mut();
        let app = headers
            .remove(WEFT_PROTO)
            .and_then(|v| AppProtocol::from_header(&v))
            .unwrap_or(conn);
        let port = headers
            .remove(WEFT_PORT)
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
        let addr = self.app_addr(port)?;
        target.upstream = Some(addr);

        if conn == AppProtocol::Http1 && is_upgrade(&req) {
            let io = self.clients.connect(addr).await?;
            return tcp::upgrade(req, io, addr, &self.drain).await;
        }
        let authority = authority(&req);
        strip_hop_by_hop(req.headers_mut());
        let rsp = match app {
            AppProtocol::Http1 => {
                if let Some(a) = &authority {
                    if !req.headers().contains_key(http::header::HOST) {
                        req.headers_mut().insert(
                            http::header::HOST,
                            a.as_str().parse().expect("authority is a valid header"),
                        );
                    }
                }
                self.clients.send_h1(addr, req).await?
            }
            AppProtocol::Http2 => {
                let a = authority
                    .unwrap_or_else(|| addr.to_string().parse().expect("socket address is an authority"));
                *req.uri_mut() = absolute_uri(&a, req.uri());
                *req.version_mut() = Version::HTTP_2;
                self.clients.send_h2(addr, req).await?
            }
        };
        let mut rsp = rsp.map(incoming);
        strip_hop_by_hop(rsp.headers_mut());
        Ok(rsp)
    }
}
