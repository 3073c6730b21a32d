//! What bounds a connection: how many a listener holds at once, how long
//! one may sit idle, and how long an HTTP/1 client may take to send a
//! request head (slowloris).
//!
//! Each bound frees what a silent or slow client would otherwise hold for
//! ever: a file descriptor here and one at the app, a task, buffers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The answer to a client that did not finish its request head in time.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The connections one listener holds at once.
#[derive(Debug, Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
        }
    }

    /// A slot for one more connection, or `None` when the listener is
    /// full. The slot is held as long as the connection's I/O lives, which
    /// includes a tunnel the connection was upgraded to.
    pub fn admit<I>(&self, io: I) -> Option<Admitted<I>> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Admitted { io, _permit: permit })
    }
}

/// An accepted connection holding its listener slot.
#[derive(Debug)]
pub struct Admitted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<I> Admitted<I> {
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

crate::io::delegate_read!(Admitted, io);
crate::io::delegate_write!(Admitted, io);

/// What one HTTP connection's requests are doing, shared by its service
/// (which sees requests start and responses end) and its I/O.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Requests whose response body has not ended.
    active: AtomicUsize,
    /// Request heads received, ever.
    started: AtomicU64,
    /// When the last response ended (ms after `epoch`).
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// A request head arrived; the guard ends it when dropped (with the
    /// response body it is put in).
    pub fn start(self: &Arc<Self>) -> ActiveGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// How much longer the connection may stay idle before `timeout` is
    /// up: `None` while a request is in progress.
    fn idle_left(&self, timeout: Duration) -> Option<Duration> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(timeout.saturating_sub(since.elapsed()))
    }

    /// Resolves once the connection has had no request in progress for
    /// `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            match self.idle_left(timeout) {
                Some(left) if left.is_zero() => return,
                Some(left) => tokio::time::sleep(left).await,
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

/// One request in progress on an [`Activity`].
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let now = u64::try_from(a.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(now, Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in progress until
/// the body ends (or is dropped).
pub struct Tracked<B> {
    body: B,
    _guard: ActiveGuard,
}

impl<B> Tracked<B> {
    pub fn new(body: B, guard: ActiveGuard) -> Self {
        Self { body, _guard: guard }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// HTTP/1 I/O that closes a connection with `408` when a request head,
/// once its first byte arrived, is not complete within the timeout. (An
/// idle keep-alive connection is the idle timeout's, not this one's.)
pub struct HeadTimer<I> {
    io: I,
    activity: Arc<Activity>,
    timeout: Duration,
    /// Running while a head is being read: its deadline, and the heads
    /// received when it started (a new one stops it).
    running: Option<(Instant, u64)>,
    /// The running deadline's timer, made only when a read has to wait
    /// for more of the head: a head that arrives in one read (nearly all)
    /// costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Set when the timer fired, for the caller's metrics.
    pub fired: Arc<std::sync::atomic::AtomicBool>,
}

impl<I> HeadTimer<I> {
    pub fn new(io: I, activity: Arc<Activity>, timeout: Duration) -> Self {
        Self {
            io,
            activity,
            timeout,
            running: None,
            sleep: None,
            fired: Arc::default(),
        }
    }

    /// Stops the timer once the head it was started for has arrived.
    fn stop_if_received(&mut self) {
        if let Some((_, at)) = &self.running {
            if self.activity.started.load(Ordering::Relaxed) != *at {
                self.running = None;
                self.sleep = None;
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimer<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.stop_if_received();
                let idle = this.activity.active.load(Ordering::Relaxed) == 0;
                if buf.filled().len() > before && idle && this.running.is_none() {
                    // The first bytes of a new head: its clock starts.
                    let deadline = Instant::now() + this.timeout;
                    this.running = Some((deadline, this.activity.started.load(Ordering::Relaxed)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.stop_if_received();
                if let Some((deadline, _)) = this.running {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.running = None;
                        this.sleep = None;
                        this.fired.store(true, Ordering::Relaxed);
                        // Best effort: a client this slow may not read it.
                        let _ = Pin::new(&mut this.io).poll_write(cx, REQUEST_TIMEOUT);
                        let _ = Pin::new(&mut this.io).poll_flush(cx);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request head did not arrive in time",
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

crate::io::delegate_write!(HeadTimer, io);

/// I/O that stamps the time of its last byte either way into a clock
/// shared by both sides of a splice.
pub struct Stamped<I> {
    io: I,
    clock: Arc<IdleClock>,
}

/// When a splice last moved a byte.
#[derive(Debug)]
pub struct IdleClock {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn stamp(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    pub fn wrap<I>(self: &Arc<Self>, io: I) -> Stamped<I> {
        Stamped {
            io,
            clock: self.clone(),
        }
    }

    /// Resolves once no byte has moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let left = timeout.saturating_sub(last.elapsed());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Stamped<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.stamp();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Stamped<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.stamp();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_head_that_does_not_finish_gets_408() {
        let (mut client, server) = duplex(1024);
        let activity = Activity::new();
        let mut io = HeadTimer::new(server, activity, Duration::from_secs(10));
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHo");
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let mut answer = vec![0u8; REQUEST_TIMEOUT.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, REQUEST_TIMEOUT);
        assert!(io.fired.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_received_head_stops_the_timer_and_idle_waits_do_not_start_it() {
        let (mut client, server) = duplex(1024);
        let activity = Activity::new();
        let mut io = HeadTimer::new(server, activity.clone(), Duration::from_secs(10));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        // The service saw the head; its response ends later.
        let guard = activity.start();
        drop(guard);
        // An idle keep-alive connection: no head timeout, however long.
        let read = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting after 60 s of idle");
        assert!(!io.fired.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_response() {
        let activity = Activity::new();
        let guard = activity.start();
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        // In progress for a minute: never idle.
        assert!(tokio::time::timeout(Duration::from_secs(60), &mut idle)
            .await
            .is_err());
        drop(guard);
        let started = Instant::now();
        idle.await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited <= Duration::from_secs(6),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_splice_is_idle_after_no_byte_either_way() {
        let clock = IdleClock::new();
        let (a, mut b) = duplex(64);
        let mut a = clock.wrap(a);
        tokio::time::sleep(Duration::from_secs(3)).await;
        b.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        let started = Instant::now();
        clock.idle_for(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn a_full_listener_admits_no_more_until_one_closes() {
        let admission = Admission::new(2);
        let a = admission.admit(()).unwrap();
        let _b = admission.admit(()).unwrap();
        assert!(admission.admit(()).is_none());
        drop(a);
        assert!(admission.admit(()).is_some());
    }
}
