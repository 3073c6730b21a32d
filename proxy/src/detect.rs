//! Protocol detection on the first bytes of a connection.
//!
//! The bytes read are kept and replayed (see [`PrefixedIo`]), so whatever
//! serves the connection afterwards sees it from its first byte.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::PrefixedIo;

/// The HTTP/2 prior-knowledge connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The line a Weft proxy sends first on an opaque TCP connection to a peer's
/// inbound listener: `WEFT-TCP/1 <port>\r\n`, naming the app port.
pub const MESH_TCP_PREFIX: &[u8] = b"WEFT-TCP/1 ";
/// Beyond this many bytes without a decision, the connection is opaque.
const MAX_DETECT_BYTES: usize = 8 * 1024;
const HTTP_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Opaque TCP from a peer proxy, naming the app port to reach.
    MeshTcp {
        port: u16,
    },
    /// A TLS ClientHello: from a peer proxy, mTLS.
    Tls,
    Opaque,
}

enum Decision {
    Done(Protocol),
    NeedMore,
}

/// Reads from `io` until the protocol is known, the timeout passes (opaque)
/// or the peer closes. Returns the protocol and the I/O with the read bytes
/// ready to be replayed.
pub async fn detect<I: AsyncRead + Unpin>(io: I, timeout: Duration) -> io::Result<(Protocol, PrefixedIo<I>)> {
    let (until, io) = detect_until(io, tokio::time::sleep(timeout)).await?;
    let protocol = match until {
        Until::Decided(p) => p,
        Until::Stopped(()) => Protocol::Opaque,
    };
    Ok((protocol, io))
}

/// How [`detect_until`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Until<T> {
    /// The bytes (or the peer's close) decided.
    Decided(Protocol),
    /// `stop` resolved first, with this.
    Stopped(T),
}

/// Reads from `io` until the protocol is known, the peer closes (opaque),
/// or `stop` resolves. Returns how it ended and the I/O with the read
/// bytes ready to be replayed.
pub async fn detect_until<I, S>(mut io: I, stop: S) -> io::Result<(Until<S::Output>, PrefixedIo<I>)>
where
    I: AsyncRead + Unpin,
    S: std::future::Future,
{
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Decision::Done(p) = classify(&buf) {
                return Ok::<_, io::Error>(p);
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Ok(Protocol::Opaque);
            }
        }
    };
    let until = tokio::select! {
        biased;
        r = read => Until::Decided(r?),
        s = stop => Until::Stopped(s),
    };
    Ok((until, PrefixedIo::new(buf.freeze(), io)))
}

fn classify(buf: &[u8]) -> Decision {
    use Decision::*;
    if buf.is_empty() {
        return NeedMore;
    }
    if buf.len() > MAX_DETECT_BYTES {
        return Done(Protocol::Opaque);
    }
    // TLS record header: handshake (0x16), version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => NeedMore,
            Some(3) => Done(Protocol::Tls),
            Some(_) => Done(Protocol::Opaque),
        };
    }
    if buf.starts_with(H2_PREFACE) {
        return Done(Protocol::Http2);
    }
    if H2_PREFACE.starts_with(buf) {
        return NeedMore;
    }
    if let Some(rest) = buf.strip_prefix(MESH_TCP_PREFIX) {
        return match rest.iter().position(|&b| b == b'\n') {
            None if rest.len() < 8 => NeedMore,
            None => Done(Protocol::Opaque),
            Some(end) => match std::str::from_utf8(&rest[..end])
                .ok()
                .map(|s| s.trim_end_matches('\r').parse())
            {
                Some(Ok(port)) if port != 0 => Done(Protocol::MeshTcp { port }),
                _ => Done(Protocol::Opaque),
            },
        };
    }
    if MESH_TCP_PREFIX.starts_with(buf) {
        return NeedMore;
    }
    classify_http1(buf)
}

/// HTTP/1 when the first line is `METHOD SP target SP HTTP/x`, or as soon as
/// a well-known method and a space arrive (so a malformed request line gets
/// an HTTP 400, not a silent opaque forward).
fn classify_http1(buf: &[u8]) -> Decision {
    let method_len = buf
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    if method_len == 0 || method_len > 24 {
        return Decision::Done(Protocol::Opaque);
    }
    match buf.get(method_len) {
        None => return Decision::NeedMore,
        Some(b' ') => {}
        Some(_) => return Decision::Done(Protocol::Opaque),
    }
    if HTTP_METHODS.contains(&&buf[..method_len]) {
        return Decision::Done(Protocol::Http1);
    }
    match buf.iter().position(|&b| b == b'\n') {
        None => Decision::NeedMore,
        Some(end) => {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            let is_http = line
                .rsplit(|b| *b == b' ')
                .next()
                .is_some_and(|v| v.starts_with(b"HTTP/1."));
            Decision::Done(if is_http {
                Protocol::Http1
            } else {
                Protocol::Opaque
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt};

    async fn detect_bytes(chunks: &[&[u8]], close: bool) -> (Protocol, Vec<u8>) {
        let (mut client, server) = duplex(64 * 1024);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        if close {
            drop(client);
            let (p, io) = detect(server, Duration::from_secs(1)).await.unwrap();
            return (p, io.prefix().to_vec());
        }
        let (p, io) = detect(server, Duration::from_secs(1)).await.unwrap();
        drop(client);
        (p, io.prefix().to_vec())
    }

    #[tokio::test]
    async fn http1_request_line() {
        let (p, prefix) = detect_bytes(&[b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"], false).await;
        assert_eq!(p, Protocol::Http1);
        assert!(prefix.starts_with(b"GET /hello"), "bytes are kept for replay");
    }

    #[tokio::test]
    async fn http1_unknown_method_needs_the_version() {
        assert_eq!(
            detect_bytes(&[b"PROPFIND /x HTTP/1.1\r\n"], false).await.0,
            Protocol::Http1
        );
        assert_eq!(
            detect_bytes(&[b"SET key value\r\n"], false).await.0,
            Protocol::Opaque
        );
    }

    #[tokio::test]
    async fn malformed_request_line_with_known_method_is_http1() {
        assert_eq!(
            detect_bytes(&[b"GET /a b c HTTP/9\r\n\r\n"], false).await.0,
            Protocol::Http1
        );
    }

    #[tokio::test]
    async fn http2_preface_split_across_reads() {
        let (p, prefix) = detect_bytes(&[&H2_PREFACE[..5], &H2_PREFACE[5..]], false).await;
        assert_eq!(p, Protocol::Http2);
        assert_eq!(prefix, H2_PREFACE);
    }

    #[tokio::test]
    async fn tls_client_hello() {
        assert_eq!(
            detect_bytes(&[b"\x16\x03\x01\x02\x00"], false).await.0,
            Protocol::Tls
        );
    }

    #[tokio::test]
    async fn garbage_is_opaque() {
        assert_eq!(detect_bytes(&[b"\x16\x09\x01"], false).await.0, Protocol::Opaque);
        assert_eq!(detect_bytes(&[b"hello there\n"], false).await.0, Protocol::Opaque);
    }

    #[tokio::test]
    async fn mesh_tcp_preamble() {
        let (p, prefix) = detect_bytes(&[b"WEFT-TCP/1 6379\r\nPING"], false).await;
        assert_eq!(p, Protocol::MeshTcp { port: 6379 });
        assert!(prefix.starts_with(MESH_TCP_PREFIX));
        assert_eq!(
            detect_bytes(&[b"WEFT-TCP/1 0\r\n"], false).await.0,
            Protocol::Opaque
        );
    }

    #[tokio::test]
    async fn close_before_decision_is_opaque() {
        assert_eq!(detect_bytes(&[b"GE"], true).await.0, Protocol::Opaque);
        assert_eq!(detect_bytes(&[], true).await.0, Protocol::Opaque);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_client_times_out_as_opaque() {
        let (mut client, server) = duplex(1024);
        client.write_all(b"PRI * HT").await.unwrap();
        let started = tokio::time::Instant::now();
        let (p, io) = detect(server, Duration::from_millis(300)).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert_eq!(io.prefix(), b"PRI * HT");
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out_as_opaque() {
        let (_client, server) = duplex(1024);
        let (p, io) = detect(server, Duration::from_millis(100)).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert!(io.prefix().is_empty());
    }
}
