//! One try at one endpoint, behind a small trait: the connection pool
//! ([`Clients`]) implements it for real, and the try loop's tests
//! ([`super::call`]) script a fake under paused time.

use std::future::Future;

use http::uri::Authority;
use http::{Request, Response, Version};

use crate::client::Clients;
use crate::discover::Endpoint;
use crate::errors::ProxyError;
use crate::http::{absolute_uri, incoming, AppProtocol, Body, WEFT_PORT, WEFT_PROTO, WEFT_SOURCE_WORKLOAD};

/// Sends requests to endpoints.
pub trait Upstream: Send + Sync {
    /// Makes sure a connection to `endpoint` is up, when requests to it
    /// travel over a pooled HTTP/2 connection (meshed endpoints, and apps
    /// speaking HTTP/2). An error here leaves the request unsent, so it
    /// can always be sent elsewhere.
    fn ready(
        &self,
        endpoint: &Endpoint,
        app: AppProtocol,
    ) -> impl Future<Output = Result<(), ProxyError>> + Send;

    /// Sends the request (hop-by-hop headers already removed) and returns
    /// the response head.
    fn send(
        &self,
        endpoint: &Endpoint,
        app: AppProtocol,
        authority: &Authority,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send;

    /// Whether requests to `endpoint` travel over mTLS, for telemetry.
    fn sends_mtls(&self, endpoint: &Endpoint) -> bool;
}

/// The address a try connects to: the endpoint's proxy when it is meshed.
pub fn dialled(endpoint: &Endpoint) -> std::net::SocketAddr {
    endpoint.proxy.unwrap_or(endpoint.addr)
}

impl Upstream for Clients {
    async fn ready(&self, endpoint: &Endpoint, app: AppProtocol) -> Result<(), ProxyError> {
        let pooled = endpoint
            .proxy
            .or((app == AppProtocol::Http2).then_some(endpoint.addr));
        match pooled {
            Some(peer) => {
                let identity = endpoint.proxy.and(endpoint.identity.as_deref());
                self.ready_h2(peer, identity).await
            }
            None => Ok(()),
        }
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        app: AppProtocol,
        authority: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let rsp = match endpoint.proxy {
            Some(peer) => {
                // Over the mesh: always HTTP/2, with the app's protocol and
                // port for the far proxy.
                let headers = req.headers_mut();
                headers.insert(WEFT_PROTO, app.header_value());
                headers.insert(WEFT_PORT, endpoint.addr.port().into());
                match &self.source_workload {
                    Some(me) => headers.insert(WEFT_SOURCE_WORKLOAD, me.clone()),
                    None => headers.remove(WEFT_SOURCE_WORKLOAD),
                };
                *req.uri_mut() = absolute_uri(authority, req.uri());
                *req.version_mut() = Version::HTTP_2;
                self.send_h2(peer, endpoint.identity.as_deref(), req).await?
            }
            None => match app {
                AppProtocol::Http2 => {
                    *req.uri_mut() = absolute_uri(authority, req.uri());
                    self.send_h2(endpoint.addr, None, req).await?
                }
                AppProtocol::Http1 => {
                    if !req.headers().contains_key(http::header::HOST) {
                        req.headers_mut().insert(
                            http::header::HOST,
                            authority.as_str().parse().expect("authority is a valid header"),
                        );
                    }
                    self.send_h1(endpoint.addr, req).await?
                }
            },
        };
        Ok(rsp.map(incoming))
    }

    fn sends_mtls(&self, endpoint: &Endpoint) -> bool {
        endpoint.proxy.is_some() && self.uses_tls(endpoint.identity.as_deref())
    }
}
