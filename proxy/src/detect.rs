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

impl Protocol {
    /// The HTTP version the app speaks, when it speaks HTTP.
    pub fn http(&self) -> Option<crate::http::AppProtocol> {
        match self {
            Protocol::Http1 => Some(crate::http::AppProtocol::Http1),
            Protocol::Http2 => Some(crate::http::AppProtocol::Http2),
            Protocol::MeshTcp { .. } | Protocol::Tls | Protocol::Opaque => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
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

/// Decides on the first [`MAX_DETECT_BYTES`] only, and each rule below
/// decides on a prefix that no later byte can change: so the answer is the
/// same however the bytes were split into reads.
fn classify(buf: &[u8]) -> Decision {
    let head = &buf[..buf.len().min(MAX_DETECT_BYTES)];
    match classify_head(head) {
        Decision::NeedMore if buf.len() >= MAX_DETECT_BYTES => Decision::Done(Protocol::Opaque),
        decision => decision,
    }
}

fn classify_head(buf: &[u8]) -> Decision {
    use Decision::*;
    if buf.is_empty() {
        return NeedMore;
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
        return mesh_tcp_port(rest);
    }
    if MESH_TCP_PREFIX.starts_with(buf) {
        return NeedMore;
    }
    classify_http1(buf)
}

/// The rest of a `WEFT-TCP/1 ` line: the port as 1 to 5 digits, then
/// `\r\n` (or `\n`). Anything else is opaque, decided as soon as it shows.
fn mesh_tcp_port(rest: &[u8]) -> Decision {
    use Decision::*;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 5 {
        return Done(Protocol::Opaque);
    }
    match &rest[digits..] {
        [] | [b'\r'] => return NeedMore,
        [b'\n', ..] | [b'\r', b'\n', ..] => {}
        _ => return Done(Protocol::Opaque),
    }
    let port = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|d| d.parse::<u16>().ok());
    match port {
        Some(port) if port != 0 => Done(Protocol::MeshTcp { port }),
        _ => Done(Protocol::Opaque),
    }
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

    /// Found by `props::classify_decides_once_for_good`: a request line
    /// that arrived with more than 8 KiB behind it in one read was opaque,
    /// though its first bytes already said HTTP/1.
    #[test]
    fn a_long_first_read_is_decided_on_its_first_bytes() {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        input.resize(MAX_DETECT_BYTES + 100, b'a');
        assert_eq!(classify(&input), Decision::Done(Protocol::Http1));
    }

    /// `+1` was a port (found by `props::a_mesh_tcp_line_names_exactly_its_port`),
    /// and `WEFT-TCP/1 0000006379` was opaque when a read ended after 8
    /// digits but a port when it did not (seen while fixing that).
    #[test]
    fn mesh_tcp_port_is_one_to_five_digits() {
        assert_eq!(classify(b"WEFT-TCP/1 00000063"), Decision::Done(Protocol::Opaque));
        assert_eq!(
            classify(b"WEFT-TCP/1 0000006379\r\n"),
            Decision::Done(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"WEFT-TCP/1 +6379\r\n"),
            Decision::Done(Protocol::Opaque)
        );
        assert_eq!(classify(b"WEFT-TCP/1 65535\r"), Decision::NeedMore);
        assert_eq!(
            classify(b"WEFT-TCP/1 65535\r\n"),
            Decision::Done(Protocol::MeshTcp { port: 65535 })
        );
        assert_eq!(classify(b"WEFT-TCP/1 65536\n"), Decision::Done(Protocol::Opaque));
    }

    /// Property tests (`bench/fuzz.sh` runs them long; `PROPTEST_CASES`
    /// scales them).
    mod props {
        use std::collections::VecDeque;
        use std::pin::Pin;
        use std::task::{Context, Poll};

        use proptest::prelude::*;
        use tokio::io::{AsyncReadExt, ReadBuf};

        use super::super::*;

        /// Delivers `chunks` one read each (a read smaller than a chunk
        /// gets its front), then end of stream.
        struct Chunks(VecDeque<Vec<u8>>);

        impl AsyncRead for Chunks {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if let Some(mut chunk) = self.0.pop_front() {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.push_front(chunk.split_off(n));
                    }
                }
                Poll::Ready(Ok(()))
            }
        }

        /// Detects over `chunks`, then reads the replaying I/O to its end.
        fn run(chunks: Vec<Vec<u8>>) -> (Protocol, Vec<u8>) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                let (protocol, mut io) = detect(Chunks(chunks.into()), Duration::from_secs(5))
                    .await
                    .unwrap();
                let mut replayed = Vec::new();
                io.read_to_end(&mut replayed).await.unwrap();
                (protocol, replayed)
            })
        }

        /// First bytes near each protocol's (request lines with known and
        /// unknown methods, the preface, `WEFT-TCP/1` lines with odd ports,
        /// TLS records), sometimes padded past the detection limit, and
        /// arbitrary bytes.
        fn first_bytes() -> impl Strategy<Value = Vec<u8>> {
            let near = prop_oneof![
                "(GET|POST|CONNECT|PROPFIND|SET|PRI|FOO-BAR|get)[ /]{0,2}[ -~]{0,30}( HTTP/1\\.[01]| HTTP/2\\.0)?\r?\n?[ -~]{0,20}"
                    .prop_map(String::into_bytes),
                "WEFT-TCP/1 [+ 0-9]{0,10}\r?\n?[ -~]{0,8}".prop_map(String::into_bytes),
                "WEFT-TCP/[0-9] [0-9]{1,5}\r\n".prop_map(String::into_bytes),
                (0..=H2_PREFACE.len(), prop::collection::vec(any::<u8>(), 0..16))
                    .prop_map(|(n, rest)| [&H2_PREFACE[..n], &rest].concat()),
                (any::<u8>(), prop::collection::vec(any::<u8>(), 0..16))
                    .prop_map(|(v, rest)| [&[0x16, v % 5][..], &rest].concat()),
                prop::collection::vec(any::<u8>(), 0..64),
            ];
            (near, prop::bool::weighted(0.1)).prop_map(|(mut bytes, pad)| {
                if pad {
                    bytes.resize(MAX_DETECT_BYTES + 64, b'a');
                }
                bytes
            })
        }

        proptest! {
            #[test]
            fn split_reads_give_the_same_protocol_and_replay_every_byte(
                input in first_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            ) {
                let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
                at.sort_unstable();
                at.dedup();
                let mut chunks = Vec::new();
                let mut from = 0;
                for to in at.into_iter().chain([input.len()]) {
                    // An empty read is the end of the stream.
                    if to > from {
                        chunks.push(input[from..to].to_vec());
                    }
                    from = to;
                }
                let (whole, replayed) = run(vec![input.clone()]);
                prop_assert_eq!(&replayed, &input, "every byte read is replayed, in order");
                let (split, replayed) = run(chunks);
                prop_assert_eq!(split, whole, "the same protocol however the reads fall");
                prop_assert_eq!(&replayed, &input);
            }

            #[test]
            fn classify_decides_once_for_good(input in first_bytes(), probe in any::<prop::sample::Index>()) {
                let Some(k) = (0..=input.len()).find(|&k| classify(&input[..k]) != Decision::NeedMore) else {
                    return Ok(());
                };
                let decided = classify(&input[..k]);
                let later = (k..input.len().min(k + 64)).chain([probe.index(input.len() - k + 1) + k, input.len()]);
                for n in later {
                    prop_assert_eq!(classify(&input[..n]), classify(&input[..k]), "at {} bytes, decided at {}", n, k);
                }
                prop_assert_ne!(decided, Decision::NeedMore);
            }

            #[test]
            fn a_mesh_tcp_line_names_exactly_its_port(digits in "[+ 0-9]{0,7}", cr in any::<bool>(), port in 1..=u16::MAX) {
                let line = format!("WEFT-TCP/1 {digits}{}\n", if cr { "\r" } else { "" });
                let expected = match digits.parse::<u16>() {
                    Ok(p) if p != 0 && (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) => {
                        Decision::Done(Protocol::MeshTcp { port: p })
                    }
                    _ => Decision::Done(Protocol::Opaque),
                };
                prop_assert_eq!(classify(line.as_bytes()), expected);
                // What `tcp::connect_mesh` writes.
                let written = format!("WEFT-TCP/1 {port}\r\n");
                prop_assert_eq!(classify(written.as_bytes()), Decision::Done(Protocol::MeshTcp { port }));
            }
        }
    }
}
