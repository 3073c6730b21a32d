//! `weft-netapp`: the apps of the network-namespace test bed
//! (`tests/src/netns.rs`), std only, so one binary can run inside any pod.
//!
//! ```text
//! weft-netapp serve http=ADDR echo=ADDR banner=ADDR …   servers, until killed (`[::]:port` is dual-stack)
//! weft-netapp http METHOD ADDR PATH [BODY [HOST]]       one HTTP/1.1 request (Host: ADDR unless given); prints status line and body
//! weft-netapp echo ADDR MESSAGE                         client-first TCP: prints what comes back
//! weft-netapp banner ADDR MESSAGE                       server-speaks-first TCP: prints the greeting, its delay, then the echo
//! ```
//!
//! ADDR is a socket address, IPv4 (`10.213.1.2:8080`) or IPv6
//! (`[fd00:213:1::2]:8080`). Clients exit 0 on success (HTTP: status 200), 1 otherwise, and give up
//! after 10 s of silence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const GREETING: &str = "220 weft-netapp ready\r\n";
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", servers @ ..] => serve(servers),
        ["http", method, addr, path] => http(method, addr, path, "", addr),
        ["http", method, addr, path, body] => http(method, addr, path, body, addr),
        ["http", method, addr, path, body, host] => http(method, addr, path, body, host),
        ["echo", addr, msg] => echo(addr, msg),
        ["banner", addr, msg] => banner(addr, msg),
        _ => Err(format!("usage: see the module docs; got {args:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-netapp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(servers: &[&str]) -> Result<(), String> {
    let mut threads = Vec::new();
    for s in servers {
        let (kind, addr) = s.split_once('=').ok_or(format!("expected kind=addr, got {s}"))?;
        let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let handler: fn(TcpStream) -> std::io::Result<()> = match kind {
            "http" => serve_http,
            "echo" => serve_echo,
            "banner" => serve_banner,
            _ => return Err(format!("unknown server kind {kind}")),
        };
        eprintln!("serving {kind} on {addr}");
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || handler(conn));
            }
        }));
    }
    eprintln!("ready");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Reads a request (Content-Length or chunked body) and answers 200 with
/// `served <method> <path> got=<body>`.
fn serve_http(conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.contains("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        // As the caller reached us; an IPv4 caller of a dual-stack `[::]`
        // listener as plain IPv4.
        let by = conn
            .local_addr()
            .map(|a| std::net::SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
            .unwrap_or_default();
        let reply = format!(
            "served {method} {path} got={} by={by}\n",
            String::from_utf8_lossy(&body)
        );
        let mut w = &conn;
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        if close {
            return Ok(());
        }
    }
}

fn serve_echo(mut conn: TcpStream) -> std::io::Result<()> {
    let mut r = conn.try_clone()?;
    std::io::copy(&mut r, &mut conn)?;
    conn.shutdown(Shutdown::Write)
}

fn serve_banner(mut conn: TcpStream) -> std::io::Result<()> {
    conn.write_all(GREETING.as_bytes())?;
    serve_echo(conn)
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(s)
}

fn http(method: &str, addr: &str, path: &str, body: &str, host: &str) -> Result<(), String> {
    let mut s = connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp)
        .map_err(|e| format!("reading the response: {e}"))?;
    let status = rsp.lines().next().unwrap_or("").to_string();
    let body = rsp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    println!("{status}");
    println!("{body}");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("status: {status}"))
    }
}

fn echo(addr: &str, msg: &str) -> Result<(), String> {
    let mut s = connect(addr)?;
    s.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut back = String::new();
    s.read_to_string(&mut back)
        .map_err(|e| format!("reading the echo: {e}"))?;
    println!("{back}");
    Ok(())
}

fn banner(addr: &str, msg: &str) -> Result<(), String> {
    let started = Instant::now();
    let s = connect(addr)?;
    let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .map_err(|e| format!("waiting for the greeting: {e}"))?;
    println!(
        "greeting={} after_ms={}",
        greeting.trim_end(),
        started.elapsed().as_millis()
    );
    let mut w = &s;
    w.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut back = String::new();
    reader.read_to_string(&mut back).map_err(|e| e.to_string())?;
    println!("echo={back}");
    Ok(())
}
