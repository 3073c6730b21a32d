//! The call's try loop against a scripted [`Upstream`], under paused time:
//! retries on each condition, the budget, bodies that cannot be replayed,
//! the deadline, another endpoint preferred, breaker probes, and gRPC
//! verdicts from trailers. No sockets.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;

use super::call::{call, Call, Called, Deadline};
use super::upstream::{dialled, Upstream};
use crate::discover::{Destination, Endpoint};
use crate::errors::ProxyError;
use crate::grpc::{self, Code};
use crate::http::{empty_body, full_body, AppProtocol, Body};
use crate::resilience::metrics::{ResilienceMetrics, RetryLabels};
use crate::resilience::retry::{RetryOn, MAX_REPLAY};
use crate::resilience::{BreakerPolicy, LoadBalancer, Policy, RetryPolicy, Shared};

/// What an endpoint does with its next try.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The connection cannot be made: nothing is sent.
    Refuse,
    Answer(u16),
    Slow(Duration, u16),
    /// The stream fails after the request was sent.
    Reset,
    /// A gRPC response whose status arrives in trailers.
    GrpcTrailers(Code),
    /// A trailers-only gRPC response: the status in its headers.
    GrpcStatus(Code),
}

/// A scripted upstream: each endpoint plays its steps in order, then
/// answers 200.
#[derive(Default)]
struct Script {
    steps: Mutex<HashMap<SocketAddr, VecDeque<Step>>>,
    /// Every try: the endpoint, and the body it received (`None`: the
    /// connection failed, nothing was sent).
    tries: Mutex<Vec<(SocketAddr, Option<Bytes>)>>,
}

impl Script {
    fn on(self, i: u8, steps: &[Step]) -> Self {
        self.steps
            .lock()
            .unwrap()
            .insert(addr(i), steps.iter().cloned().collect());
        self
    }

    fn pop(&self, at: SocketAddr) -> Step {
        self.steps
            .lock()
            .unwrap()
            .get_mut(&at)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Answer(200))
    }

    fn tried(&self) -> Vec<u8> {
        let tries = self.tries.lock().unwrap();
        tries.iter().map(|(a, _)| index(*a)).collect()
    }

    fn bodies(&self) -> Vec<Option<Bytes>> {
        self.tries
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn refused(addr: SocketAddr) -> ProxyError {
    ProxyError::ConnectFailed {
        addr,
        source: std::io::ErrorKind::ConnectionRefused.into(),
    }
}

fn answer(status: u16) -> Response<Body> {
    let mut rsp = Response::new(empty_body());
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    rsp
}

impl Upstream for Script {
    async fn ready(&self, endpoint: &Endpoint, _app: AppProtocol) -> Result<(), ProxyError> {
        let refuse = {
            let mut steps = self.steps.lock().unwrap();
            let queue = steps.entry(dialled(endpoint)).or_default();
            let refuse = matches!(queue.front(), Some(Step::Refuse));
            if refuse {
                queue.pop_front();
            }
            refuse
        };
        if refuse {
            self.tries.lock().unwrap().push((dialled(endpoint), None));
            return Err(refused(dialled(endpoint)));
        }
        Ok(())
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        _app: AppProtocol,
        _authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let at = dialled(endpoint);
        let step = self.pop(at);
        let body = req.into_body().collect().await.ok().map(|c| c.to_bytes());
        self.tries.lock().unwrap().push((at, body));
        match step {
            Step::Refuse => Err(refused(at)),
            Step::Answer(status) => Ok(answer(status)),
            Step::Slow(delay, status) => {
                tokio::time::sleep(delay).await;
                Ok(answer(status))
            }
            Step::Reset => Err(ProxyError::Upstream {
                addr: at,
                source: "stream reset".into(),
            }),
            Step::GrpcTrailers(code) => {
                let mut trailers = HeaderMap::new();
                trailers.insert(grpc::GRPC_STATUS, (code as i32).into());
                let frames =
                    futures_util::stream::iter([Ok::<_, crate::http::BoxError>(Frame::trailers(trailers))]);
                let mut rsp = Response::new(StreamBody::new(frames).boxed_unsync());
                rsp.headers_mut()
                    .insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
                Ok(rsp)
            }
            Step::GrpcStatus(code) => {
                let mut rsp = answer(200);
                rsp.headers_mut()
                    .insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
                rsp.headers_mut().insert(grpc::GRPC_STATUS, (code as i32).into());
                Ok(rsp)
            }
        }
    }

    fn sends_mtls(&self, _endpoint: &Endpoint) -> bool {
        false
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 80))
}

fn index(a: SocketAddr) -> u8 {
    match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!(),
    }
}

/// Endpoints 10.0.0.1, 10.0.0.2, …, round robin (so the first try goes
/// to endpoint 1) unless the policy says otherwise.
fn dest(n: u8, policy: Policy) -> Arc<Destination> {
    let endpoints: Vec<Endpoint> = (1..=n).map(|i| Endpoint::unmeshed(addr(i))).collect();
    let mut d = Destination::from_endpoints("web", endpoints.into());
    d.shared = Arc::new(Shared::new(&policy));
    d.policy = Arc::new(policy);
    Arc::new(d)
}

fn policy(retry: RetryPolicy) -> Policy {
    Policy {
        load_balancer: LoadBalancer::RoundRobin,
        retry,
        ..Policy::default()
    }
}

fn on(conditions: &[&str], attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        on: RetryOn::parse(&conditions.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
        ..RetryPolicy::default()
    }
}

fn get() -> Request<Body> {
    Request::get("/").body(empty_body()).unwrap()
}

/// A gRPC call: a POST of `application/grpc` carrying `body`.
fn grpc_call(body: &'static [u8]) -> Request<Body> {
    Request::post("/test.Echo/Say")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(full_body(Bytes::from_static(body)))
        .unwrap()
}

fn with_body(method: &str, body: &'static [u8]) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/")
        .body(full_body(Bytes::from_static(body)))
        .unwrap()
}

struct Run {
    called: Called,
    took: Duration,
}

impl Run {
    fn status(&self) -> u16 {
        match &self.called.result {
            Ok(rsp) => rsp.status().as_u16(),
            Err(e) => panic!("no response: {e}"),
        }
    }

    fn error(&self) -> &ProxyError {
        match &self.called.result {
            Ok(rsp) => panic!("a response: {}", rsp.status()),
            Err(e) => e,
        }
    }
}

async fn run(
    script: &Script,
    dest: &Arc<Destination>,
    req: Request<Body>,
    timeout: Option<Duration>,
    metrics: &ResilienceMetrics,
) -> Run {
    let authority = Authority::from_static("web:80");
    let start = Instant::now();
    let c = Call {
        dest,
        app: AppProtocol::Http1,
        authority: &authority,
        deadline: Deadline::new(start, timeout),
        per_try: None,
        grpc: false,
    };
    let called = call(script, &c, req, metrics).await;
    Run {
        called,
        took: start.elapsed(),
    }
}

fn retries(metrics: &ResilienceMetrics, result: &'static str) -> u64 {
    metrics
        .retries
        .get_or_create(&RetryLabels {
            destination_service_name: "web".into(),
            destination_service_namespace: String::new(),
            result,
        })
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_5xx_is_retried_on_another_endpoint() {
    let script = Script::default().on(1, &[Step::Answer(503)]);
    let d = dest(2, policy(on(&["5xx"], 2)));
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        script.tried(),
        [1, 2],
        "the retry avoids the endpoint it comes from"
    );
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(2)));
    assert_eq!(retries(&m, "success"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_only_endpoint_is_retried_itself() {
    let script = Script::default().on(1, &[Step::Answer(503), Step::Answer(502)]);
    let d = dest(1, policy(on(&["gateway-error"], 3)));
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.status(), 200);
    assert_eq!(script.tried(), [1, 1, 1]);
    assert_eq!((retries(&m, "failure"), retries(&m, "success")), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_is_retried_even_for_a_body_sent_once() {
    // The default policy: one retry of connection failures only, so the
    // POST keeps no copy of its body; nothing of it was sent.
    let script = Script::default().on(1, &[Step::Refuse]);
    let d = dest(2, policy(RetryPolicy::default()));
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, with_body("POST", b"order"), None, &m).await;
    assert_eq!(r.status(), 200);
    assert_eq!(script.tried(), [1, 2]);
    assert_eq!(script.bodies(), [None, Some(Bytes::from_static(b"order"))]);
}

#[tokio::test(start_paused = true)]
async fn resets_are_retried_only_when_the_policy_says_so() {
    let m = ResilienceMetrics::default();
    let script = Script::default().on(1, &[Step::Reset]);
    let d = dest(2, policy(RetryPolicy::default()));
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.error().reason(), "upstream-failed");
    assert_eq!(script.tried(), [1]);

    let script = Script::default().on(1, &[Step::Reset]);
    let d = dest(2, policy(on(&["reset"], 1)));
    let r = run(&script, &d, with_body("PUT", b"v=1"), None, &m).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        script.bodies(),
        [Some(Bytes::from_static(b"v=1")), Some(Bytes::from_static(b"v=1"))],
        "the replayed body is the same"
    );
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_ends_retries() {
    let no_budget = RetryPolicy {
        budget_ratio: 0.0,
        min_per_second: 0,
        ..on(&["5xx"], 3)
    };
    let script = Script::default().on(1, &[Step::Answer(503)]);
    let d = dest(2, policy(no_budget));
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.status(), 503, "the last answer is the caller's");
    assert_eq!(script.tried(), [1]);
    assert_eq!(retries(&m, "budget_exhausted"), 1);
}

#[tokio::test(start_paused = true)]
async fn bodies_that_cannot_be_replayed_are_not_retried() {
    let m = ResilienceMetrics::default();
    // Not idempotent, and the policy does not allow it.
    let script = Script::default().on(1, &[Step::Answer(503)]);
    let d = dest(2, policy(on(&["5xx"], 2)));
    let r = run(&script, &d, with_body("POST", b"pay"), None, &m).await;
    assert_eq!((r.status(), script.tried()), (503, vec![1]));

    // Allowed, but larger than the replay buffer.
    let big = RetryPolicy {
        non_idempotent: true,
        ..on(&["5xx"], 2)
    };
    let script = Script::default().on(1, &[Step::Answer(503)]);
    let d = dest(2, policy(big));
    let req = Request::post("/")
        .body(full_body(Bytes::from(vec![b'x'; MAX_REPLAY + 1])))
        .unwrap();
    let r = run(&script, &d, req, None, &m).await;
    assert_eq!((r.status(), script.tried()), (503, vec![1]));

    // Allowed and small: retried with the same body.
    let script = Script::default().on(1, &[Step::Answer(503)]);
    let d = dest(
        2,
        policy(RetryPolicy {
            non_idempotent: true,
            ..on(&["5xx"], 2)
        }),
    );
    let r = run(&script, &d, with_body("POST", b"pay"), None, &m).await;
    assert_eq!((r.status(), script.tried()), (200, vec![1, 2]));
}

/// gRPC calls are POSTs: with `grpcCodes` they are retried (the body
/// replayed) on those statuses as gRPC retry policies intend, but not on
/// the HTTP conditions of `on`, and a plain POST still is not.
#[tokio::test(start_paused = true)]
async fn grpc_calls_are_retried_on_their_listed_codes_only() {
    let m = ResilienceMetrics::default();
    let grpc_policy = || {
        policy(RetryPolicy {
            grpc_codes: vec![Code::Unavailable],
            ..on(&["5xx", "reset"], 2)
        })
    };
    let script = Script::default().on(1, &[Step::GrpcStatus(Code::Unavailable)]);
    let d = dest(2, grpc_policy());
    let r = run(&script, &d, grpc_call(b"msg"), None, &m).await;
    assert_eq!((r.status(), script.tried()), (200, vec![1, 2]));
    assert_eq!(
        script.bodies()[1].as_deref(),
        Some(&b"msg"[..]),
        "the same message again"
    );

    for step in [Step::GrpcStatus(Code::Internal), Step::Answer(503), Step::Reset] {
        let script = Script::default().on(1, &[step]);
        let d = dest(2, grpc_policy());
        let _ = run(&script, &d, grpc_call(b"msg"), None, &m).await;
        assert_eq!(script.tried(), [1], "{step:?} is not retried for a gRPC call");
    }
    // A connection failure is: nothing was sent.
    let script = Script::default().on(1, &[Step::Refuse]);
    let d = dest(2, grpc_policy());
    let r = run(&script, &d, grpc_call(b"msg"), None, &m).await;
    assert_eq!((r.status(), script.tried()), (200, vec![1, 2]));

    let script = Script::default().on(1, &[Step::Answer(503)]);
    let d = dest(2, grpc_policy());
    let r = run(&script, &d, with_body("POST", b"pay"), None, &m).await;
    assert_eq!(
        (r.status(), script.tried()),
        (503, vec![1]),
        "a plain POST is still not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_the_call_without_a_verdict() {
    let script = Script::default().on(1, &[Step::Slow(Duration::from_secs(10), 200)]);
    let d = dest(2, policy(on(&["5xx"], 2)));
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), Some(Duration::from_secs(1)), &m).await;
    assert!(matches!(r.error(), ProxyError::Timeout(t) if *t == Duration::from_secs(1)));
    assert_eq!(r.took, Duration::from_secs(1));
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(1)));
    let stats = &d.endpoints[0].stats;
    assert_eq!(stats.in_flight(), 0);
    assert!(!stats.breaker.is_open());
    assert_eq!(retries(&m, "failure") + retries(&m, "success"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_also_bounds_the_backoff() {
    let slow_retries = RetryPolicy {
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(10),
        ..on(&["5xx"], 5)
    };
    let script = Script::default()
        .on(1, &[Step::Answer(503); 5])
        .on(2, &[Step::Answer(503); 5]);
    let d = dest(2, policy(slow_retries));
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), Some(Duration::from_millis(500)), &m).await;
    // Either the deadline cut a backoff, or the backoffs were short and
    // every retry failed before it; never a wait past the deadline.
    assert!(r.took <= Duration::from_millis(500), "{:?}", r.took);
    if let Err(e) = &r.called.result {
        assert_eq!(e.reason(), "timeout");
    }
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_moves_on_when_the_request_can_be_sent_again() {
    let mut p = policy(on(&["5xx"], 1));
    p.timeouts.per_try = Some(Duration::from_millis(100));
    let script = Script::default().on(1, &[Step::Slow(Duration::from_secs(10), 200)]);
    let d = dest(2, p.clone());
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.status(), 200);
    assert_eq!(script.tried(), [1, 2]);
    // 100 ms, then a backoff under the default 25 ms window.
    assert!(r.took >= Duration::from_millis(100) && r.took < Duration::from_millis(130));

    // With the default retry policy (connection failures only) the
    // request keeps no copy once sent: the timed-out try is the last.
    p.retry = RetryPolicy::default();
    let script = Script::default().on(1, &[Step::Slow(Duration::from_secs(10), 200)]);
    let d = dest(2, p);
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.error().reason(), "timeout");
    assert_eq!(script.tried(), [1]);
}

fn eject_after_one() -> Policy {
    Policy {
        circuit_breaker: BreakerPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(1),
            ..BreakerPolicy::default()
        },
        ..policy(RetryPolicy::default())
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_is_skipped_then_probed_back() {
    let script = Script::default().on(1, &[Step::Answer(500)]);
    let d = dest(2, eject_after_one());
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.status(), 500);
    assert!(d.endpoints[0].stats.breaker.is_open(), "ejected");
    for _ in 0..4 {
        assert_eq!(run(&script, &d, get(), None, &m).await.status(), 200);
    }
    assert_eq!(script.tried(), [1, 2, 2, 2, 2], "skipped while ejected");
    // Out for 0.5–1 s; a GET the policy would not send again probes once
    // that has passed twice over.
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(1)), "the probe");
    assert!(!d.endpoints[0].stats.breaker.is_open(), "a good probe closes it");
}

#[tokio::test(start_paused = true)]
async fn a_probe_cut_off_by_the_deadline_is_a_failed_probe() {
    let script = Script::default().on(1, &[Step::Answer(500), Step::Slow(Duration::from_secs(10), 200)]);
    let d = dest(2, eject_after_one());
    let m = ResilienceMetrics::default();
    run(&script, &d, get(), None, &m).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    // The probe runs into the caller's deadline: the endpoint did not
    // answer in time, so it stays ejected (for longer).
    let r = run(&script, &d, get(), Some(Duration::from_millis(200)), &m).await;
    assert_eq!(r.error().reason(), "timeout");
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(1)));
    assert!(d.endpoints[0].stats.breaker.is_open(), "re-ejected");
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(2)));
    // Later probes again, and a good answer closes it.
    tokio::time::advance(Duration::from_secs(5)).await;
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(1)));
    assert_eq!(r.status(), 200);
    assert!(!d.endpoints[0].stats.breaker.is_open());
}

/// A request the policy may send again takes the probe as soon as it is
/// due, and gets half its time for it: a still-slow endpoint costs it
/// that half, not the request. One it may not send again waits for an
/// overdue probe instead.
#[tokio::test(start_paused = true)]
async fn a_slow_probe_gets_half_the_time_then_the_request_goes_elsewhere() {
    let slow = [Step::Answer(500), Step::Slow(Duration::from_secs(10), 200)];
    let script = Script::default().on(1, &slow);
    let d = dest(
        2,
        Policy {
            retry: on(&["5xx"], 1),
            ..eject_after_one()
        },
    );
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.status(), 200, "the 500 was retried");
    assert!(d.endpoints[0].stats.breaker.is_open());
    tokio::time::advance(Duration::from_secs(1)).await;
    // Due: a POST (not sent again once seen) leaves the probe to others.
    let r = run(
        &script,
        &d,
        with_body("POST", b"order"),
        Some(Duration::from_millis(300)),
        &m,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(script.tried(), [1, 2, 2]);
    let r = run(&script, &d, get(), Some(Duration::from_millis(300)), &m).await;
    assert_eq!(r.status(), 200, "answered elsewhere");
    assert_eq!(script.tried(), [1, 2, 2, 1, 2], "probed, then the other");
    assert_eq!(r.took, Duration::from_millis(150), "half the time on the probe");
    assert!(
        d.endpoints[0].stats.breaker.is_open(),
        "a failed probe: still out"
    );
    assert_eq!(retries(&m, "success"), 2, "the first 500's and the probe's");
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_caller_goes_away_lets_another_probe() {
    let script = Script::default().on(1, &[Step::Answer(500), Step::Slow(Duration::from_secs(10), 200)]);
    let d = dest(2, eject_after_one());
    let m = ResilienceMetrics::default();
    run(&script, &d, get(), None, &m).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    // The caller gives up on the probe: no verdict on the endpoint.
    let gone = tokio::time::timeout(Duration::from_millis(200), run(&script, &d, get(), None, &m)).await;
    assert!(gone.is_err());
    assert_eq!(script.tried(), [1, 1]);
    // Not stuck "probing": the next request probes again.
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.called.last.as_ref().map(|e| e.addr), Some(addr(1)));
    assert_eq!(r.status(), 200);
    assert!(!d.endpoints[0].stats.breaker.is_open());
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_in_trailers_reaches_the_breaker_when_the_body_ends() {
    let script = Script::default().on(1, &[Step::GrpcTrailers(Code::Unavailable)]);
    let d = dest(2, eject_after_one());
    let m = ResilienceMetrics::default();
    let r = run(&script, &d, get(), None, &m).await;
    let rsp = r.called.result.unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(!d.endpoints[0].stats.breaker.is_open(), "not judged yet");
    let body = rsp.into_body().collect().await.unwrap();
    assert_eq!(grpc::status(body.trailers().unwrap()), Some(Code::Unavailable));
    assert!(d.endpoints[0].stats.breaker.is_open(), "judged by its trailers");
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_and_all_ejected_are_errors() {
    let script = Script::default().on(1, &[Step::Answer(500)]);
    let m = ResilienceMetrics::default();
    let r = run(&script, &dest(0, eject_after_one()), get(), None, &m).await;
    assert_eq!(r.error().reason(), "no-endpoints");
    let d = dest(1, eject_after_one());
    run(&script, &d, get(), None, &m).await;
    let r = run(&script, &d, get(), None, &m).await;
    assert_eq!(r.error().reason(), "circuit-open");
    // Endpoints left out because mTLS is required and they are unmeshed.
    let mut d = Destination::from_endpoints("web", Arc::from([]));
    d.unmeshed_refused = 2;
    let r = run(&script, &Arc::new(d), get(), None, &m).await;
    assert_eq!(r.error().reason(), "not-meshed");
    assert_eq!(r.error().status(), 503);
}

#[tokio::test(start_paused = true)]
async fn a_retry_avoids_the_proxy_it_comes_from_even_when_replicas_share_an_app_address() {
    // Two replicas of one app address behind different proxies (as on one
    // machine): the retry must not count them as one endpoint.
    let shared = SocketAddr::from(([127, 0, 0, 1], 8080));
    let m = ResilienceMetrics::default();
    for round in 0..20 {
        // Fresh endpoint state each round: no breaker ejects either.
        let endpoints: Vec<Endpoint> = (1..=2)
            .map(|i| Endpoint {
                proxy: Some(addr(i)),
                ..Endpoint::unmeshed(shared)
            })
            .collect();
        let mut d = Destination::from_endpoints("web", endpoints.into());
        let p = Policy {
            load_balancer: if round % 2 == 0 {
                LoadBalancer::PeakEwma
            } else {
                LoadBalancer::RoundRobin
            },
            ..Policy::default()
        };
        d.shared = Arc::new(Shared::new(&p));
        d.policy = Arc::new(p);
        let d = Arc::new(d);
        let script = Script::default()
            .on(1, &[Step::Refuse; 2])
            .on(2, &[Step::Refuse; 2]);
        let r = run(&script, &d, get(), None, &m).await;
        assert_eq!(r.error().reason(), "connect-failed");
        let tried = script.tried();
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert_ne!(
            tried[0], tried[1],
            "round {round}: the retry went to the other proxy"
        );
    }
}

/// A replica slower than the request deadline (and no per-try timeout):
/// each try it gets is cut off by the deadline, and still counts against
/// it, so the breaker ejects it and traffic goes to the others.
#[tokio::test(start_paused = true)]
async fn a_replica_slower_than_the_deadline_is_learned_and_ejected() {
    let slow = [Step::Slow(Duration::from_secs(2), 200); 50];
    let script = Script::default().on(1, &slow);
    let d = dest(
        3,
        Policy {
            circuit_breaker: BreakerPolicy {
                consecutive_failures: 3,
                base_ejection: Duration::from_secs(30),
                ..BreakerPolicy::default()
            },
            ..policy(RetryPolicy::default())
        },
    );
    let m = ResilienceMetrics::default();
    let mut timeouts = 0;
    for _ in 0..30 {
        let r = run(&script, &d, get(), Some(Duration::from_millis(300)), &m).await;
        if r.called.result.is_err() {
            assert!(matches!(r.error(), ProxyError::Timeout(_)), "{}", r.error());
            timeouts += 1;
        }
    }
    assert_eq!(timeouts, 3, "three cut-off tries eject it; then no more");
    assert!(d.endpoints[0].stats.breaker.is_open());
    let to_slow = script.tried().iter().filter(|i| **i == 1).count();
    assert_eq!(to_slow, 3);
    assert_eq!(
        m.ejections
            .get_or_create(&ResilienceMetrics::service("web", ""))
            .get(),
        1,
        "the ejection is counted"
    );
}
