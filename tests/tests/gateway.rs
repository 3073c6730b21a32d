//! The edge gateway (`weft-proxy gateway`), through real processes: a
//! control plane in file mode holding a `Gateway` of class weft, its
//! routes and GatewayPolicies; an echo app behind its own proxy (mTLS
//! between gateway and proxy); the gateway itself; and real clients —
//! curl (TLS with SNI, HTTP/1.1 and HTTP/2), h2load, raw sockets for the
//! smuggling inputs, and a rustls client held open across a certificate
//! replaced on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::*;
use weft_tests::{eventually, require, series_sum, ControlProc, ProxyProc, TempDir};

/// A CA and a leaf for `host`, as PEM: (ca, leaf chain, leaf key).
fn tls_pair(host: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA for {host}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// Writes Secret `shop/<name>` as the kubelet mounts it.
fn write_secret(certs: &Path, name: &str, chain: &str, key: &str) {
    let dir = certs.join("shop").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // Key first, then the chain: each file replaced in one step.
    for (file, text) in [("tls.key", key), ("tls.crt", chain)] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
}

/// A port free right now (the Gateway's listeners name fixed ports).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The signing key of the test issuer, and its JWKS.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl Issuer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        Self {
            key: jsonwebtoken::EncodingKey::from_ed_der(&pair.serialize_der()),
            jwks: format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"{kid}","alg":"EdDSA","use":"sig"}}]}}"#
            ),
        }
    }

    fn token(&self, kid: &str, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// curl's verdict: (exit code, status, headers, HTTP version).
struct Curl {
    code: i32,
    status: u16,
    headers: String,
    version: String,
}

fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "%{http_code} %{http_version}",
            "--max-time",
            "5",
        ])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut parts = last.split_whitespace();
    Curl {
        code: out.status.code().unwrap_or(-1),
        status: parts.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: parts.next().unwrap_or_default().to_string(),
        headers: headers.to_ascii_lowercase(),
    }
}

/// Writes `request` on a fresh connection and reads the status line.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

struct Bed {
    _dir: TempDir,
    _control: ControlProc,
    server: ProxyProc,
    gateway: ProxyProc,
    certs: PathBuf,
    https: u16,
    http: u16,
    /// A listener no route attaches to.
    empty: u16,
    cas: (String, String),
    issuer: Issuer,
}

async fn start() -> Bed {
    let dir = TempDir::new();
    let certs = dir.path().join("certs");
    let (ca_a, chain_a, key_a) = tls_pair("a.example.test");
    let (ca_b, chain_b, key_b) = tls_pair("b.example.test");
    write_secret(&certs, "a-tls", &chain_a, &key_a);
    write_secret(&certs, "b-tls", &chain_b, &key_b);
    let issuer = Issuer::new("k1");
    let jwks = dir.write("jwks.json", &issuer.jwks);
    let app = echo_app().await.addr;
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let server = ProxyProc::start(&format!(
        "appPorts: [{}]\nworkload: api\n{}",
        app.port(),
        control.proxy_config("shop", "api")
    ));
    let (https, http, empty) = (free_port(), free_port(), free_port());
    let mesh = format!(
        r#"apiVersion: weft.dev/v1alpha1
kind: MeshService
metadata: {{name: api, namespace: shop}}
spec:
  ports: [{{port: 80, targetPort: {app_port}}}]
  endpoints:
    - {{address: '{app}', proxy: '{inbound}'}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: shop}}
spec:
  gatewayClassName: weft
  listeners:
    - {{name: a, port: {https}, protocol: HTTPS, hostname: a.example.test, tls: {{certificateRefs: [{{name: a-tls}}]}}}}
    - {{name: b, port: {https}, protocol: HTTPS, hostname: "*.example.test", tls: {{certificateRefs: [{{name: b-tls}}]}}}}
    - {{name: plain, port: {http}, protocol: HTTP}}
    - {{name: empty, port: {empty}, protocol: HTTP, hostname: nothing.example.test}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: site, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: web}}]
  hostnames: [a.example.test, plain.example.test]
  rules:
    - backendRefs: [{{name: api, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: private, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: web, sectionName: b}}]
  hostnames: [b.example.test]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /b}}}}]
      backendRefs: [{{name: api, port: 80}}]
---
apiVersion: weft.dev/v1alpha1
kind: GatewayPolicy
metadata: {{name: private-jwt, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: private}}
  jwt:
    issuer: https://issuer.example.test
    audiences: [shop]
    jwks: {{file: {jwks}}}
    forwardClaims: [{{claim: sub, header: x-header-sub}}]
---
apiVersion: weft.dev/v1alpha1
kind: GatewayPolicy
metadata: {{name: plain-limit, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: web, sectionName: plain}}
  rateLimit: {{requestsPerSecond: 0.5, burst: 3}}
"#,
        app_port = app.port(),
        inbound = server.addrs.inbound,
        jwks = jwks.display(),
    );
    dir.write("mesh.yaml", &mesh);
    server.ready().await;
    let gateway = ProxyProc::start(&format!(
        "gateway: {{name: web, certificates: {}, listenIp: 127.0.0.1}}\n{}",
        certs.display(),
        control.proxy_config("shop", "gateway")
    ));
    gateway.ready().await;
    Bed {
        _dir: dir,
        _control: control,
        server,
        gateway,
        certs,
        https,
        http,
        empty,
        cas: (ca_a, ca_b),
        issuer,
    }
}

impl Bed {
    fn ca_file(&self, name: &str, pem: &str) -> String {
        let p = self.certs.join(format!("{name}.pem"));
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    }

    fn https(&self, host: &str, ca: &str, extra: &[&str]) -> Curl {
        let resolve = format!("{host}:{}:127.0.0.1", self.https);
        let url = format!("https://{host}:{}/", self.https);
        let mut args = vec!["--resolve", &resolve, "--cacert", ca];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }
}

// curl and h2load block a thread; the echo app needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sni_routes_by_host_and_nothing_else_is_reachable() {
    if !require("curl", "TLS clients of the edge gateway") {
        return;
    }
    let bed = start().await;
    let ca_a = bed.ca_file("ca-a", &bed.cas.0);
    let ca_b = bed.ca_file("ca-b", &bed.cas.1);
    // Each hostname gets its own certificate (curl trusts only its CA).
    let a = bed.https("a.example.test", &ca_a, &["--http1.1"]);
    assert_eq!(
        (a.code, a.status, a.version.as_str()),
        (0, 200, "1.1"),
        "{}",
        a.headers
    );
    assert!(a.headers.contains("x-echo-host: a.example.test"), "{}", a.headers);
    // A request ID of the gateway's own reaches the backend (the client's
    // replaced) and comes back on the response.
    let with_id = bed.https("a.example.test", &ca_a, &["-H", "x-request-id: mine"]);
    let header = |name: &str| {
        with_id
            .headers
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let id = header("x-request-id: ").unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        with_id.headers
    );
    assert_eq!(header("x-echo-request-id: "), Some(id), "{}", with_id.headers);
    let a2 = bed.https("a.example.test", &ca_a, &["--http2"]);
    assert_eq!((a2.status, a2.version.as_str()), (200, "2"));
    let wrong_ca = bed.https("a.example.test", &ca_b, &[]);
    assert_ne!(
        wrong_ca.code, 0,
        "a.example.test must not be served b's certificate"
    );
    // A host another listener serves, on a connection whose handshake
    // chose a's listener (SNI a.example.test): 421, not fronted.
    let fronted = bed.https(
        "a.example.test",
        &ca_a,
        &["-H", "Host: b.example.test", "--http1.1"],
    );
    assert_eq!(fronted.status, 421, "{}", fronted.headers);
    assert!(
        fronted.headers.contains("weft-error: misdirected"),
        "{}",
        fronted.headers
    );
    // The wildcard listener's certificate for b; its route needs /b.
    let b = bed.https("b.example.test", &ca_b, &[]);
    assert_eq!(
        (b.code, b.status),
        (0, 404),
        "only attached routes: {}",
        b.headers
    );
    assert!(b.headers.contains("weft-error: no-route"), "{}", b.headers);
    // A name no route serves, on the plain listener: 404; CONNECT: 404.
    let plain = format!("http://127.0.0.1:{}/", bed.http);
    let other = curl(&["-H", "Host: internal.shop.svc.cluster.local", &plain]);
    assert_eq!(other.status, 404, "{}", other.headers);
    let empty = format!("http://127.0.0.1:{}/", bed.empty);
    let nothing = curl(&["-H", "Host: nothing.example.test", &empty]);
    assert_eq!(
        nothing.status, 404,
        "a listener without routes serves nothing: {}",
        nothing.headers
    );
    let connect = raw_status(
        ([127, 0, 0, 1], bed.http).into(),
        b"CONNECT api.shop.svc.cluster.local:80 HTTP/1.1\r\nHost: api.shop.svc.cluster.local:80\r\n\r\n",
    )
    .await;
    assert!(connect.contains(" 404 "), "{connect}");
    assert!(
        other.headers.contains("x-request-id: "),
        "refusals carry one too: {}",
        other.headers
    );
    // The backend's proxy saw the gateway's own identity, over mTLS.
    let (_, metrics) = admin_get(bed.server.addrs.admin, "/metrics").await;
    let by_gateway = series_sum(
        &metrics,
        "weft_requests_total",
        &[
            ("direction", "inbound"),
            ("source_principal", "spiffe://cluster.local/ns/shop/sa/gateway"),
        ],
    );
    assert!(by_gateway.is_some_and(|n| n >= 2.0), "{metrics}");
    // The gateway's own metrics say where requests went: by listener and
    // route, refusals before routing included; its connections counted.
    let (_, metrics) = admin_get(bed.gateway.addrs.admin, "/metrics").await;
    assert!(
        metrics.contains("direction=\"gateway\"") && metrics.contains("route=\"shop/site/0\""),
        "{metrics}"
    );
    // /config shows the listeners served, with their routes.
    let (_, config) = admin_get(bed.gateway.addrs.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let ports = config["gateway"]["ports"].as_array().expect("a gateway section");
    let https = ports
        .iter()
        .find(|p| p["port"] == bed.https)
        .unwrap_or_else(|| panic!("{config}"));
    assert_eq!(https["tls"], true, "{https}");
    let names: Vec<&str> = https["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "{https}");
    assert_eq!(
        https["listeners"][0]["routes"][0]["name"], "shop/site/0",
        "{https}"
    );
    let gateway = |labels: &[(&str, &str)]| series_sum(&metrics, "weft_gateway_requests_total", labels);
    for (labels, want) in [
        (
            &[
                ("listener", "a"),
                ("route", "shop/site/0"),
                ("response_code", "200"),
            ][..],
            2.0,
        ),
        (
            &[("listener", "b"), ("route", ""), ("response_code", "404")][..],
            1.0,
        ),
        (&[("listener", "plain"), ("error", "no-route")][..], 2.0),
        (&[("listener", "empty"), ("error", "no-route")][..], 1.0),
    ] {
        assert!(
            gateway(labels).is_some_and(|n| n >= want),
            "{labels:?}: {metrics}"
        );
    }
    assert!(
        series_sum(
            &metrics,
            "weft_tcp_connections_opened_total",
            &[("direction", "gateway"), ("protocol", "http1")]
        )
        .is_some_and(|n| n >= 4.0),
        "{metrics}"
    );

    if require("h2load", "a real HTTP/2 load client") {
        let out = Command::new("h2load")
            .args(["-n", "200", "-c", "4", "-m", "10"])
            .arg(format!("--connect-to=127.0.0.1:{}", bed.https))
            .arg(format!("https://a.example.test:{}/", bed.https))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("200 succeeded") && text.contains("200 2xx"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rate_limits_and_smuggling_inputs() {
    if !require("curl", "TLS clients of the edge gateway") {
        return;
    }
    let bed = start().await;
    let ca_b = bed.ca_file("ca-b", &bed.cas.1);
    let claims = |iss: &str, aud: &str, exp: u64| serde_json::json!({"iss": iss, "aud": aud, "sub": "alice", "exp": exp, "iat": now()});
    let iss = "https://issuer.example.test";
    let good = bed.issuer.token("k1", claims(iss, "shop", now() + 600));
    let call = |token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut extra = vec!["-H", "x-header-sub: mallory"];
        if let Some(a) = &auth {
            extra.extend(["-H", a.as_str()]);
        }
        let resolve = format!("b.example.test:{}:127.0.0.1", bed.https);
        let url = format!("https://b.example.test:{}/b", bed.https);
        let mut args = vec!["--resolve", resolve.as_str(), "--cacert", ca_b.as_str()];
        args.extend(extra);
        args.push(url.as_str());
        curl(&args)
    };
    let ok = call(Some(&good));
    assert_eq!(ok.status, 200, "{}", ok.headers);
    assert!(
        ok.headers.contains("x-echo-req-x-header-sub: alice"),
        "claims forwarded, the client's value replaced: {}",
        ok.headers
    );
    let other_issuer = Issuer::new("k1");
    let refused = [
        ("missing", None),
        (
            "expired",
            Some(bed.issuer.token("k1", claims(iss, "shop", now() - 3600))),
        ),
        (
            "wrong issuer",
            Some(
                bed.issuer
                    .token("k1", claims("https://evil.test", "shop", now() + 600)),
            ),
        ),
        (
            "wrong audience",
            Some(bed.issuer.token("k1", claims(iss, "billing", now() + 600))),
        ),
        (
            "bad signature",
            Some(other_issuer.token("k1", claims(iss, "shop", now() + 600))),
        ),
    ];
    for (what, token) in refused {
        let r = call(token.as_deref());
        assert_eq!(r.status, 401, "{what}: {}", r.headers);
        assert!(
            r.headers.contains("www-authenticate: bearer"),
            "{what}: {}",
            r.headers
        );
    }
    // Smuggling inputs get 400: conflicting Content-Lengths, invalid
    // header bytes, and Content-Length with Transfer-Encoding in either
    // order (the connection then closed after the one answer, so nothing
    // after the body is read as another request).
    let addr: SocketAddr = ([127, 0, 0, 1], bed.http).into();
    for (what, req) in [
        (
            "two Content-Lengths",
            &b"POST / HTTP/1.1\r\nHost: plain.example.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"[..],
        ),
        ("invalid header byte", &b"GET / HTTP/1.1\r\nHost: plain.example.test\r\nX-Bad: a\x01b\r\n\r\n"[..]),
    ] {
        let status = raw_status(addr, req).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{what}: {status}");
    }
    for request in [
        &b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\nPOST / HTTP/1.1\r\nHost: plain.example.test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: plain.example.test\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\nPOST / HTTP/1.1\r\nHost: plain.example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: plain.example.test\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .expect("the connection is closed after the refusal")
            .unwrap();
        let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
        // The request before it is answered (404: no route serves that
        // host, and the plain listener's rate limit is kept for below);
        // the ambiguous one refused.
        let answers: Vec<&str> = text.matches("http/1.1 ").collect();
        assert_eq!(answers.len(), 2, "{text}");
        let second = &text[text.rfind("http/1.1 ").unwrap()..];
        assert!(text.starts_with("http/1.1 404"), "{text}");
        assert!(
            second.starts_with("http/1.1 400")
                && second.contains("weft-error: ambiguous-framing")
                && second.contains("connection: close")
                && !text.contains("/smuggled"),
            "{text}"
        );
    }
    // Rate limit on the plain listener: burst 3, then 429 with Retry-After.
    let plain = format!("http://127.0.0.1:{}/", bed.http);
    let statuses: Vec<Curl> = (0..5)
        .map(|_| curl(&["-H", "Host: plain.example.test", &plain]))
        .collect();
    assert_eq!(
        statuses.iter().map(|c| c.status).collect::<Vec<_>>(),
        [200, 200, 200, 429, 429]
    );
    assert!(
        statuses[3].headers.contains("retry-after: "),
        "{}",
        statuses[3].headers
    );
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_within_two_seconds() {
    let bed = start().await;
    let connector = |ca: &str| {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pem(ca);
        roots.add(der).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = rustls::pki_types::ServerName::try_from("a.example.test").unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], bed.https).into();
    // A keep-alive connection made with the old certificate.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let held = connector(&bed.cas.0).connect(name.clone(), tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(held))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        http::Request::get("/")
            .header("host", "a.example.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let rsp = sender.send_request(get()).await.unwrap();
    assert_eq!(rsp.status(), 200);
    http_body_util::BodyExt::collect(rsp.into_body()).await.unwrap();
    // Replaced by a pair from a new CA.
    let (new_ca, chain, key) = tls_pair("a.example.test");
    write_secret(&bed.certs, "a-tls", &chain, &key);
    let replaced = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the new certificate is served",
        || async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            connector(&new_ca)
                .connect(name.clone(), tcp)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    eprintln!(
        "new certificate served {:?} after the files were replaced",
        replaced.elapsed()
    );
    // The old connection was not dropped.
    let rsp = sender
        .send_request(get())
        .await
        .expect("the held connection still works");
    assert_eq!(rsp.status(), 200);
}

fn rustls_pem(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}
