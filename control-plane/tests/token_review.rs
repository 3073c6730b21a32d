//! TokenReview against the in-test API server of `common/` (`FakeApi`):
//! accepted reviews cached within the token's life, refusals never, the
//! metrics of both, and the round trip deciding `Identity.Certify`.

mod common;

use std::sync::Arc;

use common::*;
use weft_control::kubernetes::TokenReviewer;
use weft_control::metrics::ControlMetrics;
/// A JWT-shaped token expiring at `exp` (seconds since the epoch).
fn jwt(exp: u64, sub: &str) -> String {
    use base64::Engine as _;
    let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.signature",
        enc(r#"{"alg":"RS256","kid":"k1"}"#),
        enc(&format!(r#"{{"aud":["weft"],"exp":{exp},"sub":"{sub}"}}"#))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_reviews_are_cached_within_the_tokens_life_refusals_never() {
    let api = FakeApi::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (long, expired) = (
        jwt(now + 3600, "system:serviceaccount:shop:api-sa"),
        jwt(now - 1, "system:serviceaccount:shop:api-sa"),
    );
    for t in [&long, &expired, &"opaque-token-0123456789".to_string()] {
        api.state
            .lock()
            .unwrap()
            .tokens
            .insert(t.clone(), "system:serviceaccount:shop:api-sa".into());
    }
    let metrics = Arc::new(ControlMetrics::default());
    let reviewer = TokenReviewer::new(api.client(), metrics.clone());
    let reviews = || api.state.lock().unwrap().reviews;
    let counted = |result| {
        metrics
            .token_reviews
            .get_or_create(&weft_control::metrics::ReviewLabels { result })
            .get()
    };
    for _ in 0..5 {
        assert_eq!(
            reviewer.review(&long).await.unwrap(),
            ("shop".to_string(), "api-sa".to_string())
        );
    }
    assert_eq!(reviews(), 1, "a fleet renewing does not cost one review each");
    // Past its exp (the API server would say so) or without a readable
    // exp: reviewed every time.
    for token in [&expired, &"opaque-token-0123456789".to_string()] {
        let before = reviews();
        reviewer.review(token).await.unwrap();
        reviewer.review(token).await.unwrap();
        assert_eq!(reviews(), before + 2, "{token}");
    }
    // Refusals are never cached.
    let before = reviews();
    for _ in 0..3 {
        assert!(reviewer.review(&jwt(now + 3600, "forged")).await.is_err());
    }
    assert_eq!(reviews(), before + 3);

    // The metrics tell the same story: 5 calls made and accepted, 4 hits,
    // 3 refusals; and an API server that cannot be reached is an error.
    assert_eq!(
        (
            counted("authenticated"),
            counted("cache_hit"),
            counted("rejected")
        ),
        (5, 4, 3)
    );
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("weft_control_token_review_duration_seconds_count 8\n"),
        "only calls made are timed:\n{text}"
    );
    let nobody = kube::Config::new(format!("http://{}", free_port()).parse().unwrap());
    let gone = TokenReviewer::new(kube::Client::try_from(nobody).unwrap(), metrics.clone());
    assert!(matches!(
        gone.review(&jwt(now + 60, "system:serviceaccount:shop:other"))
            .await,
        Err(weft_control::identity::Refusal::Unavailable(_))
    ));
    assert_eq!(counted("error"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_round_trip_decides_certify() {
    let api = FakeApi::start().await;
    api.state.lock().unwrap().tokens.insert(
        "eyJhbGciOiJSUzI1NiJ9.good".into(),
        "system:serviceaccount:shop:api-sa".into(),
    );
    let reviewer = TokenReviewer::new(api.client(), Default::default());
    assert_eq!(
        reviewer.review("eyJhbGciOiJSUzI1NiJ9.good").await.unwrap(),
        ("shop".to_string(), "api-sa".to_string())
    );
    assert_eq!(
        reviewer.review("forged").await.unwrap_err(),
        weft_control::identity::Refusal::BadToken
    );

    // Through the Identity service: the accepted token gets a certificate
    // for its own identity only; the rejected one gets nothing.
    use weft_api::v1::identity_server::Identity;
    let svc = weft_control::grpc::IdentityService {
        ca: Arc::new(weft_control::identity::Ca::generate("cluster.local").unwrap()),
        metrics: Arc::new(ControlMetrics::default()),
        token_review: Some(reviewer),
    };
    let id = "spiffe://cluster.local/ns/shop/sa/api-sa";
    let csr = |identity: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    let ask = |token: &str, identity: &str| weft_api::v1::CertifyRequest {
        identity: identity.into(),
        csr: csr(identity),
        token: token.into(),
    };
    let ok = svc
        .certify(tonic::Request::new(ask("eyJhbGciOiJSUzI1NiJ9.good", id)))
        .await
        .unwrap();
    assert!(!ok.into_inner().certificate.is_empty());
    let refused = svc
        .certify(tonic::Request::new(ask("forged", id)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let other = "spiffe://cluster.local/ns/shop/sa/admin";
    let refused = svc
        .certify(tonic::Request::new(ask("eyJhbGciOiJSUzI1NiJ9.good", other)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}
