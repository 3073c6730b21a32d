//! `weft-control`: Weft's control plane.
//!
//! Start at [`app`]. Sources feed one [`index::Index`]: the [`files`]
//! source (Kubernetes-style YAML documents, hot-reloaded) and, with
//! `--kubernetes`, the cluster source in [`kubernetes`] (which also holds
//! the CRDs and TokenReview). The [`grpc`] services publish from the index
//! to the proxies, and [`identity`] signs their certificates. Documents and
//! their validation live in [`model`]. [`inject`] is the sidecar injection
//! (a pure mutation of a pod), served to the API server by the admission
//! [`webhook`]. [`tls`] is the gRPC listener's TLS and who is calling.
#![forbid(unsafe_code)]

pub mod app;
pub mod files;
pub mod grpc;
pub mod identity;
pub mod index;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod model;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod webhook;
