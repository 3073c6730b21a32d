//! The original destination of a connection that iptables redirected to
//! one of our listeners (`SO_ORIGINAL_DST`, and `IP6T_SO_ORIGINAL_DST` for
//! IPv6).
//!
//! This is the one place the proxy asks the kernel about NAT. The
//! `getsockopt` call itself (and its `unsafe`) lives in socket2
//! (`original_dst_v4` / `original_dst_v6`, feature `all`), so this crate
//! stays `forbid(unsafe_code)`.

use std::net::SocketAddr;

use socket2::SockRef;

/// Where the client meant to connect, when the connection was redirected
/// to us: `None` when it was not (no NAT entry, or the original destination
/// is the address we accepted on, e.g. an app that calls the outbound
/// listener explicitly, or a peer proxy calling the inbound listener).
pub fn original_dst<S>(stream: &S) -> Option<SocketAddr>
where
    S: std::os::fd::AsFd,
{
    let sock = SockRef::from(stream);
    let local = sock.local_addr().ok()?.as_socket()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let orig = match orig {
        Ok(addr) => addr.as_socket()?,
        // ENOENT: conntrack knows no NAT for this connection (or is not
        // loaded); ENOPROTOOPT: no netfilter at all. Either way: direct.
        Err(e) => {
            tracing::trace!(error = %e, "no original destination");
            return None;
        }
    };
    redirected(local, crate::listener::canonical(orig))
}

/// `orig` when it differs from the address the connection arrived at.
fn redirected(local: SocketAddr, orig: SocketAddr) -> Option<SocketAddr> {
    let same = match (local, orig) {
        (a, b) if a == b => true,
        // An IPv4 client on a dual-stack socket: `::ffff:a.b.c.d`.
        (SocketAddr::V6(l), SocketAddr::V4(o)) => {
            l.ip().to_ipv4_mapped() == Some(*o.ip()) && l.port() == o.port()
        }
        _ => false,
    };
    (!same).then_some(orig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
        drop(client);
    }

    #[test]
    fn only_a_different_address_counts_as_redirected() {
        let local: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        assert_eq!(redirected(local, local), None);
        let orig: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        assert_eq!(redirected(local, orig), Some(orig));
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:8080".parse().unwrap();
        assert_eq!(redirected(mapped, orig), None);
    }
}
