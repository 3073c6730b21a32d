//! `weft-control`: Weft's control plane.
//!
//! Start at [`app`]. Sources feed one [`index::Index`]: today the
//! [`files`] source (Kubernetes-style YAML documents, hot-reloaded); the
//! Kubernetes API joins later as a second source. The [`grpc`] services
//! publish from the index to the proxies. Documents and their validation
//! live in [`model`]. [`inject`] is the sidecar injection (a pure
//! mutation of a pod), served to the API server by the admission webhook.
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
pub mod webhook;
