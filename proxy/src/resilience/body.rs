//! The response body of a resilient call: keeps the bulkhead slot and the
//! endpoint's in-flight count until the response ends, reports gRPC
//! failures (known only from trailers) to the circuit breaker, and cancels
//! a response that makes no progress for the idle timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::balance::InFlight;
use super::metrics::ResilienceMetrics;
use crate::discover::Destination;
use crate::http::{Body, BoxError};

/// gRPC codes that count as the endpoint failing (not the caller's
/// mistake): UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS.
pub fn grpc_is_failure(code: u32) -> bool {
    matches!(code, 2 | 13 | 14 | 15)
}

/// A breaker outcome still to report (gRPC responses: at the trailers).
pub struct PendingReport {
    pub dest: Arc<Destination>,
    pub in_flight: InFlight,
    pub probe: bool,
    pub metrics: ResilienceMetrics,
}

impl PendingReport {
    fn report(self, failure: bool) {
        super::record(&self.dest, self.in_flight.stats(), failure, &self.metrics);
    }
}

pub struct ResponseBody {
    inner: Body,
    _permit: Option<OwnedSemaphorePermit>,
    _in_flight: Option<InFlight>,
    grpc: Option<PendingReport>,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl ResponseBody {
    pub fn new(
        inner: Body,
        permit: Option<OwnedSemaphorePermit>,
        in_flight: Option<InFlight>,
        grpc: Option<PendingReport>,
        idle: Duration,
    ) -> Self {
        Self {
            inner,
            _permit: permit,
            _in_flight: in_flight,
            grpc,
            idle,
            sleep: None,
            progressed: false,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Ended without trailers: no verdict; a probe lets another try.
        if let Some(r) = self.grpc.take() {
            if r.probe {
                r.in_flight.stats().breaker.probe_abandoned();
            }
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    this.progressed = true;
                    if let Some(Ok(f)) = &frame {
                        if let Some(t) = f.trailers_ref() {
                            if let Some(r) = this.grpc.take() {
                                let code = t
                                    .get("grpc-status")
                                    .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
                                r.report(code.is_some_and(grpc_is_failure));
                            }
                        }
                    }
                    return Poll::Ready(frame);
                }
                Poll::Pending => {}
            }
            // Idle timeout: a timer per `idle`; when it fires after
            // progress, it starts over (so a stalled body is cancelled
            // after between one and two `idle`s).
            let idle = this.idle;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if !this.progressed {
                return Poll::Ready(Some(Err(format!("response idle for {idle:?}").into())));
            }
            this.progressed = false;
            let next = tokio::time::Instant::now() + idle;
            sleep.as_mut().reset(next);
            // Poll the fresh timer so it is registered, then the body
            // again (it may have become ready meanwhile).
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cancelled_a_live_one_is_not() {
        let (mut tx, inner) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let mut body = ResponseBody::new(inner.boxed_unsync(), None, None, None, Duration::from_secs(10));
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(8)).await;
                tx.send_data(Bytes::from_static(b"tick")).await.unwrap();
            }
            // Then silence, sender kept alive.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let start = tokio::time::Instant::now();
        let mut got = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => got += 1,
                Some(Err(e)) => break e,
                None => panic!("ended"),
            }
        };
        assert_eq!(got, 5, "ticks every 8 s are progress");
        assert!(err.to_string().contains("idle"));
        let stalled_for = start.elapsed() - Duration::from_secs(40);
        assert!(
            stalled_for >= Duration::from_secs(10) && stalled_for <= Duration::from_secs(20),
            "{stalled_for:?}"
        );
    }
}
