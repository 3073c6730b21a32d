//! Upstream listeners: local ports each bound to one destination
//! (`--upstream 127.0.0.1:9191=db.shop:5432`). HTTP/1 and HTTP/2 are
//! detected and go through the same stages as on the outbound listener
//! (routes, retries, breaker, metrics, mTLS), to the bound service
//! whatever the request names; anything else is carried as TCP over mTLS
//! to the service's proxies, balanced per connection. A port in the
//! server-speaks-first list or `opaquePorts`, or a destination port its
//! MeshService declares `protocol: tcp`, skips detection, so the server's
//! banner arrives at once.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::lookup::Via;
use super::Outbound;
use crate::bounds::{Admission, Admitted};
use crate::config::UpstreamListener;
use crate::detect::detect;
use crate::listener::Listener;
use crate::metrics::Direction;
use crate::server::accept_loop;

impl Outbound {
    /// Accepts on an upstream listener until the drain starts.
    pub async fn serve_upstream(self: Arc<Self>, listener: Listener, upstream: UpstreamListener) {
        let drain = self.drain.clone();
        let admission = Admission::new(self.limits.max_connections);
        let limits = self.limits.clone();
        let upstream = Arc::new(upstream);
        accept_loop(listener, &drain, &admission, &limits, move |stream, peer| {
            self.clone().bound_connection(stream, peer, upstream.clone())
        })
        .await;
    }

    async fn bound_connection(
        self: Arc<Self>,
        stream: Admitted<TcpStream>,
        peer: SocketAddr,
        upstream: Arc<UpstreamListener>,
    ) {
        let _ = stream.get_ref().set_nodelay(true);
        let guard = self.telemetry.connection(Direction::Outbound, peer);
        let what = crate::discover::target(&upstream.service, upstream.port);
        let declared_tcp = || async {
            let dest = self.resolve(&upstream.service, upstream.port).await;
            dest.as_ref().is_ok_and(|d| d.opaque).then_some(dest)
        };
        let known_opaque = if self.interception.is_opaque_port(upstream.port) {
            Some(self.resolve(&upstream.service, upstream.port).await)
        } else {
            declared_tcp().await
        };
        if let Some(dest) = known_opaque {
            // Server-speaks-first: nothing to detect.
            let io = guard.meter(stream);
            return self.forward_to(io, dest, upstream.port, &what, guard).await;
        }
        let mut guard = guard;
        let (protocol, io) = match detect(guard.meter(stream), self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upstream listener: detection failed");
                return;
            }
        };
        let Some(app) = protocol.http() else {
            let dest = self.resolve(&upstream.service, upstream.port).await;
            return self.forward_to(io, dest, upstream.port, &what, guard).await;
        };
        guard.detected(app.into());
        self.serve_requests(io, app, Via::Bound(upstream)).await;
    }
}
