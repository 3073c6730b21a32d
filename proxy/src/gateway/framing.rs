//! Request heads as a client sent them, before hyper reads them: the one
//! smuggling input hyper accepts and the gateway must refuse.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is framed
//! by the latter (RFC 9112 §6.3); hyper does so, drops the
//! `Content-Length` and closes the connection after the answer. A front
//! proxy that another hop may read differently answers 400 instead (RFC
//! 9112 §6.1 allows it), and by the time a request reaches the gateway's
//! handler the dropped header can no longer be seen. So [`Framed`] scans
//! the bytes hyper reads: it follows each message's framing (no body,
//! `Content-Length`, chunked) to find the next head, and records one
//! verdict per head in [`Verdicts`], which the handler takes in order (an
//! HTTP/1.1 connection serves its requests one after another).
//!
//! Anything the scanner does not follow — a head it cannot parse (hyper
//! answers those with 400 itself), a body it cannot frame, an `Upgrade`
//! or `CONNECT` after which the bytes stop being HTTP — ends the scanning
//! for the connection; later requests then have no verdict and are
//! served as hyper framed them.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The most bytes a head may take before the scanner gives up on it
/// (hyper refuses longer heads with 431 anyway).
const MAX_HEAD: usize = 512 * 1024;
/// Headers per request the scanner parses (hyper's default is 100).
const MAX_HEADERS: usize = 128;

/// Per request head, in order: whether its framing was ambiguous.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    /// Whether the next request's head had both `Content-Length` and
    /// `Transfer-Encoding`. `false` once the scanner has stopped.
    pub fn next_is_ambiguous(&self) -> bool {
        self.0
            .lock()
            .map(|mut q| q.pop_front())
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(ambiguous);
        }
    }
}

/// Where the scanner is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head (buffered until it parses).
    Head,
    /// A `Content-Length` body: bytes left.
    Body(u64),
    Chunk(Chunk),
    /// No longer following the stream.
    Off,
}

/// Chunked framing (RFC 9112 §7.1), as strictly as hyper decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        size: u64,
        digits: bool,
    },
    /// Whitespace after the size.
    Lws(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line, or the final CRLF.
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
}

/// The scanner itself, fed the bytes in the order read.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    head: Vec<u8>,
    verdicts: Verdicts,
}

impl Scanner {
    pub fn new(verdicts: Verdicts) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            verdicts,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => bytes = self.head_bytes(bytes),
                State::Body(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.state = if left == n {
                        State::Head
                    } else {
                        State::Body(left - n)
                    };
                }
                State::Chunk(Chunk::Data(left)) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.state = State::Chunk(if left == n {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - n)
                    });
                }
                State::Chunk(c) => {
                    self.state = chunk_byte(c, bytes[0]);
                    bytes = &bytes[1..];
                }
            }
        }
    }

    /// Buffers head bytes; once the head is complete, records its verdict,
    /// moves to its body and returns the bytes after it.
    fn head_bytes<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let before = self.head.len();
        self.head.extend_from_slice(bytes);
        // Only a new line can complete a head.
        if !bytes.contains(&b'\n') {
            if self.head.len() > MAX_HEAD {
                self.stop();
            }
            return &[];
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.head) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.head.len() <= MAX_HEAD => return &[],
            _ => {
                self.stop();
                return &[];
            }
        };
        let mut te = None;
        let mut cl = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                cl = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let ambiguous = te.is_some() && cl.is_some();
        self.verdicts.push(ambiguous);
        let next = match (te, cl) {
            // Answered 400 and the connection closed: nothing after it
            // is read.
            _ if ambiguous || upgrade => State::Off,
            (Some(te), _) => {
                let last = te.rsplit(|b| *b == b',').next().unwrap_or_default();
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    State::Chunk(Chunk::Size {
                        size: 0,
                        digits: false,
                    })
                } else {
                    State::Off
                }
            }
            (None, Some(cl)) => match std::str::from_utf8(cl).ok().and_then(|s| s.trim().parse().ok()) {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Off,
            },
            (None, None) => State::Head,
        };
        let rest = bytes.get(len.saturating_sub(before)..).unwrap_or_default();
        self.head.clear();
        self.head.shrink_to(1024);
        self.state = next;
        rest
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
    }
}

fn chunk_byte(c: Chunk, b: u8) -> State {
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    let next = match (c, b) {
        (Chunk::Size { size, .. }, _) if hex(b).is_some() => {
            match size.checked_mul(16).and_then(|s| s.checked_add(hex(b)?)) {
                Some(size) => Chunk::Size { size, digits: true },
                None => return State::Off,
            }
        }
        (Chunk::Size { size, digits: true }, b' ' | b'\t') => Chunk::Lws(size),
        (Chunk::Size { size, digits: true } | Chunk::Lws(size), b';') => Chunk::Ext(size),
        (Chunk::Size { size, digits: true } | Chunk::Lws(size) | Chunk::Ext(size), b'\r') => {
            Chunk::SizeLf(size)
        }
        (Chunk::Lws(size), b' ' | b'\t') => Chunk::Lws(size),
        (Chunk::Ext(size), b) if b != b'\n' => Chunk::Ext(size),
        (Chunk::SizeLf(0), b'\n') => Chunk::LineStart,
        (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size {
            size: 0,
            digits: false,
        },
        (Chunk::LineStart, b'\r') => Chunk::EndLf,
        (Chunk::LineStart | Chunk::Trailer, b) if b != b'\r' && b != b'\n' => Chunk::Trailer,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerLf, b'\n') => Chunk::LineStart,
        (Chunk::EndLf, b'\n') => return State::Head,
        _ => return State::Off,
    };
    State::Chunk(next)
}

/// A connection whose reads pass through a [`Scanner`].
pub struct Framed<I> {
    inner: I,
    scanner: Scanner,
}

impl<I> Framed<I> {
    pub fn new(inner: I, verdicts: Verdicts) -> Self {
        Self {
            inner,
            scanner: Scanner::new(verdicts),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Framed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

crate::io::delegate_write!(Framed, inner);

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<bool> {
        let v = Verdicts::default();
        let mut s = Scanner::new(v.clone());
        for piece in stream.chunks(split.max(1)) {
            s.feed(piece);
        }
        let q = v.0.lock().unwrap();
        q.iter().copied().collect()
    }

    #[test]
    fn each_head_gets_a_verdict_whatever_the_reads() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n3 \r\nabc\r\n0\r\nTrailer: x\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
            GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in [1, 2, 7, 64, stream.len()] {
            assert_eq!(
                verdicts(stream, split),
                [false, false, false, false, true],
                "reads of {split}"
            );
        }
    }

    #[test]
    fn either_order_of_the_two_headers_is_ambiguous() {
        let te_first =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts(te_first, 1000), [true]);
    }

    #[test]
    fn what_it_cannot_follow_stops_the_scanning() {
        // An upgrade: the bytes after it are not HTTP.
        let upgrade = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(upgrade, 1000), [false]);
        // A bad chunk size, and a head that does not parse.
        assert_eq!(
            verdicts(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n",
                3
            ),
            [false]
        );
        assert!(verdicts(b"GET / HTTP/1.1\r\nX-Bad: a\x01b\r\n\r\n", 1000).is_empty());
        // An endless head is not buffered past the limit.
        let v = Verdicts::default();
        let mut s = Scanner::new(v);
        let line = vec![b'a'; 64 * 1024];
        s.feed(b"GET / HTTP/1.1\r\nX: ");
        for _ in 0..16 {
            s.feed(&line);
        }
        assert_eq!(s.state, State::Off);
        assert!(s.head.capacity() == 0);
    }
}
