//! A listener on one configured address, and on IPv6 too when that address
//! is IPv4's wildcard (`0.0.0.0` → `[::]`) or loopback (`127.0.0.1` →
//! `[::1]`) and the node has IPv6.
//!
//! ip6tables redirects a pod's IPv6 connections to the same ports as
//! iptables does its IPv4 ones (inbound to the pod's IPv6 address, outbound
//! to `::1`), so every listener needs an IPv6 twin on the same port. The
//! twin is a second socket with `IPV6_V6ONLY`, not one dual-stack `[::]`
//! socket: the configured IPv4 address keeps working (and stays what
//! `local_addr` reports and the "listening" log line shows) on a node
//! where IPv6 is absent or disabled, where the twin is skipped with a log
//! line; and IPv4 callers keep plain IPv4 addresses rather than
//! `::ffff:a.b.c.d`. A twin that cannot bind for any other reason (its
//! port taken) is an error: IPv6 callers would reach someone else.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::Poll;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Tries for a pair on an ephemeral port (`:0`) whose IPv6 twin finds the
/// port the IPv4 socket got already taken.
const EPHEMERAL_TRIES: usize = 8;

/// One or two bound sockets serving one listener.
#[derive(Debug)]
pub struct Listener {
    primary: TcpListener,
    ipv6: Option<TcpListener>,
    /// Which socket is polled first next time, so neither starves.
    next: usize,
}

/// Why a listener did not bind: the address that failed.
#[derive(Debug, thiserror::Error)]
#[error("{addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// The IPv6 address that mirrors `addr`, if any: only IPv4's wildcard and
/// loopback have one; a specific address was chosen on purpose.
pub fn ipv6_twin(addr: SocketAddr) -> Option<SocketAddr> {
    match addr.ip() {
        IpAddr::V4(ip) if ip == Ipv4Addr::UNSPECIFIED => {
            Some(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port()))
        }
        IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST => {
            Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()))
        }
        _ => None,
    }
}

/// Whether a failed IPv6 bind means "no IPv6 here" rather than a problem:
/// no IPv6 in the kernel (`EAFNOSUPPORT`) or no such address (`::1` gone
/// with `disable_ipv6`: `EADDRNOTAVAIL`).
fn no_ipv6(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// Linux's `EAFNOSUPPORT`: std has no `ErrorKind` for it, and the crate
/// has no `libc` for one constant.
const EAFNOSUPPORT: i32 = 97;

impl Listener {
    /// Binds `addr`, and its IPv6 twin when it has one and IPv6 is there.
    pub async fn bind(addr: SocketAddr) -> Result<Self, BindError> {
        for _ in 0..EPHEMERAL_TRIES {
            let primary = TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { addr, source })?;
            let Some(twin) = ipv6_twin(addr) else {
                return Ok(Self::new(primary, None));
            };
            let port = primary
                .local_addr()
                .map_err(|source| BindError { addr, source })?
                .port();
            let twin = SocketAddr::new(twin.ip(), port);
            match bind_v6only(twin) {
                Ok(l) => return Ok(Self::new(primary, Some(l))),
                Err(e) if no_ipv6(&e) => {
                    tracing::info!(%addr, ipv6 = %twin, error = %e, "no IPv6 here: this listener is IPv4 only");
                    return Ok(Self::new(primary, None));
                }
                // An ephemeral port free on IPv4 but not on IPv6: another.
                Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(source) => return Err(BindError { addr: twin, source }),
            }
        }
        Err(BindError {
            addr,
            source: io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no ephemeral port free on both IPv4 and IPv6 after {EPHEMERAL_TRIES} tries"),
            ),
        })
    }

    fn new(primary: TcpListener, ipv6: Option<TcpListener>) -> Self {
        Self {
            primary,
            ipv6,
            next: 0,
        }
    }

    /// The configured address, as bound (the port filled in).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.primary.local_addr()
    }

    /// The IPv6 twin's address, when there is one.
    pub fn ipv6_addr(&self) -> Option<SocketAddr> {
        self.ipv6.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The next connection on either socket, with the peer's address in
    /// canonical form (an IPv4-mapped IPv6 address as IPv4).
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let sockets: Vec<&TcpListener> = std::iter::once(&self.primary).chain(self.ipv6.as_ref()).collect();
        let start = self.next;
        let (which, accepted) = poll_fn(|cx| {
            for i in 0..sockets.len() {
                let n = (start + i) % sockets.len();
                if let Poll::Ready(r) = sockets[n].poll_accept(cx) {
                    return Poll::Ready((n, r));
                }
            }
            Poll::Pending
        })
        .await;
        self.next = which + 1;
        let (stream, peer) = accepted?;
        Ok((stream, canonical(peer)))
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An IPv6-only listening socket (as tokio's `bind`, plus `IPV6_V6ONLY`).
fn bind_v6only(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_the_ipv4_wildcard_and_loopback_have_twins() {
        let twin = |a: &str| ipv6_twin(a.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(twin("0.0.0.0:4143").as_deref(), Some("[::]:4143"));
        assert_eq!(twin("127.0.0.1:4140").as_deref(), Some("[::1]:4140"));
        assert_eq!(twin("10.0.0.7:4143"), None);
        assert_eq!(twin("[::]:4143"), None);
        assert_eq!(twin("[::1]:4140"), None);
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let a: SocketAddr = "[::ffff:10.0.0.7]:5000".parse().unwrap();
        assert_eq!(canonical(a).to_string(), "10.0.0.7:5000");
        let b: SocketAddr = "[fd00::7]:5000".parse().unwrap();
        assert_eq!(canonical(b), b);
    }

    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    async fn round_trip(listener: &mut Listener, to: SocketAddr) -> SocketAddr {
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await.unwrap();
            s.write_all(b"x").await.unwrap();
            s
        });
        let (mut stream, peer) = listener.accept().await.unwrap();
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
        drop(client.await.unwrap());
        peer
    }

    #[tokio::test]
    async fn loopback_is_served_on_both_families_on_one_port() {
        let mut l = Listener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let v4 = l.local_addr().unwrap();
        assert!(v4.is_ipv4());
        let peer = round_trip(&mut l, v4).await;
        assert!(peer.ip().is_loopback() && peer.is_ipv4(), "{peer}");
        if !has_ipv6_loopback() {
            eprintln!("SKIPPED the IPv6 half: no ::1 here");
            assert_eq!(l.ipv6_addr(), None);
            return;
        }
        let v6 = l.ipv6_addr().expect("an IPv6 twin");
        assert_eq!(v6, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), v4.port()));
        let peer = round_trip(&mut l, v6).await;
        assert_eq!(peer.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        // Both again, so alternation never starves either.
        round_trip(&mut l, v4).await;
        round_trip(&mut l, v6).await;
    }

    #[tokio::test]
    async fn a_taken_ipv6_port_is_an_error_naming_it() {
        if !has_ipv6_loopback() {
            eprintln!("SKIPPED: no ::1 here");
            return;
        }
        let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let Ok(free_v4) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            eprintln!("SKIPPED: port {port} also taken on IPv4");
            return;
        };
        drop(free_v4);
        let e = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .unwrap_err();
        assert_eq!(e.addr, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port));
        assert_eq!(e.source.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn a_specific_address_has_no_twin() {
        let l = Listener::bind("127.0.0.2:0".parse().unwrap()).await;
        if let Ok(l) = l {
            assert_eq!(l.ipv6_addr(), None);
        }
    }
}
