//! The outbound side: what the local app sends out.
//!
//! Apps reach the outbound listener explicitly, as an HTTP proxy
//! (absolute-form URIs, `CONNECT host:port`) or by naming the service in
//! `Host` / `:authority`, or transparently (iptables from `weft-proxy
//! init`, the original destination read from the socket). One request
//! passes these stages, each in its own file and each handing the next a
//! named value:
//!
//! ```text
//! listen.rs   accept, detect → one HTTP request (or opaque TCP → tunnel.rs)
//! lookup.rs   the authority it names (or the original destination) → Named
//! route.rs    Named + request → Plan (route, backend, timeouts, filters);
//!             applies the request's filters, no I/O
//! mirror.rs   RequestMirror: a copy of the request, its body teed, sent
//!             on the side
//! call.rs     Plan's destination → Call: deadline, fault, bulkhead, then tries:
//!               pick → one try (upstream.rs) → verdict.rs judges → retry?
//! upstream.rs one try at one endpoint: the `Upstream` trait, which the
//!             connection pool implements
//! tunnel.rs   CONNECT, upgrades and redirected TCP: one connect-to-endpoint
//! bound.rs    upstream listeners: a local port bound to one destination,
//!             HTTP through the stages above, anything else as TCP
//! ```
//!
//! The order of the resilience mechanisms is explained in
//! docs/resilience.md.

use std::sync::Arc;

use crate::client::Clients;
use crate::config::Interception;
use crate::discover::Discover;
use crate::drain;
use crate::server::Limits;
use crate::telemetry::Telemetry;

mod bound;
pub mod call;
mod listen;
pub mod lookup;
mod mirror;
pub mod route;
mod tunnel;
pub mod upstream;
pub mod verdict;

#[cfg(test)]
mod call_tests;

/// The outbound side of one proxy: what every outbound connection and
/// request shares.
pub struct Outbound {
    pub discover: Arc<dyn Discover>,
    pub clients: Clients,
    pub telemetry: Arc<Telemetry>,
    pub limits: Limits,
    pub detect_timeout: std::time::Duration,
    pub drain: drain::Watch,
    /// Redirected connections (`weft-proxy init`).
    pub interception: Interception,
}
