//! `weft-api`: the only contract between the control plane and the proxies.
//!
//! The protos live in `proto/weft/v1/` (start with `destination.proto`);
//! this crate compiles them with protox (no system `protoc`) into tonic
//! clients and servers:
//!
//! - `Destination.Watch`: endpoints and client policy of one destination;
//! - `Inbound.Watch`: server policy of one workload port;
//! - `Identity.Certify`: workload certificates;
//! - `Gateway.Watch`: the listeners and routes of an edge gateway.

pub mod exposition;
pub mod init_args;

/// Package `weft.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weft.v1");
}

/// gRPC status codes by the names policies use (`unavailable`,
/// `resource-exhausted`; also `UNAVAILABLE`, `RESOURCE_EXHAUSTED`) or by
/// number.
pub fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "ok",
        "cancelled",
        "unknown",
        "invalid-argument",
        "deadline-exceeded",
        "not-found",
        "already-exists",
        "permission-denied",
        "resource-exhausted",
        "failed-precondition",
        "aborted",
        "out-of-range",
        "unimplemented",
        "internal",
        "unavailable",
        "data-loss",
        "unauthenticated",
    ];
    if let Ok(n) = name.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    let norm = name.trim().to_ascii_lowercase().replace('_', "-");
    NAMES.iter().position(|n| *n == norm).map(|i| i as u32)
}
