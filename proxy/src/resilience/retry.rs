//! Retries: which outcomes are retried, a budget so retries cannot
//! multiply an outage, backoff with full jitter, and the request body
//! buffered for replay (up to [`MAX_REPLAY`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Frame, SizeHint};
use serde::Serialize;
use tokio::time::Instant;

use crate::grpc::Code;
use crate::http::{Body, BoxError};

/// Request bodies up to this size are kept for a retry; a request with a
/// larger body is never retried once its body started flowing.
pub const MAX_REPLAY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// `retryOn` in `/config`, as in the TrafficPolicy it comes from.
    #[serde(rename = "retryOn")]
    pub on: RetryOn,
    /// gRPC status codes to retry.
    #[serde(serialize_with = "crate::grpc::ser_codes")]
    pub grpc_codes: Vec<Code>,
    pub budget_ratio: f64,
    pub min_per_second: u32,
    #[serde(serialize_with = "super::ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "super::ser_duration")]
    pub backoff_max: Duration,
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    /// With no policy: one retry of a connection failure (nothing reached
    /// the server), within the default budget.
    fn default() -> Self {
        Self {
            attempts: 1,
            on: RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
            grpc_codes: Vec::new(),
            budget_ratio: 0.2,
            min_per_second: 10,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            non_idempotent: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    /// Any 5xx response, plus connection failures and resets.
    pub five_xx: bool,
    /// 502, 503, 504, plus connection failures and resets.
    pub gateway_error: bool,
    pub connect_failure: bool,
    /// The stream or connection failed after the request was sent.
    pub reset: bool,
    pub statuses: Vec<u16>,
}

impl RetryOn {
    /// Parses the policy's `on` list (validated by the control plane;
    /// unknown entries are ignored here).
    pub fn parse(items: &[String]) -> Self {
        let mut on = RetryOn::default();
        for item in items {
            match item.as_str() {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                code => on.statuses.extend(code.parse::<u16>().ok()),
            }
        }
        on
    }

    /// Whether only connection failures are retried: then a request never
    /// needs to be replayed (nothing of it was sent).
    pub fn connect_only(&self) -> bool {
        !self.five_xx && !self.gateway_error && !self.reset && self.statuses.is_empty()
    }
}

/// How one try ended, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Response {
        status: StatusCode,
        /// `grpc-status` in the response headers (a trailers-only reply).
        grpc: Option<Code>,
    },
    /// Nothing reached the server (connect, TLS, identity).
    ConnectFailure,
    /// The request reached the peer's proxy, which could not reach its
    /// app ([`crate::errors::WEFT_UNSENT`]): safe to send elsewhere,
    /// whatever the method, if its body can be replayed.
    NotDelivered,
    /// Failed after the request was sent.
    Reset,
    PerTryTimeout,
}

impl Outcome {
    /// How a response ended: its status, and a trailers-only gRPC status.
    pub fn of_response(status: StatusCode, headers: &HeaderMap) -> Self {
        Outcome::Response {
            status,
            grpc: crate::grpc::status(headers),
        }
    }

    /// Whether it counts against the endpoint (in its latency estimate
    /// and its circuit breaker): 5xx, gRPC codes that mean the server
    /// failed, and every failed try.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Response { status, grpc } => {
                status.is_server_error() || grpc.is_some_and(crate::grpc::is_endpoint_failure)
            }
            Outcome::ConnectFailure | Outcome::NotDelivered | Outcome::Reset | Outcome::PerTryTimeout => true,
        }
    }
}

impl RetryPolicy {
    /// Whether the policy retries `outcome` (attempts, budget, body and
    /// time left aside).
    pub fn retries(&self, outcome: Outcome) -> bool {
        let on = &self.on;
        match outcome {
            Outcome::ConnectFailure | Outcome::NotDelivered => {
                on.connect_failure || on.five_xx || on.gateway_error
            }
            Outcome::Reset => on.reset || on.five_xx || on.gateway_error,
            // A per-try timeout exists to be retried.
            Outcome::PerTryTimeout => true,
            Outcome::Response { status, grpc } => {
                (on.five_xx && status.is_server_error())
                    || (on.gateway_error && matches!(status.as_u16(), 502..=504))
                    || on.statuses.contains(&status.as_u16())
                    || grpc.is_some_and(|c| self.grpc_codes.contains(&c))
            }
        }
    }

    /// Whether a request with this method may be retried after it was sent.
    pub fn method_allowed(&self, method: &Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// The policy for one request. A gRPC call is a POST, so unless
    /// `nonIdempotent` is set it could never be retried after it was sent;
    /// but a status listed in `grpcCodes` is the server saying, as gRPC
    /// retry policies intend, that the call may be retried. Such a call is
    /// retried on its listed codes and on connection failures (nothing
    /// was sent) only, not on `on`'s HTTP conditions: a 5xx or a reset
    /// says nothing about whether a non-idempotent call was processed.
    pub fn for_request(&self, method: &Method, grpc: bool) -> std::borrow::Cow<'_, RetryPolicy> {
        if !grpc || self.grpc_codes.is_empty() || self.method_allowed(method) {
            return std::borrow::Cow::Borrowed(self);
        }
        std::borrow::Cow::Owned(RetryPolicy {
            on: RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
            non_idempotent: true,
            ..self.clone()
        })
    }

    /// The wait before retry number `n` (1-based): full jitter over an
    /// exponentially growing window, `[0, min(max, base · 2ⁿ⁻¹))`.
    pub fn backoff(&self, n: u32) -> Duration {
        let window = self
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.backoff_max);
        window.mul_f64(rand::random::<f64>())
    }
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A retry budget: over a sliding window, retries may be at most `ratio`
/// of the original requests plus `min_per_second` per second. Retries
/// therefore add at most that much load to a failing destination, however
/// many attempts the policy allows.
///
/// Every request deposits, so the window is atomics rather than a lock:
/// requests to one destination on different worker threads never wait on
/// each other. A retry is counted only if no other was counted in its
/// second since it checked the budget, so concurrent takers do not
/// overshoot it (except, by one, two taking the last retry either side of
/// a second's boundary).
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    started: Instant,
    /// Requests, then retries, per one-second slot (by the second's
    /// index modulo [`SLOTS`]), each packed with the second it counts.
    requests: [Slot; SLOTS],
    retries: [Slot; SLOTS],
    /// The last second with a request, and the first second of the
    /// current run of activity: after an idle window the minimum starts
    /// again from one second's worth.
    last: AtomicU64,
    since: AtomicU64,
}

const SLOTS: usize = 10;

/// A count in the low 32 bits, the second (since the budget started) it
/// belongs to in the high 32.
#[derive(Debug, Default)]
struct Slot(AtomicU64);

impl Slot {
    /// The count, if this slot holds second `sec`.
    fn count_at(&self, sec: u64) -> Option<u64> {
        let v = self.0.load(Ordering::Acquire);
        (v >> 32 == sec).then_some(v & u64::from(u32::MAX))
    }

    /// Counts one in second `sec`, unless the count there has moved from
    /// `expected` (`None`: any count). False when it had.
    fn add(&self, sec: u64, expected: Option<u64>) -> bool {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let count = if current >> 32 == sec {
                current & u64::from(u32::MAX)
            } else {
                0
            };
            if expected.is_some_and(|e| e != count) {
                return false;
            }
            let next = (sec << 32) | (count + 1).min(u64::from(u32::MAX));
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            started: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
            last: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    pub fn params(&self) -> (f64, u32) {
        (self.ratio, self.min_per_second)
    }

    /// The current second since the budget started, marking it active.
    fn now(&self) -> u64 {
        let sec = Instant::now().saturating_duration_since(self.started).as_secs();
        let last = self.last.load(Ordering::Relaxed);
        if last != sec {
            if sec.saturating_sub(last) > SLOTS as u64 {
                // Idle for longer than the window: start afresh.
                self.since.store(sec, Ordering::Relaxed);
            }
            self.last.store(sec, Ordering::Relaxed);
        }
        sec
    }

    /// The total of `slots` over the window ending at `sec`.
    fn total(slots: &[Slot; SLOTS], sec: u64) -> u64 {
        (sec.saturating_sub(SLOTS as u64 - 1)..=sec)
            .filter_map(|s| slots[s as usize % SLOTS].count_at(s))
            .sum()
    }

    /// Counts an original request.
    pub fn deposit(&self) {
        let sec = self.now();
        self.requests[sec as usize % SLOTS].add(sec, None);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let sec = self.now();
        let since = self.since.load(Ordering::Relaxed).min(sec);
        let secs = (sec - since + 1).min(SLOTS as u64) as f64;
        let allowed =
            Self::total(&self.requests, sec) as f64 * self.ratio + f64::from(self.min_per_second) * secs;
        let slot = &self.retries[sec as usize % SLOTS];
        loop {
            let this_second = slot.count_at(sec).unwrap_or(0);
            if Self::total(&self.retries, sec) as f64 >= allowed {
                return false;
            }
            // Taken only if no other retry was counted since the check.
            if slot.add(sec, Some(this_second)) {
                return true;
            }
        }
    }
}

// ------------------------------------------------------------ replay

/// A request body that keeps what it sent (up to [`MAX_REPLAY`]) so the
/// request can be sent again. Every [`ReplayBody::replay`] clone yields
/// the frames from the start; the first to reach the end of what was
/// buffered reads on from the original body.
pub struct ReplayBody {
    /// `None`: the body was empty from the start (most requests), so
    /// there is nothing to keep and a replay is just as empty.
    shared: Option<Arc<Mutex<Shared>>>,
    /// Index of the next buffered frame this clone yields.
    pos: usize,
    trailers_sent: bool,
    /// This copy went past [`MAX_REPLAY`]: it streams the rest of the
    /// original body without keeping it.
    passthrough: bool,
}

struct Shared {
    inner: Option<Body>,
    frames: Vec<Bytes>,
    buffered: usize,
    /// More than [`MAX_REPLAY`] went through: no replay possible.
    overflow: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    size_hint: SizeHint,
    /// A copy has read from `inner`.
    polled: bool,
}

impl ReplayBody {
    pub fn new(body: Body) -> Self {
        let size_hint = http_body::Body::size_hint(&body);
        let ended = http_body::Body::is_end_stream(&body);
        if ended {
            return Self {
                shared: None,
                pos: 0,
                trailers_sent: true,
                passthrough: false,
            };
        }
        let overflow = size_hint.lower() > MAX_REPLAY as u64;
        Self {
            shared: Some(Arc::new(Mutex::new(Shared {
                inner: Some(body),
                frames: Vec::new(),
                buffered: 0,
                overflow,
                trailers: None,
                ended,
                size_hint,
                polled: false,
            }))),
            pos: 0,
            trailers_sent: false,
            passthrough: overflow,
        }
    }

    /// Whether another copy can still be made.
    pub fn can_replay(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| !s.lock().expect("replay lock").overflow)
    }

    /// The body was empty from the start: every replay is too.
    pub fn is_empty(&self) -> bool {
        self.shared.is_none()
    }

    /// A body that yields everything from the start again.
    pub fn replay(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: self.shared.is_none(),
            passthrough: false,
        }
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        let mut s = shared.lock().expect("replay lock");
        if !this.passthrough {
            if s.overflow {
                if s.polled {
                    // What was read is gone: never a silently short body.
                    return Poll::Ready(Some(Err("request body too large to replay".into())));
                }
                // Too large to keep (its size said so), but nothing was
                // read yet: this first copy simply streams it.
                this.passthrough = true;
            } else {
                if this.pos < s.frames.len() {
                    let data = s.frames[this.pos].clone();
                    this.pos += 1;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if s.ended {
                    if !this.trailers_sent {
                        this.trailers_sent = true;
                        if let Some(t) = s.trailers.clone() {
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                    }
                    return Poll::Ready(None);
                }
            }
        }
        s.polled = true;
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                s.ended = true;
                s.inner = None;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if !this.passthrough {
                    s.buffered += data.len();
                    if s.buffered > MAX_REPLAY {
                        s.overflow = true;
                        s.frames = Vec::new();
                        this.passthrough = true;
                    } else {
                        s.frames.push(data.clone());
                        this.pos += 1;
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(frame) => {
                if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                }
                s.ended = true;
                s.inner = None;
                this.trailers_sent = true;
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let s = shared.lock().expect("replay lock");
        if self.passthrough {
            return s.inner.as_ref().is_none_or(http_body::Body::is_end_stream);
        }
        s.ended && self.pos >= s.frames.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.shared.as_ref().map_or(SizeHint::with_exact(0), |s| {
            s.lock().expect("replay lock").size_hint
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn conditions() {
        let p = RetryPolicy {
            attempts: 2,
            on: RetryOn::parse(&["gateway-error".into(), "429".into()]),
            grpc_codes: vec![Code::Unavailable],
            ..RetryPolicy::default()
        };
        let rsp = |s: u16, grpc| Outcome::Response {
            status: StatusCode::from_u16(s).unwrap(),
            grpc,
        };
        assert!(p.retries(rsp(503, None)));
        assert!(p.retries(rsp(429, None)));
        assert!(!p.retries(rsp(500, None)));
        assert!(!p.retries(rsp(200, None)));
        assert!(p.retries(rsp(200, Some(Code::Unavailable))));
        assert!(!p.retries(rsp(200, Some(Code::Internal))));
        assert!(p.retries(Outcome::ConnectFailure));
        assert!(p.retries(Outcome::Reset));
        let default = RetryPolicy::default();
        assert!(default.retries(Outcome::ConnectFailure));
        assert!(!default.retries(Outcome::Reset));
        assert!(!default.retries(rsp(503, None)));
        assert!(default.on.connect_only());
        assert!(default.method_allowed(&Method::GET));
        assert!(!default.method_allowed(&Method::POST));
    }

    #[test]
    fn backoff_is_full_jitter_within_an_exponential_window() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        let mut max3 = Duration::ZERO;
        for _ in 0..1000 {
            assert!(p.backoff(1) < Duration::from_millis(10));
            let b = p.backoff(3);
            assert!(b < Duration::from_millis(40));
            max3 = max3.max(b);
            assert!(p.backoff(10) < Duration::from_millis(50));
        }
        assert!(max3 > Duration::from_millis(30), "jitter spans the window");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_a_ratio_plus_a_minimum() {
        let b = Budget::new(0.2, 0);
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
        // The window slides: after it has passed, old requests no longer
        // pay for retries.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw());
        let b = Budget::new(0.0, 5);
        assert_eq!(
            (0..100).filter(|_| b.withdraw()).count(),
            5,
            "5/s over a 1 s window so far"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 5);
    }

    #[test]
    fn concurrent_takers_share_the_budget_exactly() {
        let b = Budget::new(0.2, 0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..10_000).for_each(|_| b.deposit()));
            }
        });
        let granted: usize = std::thread::scope(|s| {
            let takers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..5_000).filter(|_| b.withdraw()).count()))
                .collect();
            takers.into_iter().map(|t| t.join().expect("taker")).sum()
        });
        // 20 % of 40,000; one more only if the last two crossed a second.
        assert!((8_000..=8_001).contains(&granted), "granted {granted}");
    }

    #[tokio::test]
    async fn replay_yields_the_same_body_twice() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let first = ReplayBody::new(body.boxed_unsync());
        let second = first.replay();
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"hello ")).await.unwrap();
            tx.send_data(Bytes::from_static(b"world")).await.unwrap();
            let mut t = HeaderMap::new();
            t.insert("x-t", "1".parse().unwrap());
            tx.send_trailers(t).await.unwrap();
        });
        let a = first.collect().await.unwrap();
        assert_eq!(a.trailers().unwrap()["x-t"], "1");
        assert_eq!(a.to_bytes(), "hello world");
        let b = second.collect().await.unwrap();
        assert_eq!(b.trailers().unwrap()["x-t"], "1");
        assert_eq!(b.to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn an_empty_body_replays_empty_without_keeping_anything() {
        let first = ReplayBody::new(crate::http::empty_body());
        assert!(first.is_empty() && first.can_replay());
        for copy in [first.replay(), first.replay(), first] {
            assert!(http_body::Body::is_end_stream(&copy));
            assert_eq!(http_body::Body::size_hint(&copy).exact(), Some(0));
            let got = copy.collect().await.unwrap();
            assert!(got.trailers().is_none());
            assert!(got.to_bytes().is_empty());
        }
        // A body that is empty only once read is kept as any other.
        let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        drop(tx);
        assert!(!ReplayBody::new(body.boxed_unsync()).is_empty());
    }

    #[tokio::test]
    async fn large_bodies_are_not_replayable() {
        let big = crate::http::full_body(Bytes::from(vec![b'x'; MAX_REPLAY + 1]));
        let first = ReplayBody::new(big);
        assert!(!first.can_replay(), "known length over the limit");
        // The copy a try takes still carries it, once.
        let sent = first.replay().collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), MAX_REPLAY + 1, "the first copy streams it");
        assert!(first.replay().collect().await.is_err(), "no second copy");
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let streamed = ReplayBody::new(body.boxed_unsync());
        tokio::spawn(async move {
            for _ in 0..3 {
                tx.send_data(Bytes::from(vec![b'y'; MAX_REPLAY / 2]))
                    .await
                    .unwrap();
            }
        });
        let got = streamed.replay().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), MAX_REPLAY / 2 * 3, "the first copy streams it all");
        assert!(!streamed.can_replay());
    }
}
