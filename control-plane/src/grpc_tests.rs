//! Tests of `grpc.rs`.

use super::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn found(version: u64, eps: &[&str], lb: i32) -> DestinationState {
    DestinationState {
        version,
        view: DestinationView::Found {
            service: api::ServiceRef {
                name: "web".into(),
                namespace: "demo".into(),
                port: 80,
                protocol: "http".into(),
            },
            endpoints: eps
                .iter()
                .map(|a| {
                    (
                        a.to_string(),
                        api::Endpoint {
                            address: a.to_string(),
                            weight: 1,
                            ..Default::default()
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            policy: api::ClientPolicy {
                load_balancer: lb,
                ..Default::default()
            },
        },
    }
}

fn kinds(u: &[api::DestinationUpdate]) -> Vec<&'static str> {
    u.iter().map(|u| kind_name(u.kind.as_ref().unwrap())).collect()
}

fn unsynced_index() -> Arc<Index> {
    Index::new(crate::index::IndexConfig {
        sources: vec!["files".into()],
        ..Default::default()
    })
}

/// A request as a proxy with the mesh certificate of `ns`/`sa` sends it.
fn from<T>(ns: &str, sa: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(crate::tls::Peer {
        remote: "10.1.2.3:40000".parse().unwrap(),
        identity: Some(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")),
    });
    request
}

fn services(
    index: &Arc<Index>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> (InboundService, DestinationService) {
    let metrics = Arc::new(ControlMetrics::default());
    let inbound = InboundService {
        index: index.clone(),
        trust_domain: "cluster.local".into(),
        metrics: metrics.clone(),
        closing: closing.clone(),
    };
    let destinations = DestinationService {
        index: index.clone(),
        trust_domain: "cluster.local".into(),
        metrics,
        proxies: Arc::default(),
        closing,
    };
    (inbound, destinations)
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> tonic::Code {
    r.expect_err("refused").code()
}

#[tokio::test(start_paused = true)]
async fn callers_see_only_what_their_identity_may() {
    use api::destination_server::Destination;
    use api::inbound_server::Inbound;
    use tokio_stream::StreamExt;
    let index = unsynced_index();
    index.apply("files", crate::testing::documents(POLICY));
    let (_closing_tx, closing) = tokio::sync::watch::channel(false);
    let (inbound, destinations) = services(&index, closing);
    let ask = |workload: &str| api::InboundRequest {
        workload: workload.into(),
        port: 8080,
        ..Default::default()
    };
    // No client certificate: nothing but Certify is served.
    assert_eq!(
        code(inbound.watch(Request::new(ask("shop/api"))).await),
        tonic::Code::Unauthenticated
    );
    let mut anonymous = Request::new(ask("shop/api"));
    anonymous.extensions_mut().insert(crate::tls::Peer {
        remote: "10.1.2.3:1".parse().unwrap(),
        identity: None,
    });
    assert_eq!(code(inbound.watch(anonymous).await), tonic::Code::Unauthenticated);
    // Another trust domain.
    let mut foreign = Request::new(ask("shop/api"));
    foreign.extensions_mut().insert(crate::tls::Peer {
        remote: "10.1.2.3:1".parse().unwrap(),
        identity: Some("spiffe://evil.example/ns/shop/sa/api".into()),
    });
    assert_eq!(code(inbound.watch(foreign).await), tonic::Code::PermissionDenied);
    // Another namespace's workload, refused at once.
    assert_eq!(
        code(inbound.watch(from("web", "api", ask("shop/api"))).await),
        tonic::Code::PermissionDenied
    );
    // Another service account's workload in the same namespace: refused
    // in the stream (once the index says who runs what).
    let mut stream = inbound
        .watch(from("shop", "db", ask("shop/api")))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap();
    assert_eq!(code(first), tonic::Code::PermissionDenied);
    // Its own: served.
    let mut own = inbound
        .watch(from("shop", "api", ask("shop/api")))
        .await
        .unwrap()
        .into_inner();
    assert!(!own.next().await.unwrap().unwrap().default_allow);

    // Destinations resolve in the caller's namespace, whatever it says.
    let asks_for = |ns: &str| api::DestinationRequest {
        target: "api:80".into(),
        namespace: ns.into(),
        proxy_id: "p-1".into(),
        admin_address: "0.0.0.0:4191".into(),
        proxy_version: String::new(),
    };
    assert_eq!(
        code(destinations.watch(from("web", "default", asks_for("shop"))).await),
        tonic::Code::PermissionDenied
    );
    let mut updates = destinations
        .watch(from("shop", "default", asks_for("")))
        .await
        .unwrap()
        .into_inner();
    let snapshot = updates.next().await.unwrap().unwrap();
    assert_eq!(kinds(&[snapshot]), ["snapshot"], "api:80 resolved in shop");
    // Registry entries are keyed by identity: the same proxy id from
    // another workload is a second entry, not an overwrite.
    let _other = destinations
        .watch(from(
            "web",
            "default",
            api::DestinationRequest {
                admin_address: "10.9.9.9:1".into(),
                ..asks_for("web")
            },
        ))
        .await
        .unwrap();
    let mut list = destinations.proxies.list();
    list.sort_by(|a, b| a.identity.cmp(&b.identity));
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].identity, "spiffe://cluster.local/ns/shop/sa/default");
    assert_eq!(list[0].admin, "10.1.2.3:4191");
    assert_eq!(list[1].admin, "10.9.9.9:1");
}

#[tokio::test]
async fn oversized_fields_are_invalid_arguments() {
    use api::destination_server::Destination;
    let index = unsynced_index();
    let (_closing_tx, closing) = tokio::sync::watch::channel(false);
    let (_, destinations) = services(&index, closing);
    let huge = api::DestinationRequest {
        target: "api:80".into(),
        proxy_id: "x".repeat(4 * 1024 * 1024),
        ..Default::default()
    };
    let status = destinations
        .watch(from("shop", "default", huge))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("proxy_id: expected at most 253 bytes"),
        "{}",
        status.message()
    );
    let spaced = api::DestinationRequest {
        target: "api:80".into(),
        proxy_id: "a b".into(),
        ..Default::default()
    };
    assert_eq!(
        code(destinations.watch(from("shop", "default", spaced)).await),
        tonic::Code::InvalidArgument
    );
    assert!(destinations.proxies.list().is_empty());
    let made_up = api::DestinationRequest {
        target: "api:80".into(),
        proxy_id: "p".into(),
        proxy_version: "1.0\n# HELP".into(),
        ..Default::default()
    };
    assert_eq!(
        code(destinations.watch(from("shop", "default", made_up)).await),
        tonic::Code::InvalidArgument
    );
}

#[test]
fn connected_proxies_are_counted_by_version_and_bounded() {
    let metrics = Arc::new(ControlMetrics::default());
    let proxies = Arc::new(Proxies::new(metrics.clone()));
    let gauge = |v: &str| {
        metrics
            .connected_proxies
            .get_or_create(&crate::metrics::VersionLabels { version: v.into() })
            .get()
    };
    let join = |id: &str, version: &str| {
        proxies.register(
            "spiffe://t/ns/a/sa/b".into(),
            id.into(),
            "10.0.0.1:4191".into(),
            version.into(),
        )
    };
    let a = join("a", "0.1.0");
    let b = join("b", "0.1.0");
    let b_again = join("b", "0.1.0");
    let old = join("c", "");
    assert_eq!(
        (gauge("0.1.0"), gauge("unknown")),
        (2, 1),
        "one proxy, two streams, counts once"
    );
    assert_eq!(proxies.list()[0].version, "0.1.0");
    drop((a, b));
    assert_eq!(gauge("0.1.0"), 1, "b still has a stream");
    drop(b_again);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let text = || {
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, &registry).unwrap();
        t
    };
    assert!(
        !text().contains("weft_control_connected_proxies{version=\"0.1.0\"}"),
        "a version nobody runs goes away:\n{}",
        text()
    );
    // Made-up versions beyond MAX_VERSIONS share one series.
    let many: Vec<_> = (0..40)
        .map(|i| join(&format!("m{i}"), &format!("9.{i}.0")))
        .collect();
    let series = text()
        .lines()
        .filter(|l| l.starts_with("weft_control_connected_proxies{"))
        .count();
    assert_eq!(series, crate::metrics::MAX_VERSIONS + 1, "{}", text());
    assert!(gauge("other") > 0);
    drop((many, old));
    assert!(!text().contains("weft_control_connected_proxies{"), "{}", text());
}

const POLICY: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: api, namespace: shop}\nspec:\n  endpoints: [{address: 10.0.0.7:8080, proxy: 10.0.0.7:4143}]\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: api, namespace: shop}\nspec:\n  targetRef: {name: api}\n  rules: [{from: {namespaces: [web]}}]\n";

#[tokio::test(start_paused = true)]
async fn watches_answer_only_after_sync() {
    use api::destination_server::Destination;
    use api::inbound_server::Inbound;
    use tokio_stream::StreamExt;
    let index = unsynced_index();
    let (_closing_tx, closing) = tokio::sync::watch::channel(false);
    let (inbound, destinations) = services(&index, closing);
    let mut policies = inbound
        .watch(from(
            "shop",
            "api",
            api::InboundRequest {
                workload: "shop/api".into(),
                port: 8080,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut updates = destinations
        .watch(from(
            "web",
            "default",
            api::DestinationRequest {
                target: "api.shop:80".into(),
                namespace: "web".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Unsynced (an empty index would say allow-all / NotFound): silence.
    let wait = Duration::from_secs(30);
    assert!(tokio::time::timeout(wait, policies.next()).await.is_err());
    assert!(tokio::time::timeout(wait, updates.next()).await.is_err());

    index.apply("files", crate::testing::documents(POLICY));
    let policy = tokio::time::timeout(wait, policies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!policy.default_allow, "the real policy, not allow-all");
    assert_eq!(policy.rules[0].namespaces, ["web"]);
    let first = tokio::time::timeout(wait, updates.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(kinds(&[first]), ["snapshot"]);
}

#[test]
fn first_message_is_a_snapshot_then_increments() {
    let v1 = found(1, &["a:1", "b:1"], 0);
    assert_eq!(kinds(&updates_between(None, &v1)), ["snapshot"]);
    let v2 = found(2, &["b:1", "c:1"], 2);
    let u = updates_between(Some(&v1), &v2);
    assert_eq!(kinds(&u), ["removed", "added", "policy"]);
    let Some(Kind::Removed(r)) = &u[0].kind else {
        panic!()
    };
    assert_eq!(r.addresses, ["a:1"]);
    let Some(Kind::Added(a)) = &u[1].kind else {
        panic!()
    };
    assert_eq!(a.endpoints[0].address, "c:1");
}

#[test]
fn skipped_versions_get_a_fresh_snapshot() {
    let v1 = found(1, &["a:1"], 0);
    let v5 = found(5, &["b:1"], 0);
    assert_eq!(kinds(&updates_between(Some(&v1), &v5)), ["snapshot"]);
    let gone = DestinationState {
        version: 6,
        view: DestinationView::NotFound,
    };
    assert_eq!(kinds(&updates_between(Some(&v5), &gone)), ["not_found"]);
    assert!(updates_between(
        Some(&gone),
        &DestinationState {
            version: 7,
            view: DestinationView::NotFound
        }
    )
    .is_empty());
}
