//! The response body of a resilient call: keeps the bulkhead slot and the
//! endpoint's in-flight count until the response ends, hands a gRPC
//! verdict (known only from trailers) to whoever waits for it, and cancels
//! a response that makes no progress for the idle timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::balance::InFlight;
use crate::grpc;
use crate::http::{Body, BoxError};

/// Called once with a gRPC response's verdict from its trailers
/// (`Some(failed)`), or with `None` when the body ended without any.
pub type TrailersVerdict = Box<dyn FnOnce(Option<bool>) + Send>;

pub struct ResponseBody {
    inner: Body,
    _permit: Option<OwnedSemaphorePermit>,
    _in_flight: Option<InFlight>,
    grpc: Option<TrailersVerdict>,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl ResponseBody {
    pub fn new(
        inner: Body,
        permit: Option<OwnedSemaphorePermit>,
        in_flight: Option<InFlight>,
        grpc: Option<TrailersVerdict>,
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
        // Ended without trailers: no verdict.
        if let Some(verdict) = self.grpc.take() {
            verdict(None);
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
                            if let Some(verdict) = this.grpc.take() {
                                verdict(Some(grpc::status(t).is_some_and(grpc::is_endpoint_failure)));
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
