use super::*;
use crate::model::{Metadata, WorkloadSpec};
use crate::testing::documents;

fn service(name: &str, addrs: &[&str]) -> String {
    let eps: String = addrs
        .iter()
        .map(|a| format!("    - address: {a}\n      proxy: 127.0.0.1:4143\n"))
        .collect();
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  endpoints:\n{eps}---\n"
    )
}

fn endpoints(state: &DestinationState) -> Vec<String> {
    match &state.view {
        DestinationView::Found { endpoints, .. } => endpoints.keys().cloned().collect(),
        DestinationView::NotFound => panic!("not found"),
    }
}

#[test]
fn target_names_resolve_like_kubernetes_dns() {
    let index = Index::new(IndexConfig::default());
    let svc = |ns: &str, name: &str, port| {
        Some(Target::Service {
            namespace: ns.into(),
            name: name.into(),
            port,
        })
    };
    assert_eq!(index.parse_target("web", "demo"), svc("demo", "web", 80));
    assert_eq!(index.parse_target("web:8080", "demo"), svc("demo", "web", 8080));
    assert_eq!(index.parse_target("web.prod", "demo"), svc("prod", "web", 80));
    assert_eq!(
        index.parse_target("web.prod.svc.cluster.local:9", "demo"),
        svc("prod", "web", 9)
    );
    assert_eq!(
        index.parse_target("10.0.0.1:80", "demo"),
        Some(Target::Address("10.0.0.1:80".parse().unwrap()))
    );
    assert_eq!(index.parse_target("www.example.com.au", "demo"), None);
}

#[tokio::test]
async fn watchers_see_endpoints_come_and_go() {
    let index = Index::new(IndexConfig::default());
    let target = index.parse_target("backend", "demo").unwrap();
    let mut rx = index.watch_destination(target, "demo");
    assert_eq!(rx.borrow_and_update().view, DestinationView::NotFound);

    index.apply(
        "files",
        documents(&service("backend", &["127.0.0.1:1", "127.0.0.1:2"])),
    );
    assert!(rx.has_changed().unwrap());
    let state = rx.borrow_and_update().clone();
    assert_eq!(endpoints(&state), ["127.0.0.1:1", "127.0.0.1:2"]);
    let DestinationView::Found {
        endpoints: eps,
        service: svc_ref,
        ..
    } = &state.view
    else {
        panic!()
    };
    assert_eq!(
        eps["127.0.0.1:1"].identity,
        "spiffe://cluster.local/ns/demo/sa/backend"
    );
    assert_eq!(svc_ref.protocol, "http");

    // The same documents again: no update.
    index.apply(
        "files",
        documents(&service("backend", &["127.0.0.1:1", "127.0.0.1:2"])),
    );
    assert!(!rx.has_changed().unwrap());

    index.apply("files", documents(&service("backend", &["127.0.0.1:2"])));
    let state = rx.borrow_and_update().clone();
    assert_eq!(endpoints(&state), ["127.0.0.1:2"]);
    assert_eq!(state.version, 3);

    index.apply("files", vec![]);
    assert_eq!(rx.borrow_and_update().view, DestinationView::NotFound);
}

#[tokio::test]
async fn routes_and_policies_ride_on_the_destination() {
    let index = Index::new(IndexConfig::default());
    let mut yaml = service("backend", &["127.0.0.1:1"]);
    yaml.push_str(&service("backend-v1", &["127.0.0.1:2"]));
    yaml.push_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: demo}\nspec:\n  parentRefs: [{name: backend}]\n  rules:\n    - matches: [{path: {type: PathPrefix, value: /api}}]\n      backendRefs: [{name: backend-v1, weight: 90}, {name: backend-v2, weight: 10}]\n      timeouts: {request: 2s}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: tp, namespace: demo}\nspec:\n  targetRef: {name: backend}\n  loadBalancer: roundRobin\n  timeouts: {request: 5s}\n",
    );
    index.apply("files", documents(&yaml));
    let rx = index.watch_destination(index.parse_target("backend.demo:80", "other").unwrap(), "other");
    let state = rx.borrow().clone();
    let DestinationView::Found { policy, .. } = &state.view else {
        panic!()
    };
    assert_eq!(policy.routes.len(), 1);
    let route = &policy.routes[0];
    assert_eq!(route.timeout_ms, 2000);
    assert_eq!(route.matches[0].path, "/api");
    assert_eq!(
        route.backends[0].authority,
        "backend-v1.demo.svc.cluster.local:80"
    );
    assert_eq!(route.backends[1].weight, 10);
    assert_eq!(
        route.backends[1].authority, "",
        "no such Service: unresolved, so its share is answered 500"
    );
    assert_eq!(policy.load_balancer, api::LoadBalancer::RoundRobin as i32);
    assert_eq!(policy.timeouts.as_ref().unwrap().request_ms, 5000);
}

#[tokio::test]
async fn each_endpoint_has_its_own_identity_and_mtls_can_be_required() {
    const MIXED: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: cart, namespace: shop}\nspec:\n  serviceAccount: cart\n  endpoints:\n    - {address: 10.0.0.1:8080, proxy: 10.0.0.1:4143}\n    - {address: 10.0.0.2:8080, proxy: 10.0.0.2:4143, serviceAccount: cart-canary}\n    - {address: 10.0.0.3:8080}\n";
    let view = |index: &Arc<Index>| {
        let rx = index.watch_destination(index.parse_target("cart.shop:80", "shop").unwrap(), "shop");
        let state = rx.borrow().clone();
        let DestinationView::Found {
            endpoints, policy, ..
        } = &state.view
        else {
            panic!()
        };
        (endpoints.clone(), policy.clone())
    };
    let index = Index::new(IndexConfig::default());
    index.apply("files", documents(MIXED));
    let (eps, policy) = view(&index);
    let ids: Vec<&str> = eps.values().map(|e| e.identity.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/shop/sa/cart",
            "spiffe://cluster.local/ns/shop/sa/cart-canary",
            "",
        ]
    );
    assert!(!policy.require_mtls, "optional by default");

    let required = format!("{MIXED}---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  targetRef: {{name: cart}}\n  mtls: required\n");
    index.apply("files", documents(&required));
    assert!(view(&index).1.require_mtls);

    // The mesh-wide default, and a policy opting one service out.
    let strict = Index::new(IndexConfig {
        require_mtls: true,
        ..IndexConfig::default()
    });
    strict.apply("files", documents(MIXED));
    assert!(view(&strict).1.require_mtls);
    strict.apply(
        "files",
        documents(&required.replace("mtls: required", "mtls: optional")),
    );
    assert!(!view(&strict).1.require_mtls);
}

#[tokio::test]
async fn endpoint_address_lookup_and_inbound_policy() {
    let index = Index::new(IndexConfig::default());
    let mut yaml = service("backend", &["10.0.0.7:8080"]);
    yaml.push_str("apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: demo}\nspec:\n  targetRef: {name: backend, port: 80}\n  mtls: strict\n  rules:\n    - from: {namespaces: [demo]}\n      to: {methods: [GET]}\n  rateLimit: {requestsPerSecond: 100, burst: 10}\n");
    index.apply("files", documents(&yaml));
    let rx = index.watch_destination(Target::Address("10.0.0.7:8080".parse().unwrap()), "demo");
    assert_eq!(endpoints(&rx.borrow()), ["10.0.0.7:8080"]);

    // By the service port, and by the port its endpoint serves.
    assert!(
        !index
            .watch_inbound(&named("demo/backend"), 8080)
            .borrow()
            .as_ref()
            .unwrap()
            .default_allow
    );
    let mut inbound = index.watch_inbound(&named("demo/backend"), 80);
    let policy = inbound.borrow_and_update().clone().unwrap();
    assert!(!policy.default_allow);
    assert_eq!(policy.mtls, api::MtlsMode::Strict as i32);
    assert_eq!(policy.rules[0].namespaces, ["demo"]);
    assert_eq!(policy.rate_limit.as_ref().unwrap().total_rps, 100.0);
    index.apply("files", documents(&service("backend", &["10.0.0.7:8080"])));
    assert!(
        inbound.borrow_and_update().as_ref().unwrap().default_allow,
        "policy removed: default allow"
    );
}

#[test]
fn a_pod_ip_resolves_on_each_of_its_service_ports() {
    let index = Index::new(IndexConfig::default());
    let yaml = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: broker, namespace: demo}\nspec:\n  ports: [{port: 8080}, {port: 1883, protocol: tcp}]\n  endpoints:\n    - address: 10.0.0.7:8080\n      proxy: 10.0.0.7:4143\n";
    index.apply("files", documents(yaml));
    let rx = index.watch_destination(Target::Address("10.0.0.7:1883".parse().unwrap()), "demo");
    let state = rx.borrow().clone();
    let DestinationView::Found {
        service, endpoints, ..
    } = &state.view
    else {
        panic!("not found")
    };
    assert_eq!((service.name.as_str(), service.port), ("broker", 1883));
    assert_eq!(service.protocol, "tcp");
    let e = &endpoints["10.0.0.7:1883"];
    assert_eq!(e.proxy_address, "10.0.0.7:4143");
    assert_eq!(e.identity, "spiffe://cluster.local/ns/demo/sa/broker");
    // A port the service does not have, or another IP: not the mesh's.
    for other in ["10.0.0.7:9999", "10.0.0.8:1883"] {
        let rx = index.watch_destination(Target::Address(other.parse().unwrap()), "demo");
        assert_eq!(rx.borrow().view, DestinationView::NotFound, "{other}");
    }
}

/// A dual-stack pod: one endpoint per family. An IPv6 original
/// destination, as a proxy sends it (`[ip]:port`), finds the IPv6 one.
#[test]
fn an_ipv6_pod_ip_resolves_as_the_meshed_endpoint() {
    let index = Index::new(IndexConfig::default());
    let yaml = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: echo, namespace: demo}\nspec:\n  ports: [{port: 8080}, {port: 7000, protocol: tcp}]\n  endpoints:\n    - address: 10.0.0.7:8080\n      proxy: 10.0.0.7:4143\n    - address: \"[fd00::7]:8080\"\n      proxy: \"[fd00::7]:4143\"\n";
    index.apply("files", documents(yaml));
    for (target, key) in [
        ("[fd00::7]:8080", "[fd00::7]:8080"),
        ("[fd00::7]:7000", "[fd00::7]:7000"),
    ] {
        let target = index.parse_target(target, "demo").unwrap();
        assert!(matches!(target, Target::Address(a) if a.is_ipv6()), "{target:?}");
        let rx = index.watch_destination(target, "demo");
        let state = rx.borrow().clone();
        let DestinationView::Found { endpoints, .. } = &state.view else {
            panic!("{key}: not found")
        };
        assert_eq!(endpoints[key].proxy_address, "[fd00::7]:4143");
        assert_eq!(endpoints[key].identity, "spiffe://cluster.local/ns/demo/sa/echo");
    }
    // Unbracketed, the port cannot be told from the address: not an address.
    assert!(!matches!(
        index.parse_target("fd00::7:8080", "demo"),
        Some(Target::Address(_))
    ));
}

#[tokio::test]
async fn synced_once_every_configured_source_applied() {
    let index = Index::new(IndexConfig {
        sources: vec!["files".into(), "kubernetes".into()],
        ..IndexConfig::default()
    });
    let pending = || tokio::time::timeout(Duration::from_millis(20), index.synced());
    assert!(!index.is_synced());
    assert!(pending().await.is_err(), "not synced before any source");
    index.apply("files", documents(&service("backend", &["127.0.0.1:1"])));
    assert!(!index.is_synced(), "one of two sources");
    assert_eq!(index.unsynced_sources(), ["kubernetes"]);
    assert!(pending().await.is_err());
    index.apply("kubernetes", vec![]);
    assert!(index.is_synced());
    assert!(pending().await.is_ok());
    assert!(index.unsynced_sources().is_empty());
    // Later applies never unsync it.
    index.apply("kubernetes", vec![]);
    assert!(index.is_synced());
    assert!(
        Index::new(IndexConfig::default()).is_synced(),
        "no sources: synced at once"
    );
}

fn deny_all(name: &str, target: &str, port: Option<u16>) -> Document {
    Document {
        meta: Metadata {
            name: name.into(),
            namespace: "demo".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            creation_timestamp: None,
        },
        spec: Spec::DenyAll(crate::model::DenyAll {
            target: crate::model::TargetRef {
                kind: "Service".into(),
                name: target.into(),
                port,
            },
            field: "metadata.name".into(),
            reason: "bad name".into(),
        }),
    }
}

#[tokio::test]
async fn a_deny_all_stand_in_closes_its_target_and_adds_no_rules() {
    let index = Index::new(IndexConfig::default());
    let mut docs = documents(&service("backend", &["10.0.0.7:8080"]));
    docs.push(deny_all("bad", "backend", Some(80)));
    index.apply("files", docs.clone());
    let mut inbound = index.watch_inbound(&named("demo/backend"), 8080);
    let policy = inbound.borrow_and_update().clone().unwrap();
    assert!(!policy.default_allow, "the invalid policy's port is not open");
    assert!(policy.rules.is_empty(), "and admits no one");
    assert_eq!(policy.mtls, api::MtlsMode::Strict as i32);
    assert!(
        policy.sources[0].starts_with("demo/bad (invalid `metadata.name`"),
        "{:?}",
        policy.sources
    );
    // Another port of the service is not its target.
    assert!(
        index
            .watch_inbound(&named("demo/backend"), 9999)
            .borrow()
            .as_ref()
            .unwrap()
            .default_allow
    );

    // Beside a valid policy on the port: only the valid one's rules.
    docs.extend(documents("apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: demo}\nspec:\n  targetRef: {name: backend}\n  rules: [{from: {namespaces: [web]}}]\n"));
    index.apply("files", docs);
    let policy = inbound.borrow_and_update().clone().unwrap();
    assert!(!policy.default_allow);
    assert_eq!(policy.rules.len(), 1);
    assert_eq!(policy.rules[0].namespaces, ["web"]);
    assert_eq!(policy.mtls, api::MtlsMode::Strict as i32);
}

#[test]
fn unwatched_destinations_are_forgotten() {
    let index = Index::new(IndexConfig::default());
    let rx = index.watch_destination(index.parse_target("a", "demo").unwrap(), "demo");
    assert_eq!(index.stats().watched_destinations, 1);
    drop(rx);
    index.apply("files", vec![]);
    assert_eq!(index.stats().watched_destinations, 0);
}

/// `namespace/name` as a proxy without a pod names its workload.
fn named(workload: &str) -> WorkloadRef {
    let (namespace, name) = workload.split_once('/').unwrap();
    WorkloadRef::Named {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn pod(name: &str, service_account: &str, services: &[(&str, &[(u16, u16)])]) -> Document {
    Document {
        meta: Metadata {
            name: name.into(),
            namespace: "shop".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            creation_timestamp: None,
        },
        spec: Spec::Workload(WorkloadSpec {
            service_account: service_account.into(),
            services: services
                .iter()
                .map(|(name, ports)| crate::model::WorkloadService {
                    name: (*name).into(),
                    ports: ports.to_vec(),
                })
                .collect(),
        }),
    }
}

const SHOP: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: cart, namespace: shop}\nspec:\n  serviceAccount: default\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: payments, namespace: shop}\nspec:\n  serviceAccount: default\n  ports: [{port: 80, targetPort: 8080}, {port: 9090, targetPort: 9000, protocol: grpc}]\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: admin, namespace: shop}\nspec:\n  ports: [{port: 8443, targetPort: 8080}]\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: cart, namespace: shop}\nspec:\n  targetRef: {name: cart}\n  rules: [{from: {namespaces: [web]}}]\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: payments, namespace: shop}\nspec:\n  targetRef: {name: payments, port: 80}\n  mtls: strict\n  rules: [{from: {identities: ['spiffe://cluster.local/ns/shop/sa/cart']}}]\n  rateLimit: {requestsPerSecond: 50}\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: admin, namespace: shop}\nspec:\n  targetRef: {name: admin}\n  rules: [{from: {namespaces: [ops]}}]\n  rateLimit: {requestsPerSecond: 5}\n";

fn pod_ref(name: &str) -> WorkloadRef {
    WorkloadRef::Pod {
        namespace: "shop".into(),
        name: name.into(),
    }
}

#[test]
fn each_pod_enforces_the_policies_of_the_services_selecting_it() {
    let index = Index::new(IndexConfig::default());
    let mut docs = documents(SHOP);
    docs.push(pod("cart-1", "default", &[("cart", &[(80, 8080)])]));
    docs.push(pod(
        "payments-1",
        "default",
        &[("payments", &[(80, 8080), (9090, 9000)])],
    ));
    // Selected by two Services: both their policies, merged.
    docs.push(pod(
        "both-1",
        "ops",
        &[("admin", &[(8443, 8080)]), ("cart", &[(80, 8080)])],
    ));
    index.apply("files", docs.clone());

    let policy = |pod: &str, port: u16| index.watch_inbound(&pod_ref(pod), port).borrow().clone().unwrap();
    // Same service account, each its own policy.
    let cart = policy("cart-1", 8080);
    assert_eq!(cart.sources, ["shop/cart"]);
    assert_eq!(cart.rules[0].namespaces, ["web"]);
    assert_eq!(cart.mtls, api::MtlsMode::Permissive as i32);
    let payments = policy("payments-1", 8080);
    assert_eq!(payments.sources, ["shop/payments"]);
    assert_eq!(payments.mtls, api::MtlsMode::Strict as i32);
    assert_eq!(payments.rate_limit.unwrap().total_rps, 50.0);
    // Its other port: the policy names service port 80 only.
    let grpc = policy("payments-1", 9000);
    assert!(grpc.default_allow, "{grpc:?}");
    assert_eq!(grpc.protocol, "grpc");

    let both = policy("both-1", 8080);
    assert_eq!(both.sources, ["shop/admin", "shop/cart"]);
    assert_eq!(both.rules.len(), 2, "either service's callers");
    assert_eq!(both.rate_limit.unwrap().total_rps, 5.0, "the stricter limit");
    // A port no Service targets: policies without a port still select it.
    assert_eq!(policy("both-1", 7000).sources, ["shop/admin", "shop/cart"]);

    assert_eq!(index.serves_as(&pod_ref("cart-1"), "default"), Some(true));
    assert_eq!(index.serves_as(&pod_ref("cart-1"), "cart"), Some(false));
    assert_eq!(index.serves_as(&pod_ref("cart-9"), "default"), None);

    // A pod not known yet: nothing, until it is.
    let mut late = index.watch_inbound(&pod_ref("cart-2"), 8080);
    assert_eq!(*late.borrow_and_update(), None);
    docs.push(pod("cart-2", "default", &[("cart", &[(80, 8080)])]));
    index.apply("files", docs);
    assert!(late.has_changed().unwrap());
    assert_eq!(late.borrow_and_update().as_ref().unwrap().sources, ["shop/cart"]);
}

#[test]
fn a_file_workload_is_every_service_whose_endpoints_name_it() {
    let index = Index::new(IndexConfig::default());
    let yaml = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: cart, namespace: shop}\nspec:\n  serviceAccount: default\n  ports: [{port: 80, targetPort: 8080}]\n  endpoints:\n    - {address: 127.0.0.1:8080, proxy: 127.0.0.1:4143, workload: cart-main}\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: payments, namespace: shop}\nspec:\n  serviceAccount: default\n  ports: [{port: 80, targetPort: 8080}]\n  endpoints:\n    - {address: 127.0.0.1:8081, proxy: 127.0.0.1:4144}\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: cart, namespace: shop}\nspec:\n  targetRef: {name: cart}\n  rules: [{from: {namespaces: [web]}}]\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: payments, namespace: shop}\nspec:\n  targetRef: {name: payments}\n  rules: [{from: {namespaces: [cart]}}]\n";
    index.apply("files", documents(yaml));
    let policy = |name: &str| {
        let workload = WorkloadRef::Named {
            namespace: "shop".into(),
            name: name.into(),
        };
        index.watch_inbound(&workload, 8080).borrow().clone().unwrap()
    };
    assert_eq!(policy("cart-main").sources, ["shop/cart"]);
    assert_eq!(policy("payments").sources, ["shop/payments"]);
    assert_eq!(policy("cart").sources, ["shop/cart"], "by the service's own name");
    assert!(
        policy("nothing").default_allow,
        "no service: no policy selects it"
    );
    let named = |n: &str| WorkloadRef::Named {
        namespace: "shop".into(),
        name: n.into(),
    };
    assert_eq!(index.serves_as(&named("cart-main"), "default"), Some(true));
    assert_eq!(index.serves_as(&named("cart-main"), "payments"), Some(false));
}

/// The routes (name → backend authorities) clients in `client` see on
/// `payments.shop:80`.
fn routes_seen(index: &Index, client: &str) -> Vec<(String, Vec<String>)> {
    let rx = index.watch_destination(index.parse_target("payments.shop:80", client).unwrap(), client);
    let state = rx.borrow().clone();
    let DestinationView::Found { policy, .. } = &state.view else {
        panic!("not found")
    };
    policy
        .routes
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.backends.iter().map(|b| b.authority.clone()).collect(),
            )
        })
        .collect()
}

const PAYMENTS: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: payments, namespace: shop}\nspec:\n  endpoints: [{address: 10.0.0.1:8080}]\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: thief, namespace: evil}\nspec:\n  endpoints: [{address: 10.0.9.9:8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: takeover, namespace: evil}\nspec:\n  parentRefs: [{kind: Service, name: payments, namespace: shop}]\n  rules: [{backendRefs: [{name: thief, port: 80}]}]\n";

#[test]
fn a_route_in_another_namespace_is_a_consumer_route_for_that_namespace_only() {
    let index = Index::new(IndexConfig::default());
    index.apply("files", documents(PAYMENTS));
    assert_eq!(routes_seen(&index, "web"), [], "clients elsewhere: untouched");
    assert_eq!(routes_seen(&index, "shop"), [], "nor the producer's own");
    assert_eq!(
        routes_seen(&index, "evil"),
        [(
            "evil/takeover/0".to_string(),
            vec!["thief.evil.svc.cluster.local:80".to_string()]
        )],
        "the route's own namespace gets it"
    );

    // A producer route applies to everyone but a namespace with its own
    // consumer route, which takes precedence there.
    let producer = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: payments}]\n  rules: [{backendRefs: [{name: payments, port: 80}]}]\n";
    index.apply("files", documents(&format!("{PAYMENTS}{producer}")));
    for client in ["web", "shop"] {
        assert_eq!(
            routes_seen(&index, client),
            [(
                "shop/split/0".to_string(),
                vec!["payments.shop.svc.cluster.local:80".to_string()]
            )],
            "{client}"
        );
    }
    assert_eq!(routes_seen(&index, "evil")[0].0, "evil/takeover/0");
}

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant() {
    let index = Index::new(IndexConfig::default());
    let route = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: payments, namespace: shop}\nspec:\n  endpoints: [{address: 10.0.0.1:8080}]\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: ledger, namespace: finance}\nspec:\n  endpoints: [{address: 10.0.0.2:8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ledger, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: payments}]\n  rules: [{backendRefs: [{name: ledger, namespace: finance, port: 80}]}]\n";
    index.apply("files", documents(route));
    assert_eq!(
        routes_seen(&index, "web")[0].1,
        [""],
        "no grant: unresolved (the proxy answers 500)"
    );
    let grant = |from_ns: &str, to_name: &str| {
        format!("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: routes, namespace: finance}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {from_ns}}}]\n  to: [{{group: '', kind: Service{to_name}}}]\n")
    };
    for (g, want) in [
        (grant("shop", ""), "ledger.finance.svc.cluster.local:80"),
        (
            grant("shop", ", name: ledger"),
            "ledger.finance.svc.cluster.local:80",
        ),
        (grant("other", ""), ""),
        (grant("shop", ", name: vault"), ""),
    ] {
        index.apply("files", documents(&format!("{route}{g}")));
        assert_eq!(routes_seen(&index, "web")[0].1, [want], "{g}");
    }
}

#[test]
fn a_certificate_in_another_namespace_needs_a_reference_grant() {
    let index = Index::new(IndexConfig::default());
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: shop}\nspec:\n  gatewayClassName: weft\n  listeners:\n    - {name: tls, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: own}, {name: shared, namespace: vault}]}}\n";
    let grant = |kind: &str, from_ns: &str, to: &str| {
        format!("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: certs, namespace: vault}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: {kind}, namespace: {from_ns}}}]\n  to: [{{group: '', kind: {to}}}]\n")
    };
    let seen = |docs: &str| {
        index.apply("files", documents(docs));
        let config = index.watch_gateway("shop", "edge").borrow().clone();
        let status = index.gateway_listener_status("shop", "edge").unwrap();
        (
            config.listeners[0].certificates.clone(),
            status[0].refused_certificates.clone(),
        )
    };
    let own = || vec!["shop/own".to_string()];
    let both = || vec!["shop/own".to_string(), "vault/shared".to_string()];
    let refused = || vec!["vault/shared".to_string()];
    assert_eq!(seen(gateway), (own(), refused()), "no grant");
    assert_eq!(
        seen(&format!("{gateway}{}", grant("Gateway", "shop", "Secret"))),
        (both(), vec![])
    );
    for wrong in [
        grant("Gateway", "other", "Secret"),
        grant("HTTPRoute", "shop", "Secret"),
        grant("Gateway", "shop", "Service"),
    ] {
        assert_eq!(seen(&format!("{gateway}{wrong}")), (own(), refused()), "{wrong}");
    }
}
