//! `weft-proxy`: the Weft data plane, the proxy beside every workload.
//!
//! Start reading at [`app`]: [`app::Proxy::bind`] builds the proxy from its
//! [`config::Config`] and [`app::Proxy::run`] serves until shutdown, then
//! drains. One request's path:
//!
//! ```text
//! app ─► outbound listener ─► detect ─► lookup ─► route ─► call/tries ─► client (HTTP/2 pool) ═► peer inbound ─► authorize ─► app
//!        outbound/listen.rs   detect.rs  lookup.rs route.rs call.rs       client.rs                inbound.rs     policy.rs
//! ```
//!
//! [`outbound`]'s module doc lists its stages and the value each hands on.
//!
//! Errors are mapped to responses in one place ([`errors`]); every response
//! the proxy makes up itself carries `weft-error`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_merge;
pub mod app;
pub mod bounds;
pub mod client;
pub mod config;
pub mod control;
pub mod detect;
pub mod discover;
pub mod drain;
pub mod errors;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod readiness;
pub mod resilience;
pub mod routes;
pub mod server;
pub mod tcp;
pub mod telemetry;
pub mod upstreams;

pub use app::{run_cli, Addrs, Proxy};
pub use config::Config;
