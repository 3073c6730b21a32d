//! Transparent interception, outbound: connections that iptables
//! redirected to the outbound listener (`weft-proxy init`) carry the
//! address the app meant to reach ([`crate::orig_dst`]).
//!
//! - HTTP goes where its authority says when the mesh knows that name;
//!   otherwise (no `Host`, or a name the mesh does not know) to the
//!   original destination, looked up by `ip:port`.
//! - Anything else (opaque, TLS from the app, server-speaks-first ports,
//!   which skip detection) is forwarded as bytes to the original
//!   destination: through the peer's proxy (`WEFT-TCP/1`, mTLS) when
//!   discovery knows the address as a meshed endpoint, else straight to it
//!   (`protocol="passthrough"` in the TCP metrics).

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Outbound;
use crate::client::BoxIo;
use crate::config::SERVER_FIRST_PORTS;
use crate::control::EXTERNAL_SERVICE;
use crate::discover::{Destination, Endpoint};
use crate::errors::ProxyError;
use crate::http::host_port;
use crate::tcp;
use crate::telemetry::ConnectionObservation;

/// The TCP metrics' `protocol` for bytes forwarded to an original
/// destination the mesh does not know: no mTLS, no mesh features.
pub const PASSTHROUGH: &str = "passthrough";

/// How the outbound side treats redirected connections.
#[derive(Debug, Clone)]
pub struct Interception {
    /// Original destination ports that skip protocol detection: the
    /// server-speaks-first list and the config's `opaquePorts`.
    pub opaque_ports: Arc<[u16]>,
}

impl Default for Interception {
    fn default() -> Self {
        Self {
            opaque_ports: SERVER_FIRST_PORTS.into(),
        }
    }
}

impl Interception {
    pub fn from_config(config: &crate::Config) -> Self {
        let mut ports: Vec<u16> = SERVER_FIRST_PORTS.to_vec();
        ports.extend(&config.opaque_ports);
        ports.sort_unstable();
        ports.dedup();
        Self {
            opaque_ports: ports.into(),
        }
    }

    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }
}

impl Outbound {
    /// Where a request with authority `named` and `uri` goes:
    /// `(authority, host, port, destination)`. Without an original
    /// destination the request must name one.
    pub(super) async fn destination(
        &self,
        named: Option<Authority>,
        uri: &Uri,
        orig_dst: Option<SocketAddr>,
    ) -> Result<(Authority, String, u16, Arc<Destination>), ProxyError> {
        let Some(dst) = orig_dst else {
            let authority = named.ok_or(ProxyError::NoAuthority)?;
            let (host, port) = host_port(&authority, uri);
            let dest = self.resolve(&host, port).await?;
            return Ok((authority, host, port, dest));
        };
        if let Some(authority) = &named {
            let (host, port) = host_port(authority, uri);
            if let Some(dest) = self.discover.resolve(&host, port).await.filter(|d| d.meshed) {
                return Ok((authority.clone(), host, port, dest));
            }
        }
        // No name, or one the mesh does not know: what the app connected
        // to. The app's Host header (if any) travels unchanged.
        let authority = match named {
            Some(a) => a,
            None => dst.to_string().parse().expect("a socket address is an authority"),
        };
        Ok((
            authority,
            dst.ip().to_string(),
            dst.port(),
            self.resolve_addr(dst).await,
        ))
    }

    /// The destination behind an original `ip:port`: a meshed endpoint (or
    /// service) when discovery knows it, else the address itself, unmeshed.
    async fn resolve_addr(&self, dst: SocketAddr) -> Arc<Destination> {
        match self.discover.resolve(&dst.ip().to_string(), dst.port()).await {
            Some(d) if !d.endpoints.is_empty() => d,
            _ => {
                let mut d =
                    Destination::from_endpoints(EXTERNAL_SERVICE, Arc::from([Endpoint::unmeshed(dst)]));
                d.meshed = false;
                Arc::new(d)
            }
        }
    }

    /// Forwards a redirected non-HTTP connection to its original
    /// destination, until both sides are done.
    pub(super) async fn forward<I>(&self, io: I, dst: SocketAddr, guard: &mut ConnectionObservation)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let dest = self.resolve_addr(dst).await;
        // Balanced per connection, like every TCP stream.
        let endpoint = match super::pick(&dest, None) {
            Ok((e, _probe)) => e,
            Err(e) => {
                guard.detected("opaque");
                tracing::info!(%dst, error = %e, "outbound TCP has nowhere to go; closing");
                return;
            }
        };
        let upstream: Result<BoxIo, ProxyError> = match endpoint.proxy {
            Some(peer) => {
                guard.detected("opaque");
                tcp::connect_mesh(
                    &self.clients,
                    peer,
                    endpoint.identity.as_deref(),
                    endpoint.addr.port(),
                )
                .await
            }
            None => {
                guard.detected(PASSTHROUGH);
                self.clients
                    .connect(endpoint.addr)
                    .await
                    .map(|s| Box::new(s) as BoxIo)
            }
        };
        match upstream {
            Ok(upstream) => {
                tracing::debug!(%dst, via = ?endpoint.proxy, service = %dest.service, "forwarding outbound TCP");
                tcp::splice(io, upstream).await;
            }
            Err(e) => tracing::info!(%dst, error = %e, "outbound TCP could not connect; closing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_first_and_configured_ports_skip_detection() {
        let config = crate::Config {
            opaque_ports: vec![1883],
            ..crate::Config::default()
        };
        let i = Interception::from_config(&config);
        assert!(i.is_opaque_port(1883) && i.is_opaque_port(5432) && i.is_opaque_port(25));
        assert!(!i.is_opaque_port(8080));
    }
}
