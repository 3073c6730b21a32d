//! `RequestMirror`: a copy of the request goes to another service on the
//! side, and its response is thrown away. The copy never delays or
//! changes what the caller gets: its body is teed frame by frame into a
//! small buffer without waiting, and a mirror that falls behind (or
//! fails) is abandoned, never waited for.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::Request;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::call::{self, Call, Deadline};
use super::route::Plan;
use super::Outbound;
use crate::http::{AppProtocol, Body, BoxError};

/// Frames of the caller's body a mirror may lag behind before it is
/// abandoned.
const MIRROR_BUFFER_FRAMES: usize = 16;

/// How long a mirrored request may take when the route sets no timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

impl Outbound {
    /// Starts a copy of `req` to each of the plan's mirrors and returns
    /// the request to send on (its body teed to the copies).
    pub(super) fn mirror(
        self: &Arc<Self>,
        req: Request<Body>,
        plan: &Plan,
        app: AppProtocol,
    ) -> Request<Body> {
        let (parts, mut body) = req.into_parts();
        for backend in &plan.mirrors {
            let mut head = Request::from_parts(parts.clone(), crate::http::empty_body());
            let port = backend
                .port
                .unwrap_or_else(|| plan.authority.port_u16().unwrap_or(80));
            let Ok(authority) = crate::discover::target(&backend.host, port).parse::<Authority>() else {
                continue;
            };
            if !body.is_end_stream() {
                let (tee, copy) = tee(body);
                body = tee;
                *head.body_mut() = copy;
            }
            let this = self.clone();
            let (host, timeout) = (backend.host.clone(), plan.timeout.unwrap_or(MIRROR_TIMEOUT));
            tokio::spawn(async move {
                let Ok(dest) = this.resolve(&host, port).await else {
                    tracing::debug!(mirror = %authority, "mirror backend did not resolve; not mirrored");
                    return;
                };
                let grpc = crate::grpc::is_grpc(head.headers());
                let call = Call {
                    dest: &dest,
                    app,
                    authority: &authority,
                    deadline: Deadline::new(Instant::now(), Some(timeout)),
                    per_try: None,
                    grpc,
                };
                let called = call::call(&this.clients, &call, head, &this.telemetry.metrics.resilience).await;
                match called.result {
                    // Read to the end, so the connection can be reused.
                    Ok(rsp) => {
                        let _ = tokio::time::timeout(timeout, rsp.into_body().collect()).await;
                    }
                    Err(e) => tracing::debug!(mirror = %authority, error = %e, "mirrored request failed"),
                }
            });
        }
        Request::from_parts(parts, body)
    }
}

/// Splits `body` into the one to send on and a copy fed as it is read.
fn tee(body: Body) -> (Body, Body) {
    let (tx, copy) = Channel::<Bytes, BoxError>::new(MIRROR_BUFFER_FRAMES);
    let teed = Tee {
        inner: body,
        copy: Some(tx),
    };
    (BodyExt::boxed_unsync(teed), BodyExt::boxed_unsync(copy))
}

/// A body that hands each frame it yields to a copy, without waiting: a
/// copy that cannot take a frame at once is aborted (so the mirror sees
/// an error, never a truncated body that looks complete).
struct Tee {
    inner: Body,
    copy: Option<Sender<Bytes, BoxError>>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let copied = if let Some(data) = frame.data_ref() {
                    Some(Frame::data(data.clone()))
                } else {
                    frame.trailers_ref().map(|t| Frame::trailers(t.clone()))
                };
                if let (Some(tx), Some(copied)) = (self.copy.as_mut(), copied) {
                    if tx.try_send(copied).is_err() {
                        if let Some(tx) = self.copy.take() {
                            tx.abort("the mirror fell behind the request".into());
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(tx) = self.copy.take() {
                    tx.abort("the request body failed".into());
                }
            }
            // The end: dropping the sender ends the copy's body too.
            Poll::Ready(None) => self.copy = None,
            Poll::Pending => {}
        }
        polled
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
    use http_body_util::StreamBody;

    fn chunks(n: usize) -> Body {
        let frames = (0..n).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(format!("{i},")))));
        BodyExt::boxed_unsync(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn the_copy_gets_every_frame() {
        let (body, copy) = tee(chunks(5));
        let reader = tokio::spawn(async move { copy.collect().await.map(|c| c.to_bytes()) });
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "0,1,2,3,4,");
        assert_eq!(reader.await.unwrap().unwrap(), sent);
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_aborted_and_never_slows_the_request() {
        let (body, copy) = tee(chunks(MIRROR_BUFFER_FRAMES * 4));
        // Nobody reads the copy: the request's body still arrives whole.
        let sent = tokio::time::timeout(Duration::from_secs(1), body.collect())
            .await
            .expect("never waits for the mirror")
            .unwrap()
            .to_bytes();
        assert!(sent.ends_with(format!("{},", MIRROR_BUFFER_FRAMES * 4 - 1).as_bytes()));
        let copied = copy.collect().await;
        assert!(copied.is_err(), "the copy ends in an error, not a short body");
    }
}
