//! The call: one routed request to one destination, with its resilience
//! pipeline. Within the request deadline: fault injection, the bulkhead,
//! then tries — pick an endpoint, one try ([`Upstream`]), judge it
//! ([`judge`]), and retry (attempts, replayable body, budget, time left)
//! after a full-jitter backoff. Why in this order: docs/resilience.md.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, FutureExt};

use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::upstream::{dialled, Upstream};
use super::verdict::{judge, NotDelivered, RequestBody, Retries, TryResult, Verdict};
use crate::discover::{Destination, Endpoint};
use crate::errors::{ProxyError, WEFT_UNSENT};
use crate::grpc;
use crate::http::{strip_hop_by_hop, AppProtocol, Body};
use crate::resilience::balance::{self, InFlight, NoEndpoint};
use crate::resilience::body::{ResponseBody, TrailersVerdict};
use crate::resilience::bulkhead::Shed;
use crate::resilience::metrics::{ReasonLabels, ResilienceMetrics, RetryLabels};
use crate::resilience::retry::ReplayBody;
use crate::resilience::EndpointStats;

/// One request on its way to one destination.
pub struct Call<'a> {
    pub dest: &'a Arc<Destination>,
    /// What the app speaks (the far proxy turns it back into that).
    pub app: AppProtocol,
    pub authority: &'a Authority,
    pub deadline: Option<Deadline>,
    /// Each try's timeout, when the route sets one (else the destination
    /// policy's).
    pub per_try: Option<Duration>,
    /// A gRPC request: what is left of the deadline travels in
    /// `grpc-timeout`.
    pub grpc: bool,
}

/// When the call must have its response headers.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    /// The timeout it came from, for the error.
    pub after: Duration,
}

impl Deadline {
    pub fn new(start: Instant, timeout: Option<Duration>) -> Option<Self> {
        timeout.map(|after| Deadline {
            at: start + after,
            after,
        })
    }
}

/// How a call (or tunnel) ended, and the endpoint it tried last.
pub struct Called {
    pub result: Result<Response<Body>, ProxyError>,
    pub last: Option<Endpoint>,
}

impl Called {
    fn failed(e: ProxyError, last: Option<Endpoint>) -> Self {
        Called { result: Err(e), last }
    }
}

/// Runs `f` until the deadline, if any.
fn within<F: Future>(
    deadline: Option<Deadline>,
    f: F,
) -> impl Future<Output = Result<F::Output, ProxyError>> {
    bounded(deadline.map(|d| (d.at, ProxyError::Timeout(d.after))), f)
}

/// Runs `f` until the limit's instant, if any; then fails with its error.
///
/// A plain function on purpose, as are [`CutProbe`] and the tries'
/// futures built in one expression: an `async fn` (or a future kept in a
/// local) that takes a future and awaits it keeps the argument and the
/// awaited copy side by side in its state. Nested three deep, that made
/// the outbound request's future 23 KiB, copied whole into its box for
/// every request.
fn bounded<F: Future, E>(limit: Option<(Instant, E)>, f: F) -> impl Future<Output = Result<F::Output, E>> {
    match limit {
        Some((at, late)) => Either::Left(tokio::time::timeout_at(at, f).map(|r| r.map_err(|_| late))),
        None => Either::Right(f.map(Ok)),
    }
}

pin_project! {
    /// A probe's try `f`, cut off at the instant (output `None`) if the
    /// body is still kept for another try then; otherwise run to its end.
    struct CutProbe<F> {
        #[pin]
        f: F,
        #[pin]
        cut: Option<Sleep>,
        kept: Option<ReplayBody>,
    }
}

impl<F: Future> CutProbe<F> {
    fn new(cut: Option<(Instant, ReplayBody)>, f: F) -> Self {
        let (cut, kept) = cut.map(|(at, kept)| (tokio::time::sleep_until(at), kept)).unzip();
        CutProbe { f, cut, kept }
    }
}

impl<F: Future> Future for CutProbe<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.f.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let Some(cut) = this.cut.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        if cut.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.kept.as_ref().is_some_and(ReplayBody::can_replay) {
            return Poll::Ready(None);
        }
        // Past the cut, but the body went out unkept: nowhere else to
        // send it, so the try runs to its end (`f` is already polled).
        this.cut.set(None);
        Poll::Pending
    }
}

/// Sends one routed request: fault injection and the bulkhead, then the
/// tries, all within the deadline.
pub async fn call<U: Upstream>(
    upstream: &U,
    call: &Call<'_>,
    req: Request<Body>,
    metrics: &ResilienceMetrics,
) -> Called {
    let permit = match within(call.deadline, admit(call.dest, metrics)).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(e)) | Err(e) => return Called::failed(e, None),
    };
    tries(upstream, call, req, permit, metrics).await
}

/// Fault injection (for drills), then a slot in the destination's
/// bulkhead.
async fn admit(dest: &Destination, metrics: &ResilienceMetrics) -> Result<OwnedSemaphorePermit, ProxyError> {
    let count = |family: &Family<ReasonLabels, Counter>, reason| {
        family
            .get_or_create(&ResilienceMetrics::reason(&dest.service, &dest.namespace, reason))
            .inc();
    };
    if let Some(fault) = &dest.policy.fault {
        let injection = fault.roll();
        if let Some(delay) = injection.delay {
            count(&metrics.faults, "delay");
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = injection.abort {
            count(&metrics.faults, "abort");
            return Err(ProxyError::FaultInjected(status));
        }
    }
    dest.shared.bulkhead.acquire().await.map_err(|shed| {
        let reason = match shed {
            Shed::QueueFull => "queue_full",
            Shed::Timeout => "pending_timeout",
        };
        count(&metrics.load_shed, reason);
        ProxyError::LoadShed(dest.service.to_string())
    })
}

/// Tries endpoints until one answers in a way the retry policy accepts,
/// or attempts, budget, body replay or time run out.
async fn tries<U: Upstream>(
    upstream: &U,
    call: &Call<'_>,
    req: Request<Body>,
    permit: OwnedSemaphorePermit,
    metrics: &ResilienceMetrics,
) -> Called {
    let dest = call.dest;
    let policy = &dest.policy;
    let (mut head, body) = req.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let retry_policy = policy
        .retry
        .for_request(&head.method, crate::grpc::is_grpc(&head.headers));
    let replay = RequestBody::needs_replay(&retry_policy, &head.method, dest.meshed);
    let mut body = RequestBody::new(Request::from_parts(head, body), replay);
    dest.shared.budget.deposit();
    let mut avoid = None;
    let mut retries = 0;
    let mut last = None;
    let cut_off = Verdict {
        failure: Some(true),
        report_now: true,
        retry: false,
    };
    loop {
        // A request that may still be sent elsewhere after a server saw
        // it can afford a breaker probe; others probe only when one is
        // overdue (see `Breaker::admit`).
        let recoverable = retries < retry_policy.attempts && body.replays_after_seen();
        let picked = match pick(dest, avoid, recoverable) {
            Ok(p) => p,
            Err(e) => return Called::failed(e, last),
        };
        // A probe gets half the time left, so that when the endpoint is
        // still slow the request has time to be answered elsewhere.
        let probe_cut = call
            .deadline
            .filter(|_| picked.probe && recoverable)
            .and_then(|d| {
                let now = Instant::now();
                Some((now + d.at.saturating_duration_since(now) / 2, body.kept()?))
            });
        let endpoint = last.insert(picked.endpoint);
        let mut in_try = InTry::start(endpoint, picked.probe);
        // Boxed: the try's future is 2 KiB, and the wrappers below (and
        // this loop's state) would otherwise move it whole, field by field,
        // several times per try; one copy into the box is cheaper.
        let tried = CutProbe::new(probe_cut, Box::pin(attempt(upstream, call, endpoint, &mut body)));
        let result = match within(call.deadline, tried).await {
            Ok(Some(result)) => result,
            // The probe outlived its share: a failed probe (the endpoint
            // stays out, for longer), and the request goes elsewhere. At
            // most one per ejection, so outside the retry budget.
            Ok(None) => {
                in_try.book(dest, cut_off, metrics);
                retries += 1;
                avoid = Some(dialled(endpoint));
                tracing::debug!(endpoint = %endpoint.addr, "probe too slow; sending the request elsewhere");
                continue;
            }
            // Out of time: the call ends here. The try took at least this
            // long and did not answer: a failure for the latency estimate
            // and the breaker, so a replica slower than the deadline is
            // learned and ejected (not left "unmeasured").
            Err(timeout) => {
                in_try.book(dest, cut_off, metrics);
                return Called::failed(timeout, last);
            }
        };
        let tried = TryResult::of(&result);
        let verdict = judge(
            tried,
            Retries {
                policy: &retry_policy,
                done: retries,
                time_left: call.deadline.is_none_or(|d| Instant::now() < d.at),
            },
            &body,
        );
        in_try.book(dest, verdict, metrics);
        if retries > 0 {
            let result = if verdict.failure == Some(true) {
                "failure"
            } else {
                "success"
            };
            metrics.retries.get_or_create(&retry_labels(dest, result)).inc();
        }
        if verdict.retry {
            if dest.shared.budget.withdraw() {
                retries += 1;
                avoid = Some(dialled(endpoint));
                tracing::debug!(endpoint = %endpoint.addr, outcome = ?tried.outcome, retries, "retrying");
                drop((result, in_try));
                let backoff = tokio::time::sleep(policy.retry.backoff(retries));
                if let Err(timeout) = within(call.deadline, backoff).await {
                    return Called::failed(timeout, last);
                }
                continue;
            }
            metrics
                .retries
                .get_or_create(&retry_labels(dest, "budget_exhausted"))
                .inc();
        }
        let result = result.map(|rsp| {
            let (in_flight, trailers) = in_try.hand_to_body(dest, verdict, metrics);
            let idle = policy.timeouts.idle;
            rsp.map(|b| ResponseBody::new(b, Some(permit), in_flight, trailers, idle).boxed_unsync())
        });
        return Called { result, last };
    }
}

/// One try from start to verdict: the endpoint's in-flight count, a
/// probe's claim on an ejected endpoint, and when it was sent.
struct InTry {
    in_flight: InFlight,
    probe: ProbeGuard,
    sent: Instant,
    unbooked: Unbooked,
}

/// A try dropped before its verdict (the caller went away) still tells how
/// long the endpoint took at least ([`EndpointStats::observe_at_least`]),
/// as tower's PeakEwma does when its handle drops. Not a breaker failure:
/// callers that give up must not eject a healthy endpoint.
struct Unbooked(Option<(Arc<EndpointStats>, Instant)>);

impl Drop for Unbooked {
    fn drop(&mut self) {
        if let Some((stats, sent)) = self.0.take() {
            stats.observe_at_least(sent.elapsed(), Instant::now());
        }
    }
}

impl InTry {
    fn start(endpoint: &Endpoint, probe: bool) -> Self {
        let sent = Instant::now();
        InTry {
            in_flight: endpoint.stats.start(),
            probe: ProbeGuard(probe.then(|| endpoint.stats.clone())),
            sent,
            unbooked: Unbooked(Some((endpoint.stats.clone(), sent))),
        }
    }

    /// The verdict's latency and breaker bookkeeping.
    fn book(&mut self, dest: &Destination, verdict: Verdict, metrics: &ResilienceMetrics) {
        self.unbooked.0 = None;
        let stats = self.in_flight.stats();
        match verdict.failure {
            Some(true) => stats.observe_failure(self.sent.elapsed(), Instant::now()),
            Some(false) => stats.observe(self.sent.elapsed(), Instant::now()),
            None => {}
        }
        if verdict.report_now {
            record(dest, stats, verdict.failure == Some(true), metrics);
        }
    }

    /// What the response body holds until it ends: the in-flight count,
    /// or, when the verdict waits for gRPC trailers, a callback that
    /// reports it (and holds the count).
    fn hand_to_body(
        mut self,
        dest: &Arc<Destination>,
        verdict: Verdict,
        metrics: &ResilienceMetrics,
    ) -> (Option<InFlight>, Option<TrailersVerdict>) {
        if verdict.failure != Some(false) || verdict.report_now {
            return (Some(self.in_flight), None);
        }
        let was_probe = self.probe.disarm();
        let (dest, metrics, in_flight) = (dest.clone(), metrics.clone(), self.in_flight);
        let report = move |failure: Option<bool>| match failure {
            Some(failure) => record(&dest, in_flight.stats(), failure, &metrics),
            None if was_probe => in_flight.stats().breaker.probe_abandoned(),
            None => {}
        };
        (None, Some(Box::new(report)))
    }
}

/// One try at one endpoint, within the per-try timeout: ready the
/// connection first (within the connect timeout), so that a connection
/// failure leaves the request unsent; then send.
async fn attempt<U: Upstream>(
    upstream: &U,
    call: &Call<'_>,
    endpoint: &Endpoint,
    body: &mut RequestBody,
) -> Result<Response<Body>, ProxyError> {
    let timeouts = &call.dest.policy.timeouts;
    let per_try = call.per_try.or(timeouts.per_try);
    let now = Instant::now();
    let per_try_limit = per_try.map(|t| (now + t, ProxyError::PerTryTimeout(t)));
    let connect_limit = timeouts
        .connect
        .map(|t| (now + t, ProxyError::ConnectTimeout(dialled(endpoint))));
    // One expression: `work` kept in a local would be held twice.
    let work = async {
        bounded(connect_limit, upstream.ready(endpoint, call.app)).await??;
        let mut req = body.take_request().ok_or_else(|| ProxyError::Upstream {
            addr: endpoint.addr,
            source: "the request body cannot be sent again".into(),
        })?;
        if call.grpc {
            // Propagate what is left of the deadline.
            let left = [
                call.deadline
                    .map(|d| d.at.saturating_duration_since(Instant::now())),
                per_try,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(left) = left {
                if let Ok(v) = HeaderValue::from_str(&grpc::format_timeout(left)) {
                    req.headers_mut().insert(grpc::GRPC_TIMEOUT, v);
                }
            }
        }
        let mut rsp = upstream.send(endpoint, call.app, call.authority, req).await?;
        strip_hop_by_hop(rsp.headers_mut());
        // Only a peer proxy may say its app got nothing; never passed on.
        if rsp.headers_mut().remove(WEFT_UNSENT).is_some() && endpoint.proxy.is_some() {
            rsp.extensions_mut().insert(NotDelivered);
        }
        Ok(rsp)
    };
    bounded(per_try_limit, work).await?
}

/// An endpoint the balancer chose.
pub(super) struct Picked {
    pub endpoint: Endpoint,
    /// It is ejected, and this request probes whether it recovered.
    pub probe: bool,
}

/// The destination's next endpoint, avoiding `avoid` when another is
/// usable (`recoverable`: see [`balance::pick`]); no endpoint is an error.
pub(super) fn pick(
    dest: &Destination,
    avoid: Option<SocketAddr>,
    recoverable: bool,
) -> Result<Picked, ProxyError> {
    balance::pick(
        dest.policy.load_balancer,
        &dest.endpoints,
        &dest.shared.rr,
        avoid,
        recoverable,
        Instant::now(),
    )
    .map(|(e, probe)| Picked {
        endpoint: e.clone(),
        probe,
    })
    .map_err(|e| match e {
        NoEndpoint::Empty if dest.unmeshed_refused > 0 => ProxyError::NotMeshed(dest.service.to_string()),
        NoEndpoint::Empty => ProxyError::NoEndpoints(dest.service.to_string()),
        NoEndpoint::AllEjected => ProxyError::CircuitOpen(dest.service.to_string()),
    })
}

/// Reports one response (or failure) of `stats`'s endpoint to its circuit
/// breaker; counts an ejection when it causes one.
pub(super) fn record(dest: &Destination, stats: &EndpointStats, failure: bool, metrics: &ResilienceMetrics) {
    if !failure {
        stats.breaker.success();
        return;
    }
    let policy = &dest.policy.circuit_breaker;
    let ejected = stats.breaker.failure(policy, Instant::now(), || {
        let open = dest
            .endpoints
            .iter()
            .filter(|e| e.stats.breaker.is_open())
            .count();
        open < policy.max_ejected(dest.endpoints.len())
    });
    if ejected {
        tracing::info!(service = %dest.service, "endpoint ejected by the circuit breaker");
        metrics
            .ejections
            .get_or_create(&ResilienceMetrics::service(&dest.service, &dest.namespace))
            .inc();
    }
}

fn retry_labels(dest: &Destination, result: &'static str) -> RetryLabels {
    RetryLabels {
        destination_service_name: dest.service.to_string(),
        destination_service_namespace: dest.namespace.to_string(),
        result,
    }
}

/// Lets another request probe an ejected endpoint when this probe ends
/// without a verdict (e.g. the caller went away).
struct ProbeGuard(Option<Arc<EndpointStats>>);

impl ProbeGuard {
    /// The verdict is someone else's now; whether this was a probe.
    fn disarm(&mut self) -> bool {
        self.0.take().is_some()
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            stats.breaker.probe_abandoned();
        }
    }
}
