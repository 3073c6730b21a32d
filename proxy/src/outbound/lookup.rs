//! Where a request is going, before routing: the destination the request
//! names, or (transparent interception) the address the app connected to.
//!
//! - Explicit (no original destination): the request must name a service
//!   (`Host`, `:authority` or an absolute URI).
//! - Redirected HTTP goes to the original destination, looked up by
//!   `ip:port`: a service's virtual IP or a mesh pod is that service (its
//!   routes and policy apply), anything else is called as itself. The
//!   app's `Host` travels unchanged and never picks the destination.
//! - Redirected non-HTTP goes to the original destination (see
//!   [`super::tunnel`]).
//! - While discovery has not answered for a name or address, nothing is
//!   sent (`503 discovery-unavailable`): it might be a meshed destination,
//!   and guessing would mean plaintext.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use http::Uri;

use super::Outbound;
use crate::config::UpstreamListener;
use crate::discover::{Destination, Endpoint, Unresolved, EXTERNAL_SERVICE};
use crate::errors::ProxyError;
use crate::http::host_port;

/// How a connection reached the outbound side, which decides where its
/// requests go.
#[derive(Debug, Clone)]
pub enum Via {
    /// The outbound listener, explicitly: each request names its
    /// destination.
    Explicit,
    /// Redirected by `weft-proxy init`: the address the app dialled.
    Redirected(SocketAddr),
    /// An upstream listener: bound to one service and port, whatever the
    /// request says.
    Bound(Arc<UpstreamListener>),
    /// An edge gateway's listener: its routes decide, by the request's
    /// host and match; nothing else is reachable.
    Gateway(Arc<crate::gateway::Entry>),
}

impl Via {
    /// The `direction` label of the request's metrics.
    pub fn direction(&self) -> crate::metrics::Direction {
        match self {
            Via::Gateway(_) => crate::metrics::Direction::Gateway,
            _ => crate::metrics::Direction::Outbound,
        }
    }
}

/// The destination a request names, as discovery answered for it.
#[derive(Debug, Clone)]
pub struct Named {
    /// The authority the request is sent with (what the app named, or the
    /// original destination when it named nothing).
    pub authority: Authority,
    /// `host` and `port` as discovery was asked (lower case, port
    /// defaulted from the scheme).
    pub host: String,
    pub port: u16,
    pub dest: Arc<Destination>,
}

impl Outbound {
    /// Where a request with authority `named` and `uri` goes. Without an
    /// original destination the request must name one.
    pub(super) async fn lookup(
        &self,
        named: Option<Authority>,
        uri: &Uri,
        via: &Via,
    ) -> Result<Named, ProxyError> {
        let dst = match via {
            Via::Redirected(dst) => *dst,
            Via::Bound(up) => {
                // The request's own authority travels unchanged (as the app
                // wrote it); the listener decides where it goes.
                let target = crate::discover::target(&up.service, up.port);
                let authority = match named {
                    Some(a) => a,
                    None => target.parse().map_err(|_| ProxyError::NoAuthority)?,
                };
                return Ok(Named {
                    authority,
                    host: up.service.clone(),
                    port: up.port,
                    dest: self.resolve(&up.service, up.port).await?,
                });
            }
            Via::Gateway(entry) => {
                let authority = named.ok_or(ProxyError::NoAuthority)?;
                return Ok(Named {
                    host: authority.host().trim_end_matches('.').to_ascii_lowercase(),
                    port: entry.listener.port,
                    authority,
                    dest: entry.listener.dest.clone(),
                });
            }
            Via::Explicit => {
                let authority = named.ok_or(ProxyError::NoAuthority)?;
                let (host, port) = host_port(&authority, uri);
                let dest = self.resolve(&host, port).await?;
                return Ok(Named {
                    authority,
                    host,
                    port,
                    dest,
                });
            }
        };
        // Redirected: the address the app dialled decides, never its Host
        // header. A service's virtual IP or a mesh pod routes as that
        // service; any other address is called as itself. (Letting Host
        // choose would let an app whose SSRF filter allowed a public IP
        // reach an internal service under the app's identity.)
        let authority = match named {
            Some(a) => a,
            None => dst.to_string().parse().expect("a socket address is an authority"),
        };
        Ok(Named {
            authority,
            host: dst.ip().to_string(),
            port: dst.port(),
            dest: self.resolve_addr(dst).await?,
        })
    }

    /// The destination `host:port` names; none is an error.
    pub(super) async fn resolve(&self, host: &str, port: u16) -> Result<Arc<Destination>, ProxyError> {
        self.discover.resolve(host, port).await.map_err(|e| {
            let target = crate::discover::target(host, port);
            match e {
                Unresolved::Unknown => ProxyError::NoEndpoints(target),
                Unresolved::Pending => ProxyError::DiscoveryUnavailable(target),
            }
        })
    }

    /// The destination behind an original `ip:port`: a meshed endpoint (or
    /// service) when discovery knows it, else the address itself, unmeshed.
    /// While discovery has not answered, nothing: the address may be a
    /// meshed endpoint that must not be called in plaintext.
    pub(super) async fn resolve_addr(&self, dst: SocketAddr) -> Result<Arc<Destination>, ProxyError> {
        match self.discover.resolve(&dst.ip().to_string(), dst.port()).await {
            Ok(d) if !d.endpoints.is_empty() => Ok(d),
            Err(Unresolved::Pending) => Err(ProxyError::DiscoveryUnavailable(dst.to_string())),
            Ok(_) | Err(Unresolved::Unknown) => {
                let mut d =
                    Destination::from_endpoints(EXTERNAL_SERVICE, Arc::from([Endpoint::unmeshed(dst)]));
                d.meshed = false;
                Ok(Arc::new(d))
            }
        }
    }
}
