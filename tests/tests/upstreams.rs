//! Upstream listeners (`upstreams:` / `--upstream LISTEN=SERVICE:PORT`):
//! a local port bound to one destination, through real processes — a
//! control plane in file mode, the destination's app behind its own proxy
//! (mTLS between the proxies), and a client proxy whose upstream listener
//! the test connects to as a database or broker driver would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::*;
use weft_tests::bed::metric_sum;
use weft_tests::{ControlProc, ProxyProc, TempDir};

/// A control plane and one meshed service `name` in namespace `shop`,
/// whose app listens at `app` (served by its own proxy).
struct Bed {
    _dir: TempDir,
    control: ControlProc,
    _server: ProxyProc,
    file: std::path::PathBuf,
    services: String,
}

impl Bed {
    async fn start(name: &str, app: SocketAddr) -> Self {
        Self::start_declared(name, app, "").await
    }

    /// As [`start`](Self::start), with `port_fields` added to the
    /// MeshService's port (e.g. `, protocol: tcp`).
    async fn start_declared(name: &str, app: SocketAddr, port_fields: &str) -> Self {
        let dir = TempDir::new();
        let file = dir.write("mesh.yaml", "");
        let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
        let server = ProxyProc::start(&format!(
            "appPorts: [{}]\nworkload: {name}\n{}",
            app.port(),
            control.proxy_config("shop", name)
        ));
        let services = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ports: [{{port: {port}{port_fields}}}]\n  endpoints:\n    - {{address: '{app}', proxy: '{}'}}\n---\n",
            server.addrs.inbound,
            port = app.port(),
        );
        std::fs::write(&file, &services).unwrap();
        server.ready().await;
        // Until the control plane has read the service.
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = "weft_control_index_objects{kind=\"endpoints\"} 1\n";
        while !admin_get(control.admin, "/metrics").await.1.contains(want) {
            assert!(
                Instant::now() < deadline,
                "the control plane never read the service"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            _dir: dir,
            control,
            _server: server,
            file,
            services,
        }
    }

    /// A client proxy in `shop` with `upstreams` (YAML list items) and
    /// `extra` config; returns it and each upstream listener's address.
    async fn client(&self, upstreams: &[String], extra: &str) -> (ProxyProc, Vec<SocketAddr>) {
        let list: String = upstreams.iter().map(|u| format!("  - {u}\n")).collect();
        let proxy = ProxyProc::start(&format!(
            "upstreams:\n{list}{extra}{}",
            self.control.proxy_config("shop", "client")
        ));
        proxy.ready().await;
        let addrs = bound_addrs(&proxy, upstreams.len()).await;
        (proxy, addrs)
    }
}

/// The addresses the proxy logged for its upstream listeners, in order.
async fn bound_addrs(proxy: &ProxyProc, n: usize) -> Vec<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs: Vec<SocketAddr> = proxy
            .logs()
            .lines()
            .filter(|l| l.contains("upstream listener bound"))
            .filter_map(|l| {
                let rest = l.split("upstream=").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect();
        if addrs.len() >= n {
            return addrs;
        }
        assert!(
            Instant::now() < deadline,
            "upstream listeners not logged:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the test's server-speaks-first app sends on accept.
const BANNER: &[u8] = b"220 greeter ready\r\n";

/// The banner arrives through `listener` at once: the best of 5 within
/// 100 ms (detection would hold it for `detectTimeout`).
async fn banner_within_100ms(listener: SocketAddr, banner: &[u8]) {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut s = TcpStream::connect(listener).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("the banner arrives")
            .unwrap();
        assert_eq!(&buf[..n], banner);
        best = best.min(t.elapsed());
    }
    eprintln!("banner after {best:?} (best of 5)");
    assert!(best < Duration::from_millis(100), "banner took {best:?}");
}

fn upstream(service: &str, port: u16) -> String {
    format!("{{listen: '127.0.0.1:0', service: {service}, port: {port}}}")
}

/// A server that speaks first answers through an upstream listener at
/// once: its port is declared opaque, so nothing waits for the client's
/// first bytes (protocol detection would hold it for `detectTimeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_speaks_first_banner_arrives_at_once() {
    let app = tcp_greeter(BANNER).await;
    let bed = Bed::start("greeter", app).await;
    let (_client, addrs) = bed
        .client(
            &[upstream("greeter", app.port())],
            &format!("opaquePorts: [{}]\ndetectTimeout: 2s\n", app.port()),
        )
        .await;
    banner_within_100ms(addrs[0], BANNER).await;
}

/// A destination port its MeshService declares `protocol: tcp` skips
/// detection on an upstream listener too, with no `opaquePorts` on the
/// client: the banner arrives at once, not after `detectTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_tcp_skips_detection() {
    let app = tcp_greeter(BANNER).await;
    let bed = Bed::start_declared("greeter", app, ", protocol: tcp").await;
    let (_client, addrs) = bed
        .client(&[upstream("greeter", app.port())], "detectTimeout: 2s\n")
        .await;
    banner_within_100ms(addrs[0], BANNER).await;
}

/// 1 MiB through an upstream listener to a TCP echo and back, then the
/// client's half-close reaches the app (which answers `bye` after it);
/// the bytes crossed between the proxies over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mebibyte_echoes_through_with_half_close_over_mtls() {
    let app = tcp_echo().await;
    let bed = Bed::start("echo", app).await;
    let (client, addrs) = bed.client(&[upstream("echo", app.port())], "").await;
    let s = TcpStream::connect(addrs[0]).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got))
        .await
        .expect("the echo ends")
        .unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(got.len(), payload.len() + 3, "all bytes back, then `bye`");
    assert!(got.starts_with(&payload), "the bytes come back unchanged");
    assert!(got.ends_with(b"bye"), "the half-close reached the app");
    let mtls = metric_sum(
        client.addrs.admin,
        "weft_tcp_streams_opened_total{direction=\"outbound\"",
    )
    .await;
    assert!(mtls >= 1.0, "a TCP stream counted");
    let metrics = admin_get(client.addrs.admin, "/metrics").await.1;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("weft_tcp_streams_opened_total{direction=\"outbound\""))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("destination_service_name=\"echo\"")
            && line.contains("connection_security_policy=\"mutual_tls\""),
        "the stream names its destination and went over mTLS: {line}"
    );
}

/// HTTP through an upstream listener goes to the bound service whatever
/// its Host says, with the service's routes applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_an_upstream_listener_gets_the_services_routes() {
    let app = echo_app().await;
    let bed = Bed::start("web", app.addr).await;
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: web, port: {port}}}]\n  rules:\n  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-routed, value: 'yes'}}]}}}}]\n    backendRefs: [{{name: web, port: {port}}}]\n",
        port = app.addr.port()
    );
    std::fs::write(&bed.file, format!("{}{route}", bed.services)).unwrap();
    let (_client, addrs) = bed.client(&[upstream("web", app.addr.port())], "").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let raw = raw_exchange(
            addrs[0],
            b"GET /hello HTTP/1.1\r\nHost: localhost:9191\r\nConnection: close\r\n\r\n",
        )
        .await;
        let served = raw.contains(&format!("x-echo-server: {}", app.addr));
        if raw.starts_with("HTTP/1.1 200") && served && raw.contains("x-routed: yes") {
            assert!(raw.contains("x-echo-path: /hello"), "{raw}");
            break;
        }
        assert!(Instant::now() < deadline, "not routed to web: {raw}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upstream for a service the mesh does not know fails its
/// connections with a log line naming the service; the proxy starts
/// anyway, and its other upstreams work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_fails_its_connections_and_the_others_work() {
    let app = tcp_echo().await;
    let bed = Bed::start("echo", app).await;
    let (client, addrs) = bed
        .client(
            &[upstream("nope", 5555), upstream("echo", app.port())],
            "opaquePorts: [5555]\n",
        )
        .await;
    let mut s = TcpStream::connect(addrs[0]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client
        .logs()
        .lines()
        .any(|l| l.contains("outbound TCP refused") && l.contains("nope"))
    {
        assert!(
            Instant::now() < deadline,
            "no log line names the service:\n{}",
            client.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = TcpStream::connect(addrs[1]).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"pingbye");
}

/// A free loopback port (bound and released; the broker takes it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real MQTT broker behind a meshed service, reached by the real
/// clients through two upstream listeners (a subscriber's and a
/// publisher's): 100 of 100 QoS 1 messages, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_through_two_upstream_listeners_delivers_every_message_in_order() {
    if !weft_tests::require("mosquitto", "the MQTT broker of the upstream-listener test")
        || !weft_tests::require("mosquitto_sub", "the MQTT clients of the upstream-listener test")
    {
        return;
    }
    let dir = TempDir::new();
    let port = free_port();
    let conf = dir.write(
        "mosquitto.conf",
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    );
    let mut broker = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start mosquitto");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        assert!(broker.try_wait().unwrap().is_none(), "mosquitto exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _broker = Kill(broker);
    let app: SocketAddr = ([127, 0, 0, 1], port).into();
    let bed = Bed::start("mqtt", app).await;
    let (client, addrs) = bed
        .client(&[upstream("mqtt", port), upstream("mqtt", port)], "")
        .await;
    let (sub_port, pub_port) = (addrs[0].port().to_string(), addrs[1].port().to_string());
    // mosquitto_sub exits after 100 messages, or after 30 s (-W).
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &sub_port,
            "-t",
            "weft/test",
            "-q",
            "1",
            "-C",
            "100",
            "-W",
            "30",
            "-i",
            "weft-sub",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sub = tokio::task::spawn_blocking(move || sub.wait_with_output());
    // Until the subscription is in place (a message published before it
    // would not be delivered).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines: String = (0..100).map(|i| format!("message {i}\n")).collect();
    let mut publisher = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pub_port,
            "-t",
            "weft/test",
            "-q",
            "1",
            "-l",
            "-i",
            "weft-pub",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().unwrap();
        stdin.write_all(lines.as_bytes()).unwrap();
    }
    let t = Instant::now();
    let published = tokio::task::spawn_blocking(move || publisher.wait())
        .await
        .unwrap()
        .unwrap();
    eprintln!("published in {:?}", t.elapsed());
    assert!(published.success(), "mosquitto_pub failed");
    let out = sub.await.unwrap().unwrap();
    eprintln!("received after {:?}", t.elapsed());
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out, lines, "every message, in order");
    let metrics = admin_get(client.addrs.admin, "/metrics").await.1;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("weft_tcp_streams_opened_total{direction=\"outbound\"")
                && l.contains("destination_service_name=\"mqtt\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        ),
        "the MQTT streams went over mTLS to mqtt"
    );
}
