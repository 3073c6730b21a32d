//! Connection bounds through the real proxy: a listener holds at most
//! `maxConnections`, idle connections (HTTP keep-alive and silent TCP) are
//! closed after their idle timeouts and give back their file descriptors,
//! and a slow request head (slowloris) is answered 408 while normal
//! requests stay fast.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::*;
use weft_tests::bed::metric_sum;
use weft_tests::{eventually, ProxyProc};

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The process's sockets accepted on local `port` (the listening socket
/// itself not counted): read from `/proc/PID/fd` and `/proc/net/tcp{,6}`.
fn accepted(pid: u32, port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state != "0A" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| inodes.contains(l.to_string_lossy().as_ref()))
                .count()
        })
        .unwrap_or(0)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens `n` connections to `addr`, `batch` at a time, each sending
/// `hello` and reading until the first response byte or EOF (refused
/// connections are closed at once). Returns the open streams and how many
/// got a response.
async fn open_many(
    addr: SocketAddr,
    n: usize,
    batch: usize,
    hello: &'static [u8],
) -> (Vec<TcpStream>, usize) {
    let mut streams = Vec::with_capacity(n);
    let mut answered = 0;
    for start in (0..n).step_by(batch) {
        let tasks: Vec<_> = (start..n.min(start + batch))
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.ok()?;
                    if hello.is_empty() {
                        return Some((s, false));
                    }
                    s.write_all(hello).await.ok()?;
                    let mut buf = [0u8; 4096];
                    let got = matches!(
                        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
                        Ok(Ok(n)) if n > 0
                    );
                    Some((s, got))
                })
            })
            .collect();
        for t in tasks {
            if let Some((s, got)) = t.await.unwrap() {
                answered += usize::from(got);
                streams.push(s);
            }
        }
    }
    (streams, answered)
}

/// Waits until the proxy holds no connection accepted on `listener`
/// (its descriptors given back); returns how long it took.
async fn all_closed(pid: u32, listener: SocketAddr, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(
        within,
        "the proxy has closed every accepted connection",
        || async { (accepted(pid, listener.port()) == 0).then_some(()) },
    )
    .await;
    started.elapsed()
}

/// 10,000 connections to each listener of a proxy capped at 1,000: the
/// cap holds (the rest are closed at once, and counted), the held ones
/// are closed by the idle timeouts, and the proxy's descriptors for them
/// are given back within the idle timeout + 5 s, its memory near where it
/// was. (Its pooled connections to the app live on for the pool's own
/// idle timeout; they are not the listener's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_capped_and_timed_out() {
    let app = echo_app().await;
    let limits = "maxConnections: 1000\nhttpIdleTimeout: 4s\ntcpIdleTimeout: 4s\ndetectTimeout: 500ms\n";
    let proxy = ProxyProc::start_with_endpoints(
        &format!("appPorts: [{}]\n{limits}", app.addr.port()),
        &format!("echo:\n  - addr: {}\n", app.addr),
    );
    let pid = proxy.pid();
    // One request first, so the proxy's lazily built state is there.
    assert_eq!(
        get_echo(proxy.addrs.outbound, "echo").await.0,
        http::StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fd0, rss0) = (fds(pid), rss_kib(pid));

    // HTTP keep-alive connections that go idle after one request, to the
    // outbound listener (to the app through the proxy) and to the inbound
    // one (straight to the app port).
    for (listener, addr) in [
        ("outbound", proxy.addrs.outbound),
        ("inbound", proxy.addrs.inbound),
    ] {
        let t = Instant::now();
        let (streams, answered) = open_many(addr, 10_000, 100, b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
        eprintln!("{listener}: 10000 connections opened in {:?}", t.elapsed());
        assert!(
            (900..=1000).contains(&answered),
            "{listener}: {answered} of 10000 connections were served; the cap is 1000"
        );
        let held = accepted(pid, addr.port());
        assert!(
            held <= 1000,
            "{listener}: {held} connections held; the cap is 1000"
        );
        let peak_fds = fds(pid);
        let peak_rss = rss_kib(pid);
        let took = all_closed(pid, addr, Duration::from_secs(4 + 5)).await;
        eprintln!(
            "{listener}: {answered} served, {held} held, {peak_fds} fds ({fd0} before), RSS {peak_rss} KiB ({rss0} before), all closed after {took:?}"
        );
        drop(streams);
    }
    // Silent TCP connections: detection gives up, the stream is held
    // until the TCP idle timeout.
    let (streams, _) = open_many(proxy.addrs.inbound, 10_000, 100, b"").await;
    let held = accepted(pid, proxy.addrs.inbound.port());
    assert!(held <= 1000, "silent: {held} connections held; the cap is 1000");
    let took = all_closed(pid, proxy.addrs.inbound, Duration::from_secs(1 + 4 + 5)).await;
    eprintln!(
        "silent inbound: {held} held, all closed after {took:?}; {} fds now, {fd0} before",
        fds(pid)
    );
    drop(streams);

    let rss1 = rss_kib(pid);
    eprintln!("RSS {rss0} KiB before, {rss1} KiB after 30,000 connections");
    assert!(rss1 < rss0 + 64 * 1024, "RSS grew from {rss0} to {rss1} KiB");
    let refused = metric_sum(
        proxy.addrs.admin,
        "weft_tcp_connections_limited_total{direction=\"outbound\",reason=\"max_connections\"",
    )
    .await;
    assert!(refused >= 8_000.0, "outbound refusals counted: {refused}");
    let idle = metric_sum(
        proxy.addrs.admin,
        "weft_tcp_connections_limited_total{direction=\"inbound\",reason=\"idle_timeout\"",
    )
    .await;
    assert!(idle >= 900.0, "inbound idle closes counted: {idle}");
    // Still serving.
    assert_eq!(
        get_echo(proxy.addrs.outbound, "echo").await.0,
        http::StatusCode::OK
    );
}

/// Slowloris: 200 connections sending one header byte every 200 ms. Each
/// is answered 408 and closed once the head timeout (here 2 s) passes,
/// while normal requests through the same listener stay fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_get_408_and_normal_requests_stay_fast() {
    let app = echo_app().await;
    let proxy = ProxyProc::start_with_endpoints(
        "requestHeadTimeout: 2s\n",
        &format!("echo:\n  - addr: {}\n", app.addr),
    );
    let out = proxy.addrs.outbound;
    let started = Instant::now();
    let slow: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(out).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n").await.unwrap();
                let opened = Instant::now();
                let mut answer = Vec::new();
                let mut buf = [0u8; 256];
                // Bounded: 60 bytes at most, 12 s.
                for _ in 0..60 {
                    if s.write_all(b"x").await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                }
                (String::from_utf8_lossy(&answer).into_owned(), opened.elapsed())
            })
        })
        .collect();
    // Meanwhile, normal requests.
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        assert_eq!(get_echo(out, "echo").await.0, http::StatusCode::OK);
        slowest = slowest.max(t.elapsed());
    }
    for t in slow {
        let (answer, open_for) = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "a slow head got: {answer:?}");
        assert!(
            open_for >= Duration::from_millis(1800) && open_for < Duration::from_secs(4),
            "closed after {open_for:?}, expected about the 2 s head timeout"
        );
    }
    eprintln!("slowest normal request during the slowloris: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a normal request took {slowest:?}"
    );
    let counted = metric_sum(
        proxy.addrs.admin,
        "weft_tcp_connections_limited_total{direction=\"outbound\",reason=\"head_timeout\"",
    )
    .await;
    assert_eq!(counted, 200.0);
}
