//! Byte streams: CONNECT tunnels, HTTP/1 upgrades, and redirected non-HTTP
//! connections (opaque, TLS from the app, server-speaks-first ports),
//! which go to their original destination. All open their stream with
//! one function, [`Outbound::connect`]: through the peer's proxy
//! (`WEFT-TCP/1`, mTLS) when the endpoint is meshed, else straight to it
//! (`protocol="passthrough"` in the TCP metrics).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use super::call::{pick, record, Called};
use super::upstream::dialled;
use super::Outbound;
use crate::client::BoxIo;
use crate::discover::{Destination, Endpoint};
use crate::errors::ProxyError;
use crate::http::Body;
use crate::metrics::{Detected, Direction};
use crate::resilience::retry::Outcome;
use crate::tcp;
use crate::telemetry::{ConnectionObservation, Target};

impl Outbound {
    /// Who a stream to `dest` (through `endpoint`) connects to, for its
    /// metrics.
    fn stream_target(&self, dest: &Destination, endpoint: Option<&Endpoint>) -> Target {
        let target = Target {
            service: dest.service.clone(),
            namespace: dest.namespace.clone(),
            ..Target::default()
        };
        self.describe(target, endpoint)
    }

    /// Opens a byte stream to one endpoint.
    async fn connect(&self, endpoint: &Endpoint) -> Result<BoxIo, ProxyError> {
        match endpoint.proxy {
            Some(peer) => {
                tcp::connect_mesh(
                    &self.clients,
                    peer,
                    endpoint.identity.as_deref(),
                    endpoint.addr.port(),
                )
                .await
            }
            None => self
                .clients
                .connect(endpoint.addr)
                .await
                .map(|s| Box::new(s) as BoxIo),
        }
    }

    /// CONNECT tunnels and upgrades: balanced per connection; a connection
    /// failure tries one other endpoint.
    pub(super) async fn tunnel(&self, req: Request<Body>, dest: &Arc<Destination>) -> Called {
        let metrics = &self.telemetry.metrics.resilience;
        let mut avoid = None;
        let mut last = None;
        let (io, upstream) = loop {
            // A failed connect is tried once elsewhere: the first may probe.
            let endpoint = match pick(dest, avoid, avoid.is_none()) {
                Ok(p) => last.insert(p.endpoint),
                Err(e) => return Called { result: Err(e), last },
            };
            match self.connect(endpoint).await {
                Ok(io) => {
                    record(dest, &endpoint.stats, false, metrics);
                    break (io, dialled(endpoint));
                }
                Err(e) => {
                    let connect_failure = e.outcome() == Some(Outcome::ConnectFailure);
                    if connect_failure {
                        record(dest, &endpoint.stats, true, metrics);
                    }
                    if avoid.is_some() || !connect_failure || dest.endpoints.len() < 2 {
                        return Called { result: Err(e), last };
                    }
                    avoid = Some(dialled(endpoint));
                }
            }
        };
        let target = self.stream_target(dest, last.as_ref());
        let telemetry = self.telemetry.clone();
        let stream = move || telemetry.stream(Direction::Outbound, &target);
        let result = if req.method() == Method::CONNECT {
            let port = req.uri().port_u16().unwrap_or(0);
            Ok(tcp::tunnel(req, io, port, &self.limits, &self.drain, stream))
        } else {
            tcp::upgrade(req, io, upstream, &self.limits, &self.drain, stream).await
        };
        Called { result, last }
    }

    /// Forwards a redirected non-HTTP connection to its original
    /// destination (balanced per connection), until both sides are done.
    pub(super) async fn forward<I>(&self, io: I, dst: SocketAddr, guard: ConnectionObservation)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let dest = self.resolve_addr(dst).await;
        self.forward_to(io, dest, dst.port(), &dst.to_string(), guard)
            .await;
    }

    /// Forwards a non-HTTP connection to `dest` (balanced per connection;
    /// a connection failure tries one other endpoint), until both sides
    /// are done. `what` names the destination in logs.
    pub(super) async fn forward_to<I>(
        &self,
        io: I,
        dest: Result<Arc<Destination>, ProxyError>,
        port: u16,
        what: &str,
        mut guard: ConnectionObservation,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let dest = match dest {
            Ok(dest) => dest,
            Err(e) => {
                guard.detected(Detected::Opaque);
                tracing::info!(destination = what, error = %e, "outbound TCP refused; closing");
                return;
            }
        };
        let metrics = &self.telemetry.metrics.resilience;
        let mut avoid = None;
        let (endpoint, upstream) = loop {
            let endpoint = match pick(&dest, avoid, avoid.is_none()) {
                Ok(p) => p.endpoint,
                Err(e) => {
                    guard.detected(Detected::Opaque);
                    tracing::info!(destination = what, error = %e, "outbound TCP has nowhere to go; closing");
                    return;
                }
            };
            match self.connect(&endpoint).await {
                Ok(upstream) => {
                    record(&dest, &endpoint.stats, false, metrics);
                    break (endpoint, upstream);
                }
                Err(e) => {
                    let connect_failure = e.outcome() == Some(Outcome::ConnectFailure);
                    if connect_failure {
                        record(&dest, &endpoint.stats, true, metrics);
                    }
                    if avoid.is_some() || !connect_failure || dest.endpoints.len() < 2 {
                        guard.detected(Detected::Opaque);
                        tracing::info!(destination = what, error = %e, "outbound TCP could not connect; closing");
                        return;
                    }
                    avoid = Some(dialled(&endpoint));
                }
            }
        };
        guard.detected(if endpoint.proxy.is_some() {
            Detected::Opaque
        } else {
            Detected::Passthrough
        });
        tracing::debug!(destination = what, via = ?endpoint.proxy, service = %dest.service, "forwarding outbound TCP");
        let stream = self
            .telemetry
            .stream(Direction::Outbound, &self.stream_target(&dest, Some(&endpoint)));
        tcp::splice(io, upstream, &self.limits, port, stream).await;
    }
}
