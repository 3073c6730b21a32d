//! What one try's result means for the call: one pure function,
//! [`judge`], decides whether it counts against the endpoint, when the
//! breaker hears of it, and whether the request is tried again. How an
//! error or response is classified in the first place is
//! [`ProxyError::outcome`] and [`Outcome::of_response`].

use http::{Request, Response};
use http_body_util::BodyExt;

use crate::errors::ProxyError;
use crate::grpc;
use crate::http::Body;
use crate::resilience::retry::{Outcome, ReplayBody, RetryPolicy};

/// How one try ended, as the call sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TryResult {
    /// `None`: the failure says nothing about the endpoint.
    pub outcome: Option<Outcome>,
    /// A gRPC response whose status comes in trailers.
    pub status_in_trailers: bool,
}

impl TryResult {
    pub fn of(result: &Result<Response<Body>, ProxyError>) -> Self {
        match result {
            Ok(rsp) if rsp.extensions().get::<NotDelivered>().is_some() => TryResult {
                outcome: Some(Outcome::NotDelivered),
                status_in_trailers: false,
            },
            Ok(rsp) => TryResult {
                outcome: Some(Outcome::of_response(rsp.status(), rsp.headers())),
                status_in_trailers: grpc::status_in_trailers(rsp.headers()),
            },
            Err(e) => TryResult {
                outcome: e.outcome(),
                status_in_trailers: false,
            },
        }
    }
}

/// Marks a response whose peer proxy said nothing reached its app
/// ([`crate::errors::WEFT_UNSENT`]).
#[derive(Debug, Clone, Copy)]
pub struct NotDelivered;

/// The retry side of a call so far.
#[derive(Debug, Clone, Copy)]
pub struct Retries<'a> {
    pub policy: &'a RetryPolicy,
    /// Retries already made.
    pub done: u32,
    /// The call's deadline has not passed.
    pub time_left: bool,
}

/// The judgement of one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(true)`: counts against the endpoint (latency penalty and
    /// breaker); `Some(false)`: for it; `None`: no bookkeeping at all.
    pub failure: Option<bool>,
    /// The breaker hears of it now; a gRPC response that looks fine so
    /// far is judged by its trailers instead, when its body ends.
    pub report_now: bool,
    /// Send the request again, to another endpoint when there is one
    /// (if the retry budget allows).
    pub retry: bool,
}

/// Judges one try.
pub fn judge(tried: TryResult, retries: Retries<'_>, body: &RequestBody) -> Verdict {
    let failure = tried.outcome.map(Outcome::is_failure);
    let deferred = failure == Some(false) && tried.status_in_trailers;
    let retry = tried.outcome.is_some_and(|o| {
        retries.policy.retries(o)
            && retries.done < retries.policy.attempts
            && body.can_send_again(o)
            && retries.time_left
    });
    Verdict {
        failure,
        report_now: failure.is_some() && !deferred,
        retry,
    }
}

/// The request as the tries send it: once, or again and again from a
/// buffer of its body.
pub enum RequestBody {
    /// Taken by the first try that sends it.
    Once(Option<Request<Body>>),
    Replay {
        head: http::request::Parts,
        body: ReplayBody,
        /// The policy lets it be sent again after the server saw it;
        /// otherwise it is kept only for [`Outcome::NotDelivered`].
        after_seen: bool,
    },
}

/// When a request's body is kept for another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Never: nothing is retried once sent.
    No,
    /// Only when a peer proxy says nothing reached its app.
    Undelivered,
    /// Also after the server saw it (the retry policy allows its method).
    AfterSeen,
}

impl RequestBody {
    /// Keeps a copy of the body (and head) when the request may be
    /// retried after it was sent.
    pub fn new(req: Request<Body>, replay: Replay) -> Self {
        if replay == Replay::No {
            return RequestBody::Once(Some(req));
        }
        let (head, body) = req.into_parts();
        RequestBody::Replay {
            head,
            body: ReplayBody::new(body),
            after_seen: replay == Replay::AfterSeen,
        }
    }

    /// When a request of this method may need replaying under `policy`,
    /// to a destination that is `meshed` (whose peer proxies can say that
    /// nothing reached the app).
    pub fn needs_replay(policy: &RetryPolicy, method: &http::Method, meshed: bool) -> Replay {
        if policy.attempts == 0 {
            Replay::No
        } else if (!policy.on.connect_only() || !policy.grpc_codes.is_empty())
            && policy.method_allowed(method)
        {
            Replay::AfterSeen
        } else if meshed && policy.retries(Outcome::NotDelivered) {
            Replay::Undelivered
        } else {
            Replay::No
        }
    }

    /// The request for the next try; `None` when it cannot be sent again.
    pub fn take_request(&mut self) -> Option<Request<Body>> {
        match self {
            RequestBody::Once(req) => req.take(),
            RequestBody::Replay { head, body, .. } => {
                // An empty body replays as the empty body, which boxes
                // without allocating.
                let replayed = if body.is_empty() {
                    crate::http::empty_body()
                } else {
                    body.replay().boxed_unsync()
                };
                let mut req = Request::new(replayed);
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.version_mut() = head.version;
                *req.headers_mut() = head.headers.clone();
                Some(req)
            }
        }
    }

    /// Whether the request can be sent again even after a server saw it
    /// (the policy allows its method, and its body is still buffered).
    pub fn replays_after_seen(&self) -> bool {
        matches!(self, RequestBody::Replay { body, after_seen: true, .. } if body.can_replay())
    }

    /// A handle on the kept body while [`Self::replays_after_seen`]: it
    /// tells later whether the body is still kept.
    pub fn kept(&self) -> Option<ReplayBody> {
        match self {
            RequestBody::Replay {
                body,
                after_seen: true,
                ..
            } if body.can_replay() => Some(body.replay()),
            _ => None,
        }
    }

    /// Whether another try can carry the request after `outcome`: always
    /// after a connection failure (nothing was sent); after a peer said
    /// its app got nothing, a body still within its buffer; otherwise such
    /// a body only if the policy allows sending it again once seen.
    pub fn can_send_again(&self, outcome: Outcome) -> bool {
        match self {
            RequestBody::Once(req) => req.is_some(),
            RequestBody::Replay { body, after_seen, .. } => match outcome {
                Outcome::ConnectFailure => true,
                Outcome::NotDelivered => body.can_replay(),
                _ => *after_seen && body.can_replay(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Code;
    use crate::resilience::retry::RetryOn;
    use http::StatusCode;

    fn response(status: u16, grpc: Option<Code>) -> TryResult {
        TryResult {
            outcome: Some(Outcome::Response {
                status: StatusCode::from_u16(status).unwrap(),
                grpc,
            }),
            status_in_trailers: false,
        }
    }

    fn err(outcome: Option<Outcome>) -> TryResult {
        TryResult {
            outcome,
            status_in_trailers: false,
        }
    }

    fn on_5xx() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on: RetryOn::parse(&["5xx".into()]),
            grpc_codes: vec![Code::Unavailable],
            ..RetryPolicy::default()
        }
    }

    fn replayable() -> RequestBody {
        RequestBody::new(Request::new(crate::http::empty_body()), Replay::AfterSeen)
    }

    fn left(policy: &RetryPolicy, done: u32) -> Retries<'_> {
        Retries {
            policy,
            done,
            time_left: true,
        }
    }

    #[test]
    fn responses_count_for_or_against_the_endpoint() {
        let p = on_5xx();
        let body = replayable();
        let ok = judge(response(200, None), left(&p, 0), &body);
        assert_eq!(
            ok,
            Verdict {
                failure: Some(false),
                report_now: true,
                retry: false
            }
        );
        let bad = judge(response(503, None), left(&p, 0), &body);
        assert_eq!(
            bad,
            Verdict {
                failure: Some(true),
                report_now: true,
                retry: true
            }
        );
        let not_found = judge(response(404, None), left(&p, 0), &body);
        assert_eq!(not_found.failure, Some(false), "the caller's mistake");
        let grpc = judge(response(200, Some(Code::Unavailable)), left(&p, 0), &body);
        assert!(grpc.failure == Some(true) && grpc.retry);
        let grpc = judge(response(200, Some(Code::NotFound)), left(&p, 0), &body);
        assert!(grpc.failure == Some(false) && !grpc.retry);
    }

    #[test]
    fn grpc_status_in_trailers_is_judged_later() {
        let p = on_5xx();
        let tried = TryResult {
            status_in_trailers: true,
            ..response(200, None)
        };
        let v = judge(tried, left(&p, 0), &replayable());
        assert_eq!(v.failure, Some(false));
        assert!(!v.report_now, "the trailers decide");
        let failed = TryResult {
            status_in_trailers: true,
            ..response(500, None)
        };
        assert!(judge(failed, left(&p, 0), &replayable()).report_now);
    }

    #[test]
    fn errors_without_an_endpoint_verdict_are_neither_counted_nor_retried() {
        let p = on_5xx();
        let v = judge(err(None), left(&p, 0), &replayable());
        assert_eq!(
            v,
            Verdict {
                failure: None,
                report_now: false,
                retry: false
            }
        );
    }

    #[test]
    fn each_retry_condition() {
        let p = on_5xx();
        let body = replayable();
        for o in [Outcome::ConnectFailure, Outcome::Reset, Outcome::PerTryTimeout] {
            let v = judge(err(Some(o)), left(&p, 0), &body);
            assert!(v.retry && v.failure == Some(true), "{o:?}");
        }
        let default = RetryPolicy::default();
        assert!(judge(err(Some(Outcome::ConnectFailure)), left(&default, 0), &body).retry);
        assert!(!judge(err(Some(Outcome::Reset)), left(&default, 0), &body).retry);
        assert!(!judge(response(503, None), left(&default, 0), &body).retry);
        assert!(
            judge(err(Some(Outcome::PerTryTimeout)), left(&default, 0), &body).retry,
            "a per-try timeout exists to be retried"
        );
    }

    #[test]
    fn attempts_time_and_body_limit_retries() {
        let p = on_5xx();
        let body = replayable();
        assert!(judge(response(503, None), left(&p, 1), &body).retry);
        assert!(
            !judge(response(503, None), left(&p, 2), &body).retry,
            "attempts spent"
        );
        let late = Retries {
            time_left: false,
            ..left(&p, 0)
        };
        assert!(!judge(response(503, None), late, &body).retry, "deadline passed");
        let mut once = RequestBody::new(Request::new(crate::http::empty_body()), Replay::No);
        assert!(judge(err(Some(Outcome::ConnectFailure)), left(&p, 0), &once).retry);
        assert!(once.take_request().is_some());
        assert!(
            !judge(response(503, None), left(&p, 0), &once).retry,
            "sent once, gone"
        );
        let big = crate::http::full_body(bytes::Bytes::from(vec![
            b'x';
            crate::resilience::retry::MAX_REPLAY + 1
        ]));
        let big = RequestBody::new(Request::new(big), Replay::AfterSeen);
        assert!(
            !judge(response(503, None), left(&p, 0), &big).retry,
            "too big to replay"
        );
        assert!(
            judge(err(Some(Outcome::ConnectFailure)), left(&p, 0), &big).retry,
            "but nothing was sent after a connect failure"
        );
    }

    #[test]
    fn only_retryable_methods_keep_a_copy() {
        let p = on_5xx();
        let replay =
            |p: &RetryPolicy, m: http::Method, meshed: bool| RequestBody::needs_replay(p, &m, meshed);
        assert_eq!(replay(&p, http::Method::GET, true), Replay::AfterSeen);
        assert_eq!(
            replay(&p, http::Method::POST, true),
            Replay::Undelivered,
            "a POST is kept only in case a peer says its app got nothing"
        );
        assert_eq!(
            replay(&p, http::Method::POST, false),
            Replay::No,
            "no peer to say so"
        );
        let default = RetryPolicy::default();
        assert_eq!(
            replay(&default, http::Method::GET, true),
            Replay::Undelivered,
            "connect failures only"
        );
        assert_eq!(replay(&default, http::Method::GET, false), Replay::No);
        let none = RetryPolicy {
            attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(replay(&none, http::Method::GET, true), Replay::No);
    }

    #[test]
    fn a_request_its_peer_never_delivered_goes_elsewhere_whatever_its_method() {
        let p = on_5xx();
        let post = || {
            RequestBody::new(
                Request::new(crate::http::full_body(bytes::Bytes::from_static(b"order"))),
                Replay::Undelivered,
            )
        };
        let v = judge(err(Some(Outcome::NotDelivered)), left(&p, 0), &post());
        assert!(v.retry && v.failure == Some(true), "{v:?}");
        assert!(
            !judge(response(503, None), left(&p, 0), &post()).retry,
            "a 5xx from the app: the POST may have been processed"
        );
        assert!(
            judge(
                err(Some(Outcome::NotDelivered)),
                left(&RetryPolicy::default(), 0),
                &post()
            )
            .retry,
            "by default, like a connect failure"
        );
    }
}
