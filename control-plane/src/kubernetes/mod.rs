//! Weft on Kubernetes, control-plane side: the CRDs ([`crds`]), the
//! cluster source feeding the index ([`source`], [`convert`]),
//! TokenReview-based workload identity ([`token_review`], with a bounded
//! cache of accepted reviews: [`review_cache`]) and the trust
//! anchors published into every namespace for injected pods to mount
//! ([`trust_anchors`]).
//!
//! No API server runs on the machines this is developed and tested on: the
//! code is tested against an in-test server speaking the API's list/watch
//! protocol with realistic JSON (`control-plane/tests/common/`, used by
//! `tests/kubernetes.rs` and `tests/trust_anchors.rs`).

pub mod convert;
pub mod crds;
pub mod review_cache;
pub mod source;
pub mod token_review;
pub mod trust_anchors;

pub use source::KubernetesSource;
pub use token_review::TokenReviewer;
pub use trust_anchors::TrustAnchorPublisher;

/// A client from the environment: in-cluster service-account credentials,
/// or `KUBECONFIG` / `~/.kube/config`.
pub async fn client() -> Result<kube::Client, String> {
    kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}"))
}
