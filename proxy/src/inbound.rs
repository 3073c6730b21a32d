//! The inbound side: traffic for the local app, from peer proxies over the
//! mesh or (permissive) from unmeshed clients.
//!
//! Per connection: detect → HTTP (from a peer: HTTP/2 with `weft-proto` and
//! `weft-port`, turned back into the app's protocol) or opaque TCP (from a
//! peer: the `WEFT-TCP/1 <port>` preamble) → the app on `app_ip:port`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::bounds::{Admission, Admitted};
use crate::client::Clients;
use crate::detect::{detect, detect_until, Protocol, Until};
use crate::drain;
use crate::errors::{ProxyError, WEFT_UNSENT};
use crate::http::{absolute_uri, authority, incoming, is_upgrade, strip_hop_by_hop, AppProtocol, Body};
use crate::http::{WEFT_PORT, WEFT_PROTO, WEFT_SOURCE_WORKLOAD, WEFT_WORKLOAD};
use crate::identity::{spiffe_id_of, Identity, ALPN_H2, ALPN_TCP};
use crate::listener::Listener;
use crate::metrics::{Detected, Direction, LimitReason};
use crate::policy::{ConnInfo, Policies};
use crate::resilience::metrics::ResilienceMetrics;
use crate::server::{accept_loop, serve_http, Limits};
use crate::tcp;
use crate::telemetry::{workload_name, Observation, Target, Telemetry};
use std::time::Duration;

/// How long the first connection to an undeclared app port waits for the
/// control plane's policy for it; pending after that, it is denied.
const FIRST_POLICY_WAIT: Duration = Duration::from_secs(5);

/// The workload this proxy fronts, from its own config: the `service` and
/// `namespace` labels of inbound metrics (callers cannot mint them).
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

/// What a TCP stream to an app port may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Bytes the proxy cannot read (the client's own TLS) or must not
    /// wait on (a server-first port): spliced as they are.
    Opaque,
    /// Possibly HTTP: classified first.
    Sniff,
}

/// Who spoke first on a sniffed stream, when it was not the caller.
enum Spoke {
    App,
    Nobody,
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The app a request is for.
#[derive(Debug, Clone, Copy)]
struct AppTarget {
    protocol: AppProtocol,
    addr: SocketAddr,
}

pub struct Inbound {
    /// Authorization and mTLS mode per app port.
    pub policies: Arc<Policies>,
    /// This proxy's identity: mTLS from peers needs its certificate.
    pub identity: Option<Arc<Identity>>,
    /// The workload this proxy fronts, for metrics.
    pub workload: Workload,
    /// This proxy's workload as sent to mesh peers in `weft-workload`
    /// (`None` when it has none that is a valid label value).
    pub workload_header: Option<http::HeaderValue>,
    pub app_ip: IpAddr,
    /// Forward to the pod IP the caller reached instead of `app_ip`, so
    /// the app sees a non-loopback peer and a listener bound to loopback
    /// only stays unreachable from other pods (`inboundToPodIp`).
    pub app_to_pod_ip: bool,
    /// The app's ports; the first is the default.
    pub app_ports: Vec<u16>,
    /// Forward other ports too, when the app listens on them off loopback
    /// (`inboundAnyPort`); their policies are watched on first use.
    pub any_port: bool,
    /// This proxy's listeners: never an app port.
    pub own_ports: Vec<u16>,
    pub clients: Clients,
    pub telemetry: Arc<Telemetry>,
    pub limits: Limits,
    pub detect_timeout: std::time::Duration,
    pub drain: drain::Watch,
    /// Ports whose redirected connections skip detection.
    pub interception: crate::config::Interception,
}

impl Inbound {
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        let drain = self.drain.clone();
        let admission = Admission::new(self.limits.max_connections);
        let limits = self.limits.clone();
        accept_loop(listener, &drain, &admission, &limits, move |stream, peer| {
            self.clone().connection(stream, peer)
        })
        .await;
    }

    /// The app address for `port` (the default port when `None`) on a
    /// connection `conn`: the pod IP the caller reached when `app_to_pod_ip`
    /// (transparent mode), else `app_ip`. An undeclared port the app
    /// listens on (with `any_port`) is watched first, so its policy is
    /// known (or pending, which denies) when the caller is checked.
    async fn app_addr(&self, port: Option<u16>, conn: &ConnInfo) -> Result<SocketAddr, ProxyError> {
        let port = match port {
            Some(p) if self.app_ports.contains(&p) => p,
            Some(p) if self.any_port && p != 0 && !self.own_ports.contains(&p) => {
                // Only ports with a listener: a port scan opens no watches.
                if !self.policies.is_watched(p) && !app_listens(p) {
                    return Err(ProxyError::UnknownAppPort(p));
                }
                if !self.policies.watch_port(p, FIRST_POLICY_WAIT).await {
                    return Err(ProxyError::UnknownAppPort(p));
                }
                p
            }
            Some(p) => return Err(ProxyError::UnknownAppPort(p)),
            None => *self.app_ports.first().ok_or(ProxyError::UnknownAppPort(0))?,
        };
        let ip = match conn.local_ip {
            Some(ip) if self.app_to_pod_ip => ip,
            _ => self.app_ip,
        };
        Ok(SocketAddr::new(ip, port))
    }

    async fn connection(self: Arc<Self>, stream: Admitted<TcpStream>, peer: SocketAddr) {
        let _ = stream.get_ref().set_nodelay(true);
        // Peers dial the inbound listener's port: not an app port.
        let listener_port = stream.get_ref().local_addr().map_or(0, |a| a.port());
        let orig_dst = crate::orig_dst::original_dst(stream.get_ref());
        let target_port = orig_dst.map(|d| d.port()).filter(|p| *p != listener_port);
        // The pod address the caller reached, of its family: an IPv6
        // caller's app connection goes to the pod's IPv6 address.
        let local_ip = orig_dst
            .map(|d| d.ip())
            .or_else(|| stream.get_ref().local_addr().ok().map(|a| a.ip()))
            .map(|ip| ip.to_canonical());
        let plaintext = ConnInfo {
            target_port,
            local_ip,
            ..ConnInfo::default()
        };
        let mut guard = self.telemetry.connection(Direction::Inbound, peer);
        if let Some(port) = target_port.filter(|p| self.interception.is_opaque_port(*p)) {
            guard.detected(Detected::Opaque);
            let io = guard.meter(stream);
            return self.tcp(io, Some(port), &plaintext, peer, Payload::Opaque).await;
        }
        let (protocol, mut io) = match detect(guard.meter(stream), self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "inbound detection failed");
                return;
            }
        };
        match protocol {
            // TLS to an app port: the client's own, not the mesh's.
            Protocol::Tls if target_port.is_some() => {
                guard.detected(Detected::Opaque);
                self.tcp(io, target_port, &plaintext, peer, Payload::Opaque).await;
            }
            Protocol::Tls => {
                guard.detected(Detected::Tls);
                self.tls(io, peer, local_ip).await;
            }
            Protocol::Http1 | Protocol::Http2 => {
                let app = if protocol == Protocol::Http1 {
                    AppProtocol::Http1
                } else {
                    AppProtocol::Http2
                };
                guard.detected(app.into());
                self.serve_conn(io, app, plaintext, std::future::pending()).await;
            }
            Protocol::MeshTcp { port } => {
                guard.detected(Detected::MeshTcp);
                let line = io.prefix().iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
                io.consume_prefix(line);
                self.tcp(io, Some(port), &plaintext, peer, Payload::Sniff).await;
            }
            Protocol::Opaque => {
                guard.detected(Detected::Opaque);
                // Undecided bytes (or none yet) may still turn into HTTP.
                self.tcp(io, target_port, &plaintext, peer, Payload::Sniff).await;
            }
        }
    }

    async fn serve_conn<I>(
        self: &Arc<Self>,
        io: I,
        app: AppProtocol,
        conn: ConnInfo,
        ends: impl std::future::Future<Output = ()>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        serve_http(io, app, &self.limits, &self.drain, ends, move |req| {
            this.clone().request(req, app, conn.clone())
        })
        .await;
    }

    /// mTLS from a peer proxy: HTTP/2 mesh channel or a TCP tunnel, by ALPN.
    async fn tls<I>(self: &Arc<Self>, io: I, peer: SocketAddr, local_ip: Option<std::net::IpAddr>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Some((identity, creds)) = self.identity.clone().and_then(|i| i.current().map(|c| (i, c))) else {
            tracing::info!(%peer, "TLS from a peer, but this proxy has no certificate; closing");
            return;
        };
        let accept = tokio_rustls::TlsAcceptor::from(creds.server.clone()).accept(io);
        let tls = match tokio::time::timeout(Duration::from_secs(10), accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "mTLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "mTLS handshake timed out");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        let peer_cert = session.peer_certificates().and_then(|c| c.first());
        let caller = peer_cert.and_then(|c| spiffe_id_of(c));
        let peer_until = peer_cert.and_then(|c| crate::identity::not_after(c));
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let conn = ConnInfo {
            tls: true,
            caller: caller.map(Arc::from),
            target_port: None,
            local_ip,
        };
        match alpn.as_deref() {
            Some(ALPN_H2) => {
                // The mesh channel drains once either side's certificate
                // expires or the trust anchors change; the caller
                // reconnects with what is current. (TCP tunnels carry one
                // app connection each and are left to end with it.)
                let ends = async move { identity.authentication_ends(&creds, peer_until).await };
                self.serve_conn(tls, AppProtocol::Http2, conn, ends).await
            }
            Some(ALPN_TCP) => match detect(tls, self.detect_timeout).await {
                Ok((Protocol::MeshTcp { port }, mut io)) => {
                    let line = io.prefix().iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
                    io.consume_prefix(line);
                    self.tcp(io, Some(port), &conn, peer, Payload::Sniff).await;
                }
                _ => tracing::info!(%peer, "TCP tunnel without its preamble; closing"),
            },
            other => tracing::info!(%peer, alpn = ?other, "unknown ALPN; closing"),
        }
    }

    fn count_limited(&self, limited: &crate::resilience::ratelimit::Limited) {
        self.telemetry
            .metrics
            .resilience
            .rate_limited
            .get_or_create(&ResilienceMetrics::reason(
                &self.workload.name,
                &self.workload.namespace,
                limited.scope.as_str(),
            ))
            .inc();
    }

    /// Opaque bytes to the app port (`None`: the default port). With
    /// [`Payload::Sniff`], HTTP inside the stream is served as HTTP, each
    /// request authorized and rate-limited on its own: a tunnel cannot
    /// carry requests past the port's per-request policy.
    async fn tcp<I>(
        self: &Arc<Self>,
        io: I,
        port: Option<u16>,
        conn: &ConnInfo,
        peer: SocketAddr,
        payload: Payload,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let addr = match self.app_addr(port, conn).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%peer, error = %e, "inbound TCP refused");
                return;
            }
        };
        if let Err(why) = self.policies.authorize(addr.port(), conn, None) {
            tracing::info!(%peer, caller = conn.caller.as_deref().unwrap_or("-"), %why, "inbound TCP denied; closing");
            return;
        }
        // An opaque TCP stream (a WEFT-TCP tunnel, CONNECT, opaque bytes)
        // takes one token of the port's rate limit, as one request does;
        // HTTP inside a stream is charged per request instead.
        let admit = || match self.policies.rate_limit(addr.port(), conn.caller.as_deref()) {
            Ok(()) => true,
            Err(limited) => {
                self.count_limited(&limited);
                tracing::info!(%peer, caller = conn.caller.as_deref().unwrap_or("-"), scope = limited.scope.as_str(), "inbound TCP rate limited; closing");
                false
            }
        };
        let sniff = payload == Payload::Sniff && !self.interception.is_opaque_port(addr.port());
        if !sniff && !admit() {
            return;
        }
        let app = match self.clients.connect(addr).await {
            Ok(app) => app,
            Err(e) => {
                tracing::info!(%peer, error = %e, "inbound TCP could not reach the app");
                return;
            }
        };
        if !sniff {
            let stream = self
                .telemetry
                .stream(Direction::Inbound, &self.stream_target(conn));
            return tcp::splice(io, app, &self.limits, addr.port(), stream).await;
        }
        // Whoever speaks first decides: an app that sends first (a
        // server-first protocol) is no HTTP server, so the bytes are
        // opaque; bytes from the caller are classified. The app is
        // already connected, so a banner is not delayed.
        let idle = self.limits.tcp_idle(addr.port());
        let stop = async {
            tokio::select! {
                _ = app.readable() => Spoke::App,
                () = sleep_or_never(idle) => Spoke::Nobody,
            }
        };
        let (until, io) = match detect_until(io, stop).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "inbound TCP stream failed");
                return;
            }
        };
        let http = match until {
            Until::Decided(Protocol::Http1) => AppProtocol::Http1,
            Until::Decided(Protocol::Http2) => AppProtocol::Http2,
            Until::Decided(_) | Until::Stopped(Spoke::App) => {
                if admit() {
                    let stream = self
                        .telemetry
                        .stream(Direction::Inbound, &self.stream_target(conn));
                    tcp::splice(io, app, &self.limits, addr.port(), stream).await;
                }
                return;
            }
            Until::Stopped(Spoke::Nobody) => {
                self.limits
                    .metrics
                    .count_limited(Direction::Inbound, LimitReason::TcpIdleTimeout);
                tracing::debug!(%peer, "inbound TCP stream idle before its first byte; closed");
                return;
            }
        };
        drop(app);
        tracing::debug!(%peer, port = addr.port(), "HTTP inside a TCP stream: served as HTTP");
        let conn = ConnInfo {
            target_port: Some(addr.port()),
            ..conn.clone()
        };
        self.serve_conn(io, http, conn, std::future::pending()).await;
    }

    async fn request(
        self: Arc<Self>,
        req: Request<Incoming>,
        proto: AppProtocol,
        conn: ConnInfo,
    ) -> Response<Body> {
        let mut req = req.map(incoming);
        let grpc = crate::grpc::is_grpc(req.headers());
        let obs = Observation::start(&self.telemetry, Direction::Inbound, &mut req);
        // The service this proxy fronts, from its own config: callers
        // cannot mint label values.
        // The caller's workload as its proxy said it: believed (as a label
        // value) only over mTLS; never passed to the app.
        let said = req.headers_mut().remove(WEFT_SOURCE_WORKLOAD);
        let target = Target {
            service: self.workload.name.clone(),
            namespace: self.workload.namespace.clone(),
            tls: conn.tls,
            peer_identity: conn.caller.clone().unwrap_or_default(),
            peer_workload: said
                .filter(|_| conn.tls)
                .and_then(|v| workload_name(&v))
                .unwrap_or_default(),
            ..Target::default()
        };
        let (target, result) = match self.app_target(&mut req, proto, &conn).await {
            Ok(app) => (
                Target {
                    upstream: Some(app.addr),
                    ..target
                },
                self.route(req, proto, app, &conn).await,
            ),
            Err(e) => (target, Err(e)),
        };
        let (mut rsp, error) = match result {
            Ok(mut rsp) => {
                // Only this proxy says whether the app got the request, and
                // which workload answered.
                rsp.headers_mut().remove(WEFT_UNSENT);
                rsp.headers_mut().remove(WEFT_WORKLOAD);
                (rsp, None)
            }
            Err(e) => {
                tracing::info!(error = %e, reason = e.reason(), "inbound request failed");
                let mut rsp = e.to_response(grpc);
                if e.nothing_sent() {
                    rsp.headers_mut()
                        .insert(WEFT_UNSENT, http::HeaderValue::from_static("1"));
                }
                (rsp, Some(e.reason()))
            }
        };
        if let (true, Some(me)) = (conn.tls, &self.workload_header) {
            rsp.headers_mut().insert(WEFT_WORKLOAD, me.clone());
        }
        obs.respond(target, rsp, error)
    }

    /// Who a TCP stream from `conn` connects, for its metrics: the caller
    /// as its certificate proves it (a byte stream carries no workload
    /// header), and the service this proxy fronts.
    fn stream_target(&self, conn: &ConnInfo) -> Target {
        Target {
            service: self.workload.name.clone(),
            namespace: self.workload.namespace.clone(),
            tls: conn.tls,
            peer_identity: conn.caller.clone().unwrap_or_default(),
            ..Target::default()
        }
    }

    /// Where a request goes: the app protocol and port a peer's mesh
    /// headers name (which are removed), else what the connection says.
    async fn app_target(
        &self,
        req: &mut Request<Body>,
        conn: AppProtocol,
        caller: &ConnInfo,
    ) -> Result<AppTarget, ProxyError> {
        let (protocol, port) = take_mesh_headers(req.headers_mut());
        Ok(AppTarget {
            protocol: protocol.unwrap_or(conn),
            addr: self.app_addr(port.or(caller.target_port), caller).await?,
        })
    }

    /// Authorizes and rate-limits one request, then sends it to the app.
    async fn route(
        &self,
        mut req: Request<Body>,
        conn: AppProtocol,
        app: AppTarget,
        caller: &ConnInfo,
    ) -> Result<Response<Body>, ProxyError> {
        let addr = app.addr;
        self.policies
            .authorize(
                addr.port(),
                caller,
                Some((req.method().as_str(), req.uri().path())),
            )
            .map_err(ProxyError::Unauthorized)?;
        self.policies
            .rate_limit(addr.port(), caller.caller.as_deref())
            .map_err(|limited| {
                self.count_limited(&limited);
                ProxyError::RateLimited {
                    scope: limited.scope.as_str(),
                    retry_after: limited.retry_after,
                }
            })?;

        if conn == AppProtocol::Http1 && is_upgrade(&req) {
            // An h2c upgrade would let the caller speak HTTP/2 straight to
            // the app, past the per-request policy.
            let h2c = req.headers().get_all(http::header::UPGRADE).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
            });
            if h2c {
                return Err(ProxyError::Unauthorized("h2c upgrades are not proxied".into()));
            }
            let io = self.clients.connect(addr).await?;
            let (telemetry, target) = (self.telemetry.clone(), self.stream_target(caller));
            let stream = move || telemetry.stream(Direction::Inbound, &target);
            return tcp::upgrade(req, io, addr, &self.limits, &self.drain, stream).await;
        }
        let authority = authority(&req);
        strip_hop_by_hop(req.headers_mut());
        let rsp = match app.protocol {
            AppProtocol::Http1 => {
                if let Some(a) = &authority {
                    if !req.headers().contains_key(http::header::HOST) {
                        req.headers_mut().insert(
                            http::header::HOST,
                            a.as_str().parse().expect("authority is a valid header"),
                        );
                    }
                }
                self.clients.send_h1(addr, req).await?
            }
            AppProtocol::Http2 => {
                let a = authority
                    .unwrap_or_else(|| addr.to_string().parse().expect("socket address is an authority"));
                *req.uri_mut() = absolute_uri(&a, req.uri());
                *req.version_mut() = Version::HTTP_2;
                self.clients.send_h2(addr, None, req).await?
            }
        };
        let mut rsp = rsp.map(incoming);
        strip_hop_by_hop(rsp.headers_mut());
        Ok(rsp)
    }
}

/// Removes the mesh headers a peer proxy set (every value of each) and
/// returns what they said: the app protocol and the app port, each `None`
/// when absent or not understood.
fn take_mesh_headers(headers: &mut http::HeaderMap) -> (Option<AppProtocol>, Option<u16>) {
    let protocol = headers
        .remove(WEFT_PROTO)
        .and_then(|v| AppProtocol::from_header(&v));
    let port = headers
        .remove(WEFT_PORT)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
    (protocol, port)
}

/// Whether something in this network namespace (the pod's: the sidecar
/// shares it with the app) listens on TCP `port` on an address other
/// pods can reach, per `/proc/net/tcp` and `/proc/net/tcp6`. A listener
/// bound to loopback only does not count.
fn app_listens(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|t| t.lines().skip(1).any(|line| listens_on(line, port)))
    })
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st …`, the local address
/// as hex 32-bit words in host byte order, then `:` and the port in hex.
fn listens_on(line: &str, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let mut fields = line.split_whitespace();
    let (Some(_), Some(local), Some(_), Some(state)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let Some((ip, p)) = local.split_once(':') else {
        return false;
    };
    if state != LISTEN || u16::from_str_radix(p, 16) != Ok(port) {
        return false;
    }
    let mut octets = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let Ok(word) = std::str::from_utf8(word).map(|w| u32::from_str_radix(w, 16)) else {
            return false;
        };
        let Ok(word) = word else { return false };
        octets.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match octets.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(octets).expect("4 octets")),
        16 => IpAddr::from(<[u8; 16]>::try_from(octets).expect("16 octets")).to_canonical(),
        _ => return false,
    };
    !ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn only_listeners_other_pods_can_reach_count() {
        let open = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let open6 = TcpListener::bind("[::]:0").await.ok();
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = |l: &TcpListener| l.local_addr().unwrap().port();
        assert!(app_listens(port(&open)));
        if let Some(l) = &open6 {
            assert!(app_listens(port(l)), "an IPv6 wildcard listener");
        }
        assert!(!app_listens(port(&local)), "loopback only");
        let gone = port(&local);
        drop(local);
        assert!(!app_listens(gone), "nothing listens");
    }

    #[test]
    fn proc_net_tcp_lines() {
        let v4 =
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        let v4_any =
            "   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1";
        let established =
            "   2: 00000000:1F92 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 3 1";
        let v6_loopback =
            "   0: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A 0:0 00:0 0 0 0 4 1";
        assert!(!listens_on(v4, 8080), "127.0.0.1");
        assert!(listens_on(v4_any, 8081));
        assert!(!listens_on(v4_any, 8080), "another port");
        assert!(!listens_on(established, 8082), "not listening");
        assert!(!listens_on(v6_loopback, 8083), "::1");
        assert!(!listens_on("garbage", 1));
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        fn mesh_headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
            let name = prop_oneof![
                Just("weft-proto"),
                Just("weft-port"),
                Just("Weft-Port"),
                Just("x-app")
            ];
            let value = prop_oneof![
                "(http/1\\.1|h2|h2c|HTTP/1\\.1| h2)",
                "[+-]?[0-9]{0,6}",
                "[ -~]{0,12}"
            ];
            prop::collection::vec((name, value), 0..6)
        }

        proptest! {
            #[test]
            fn mesh_headers_are_all_taken_and_read_from_their_first_value(headers in mesh_headers()) {
                let mut h = http::HeaderMap::new();
                for (name, value) in &headers {
                    h.append(*name, http::HeaderValue::from_str(value).unwrap());
                }
                let first = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
                let apps = h.get_all("x-app").iter().count();
                let (protocol, port) = take_mesh_headers(&mut h);
                prop_assert!(!h.contains_key(WEFT_PROTO) && !h.contains_key(WEFT_PORT), "{:?}", h);
                prop_assert_eq!(h.get_all("x-app").iter().count(), apps, "other headers stay");
                let expected_protocol = match first("weft-proto") {
                    Some("http/1.1") => Some(AppProtocol::Http1),
                    Some("h2") => Some(AppProtocol::Http2),
                    _ => None,
                };
                prop_assert_eq!(protocol, expected_protocol);
                prop_assert_eq!(port, first("weft-port").and_then(|v| v.parse::<u16>().ok()));
            }
        }
    }
}
