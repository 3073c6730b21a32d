//! The outbound side: what the local app sends out.
//!
//! Apps use the outbound listener explicitly, as an HTTP proxy
//! (absolute-form URIs, `CONNECT host:port`) or by naming the service in
//! `Host` / `:authority`. Per request: find the destination → pick an
//! endpoint → send it over the mesh (HTTP/2 to the peer proxy) or directly.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::client::Clients;
use crate::detect::{detect, Protocol};
use crate::discover::{Destination, Discover, Endpoint};
use crate::drain;
use crate::errors::{is_grpc, is_grpc_content, ProxyError};
use crate::http::{absolute_uri, incoming, is_upgrade, strip_hop_by_hop, AppProtocol, Body};
use crate::http::{WEFT_PORT, WEFT_PROTO};
use crate::metrics::{Direction, UNKNOWN_SERVICE};
use crate::resilience::balance::{self, NoEndpoint};
use crate::resilience::body::{grpc_is_failure, PendingReport, ResponseBody};
use crate::resilience::bulkhead::Shed;
use crate::resilience::metrics::{ResilienceMetrics, RetryLabels};
use crate::resilience::retry::{self, Outcome, ReplayBody};
use crate::resilience::{self, EndpointStats};
use crate::server::{accept_loop, serve_http, HttpSettings};
use crate::tcp;
use crate::telemetry::{Observation, Target, Telemetry};

mod transparent;
pub use transparent::{Interception, PASSTHROUGH};

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

pub struct Outbound {
    pub discover: Arc<dyn Discover>,
    pub clients: Clients,
    pub telemetry: Arc<Telemetry>,
    pub http: HttpSettings,
    pub detect_timeout: std::time::Duration,
    pub drain: drain::Watch,
    /// Redirected connections (`weft-proxy init`): see [`transparent`].
    pub interception: Interception,
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
        let grpc = is_grpc(&req);
        let obs = Observation::start(&self.telemetry, Direction::Outbound, &mut req);
        let mut target = Target {
            service: UNKNOWN_SERVICE.into(),
            ..Target::default()
        };
        match self.route(req, app, &mut target, orig_dst).await {
            Ok(rsp) => obs.respond(target, rsp, None),
            Err(e) => {
                tracing::info!(error = %e, reason = e.reason(), "outbound request failed");
                obs.respond(target, e.to_response(grpc), Some(e.reason()))
            }
        }
    }

    /// Sends the request on; fills in `target` (for telemetry) as routing
    /// learns where the request goes. The order of the resilience
    /// mechanisms is explained in docs/resilience.md.
    async fn route(
        &self,
        req: Request<Body>,
        app: AppProtocol,
        target: &mut Target,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let start = Instant::now();
        let (authority, host, port, mut dest) = self
            .destination(crate::http::authority(&req), req.uri(), orig_dst)
            .await?;
        // The timeout of the service the client called: its matching
        // route rule's, else its TrafficPolicy's.
        let mut timeout = dest.policy.timeouts.request;
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

        if req.method() == Method::CONNECT || is_upgrade(&req) {
            return self.tunnel(req, &dest, target).await;
        }

        // gRPC callers bring their own deadline; the tighter one wins.
        let grpc_timeout = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| retry::parse_grpc_timeout(v.as_bytes()));
        let timeout = [timeout, grpc_timeout].into_iter().flatten().min();
        let deadline = timeout.map(|t| start + t);
        let metrics = &self.telemetry.metrics.resilience;
        let call = async {
            if let Some(fault) = &dest.policy.fault {
                let injection = fault.roll();
                if let Some(delay) = injection.delay {
                    metrics
                        .faults
                        .get_or_create(&ResilienceMetrics::reason(
                            &dest.service,
                            &dest.namespace,
                            "delay",
                        ))
                        .inc();
                    tokio::time::sleep(delay).await;
                }
                if let Some(status) = injection.abort {
                    metrics
                        .faults
                        .get_or_create(&ResilienceMetrics::reason(
                            &dest.service,
                            &dest.namespace,
                            "abort",
                        ))
                        .inc();
                    return Err(ProxyError::FaultInjected(status));
                }
            }
            let permit = dest.shared.bulkhead.acquire().await.map_err(|shed| {
                let reason = match shed {
                    Shed::QueueFull => "queue_full",
                    Shed::Timeout => "pending_timeout",
                };
                metrics
                    .load_shed
                    .get_or_create(&ResilienceMetrics::reason(&dest.service, &dest.namespace, reason))
                    .inc();
                ProxyError::LoadShed(dest.service.clone())
            })?;
            self.attempts(req, app, &authority, &dest, deadline, permit, target)
                .await
        };
        match (deadline, timeout) {
            (Some(deadline), Some(t)) => tokio::time::timeout_at(deadline, call)
                .await
                .map_err(|_| ProxyError::Timeout(t))?,
            _ => call.await,
        }
    }

    /// Tries endpoints until one answers in a way the retry policy
    /// accepts, or attempts, budget, body replay or time run out.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        req: Request<Body>,
        app: AppProtocol,
        authority: &http::uri::Authority,
        dest: &Arc<Destination>,
        deadline: Option<Instant>,
        permit: OwnedSemaphorePermit,
        target: &mut Target,
    ) -> Result<Response<Body>, ProxyError> {
        let policy = &dest.policy;
        let retry = &policy.retry;
        let metrics = &self.telemetry.metrics.resilience;
        let grpc = is_grpc(&req);
        let (mut head, body) = req.into_parts();
        strip_hop_by_hop(&mut head.headers);
        // Only a request that may be retried after it was sent keeps a
        // copy of its body (and headers).
        let replay = retry.attempts > 0 && !retry.on.connect_only() && retry.method_allowed(&head.method);
        let mut body = if replay {
            RequestBody::Replay(ReplayBody::new(body))
        } else {
            RequestBody::Once(Some(body))
        };
        let mut head = Some(head);
        dest.shared.budget.deposit();
        let mut avoid = None;
        let mut retries = 0;
        loop {
            let (endpoint, probe) = pick(dest, avoid)?;
            self.describe(target, &endpoint);
            let in_flight = endpoint.stats.start();
            let mut probe = ProbeGuard(probe.then(|| endpoint.stats.clone()));
            let sent = Instant::now();
            let result = self
                .try_once(
                    &endpoint, &mut head, &mut body, app, authority, deadline, grpc, policy,
                )
                .await;
            let outcome = match &result {
                Ok(rsp) => Some(Outcome::Response {
                    status: rsp.status(),
                    grpc: rsp
                        .headers()
                        .get(GRPC_STATUS)
                        .and_then(|v| v.to_str().ok()?.parse().ok()),
                }),
                Err(e) => outcome_of(e),
            };
            let failed = match outcome {
                Some(Outcome::Response { status, grpc }) => {
                    status.is_server_error() || grpc.is_some_and(grpc_is_failure)
                }
                Some(_) => true,
                None => false,
            };
            if outcome.is_some() {
                if failed {
                    endpoint.stats.observe_failure(sent.elapsed(), Instant::now());
                } else {
                    endpoint.stats.observe(sent.elapsed(), Instant::now());
                }
            }
            // A gRPC response's verdict comes with its trailers.
            let defer = matches!(&result, Ok(rsp) if !failed && is_grpc_response(rsp));
            if !defer && outcome.is_some() {
                resilience::record(dest, &endpoint.stats, failed, metrics);
            }
            if retries > 0 {
                let result = if failed { "failure" } else { "success" };
                metrics.retries.get_or_create(&retry_labels(dest, result)).inc();
            }
            let retryable = outcome.is_some_and(|o| retry.retries(o))
                && retries < retry.attempts
                && body.can_send_again(outcome)
                && deadline.is_none_or(|d| Instant::now() < d);
            if retryable {
                if dest.shared.budget.withdraw() {
                    retries += 1;
                    avoid = Some(endpoint.addr);
                    tracing::debug!(endpoint = %endpoint.addr, ?outcome, retries, "retrying");
                    drop(result);
                    drop(in_flight);
                    tokio::time::sleep(retry.backoff(retries)).await;
                    continue;
                }
                metrics
                    .retries
                    .get_or_create(&retry_labels(dest, "budget_exhausted"))
                    .inc();
            }
            let rsp = result?;
            let (in_flight, report) = if defer {
                let was_probe = probe.0.is_some();
                probe.disarm();
                (
                    None,
                    Some(PendingReport {
                        dest: dest.clone(),
                        in_flight,
                        probe: was_probe,
                        metrics: metrics.clone(),
                    }),
                )
            } else {
                (Some(in_flight), None)
            };
            let idle = policy.timeouts.idle;
            return Ok(
                rsp.map(|b| ResponseBody::new(b, Some(permit), in_flight, report, idle).boxed_unsync())
            );
        }
    }

    /// One try at one endpoint: connect (meshed or HTTP/2: first, so a
    /// connection failure leaves the request unsent), then send, within
    /// the per-try timeout.
    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        endpoint: &Endpoint,
        head: &mut Option<http::request::Parts>,
        body: &mut RequestBody,
        app: AppProtocol,
        authority: &http::uri::Authority,
        deadline: Option<Instant>,
        grpc: bool,
        policy: &resilience::Policy,
    ) -> Result<Response<Body>, ProxyError> {
        let per_try = policy.timeouts.per_try;
        let attempt = async {
            let pooled = endpoint
                .proxy
                .or((app == AppProtocol::Http2).then_some(endpoint.addr));
            if let Some(peer) = pooled {
                let identity = endpoint.proxy.and(endpoint.identity.as_deref());
                let ready = self.clients.ready_h2(peer, identity);
                match policy.timeouts.connect {
                    Some(t) => tokio::time::timeout(t, ready)
                        .await
                        .map_err(|_| ProxyError::ConnectTimeout(peer))??,
                    None => ready.await?,
                }
            }
            let mut req = body.request(head).ok_or_else(|| ProxyError::Upstream {
                addr: endpoint.addr,
                source: "the request body cannot be sent again".into(),
            })?;
            if grpc {
                // Propagate what is left of the deadline.
                let left = [
                    deadline.map(|d| d.saturating_duration_since(Instant::now())),
                    per_try,
                ]
                .into_iter()
                .flatten()
                .min();
                if let Some(left) = left {
                    if let Ok(v) = http::HeaderValue::from_str(&retry::format_grpc_timeout(left)) {
                        req.headers_mut().insert(GRPC_TIMEOUT, v);
                    }
                }
            }
            let rsp = self.send(req, app, authority, endpoint).await?;
            let mut rsp = rsp.map(incoming);
            strip_hop_by_hop(rsp.headers_mut());
            Ok(rsp)
        };
        match per_try {
            Some(t) => tokio::time::timeout(t, attempt)
                .await
                .map_err(|_| ProxyError::PerTryTimeout(t))?,
            None => attempt.await,
        }
    }

    /// Fills in where the request is going, for telemetry.
    fn describe(&self, target: &mut Target, endpoint: &Endpoint) {
        target.upstream = Some(endpoint.proxy.unwrap_or(endpoint.addr));
        target.tls = endpoint.proxy.is_some() && self.clients.uses_tls(endpoint.identity.as_deref());
        target.peer_identity = if target.tls {
            endpoint.identity.clone().unwrap_or_default()
        } else {
            String::new()
        };
    }

    /// CONNECT tunnels and upgrades: balanced per connection; a connection
    /// failure tries one other endpoint.
    async fn tunnel(
        &self,
        req: Request<Body>,
        dest: &Arc<Destination>,
        target: &mut Target,
    ) -> Result<Response<Body>, ProxyError> {
        let metrics = &self.telemetry.metrics.resilience;
        let mut avoid = None;
        let (io, endpoint) = loop {
            let (endpoint, _probe) = pick(dest, avoid)?;
            self.describe(target, &endpoint);
            let connected = match endpoint.proxy {
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
                    .map(|s| Box::new(s) as crate::client::BoxIo),
            };
            match connected {
                Ok(io) => {
                    resilience::record(dest, &endpoint.stats, false, metrics);
                    break (io, endpoint);
                }
                Err(e) => {
                    let connect_failure = matches!(outcome_of(&e), Some(Outcome::ConnectFailure));
                    if connect_failure {
                        resilience::record(dest, &endpoint.stats, true, metrics);
                    }
                    if avoid.is_some() || !connect_failure || dest.endpoints.len() < 2 {
                        return Err(e);
                    }
                    avoid = Some(endpoint.addr);
                }
            }
        };
        if req.method() == Method::CONNECT {
            return Ok(tcp::tunnel(req, io, &self.drain));
        }
        tcp::upgrade(req, io, endpoint.proxy.unwrap_or(endpoint.addr), &self.drain).await
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
}

/// What is sent to an endpoint: once, or replayed from a buffer.
enum RequestBody {
    Once(Option<Body>),
    Replay(ReplayBody),
}

impl RequestBody {
    /// The request for the next try; `None` when it cannot be sent again.
    fn request(&mut self, head: &mut Option<http::request::Parts>) -> Option<Request<Body>> {
        match self {
            RequestBody::Once(body) => {
                let body = body.take()?;
                Some(Request::from_parts(head.take()?, body))
            }
            RequestBody::Replay(body) => {
                let h = head.as_ref()?;
                let mut req = Request::new(body.replay().boxed_unsync());
                *req.method_mut() = h.method.clone();
                *req.uri_mut() = h.uri.clone();
                *req.version_mut() = h.version;
                *req.headers_mut() = h.headers.clone();
                Some(req)
            }
        }
    }

    /// Whether another try can carry the request after `outcome`: always
    /// after a connection failure (nothing was sent), otherwise only a
    /// replayable body still within its buffer.
    fn can_send_again(&self, outcome: Option<Outcome>) -> bool {
        match self {
            RequestBody::Once(body) => body.is_some(),
            RequestBody::Replay(body) => {
                matches!(outcome, Some(Outcome::ConnectFailure)) || body.can_replay()
            }
        }
    }
}

/// How a failed try ended, for the retry policy and the breaker; `None`
/// for failures that say nothing about the endpoint.
fn outcome_of(e: &ProxyError) -> Option<Outcome> {
    match e {
        ProxyError::ConnectFailed { .. }
        | ProxyError::ConnectTimeout(_)
        | ProxyError::Tls { .. }
        | ProxyError::IdentityMismatch { .. } => Some(Outcome::ConnectFailure),
        ProxyError::Upstream { .. } => Some(Outcome::Reset),
        ProxyError::PerTryTimeout(_) => Some(Outcome::PerTryTimeout),
        _ => None,
    }
}

/// A gRPC response whose status comes in trailers (not trailers-only).
fn is_grpc_response<B>(rsp: &Response<B>) -> bool {
    is_grpc_content(rsp.headers()) && !rsp.headers().contains_key(GRPC_STATUS)
}

/// The destination's next endpoint (and whether it is a breaker probe),
/// avoiding `avoid` when another is usable; no endpoint is an error.
fn pick(dest: &Destination, avoid: Option<SocketAddr>) -> Result<(Endpoint, bool), ProxyError> {
    balance::pick(
        dest.policy.load_balancer,
        &dest.endpoints,
        &dest.shared.rr,
        avoid,
        Instant::now(),
    )
    .map(|(e, probe)| (e.clone(), probe))
    .map_err(|e| match e {
        NoEndpoint::Empty => ProxyError::NoEndpoints(dest.service.clone()),
        NoEndpoint::AllEjected => ProxyError::CircuitOpen(dest.service.clone()),
    })
}

fn retry_labels(dest: &Destination, result: &'static str) -> RetryLabels {
    RetryLabels {
        service: dest.service.clone(),
        namespace: dest.namespace.clone(),
        result,
    }
}

/// Lets another request probe an ejected endpoint when this probe ends
/// without a verdict (e.g. the caller went away).
struct ProbeGuard(Option<Arc<EndpointStats>>);

impl ProbeGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            stats.breaker.probe_abandoned();
        }
    }
}
