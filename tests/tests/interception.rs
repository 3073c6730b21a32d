//! Transparent interception, proven in real network namespaces: pods on a
//! node (`weft_tests::netns`), each meshed pod with `weft-proxy init`'s
//! iptables rules, its app (running as root, so intercepted) and its proxy
//! (running as its own uid, so not), and the control plane in a pod of its
//! own. Apps call each other by pod IP and know nothing of the mesh.
//! Every pod is dual-stack: the tests that matter most run once over IPv4
//! and once over IPv6 (`weft-proxy init` installs ip6tables rules too, the
//! proxies listen on both families, and the echo service has an endpoint
//! per family, as a dual-stack cluster's EndpointSlices do).
//!
//! Need root, iptables, iproute2 and util-linux (plus tcpdump / mosquitto
//! for the tests that use them): skipped with a message elsewhere, failed
//! under `CI=true`.

use std::path::Path;
use std::time::Duration;

use weft_tests::netns::{Node, Pod, PROXY_UID};
use weft_tests::{bin, Proc, TempDir};

const TOKENS: &str = "- {namespace: demo, serviceAccount: web, token: web-token-0123456789}\n- {namespace: demo, serviceAccount: echo, token: echo-token-0123456789}\n";
const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const ECHO: &str = "spiffe://cluster.local/ns/demo/sa/echo";

/// The node: `cp` (control plane), `a` (app `web`, meshed), `b` (app
/// `echo`, meshed: HTTP on 8080, TCP echo on 7000, a greeter on 5432, all
/// dual-stack, and a broker on 1883 when a test starts one), `c` (not
/// meshed).
struct Bed {
    // Declared first, dropped first: processes before the node.
    procs: Vec<Proc>,
    a: Pod,
    b: Pod,
    c: Pod,
    dir: TempDir,
    node: Node,
}

const ECHO_SERVICE: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: echo, namespace: demo}\nspec:\n  serviceAccount: echo\n  ports: [{port: 8080}, {port: 7000, protocol: tcp}, {port: 5432, protocol: tcp}, {port: 1883, protocol: tcp}]\n  endpoints:\n    - address: B:8080\n      proxy: B:4143\n    - address: \"[B6]:8080\"\n      proxy: \"[B6]:4143\"\n";

impl Bed {
    fn start() -> Self {
        let node = Node::new();
        let cp = node.pod("cp");
        let (a, b, c) = (node.pod("a"), node.pod("b"), node.pod("c"));
        let dir = TempDir::new();
        dir.write("tokens.yaml", TOKENS);
        dir.write("web.token", "web-token-0123456789\n");
        dir.write("echo.token", "echo-token-0123456789\n");
        std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
        dir.write(
            "mesh/echo.yaml",
            &ECHO_SERVICE
                .replace("B:", &format!("{}:", b.ip))
                .replace("B6", &b.ip6.to_string()),
        );
        let mut procs = Vec::new();

        let mesh = dir.path().join("mesh");
        let tokens = dir.path().join("tokens.yaml");
        let anchors = dir.path().join("trust-anchors.pem");
        let mut control = node.spawn(
            &cp,
            None,
            &bin("weft-control"),
            &[
                "--config",
                mesh.to_str().unwrap(),
                "--tokens",
                tokens.to_str().unwrap(),
                "--trust-anchors-out",
                anchors.to_str().unwrap(),
                "--grpc-listen",
                "0.0.0.0:8086",
                "--admin-listen",
                "127.0.0.1:9990",
                "--poll-interval",
                "50ms",
                "--debounce",
                "50ms",
            ],
        );
        control.wait_line(&["listening", "grpc="], Duration::from_secs(30));
        procs.push(control);

        let mut app = node.spawn(
            &b,
            None,
            &bin("weft-netapp"),
            &["serve", "http=[::]:8080", "echo=[::]:7000", "banner=[::]:5432"],
        );
        app.wait_line(&["ready"], Duration::from_secs(10));
        procs.push(app);

        let mut bed = Self {
            procs,
            a,
            b,
            c,
            dir,
            node,
        };
        let control_plane = format!("https://{}:8086", cp.ip);
        let anchors = bed.dir.path().join("trust-anchors.pem");
        for (pod, workload, ports) in [
            (bed.a.clone(), "web", "[]"),
            (bed.b.clone(), "echo", "[8080, 7000, 5432, 1883, 7100]"),
        ] {
            bed.node.init(&pod, &[]);
            let config = bed.dir.write(
                &format!("{workload}.yaml"),
                &format!(
                    "outboundListen: 127.0.0.1:4140\ninboundListen: 0.0.0.0:4143\nadminListen: 0.0.0.0:4191\ncontrolPlane: {control_plane}\ntrustAnchors: {}\nnamespace: demo\nworkload: {workload}\nidentityTokenFile: {}\nappPorts: {ports}\ndetectTimeout: 10s\ninboundToPodIp: true\ninboundAnyPort: true\n",
                    anchors.display(),
                    bed.dir.path().join(format!("{workload}.token")).display()
                ),
            );
            let mut proxy = bed.node.spawn(
                &pod,
                Some(PROXY_UID),
                &bin("weft-proxy"),
                &["--config", config.to_str().unwrap()],
            );
            proxy.wait_line(&["listening", "outbound="], Duration::from_secs(30));
            bed.procs.push(proxy);
            Node::eventually(Duration::from_secs(20), "the proxy is ready", || {
                bed.node
                    .netapp(&pod, &["http", "GET", "127.0.0.1:4191", "/ready"])
                    .0
                    .then_some(())
            });
        }
        bed
    }

    /// `weft-netapp` in `pod`; panics with the proxies' logs on failure.
    fn call(&self, pod: &Pod, args: &[&str]) -> String {
        let (ok, out) = self.node.netapp(pod, args);
        assert!(ok, "weft-netapp {args:?} in {}: {out}\n{}", pod.ns, self.logs());
        out
    }

    fn metrics(&self, pod: &Pod) -> String {
        self.call(pod, &["http", "GET", "127.0.0.1:4191", "/metrics"])
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

fn addr(pod: &Pod, port: u16) -> String {
    format!("{}:{port}", pod.ip)
}

/// `pod`'s IPv6 address and `port`: `[fd00:213:<x>::<n>]:port`.
fn addr6(pod: &Pod, port: u16) -> String {
    format!("[{}]:{port}", pod.ip6)
}

/// How a test dials a pod: [`addr`] (IPv4) or [`addr6`].
type Dial = fn(&Pod, u16) -> String;

/// The value of the first sample whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn plain_http_between_pods_is_mtls_on_the_wire_with_the_callers_identity() {
    meshed_http_is_mtls_on_the_wire(addr);
}

#[test]
fn ipv6_plain_http_between_pods_is_mtls_on_the_wire_with_the_callers_identity() {
    meshed_http_is_mtls_on_the_wire(addr6);
}

/// A calls B by pod IP (`dial`'s family): intercepted on both sides, mTLS
/// on the wire, B's proxy sees A's identity, B's app is reached at the pod
/// address A dialled; C's unmeshed call is intercepted by B in plaintext.
fn meshed_http_is_mtls_on_the_wire(dial: Dial) {
    if !Node::available(&["tcpdump"]) {
        return;
    }
    let mut bed = Bed::start();
    let capture = bed.dir.path().join("bridge.pcap");
    let node_pod = bed.node.node_pod();
    let mut tcpdump = bed.node.spawn(
        &node_pod,
        None,
        Path::new("tcpdump"),
        &[
            // Every port of the bridge: frames it forwards between ports
            // never show on `br0` itself.
            "-i",
            "any",
            "-n",
            // Hand every packet over at once: on SIGINT, tcpdump drops
            // what still waits in the kernel's ring.
            "--immediate-mode",
            "-U",
            "-Z",
            "root",
            "-w",
            capture.to_str().unwrap(),
            "tcp",
        ],
    );
    tcpdump.wait_line(&["listening on"], Duration::from_secs(10));

    let (a, b, c) = (bed.a.clone(), bed.b.clone(), bed.c.clone());
    let out = bed.call(
        &a,
        &["http", "POST", &dial(&b, 8080), "/hello", "SECRET-BODY-7f3a"],
    );
    // B's proxy forwarded to the pod address of the caller's family.
    assert!(
        out.contains(&format!(
            "served POST /hello got=SECRET-BODY-7f3a by={}",
            dial(&b, 8080)
        )),
        "{out}"
    );
    // Permissive (the default): a pod without a proxy gets through, in
    // plaintext, which also proves the capture sees the bridge.
    let out = bed.call(
        &c,
        &["http", "POST", &dial(&b, 8080), "/plain", "PLAIN-CONTROL-9c1e"],
    );
    assert!(out.contains("got=PLAIN-CONTROL-9c1e"), "{out}");

    std::thread::sleep(Duration::from_millis(500));
    tcpdump.signal("INT");
    tcpdump.wait_exit(Duration::from_secs(10));
    let wire = std::fs::read(&capture).unwrap();
    let has = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has("PLAIN-CONTROL-9c1e"),
        "the capture saw the plaintext control call ({} bytes): {}",
        wire.len(),
        tcpdump.logs()
    );
    assert!(
        !has("SECRET-BODY-7f3a"),
        "the meshed body crossed the bridge in clear"
    );
    assert!(
        !has("POST /hello"),
        "the meshed request line crossed the bridge in clear"
    );

    let b_metrics = bed.metrics(&b);
    assert!(
        weft_tests::series_sum(
            &b_metrics,
            "weft_requests_total",
            &[
                ("direction", "inbound"),
                ("source_principal", WEB),
                ("source_workload_namespace", "demo"),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "demo"),
                ("response_code", "200"),
                ("connection_security_policy", "mutual_tls"),
            ]
        )
        .is_some(),
        "B's proxy saw A's SPIFFE ID over mTLS: {b_metrics}"
    );
    assert!(
        weft_tests::series_sum(
            &b_metrics,
            "weft_requests_total",
            &[
                ("direction", "inbound"),
                ("source_workload", "unknown"),
                ("source_principal", "unknown"),
                ("destination_service_name", "echo"),
                ("response_code", "200"),
                ("connection_security_policy", "none"),
            ]
        )
        .is_some(),
        "B's proxy also intercepted C's plaintext call: {b_metrics}"
    );
    let a_metrics = bed.metrics(&a);
    assert!(
        weft_tests::series_sum(
            &a_metrics,
            "weft_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_principal", ECHO),
                ("destination_service_name", "echo"),
                ("destination_service_namespace", "demo"),
                ("response_code", "200"),
                ("connection_security_policy", "mutual_tls"),
            ]
        )
        .is_some(),
        "A's proxy intercepted the call and verified B: {a_metrics}"
    );
    // One app connection, one outbound connection: the proxy's own
    // connection to B did not loop back into it.
    assert_eq!(
        sample(
            &a_metrics,
            r#"weft_tcp_connections_opened_total{direction="outbound",protocol="http1"}"#
        ),
        1.0,
        "{a_metrics}"
    );
    // The admin port is not intercepted on B's side.
    let ready = bed.call(&a, &["http", "GET", &dial(&b, 4191), "/ready"]);
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    bed.procs.push(tcpdump);
}

#[test]
fn opaque_tcp_server_first_protocols_and_unmeshed_destinations_pass() {
    if !Node::available(&[]) {
        return;
    }
    let mut bed = Bed::start();
    let (a, b, c) = (bed.a.clone(), bed.b.clone(), bed.c.clone());

    let out = bed.call(&a, &["echo", &addr(&b, 7000), "opaque-hello"]);
    assert!(out.contains("opaque-hello"), "{out}");

    // 5432 is server-speaks-first: no detection (which would wait
    // detectTimeout, 10 s here, for bytes that never come).
    let out = bed.call(&a, &["banner", &addr(&b, 5432), "first-words"]);
    assert!(out.contains("greeting=220 weft-netapp ready"), "{out}");
    assert!(out.contains("echo=first-words"), "{out}");
    let after_ms: u64 = out
        .split("after_ms=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(after_ms < 5000, "the greeting stalled {after_ms} ms");

    // C is no mesh member: A's bytes pass through to it unchanged.
    let mut c_app = bed
        .node
        .spawn(&c, None, &bin("weft-netapp"), &["serve", "echo=0.0.0.0:7000"]);
    c_app.wait_line(&["ready"], Duration::from_secs(10));
    bed.procs.push(c_app);
    let out = bed.call(&a, &["echo", &addr(&c, 7000), "to-an-unmeshed-pod"]);
    assert!(out.contains("to-an-unmeshed-pod"), "{out}");

    let a_metrics = bed.metrics(&a);
    let opened = |protocol: &str| {
        sample(
            &a_metrics,
            &format!(r#"weft_tcp_connections_opened_total{{direction="outbound",protocol="{protocol}"}}"#),
        )
    };
    assert_eq!(opened("opaque"), 2.0, "{a_metrics}");
    assert_eq!(opened("passthrough"), 1.0, "{a_metrics}");
    let b_metrics = bed.metrics(&b);
    assert!(
        sample(
            &b_metrics,
            r#"weft_authorization_total{result="allow",kind="tcp"}"#
        ) >= 2.0,
        "{b_metrics}"
    );
}

#[test]
fn an_unmeshed_pod_is_refused_once_the_port_is_strict() {
    unmeshed_is_refused_once_strict(addr);
}

#[test]
fn an_unmeshed_ipv6_caller_is_refused_once_the_port_is_strict() {
    unmeshed_is_refused_once_strict(addr6);
}

fn unmeshed_is_refused_once_strict(dial: Dial) {
    if !Node::available(&[]) {
        return;
    }
    let bed = Bed::start();
    let (a, b, c) = (bed.a.clone(), bed.b.clone(), bed.c.clone());
    let target = dial(&b, 8080);
    bed.call(&c, &["http", "GET", &target, "/"]);

    bed.dir.write(
        "mesh/strict.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: strict, namespace: demo}\nspec:\n  targetRef: {name: echo}\n  mtls: strict\n  rules:\n    - from: {namespaces: [demo]}\n",
    );
    let refused = Node::eventually(Duration::from_secs(10), "the strict policy applies", || {
        let (ok, out) = bed.node.netapp(&c, &["http", "GET", &target, "/"]);
        (!ok).then_some(out)
    });
    assert!(refused.contains("403"), "refused as unauthorized: {refused}");
    let out = bed.call(&a, &["http", "GET", &target, "/still"]);
    assert!(
        out.contains("served GET /still"),
        "meshed callers still pass: {out}"
    );
}

#[test]
fn a_real_broker_carries_messages_over_mtls() {
    if !Node::available(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let mut bed = Bed::start();
    let (a, b) = (bed.a.clone(), bed.b.clone());
    let conf = bed.dir.write(
        "mosquitto.conf",
        "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\n",
    );
    let broker = bed
        .node
        .spawn(&b, None, Path::new("mosquitto"), &["-c", conf.to_str().unwrap()]);
    bed.procs.push(broker);
    let host = b.ip.to_string();
    let publish = |message: &str| {
        bed.node.exec(
            &a,
            None,
            Path::new("mosquitto_pub"),
            &["-h", &host, "-p", "1883", "-t", "weft/test", "-r", "-m", message],
        )
    };
    Node::eventually(Duration::from_secs(10), "the broker accepts a message", || {
        publish("hello-over-mtls").status.success().then_some(())
    });
    let sub = bed.node.exec(
        &a,
        None,
        Path::new("mosquitto_sub"),
        &[
            "-h",
            &host,
            "-p",
            "1883",
            "-t",
            "weft/test",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    let got = String::from_utf8_lossy(&sub.stdout);
    assert!(
        got.contains("hello-over-mtls"),
        "subscriber got {got:?}: {}\n{}",
        String::from_utf8_lossy(&sub.stderr),
        bed.logs()
    );

    let a_metrics = bed.metrics(&a);
    assert!(
        sample(
            &a_metrics,
            r#"weft_tcp_connections_opened_total{direction="outbound",protocol="opaque"}"#
        ) >= 2.0,
        "publisher and subscriber went through A's proxy: {a_metrics}"
    );
    for series in [
        r#"weft_tcp_read_bytes_total{direction="outbound"}"#,
        r#"weft_tcp_written_bytes_total{direction="outbound"}"#,
    ] {
        assert!(sample(&a_metrics, series) > 20.0, "{series}: {a_metrics}");
    }
    let b_metrics = bed.metrics(&b);
    assert!(
        sample(
            &b_metrics,
            r#"weft_tcp_connections_opened_total{direction="inbound",protocol="tls"}"#
        ) >= 2.0,
        "the MQTT connections arrived at B over mTLS: {b_metrics}"
    );
    assert!(
        sample(&b_metrics, r#"weft_tcp_read_bytes_total{direction="inbound"}"#) > 20.0,
        "{b_metrics}"
    );
    // The streams by who they connect, on both sides: A's proxy names the
    // destination service and the identity B proved; B's names the
    // caller's identity, and the service it fronts.
    let stream = |text: &str, metric: &str, direction: &str| {
        let mut labels = vec![
            ("direction", direction),
            ("destination_service_name", "echo"),
            ("destination_service_namespace", "demo"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", WEB),
            ("source_workload_namespace", "demo"),
        ];
        if direction == "outbound" {
            labels.push(("source_workload", "web"));
        }
        weft_tests::series_sum(text, metric, &labels).unwrap_or(0.0)
    };
    for (text, direction) in [(&a_metrics, "outbound"), (&b_metrics, "inbound")] {
        assert!(
            stream(text, "weft_tcp_streams_opened_total", direction) >= 2.0,
            "{direction}: {text}"
        );
        for metric in [
            "weft_tcp_stream_received_bytes_total",
            "weft_tcp_stream_sent_bytes_total",
        ] {
            assert!(
                stream(text, metric, direction) > 10.0,
                "{direction} {metric}: {text}"
            );
        }
    }
}

/// Transparent mode goes where the app dialled, whatever its Host says:
/// pod A dials unmeshed pod C's IP with `Host: echo` (a mesh service,
/// served by B). The request reaches C, in plaintext as A sent it, never
/// B under A's identity: an SSRF filter that allowed C's address cannot be
/// walked around by naming an internal service.
#[test]
fn the_dialled_address_decides_not_the_host_header() {
    if !Node::available(&[]) {
        return;
    }
    let mut bed = Bed::start();
    let (a, b, c) = (bed.a.clone(), bed.b.clone(), bed.c.clone());
    let mut c_app = bed
        .node
        .spawn(&c, None, &bin("weft-netapp"), &["serve", "http=0.0.0.0:8080"]);
    c_app.wait_line(&["ready"], Duration::from_secs(10));
    bed.procs.push(c_app);
    for host in ["echo", "echo.demo", "echo.demo.svc.cluster.local:8080"] {
        let out = bed.call(&a, &["http", "GET", &addr(&c, 8080), "/ssrf", "", host]);
        assert!(
            out.contains(&format!("by={}", addr(&c, 8080))),
            "Host: {host}: {out}"
        );
    }
    let b_metrics = bed.metrics(&b);
    assert_eq!(
        sample(
            &b_metrics,
            r#"weft_authorization_total{result="allow",kind="http"}"#
        ),
        0.0,
        "nothing reached B: {b_metrics}"
    );
    // Dialling B's pod IP still routes as the mesh service, over mTLS.
    let out = bed.call(
        &a,
        &["http", "GET", &addr(&b, 8080), "/direct", "", "anything.example"],
    );
    assert!(
        out.contains(&format!("by={}", addr(&b, 8080))) || out.contains("served GET /direct"),
        "{out}"
    );
    let a_metrics = bed.metrics(&a);
    assert!(
        weft_tests::series_sum(
            &a_metrics,
            "weft_requests_total",
            &[
                ("destination_service_name", "echo"),
                ("connection_security_policy", "mutual_tls"),
            ]
        )
        .is_some(),
        "{a_metrics}"
    );
}

/// Inbound goes to the pod IP the caller dialled, not to loopback: a
/// listener B's app bound to 127.0.0.1 only stays private to pod B even on
/// one of its app ports, while B's 0.0.0.0 listener is reached as before.
#[test]
fn a_loopback_only_listener_is_not_reachable_from_another_pod() {
    if !Node::available(&[]) {
        return;
    }
    let mut bed = Bed::start();
    let (a, b) = (bed.a.clone(), bed.b.clone());
    let mut private = bed
        .node
        .spawn(&b, None, &bin("weft-netapp"), &["serve", "http=127.0.0.1:7100"]);
    private.wait_line(&["ready"], Duration::from_secs(10));
    bed.procs.push(private);
    // Inside pod B it answers.
    let out = bed.call(&b, &["http", "GET", "127.0.0.1:7100", "/inside"]);
    assert!(out.contains("served GET /inside"), "{out}");
    // From pod A, through both proxies: refused, never served.
    let (ok, out) = bed.node.netapp(&a, &["http", "GET", &addr(&b, 7100), "/outside"]);
    assert!(!ok && !out.contains("served GET /outside"), "{out}");
    // The app's 0.0.0.0 listener is reached at the pod IP as before.
    let out = bed.call(&a, &["http", "GET", &addr(&b, 8080), "/public"]);
    assert!(
        out.contains(&format!("served GET /public got= by={}", addr(&b, 8080))),
        "{out}"
    );
}

/// A port pod B never declared (not among its proxy's app ports, as for a
/// pod with no `containerPort`) is reached through the mesh when B's app
/// listens on it, under the policies of the services that name it: a
/// MeshService whose endpoint names B's workload. Undeclared ports with a
/// loopback-only listener, or none, stay closed.
#[test]
fn undeclared_ports_the_app_listens_on_are_meshed_under_their_policy() {
    if !Node::available(&[]) {
        return;
    }
    let mut bed = Bed::start();
    let (a, b, c) = (bed.a.clone(), bed.b.clone(), bed.c.clone());
    let mut extra = bed.node.spawn(
        &b,
        None,
        &bin("weft-netapp"),
        &["serve", "http=0.0.0.0:9400", "http=127.0.0.1:9401"],
    );
    extra.wait_line(&["ready"], Duration::from_secs(10));
    bed.procs.push(extra);
    bed.dir.write(
        "mesh/quiet.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: quiet, namespace: demo}}\nspec:\n  serviceAccount: echo\n  ports: [{{port: 9400}}]\n  endpoints:\n    - {{address: '{b}:9400', proxy: '{b}:4143', workload: echo}}\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: quiet, namespace: demo}}\nspec:\n  targetRef: {{name: quiet}}\n  mtls: strict\n  rules:\n    - from: {{namespaces: [demo]}}\n",
            b = b.ip
        ),
    );
    let undeclared = addr(&b, 9400);
    // The unmeshed pod is refused once B enforces quiet's strict policy
    // on the port (before that, B has no watch for it: also refused).
    let refused = Node::eventually(Duration::from_secs(10), "quiet's policy applies", || {
        let (ok, out) = bed.node.netapp(&c, &["http", "GET", &undeclared, "/"]);
        (!ok && out.contains("403")).then_some(out)
    });
    assert!(!refused.contains("served"), "{refused}");
    let out = Node::eventually(Duration::from_secs(10), "A reaches the undeclared port", || {
        let (ok, out) = bed.node.netapp(&a, &["http", "GET", &undeclared, "/undeclared"]);
        ok.then_some(out)
    });
    assert!(
        out.contains(&format!("served GET /undeclared got= by={undeclared}")),
        "{out}"
    );
    let a_metrics = bed.metrics(&a);
    assert!(
        weft_tests::series_sum(
            &a_metrics,
            "weft_requests_total",
            &[
                ("destination_service_name", "quiet"),
                ("connection_security_policy", "mutual_tls"),
            ]
        )
        .is_some(),
        "over mTLS: {a_metrics}"
    );
    let (_, config) = bed.node.netapp(&b, &["http", "GET", "127.0.0.1:4191", "/config"]);
    assert!(
        config.contains("demo/quiet"),
        "B watches port 9400's policy: {config}"
    );

    for closed in [9401, 9402] {
        let (ok, out) = bed
            .node
            .netapp(&a, &["http", "GET", &addr(&b, closed), "/closed"]);
        assert!(!ok && !out.contains("served"), "port {closed}: {out}");
    }
}

/// The `WEFT` lines of `binary -t nat -S` in `pod`.
fn weft_rules(node: &Node, pod: &Pod, binary: &str) -> String {
    let out = node.exec(pod, None, Path::new(binary), &["-t", "nat", "-S"]);
    assert!(
        out.status.success(),
        "{binary} -t nat -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("WEFT"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `weft-proxy init` in a pod of its own: the ip6tables rules mirror the
/// iptables ones (IPv6's loopback, and only the IPv6 skip networks), a
/// second run changes neither, `--dry-run` prints both families,
/// `--uninstall` removes both (and finds nothing the second time).
#[test]
fn init_mirrors_its_rules_in_ip6tables_idempotently() {
    if !Node::available(&[]) {
        return;
    }
    let node = Node::new();
    let pod = node.pod("init");
    let flags = [
        "--skip-outbound-cidrs",
        "10.96.0.0/12,fd00:10:96::/112",
        "--skip-inbound-ports",
        "22",
    ];
    let said = node.init(&pod, &flags);
    assert!(said.contains("rules installed (IPv4 and IPv6)"), "{said}");
    let (v4, v6) = (
        weft_rules(&node, &pod, "iptables"),
        weft_rules(&node, &pod, "ip6tables"),
    );
    for rule in [
        "-A PREROUTING -j WEFT_INBOUND",
        "-A OUTPUT -j WEFT_OUTPUT",
        "-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
        "-A WEFT_OUTPUT_REDIRECT -p tcp -j REDIRECT --to-ports 4140",
        "-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A WEFT_OUTPUT -d ::1/128 -j RETURN",
        "-A WEFT_OUTPUT -d fd00:10:96::/112 -j RETURN",
    ] {
        assert!(v6.contains(rule), "{rule} in\n{v6}");
    }
    assert!(
        !v6.contains("10.96.0.0") && !v4.contains("fd00:"),
        "{v4}\n----\n{v6}"
    );
    // Otherwise the same rules, in the same order.
    let mirror = |rules: &str| -> Vec<String> {
        rules
            .lines()
            .filter(|l| !l.contains("10.96.0.0/12") && !l.contains("fd00:10:96::/112"))
            .map(|l| l.replace("127.0.0.0/8", "::1/128"))
            .collect()
    };
    assert_eq!(mirror(&v4), mirror(&v6));

    node.init(&pod, &flags);
    assert_eq!(
        weft_rules(&node, &pod, "iptables"),
        v4,
        "a second run changes nothing"
    );
    assert_eq!(
        weft_rules(&node, &pod, "ip6tables"),
        v6,
        "a second run changes nothing"
    );

    for (extra, expected) in [
        (
            None,
            [
                "iptables -t nat -A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "ip6tables -t nat -A WEFT_OUTPUT -d ::1/128 -j RETURN",
            ],
        ),
        (
            Some("--uninstall"),
            [
                "iptables -t nat -X WEFT_OUTPUT",
                "ip6tables -t nat -X WEFT_OUTPUT",
            ],
        ),
    ] {
        let mut args = vec!["init", "--proxy-uid", "2102", "--dry-run"];
        args.extend(extra);
        let out = node.exec(&pod, None, &bin("weft-proxy"), &args);
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{printed}");
        for line in expected {
            assert!(printed.lines().any(|l| l == line), "{line} in\n{printed}");
        }
    }
    assert_eq!(
        weft_rules(&node, &pod, "ip6tables"),
        v6,
        "--dry-run changes nothing"
    );

    let said = node.init(&pod, &["--uninstall"]);
    assert!(said.contains("rules removed (IPv4 and IPv6)"), "{said}");
    assert_eq!(weft_rules(&node, &pod, "iptables"), "");
    assert_eq!(weft_rules(&node, &pod, "ip6tables"), "");
    node.init(&pod, &["--uninstall"]);
}

/// A pod with IPv6 turned off: `weft-proxy init` says so and installs the
/// IPv4 rules only, and the proxy starts and serves on IPv4 (its loopback
/// listener finds no `::1` and stays IPv4 only).
#[test]
fn a_pod_without_ipv6_gets_ipv4_rules_and_a_working_proxy() {
    if !Node::available(&["sysctl"]) {
        return;
    }
    let node = Node::new();
    let pod = node.pod("v4only");
    let out = node.exec(
        &pod,
        None,
        Path::new("sysctl"),
        &["-w", "net.ipv6.conf.all.disable_ipv6=1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = node.init(&pod, &[]);
    assert!(
        said.contains(
            "no IPv6 on this node (IPv6 is disabled: net.ipv6.conf.all.disable_ipv6 = 1); IPv4 rules only"
        ),
        "{said}"
    );
    assert!(said.contains("rules installed (IPv4 only)"), "{said}");
    assert!(weft_rules(&node, &pod, "iptables").contains("-A OUTPUT -j WEFT_OUTPUT"));
    assert_eq!(weft_rules(&node, &pod, "ip6tables"), "");

    let mut proxy = node.spawn(
        &pod,
        Some(PROXY_UID),
        &bin("weft-proxy"),
        &[
            "--outbound-listen",
            "127.0.0.1:4140",
            "--inbound-listen",
            "0.0.0.0:4143",
            "--admin-listen",
            "0.0.0.0:4191",
        ],
    );
    let line = proxy.wait_line(&["listening", "outbound="], Duration::from_secs(30));
    assert!(line.contains("outbound=127.0.0.1:4140"), "{line}");
    assert!(
        proxy.logs().contains("no IPv6 here: this listener is IPv4 only"),
        "{}",
        proxy.logs()
    );
    Node::eventually(Duration::from_secs(10), "the proxy answers on IPv4", || {
        node.netapp(&pod, &["http", "GET", &addr(&pod, 4191), "/ready"])
            .0
            .then_some(())
    });
}
