//! HTTP/2 attacks on both listeners of a real proxy, written frame by
//! frame: a CONTINUATION flood (a header block that never ends) and rapid
//! reset (CVE-2023-44487: streams opened and cancelled at once). Each is
//! bounded; the proxy must end the connection well within the bound, stay
//! small, pass on only a bounded number of requests, and keep serving.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::*;
use weft_tests::{Mesh, ProxyProc};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// RST_STREAM's CANCEL.
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: a literal header field without indexing, new name (RFC 7541
/// 6.2.2), for names and values under 127 bytes.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn get_block(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", authority),
    ] {
        literal(&mut block, n, v);
    }
    block
}

/// Preface and an empty SETTINGS: a prior-knowledge HTTP/2 client.
async fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// How the proxy ended a connection.
#[derive(Debug, PartialEq)]
enum Ended {
    /// A GOAWAY frame with this error code (then, usually, EOF).
    GoAway(u32),
    /// EOF or a reset without a GOAWAY.
    Closed,
}

/// Reads frames until a GOAWAY or the end of the stream.
async fn read_until_end(mut r: tokio::net::tcp::OwnedReadHalf) -> Ended {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY && len >= 8 {
                let p = &buf[9..9 + len];
                return Ended::GoAway(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            buf.drain(..9 + len);
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ended::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `next()` batches until the proxy ends the connection, `max_bytes`
/// are sent or `max_time` passes. Returns how it ended (`None`: the bound
/// came first), the bytes sent and the time taken.
async fn attack(
    s: TcpStream,
    max_bytes: usize,
    max_time: Duration,
    mut next: impl FnMut() -> Vec<u8>,
) -> (Option<Ended>, usize, Duration) {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + max_time;
    let (r, mut w) = s.into_split();
    let mut ended = tokio::spawn(read_until_end(r));
    let mut sent = 0;
    while sent < max_bytes && started.elapsed() < max_time {
        let batch = next();
        tokio::select! {
            biased;
            e = &mut ended => return (Some(e.unwrap()), sent, started.elapsed()),
            // The proxy stopped reading without ending the connection.
            () = tokio::time::sleep_until(deadline) => break,
            w = w.write_all(&batch) => match w {
                Ok(()) => sent += batch.len(),
                // Reset by the proxy: see what it said first.
                Err(_) => break,
            },
        }
    }
    let e = tokio::time::timeout(Duration::from_secs(5), ended).await;
    (e.ok().map(Result::unwrap), sent, started.elapsed())
}

/// Resident set size and its peak, in KiB, from /proc/PID/status.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A normal request, through the client proxy and straight to the server
/// proxy's inbound listener.
async fn still_serves(mesh: &Mesh) {
    let (status, _) = get_echo(mesh.client.addrs.outbound, "echo").await;
    assert_eq!(status, StatusCode::OK, "through the outbound listener");
    let (status, _) = get_echo(mesh.server.addrs.inbound, "echo").await;
    assert_eq!(status, StatusCode::OK, "through the inbound listener");
}

fn targets(mesh: &Mesh) -> [(&'static str, &ProxyProc, SocketAddr); 2] {
    [
        ("outbound", &mesh.client, mesh.client.addrs.outbound),
        ("inbound", &mesh.server, mesh.server.addrs.inbound),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_early_and_costs_little() {
    let app = FlakyApp::start(Behaviour::default()).await;
    let mesh = Mesh::start("echo", app.addr, "");
    still_serves(&mesh).await;
    // 16 KiB of literal headers per CONTINUATION (the default frame size).
    let mut fragment = Vec::new();
    while fragment.len() + 103 <= 16 * 1024 {
        literal(&mut fragment, "x", &"a".repeat(100));
    }
    for (name, proxy, addr) in targets(&mesh) {
        let before = app.requests();
        let (rss_before, _) = memory_kib(proxy.pid());
        let s = open(addr).await;
        let mut first = true;
        let (ended, sent, took) = attack(s, 64 << 20, Duration::from_secs(10), || {
            if std::mem::take(&mut first) {
                frame(HEADERS, END_STREAM, 1, &get_block("echo"))
            } else {
                frame(CONTINUATION, 0, 1, &fragment)
            }
        })
        .await;
        let (_, peak) = memory_kib(proxy.pid());
        eprintln!("{name}: {ended:?} after {sent} bytes in {took:?}; RSS {rss_before} KiB, peak {peak} KiB");
        assert!(
            ended.is_some(),
            "{name}: the proxy kept reading a header block of {sent} bytes"
        );
        // `sent` counts what the kernel took too (a few MiB of socket
        // buffers on loopback); the proxy itself reads far less.
        assert!(sent < 16 << 20, "{name}: cut off only after {sent} bytes");
        assert!(
            took < Duration::from_secs(5),
            "{name}: cut off only after {took:?}"
        );
        assert!(
            peak < rss_before + 50 * 1024,
            "{name}: RSS peaked at {peak} KiB from {rss_before} KiB"
        );
        assert_eq!(
            app.requests(),
            before,
            "{name}: the unfinished request never reached the app"
        );
        still_serves(&mesh).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_a_goaway_and_reaches_the_app_a_bounded_number_of_times() {
    let app = FlakyApp::start(Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await;
    let mesh = Mesh::start("echo", app.addr, "");
    still_serves(&mesh).await;
    const PAIRS: u32 = 100_000;
    for (name, proxy, addr) in targets(&mesh) {
        let before = app.requests();
        let (rss_before, _) = memory_kib(proxy.pid());
        let block = get_block("echo");
        let s = open(addr).await;
        let mut stream = 1u32;
        // 500 HEADERS + RST_STREAM pairs per write.
        let (ended, sent, took) = attack(s, usize::MAX, Duration::from_secs(10), || {
            let mut batch = Vec::new();
            for _ in 0..500 {
                if stream >= 2 * PAIRS {
                    break;
                }
                batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
                batch.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
                stream += 2;
            }
            batch
        })
        .await;
        let opened = stream / 2;
        // Let whatever the proxy already passed on arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reached = app.requests() - before;
        let (_, peak) = memory_kib(proxy.pid());
        eprintln!(
            "{name}: {ended:?} after {opened} streams ({sent} bytes) in {took:?}; {reached} reached the app; RSS {rss_before} KiB, peak {peak} KiB"
        );
        assert!(
            matches!(ended, Some(Ended::GoAway(_)) | Some(Ended::Closed)),
            "{name}: the proxy took {opened} resets without ending the connection"
        );
        assert!(
            opened < PAIRS,
            "{name}: every one of {opened} streams written was taken"
        );
        assert!(
            reached <= 100,
            "{name}: {reached} cancelled requests reached the app"
        );
        assert!(
            peak < rss_before + 50 * 1024,
            "{name}: RSS peaked at {peak} KiB from {rss_before} KiB"
        );
        still_serves(&mesh).await;
    }
}
