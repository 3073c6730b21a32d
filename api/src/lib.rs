//! `weft-api`: the only contract between the control plane and the proxies.
//!
//! The protos live in `proto/weft/v1/` (start with `destination.proto`);
//! this crate compiles them with protox (no system `protoc`) into tonic
//! clients and servers:
//!
//! - `Destination.Watch`: endpoints and client policy of one destination;
//! - `Inbound.Watch`: server policy of one workload port;
//! - `Identity.Certify`: workload certificates.

pub mod exposition;

/// Package `weft.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weft.v1");
}
