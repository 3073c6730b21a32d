//! The Kubernetes source and the weft-control binary in
//! Kubernetes mode, against the in-test API server of `common/`
//! (`FakeApi`: list/watch with realistic JSON, bookmarks, `410 Gone`, 404
//! kinds, TokenReview, status patches).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::sync::watch;
use weft_control::index::{DestinationView, Index, IndexConfig, Target, WorkloadRef};
use weft_control::kubernetes::KubernetesSource;
use weft_control::metrics::ControlMetrics;
use weft_control::testing::TempDir;

// ------------------------------------------------------------ fixtures

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-11-01T10:00:00Z", "labels": {"app": name}},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                 "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "sessionAffinity": "None", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
        "status": {"loadBalancer": {}}
    })
}

fn endpoint(ip: &str, pod: &str, ready: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": !ready},
           "nodeName": "node-1", "zone": "eu-1a",
           "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("uid-{pod}")}})
}

fn slice(service: &str, port: u16, endpoints: Vec<Value>) -> Value {
    json!({
        "metadata": {"name": format!("{service}-x7k2p"), "namespace": "shop",
                     "generateName": format!("{service}-"),
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                          "uid": format!("uid-{service}"), "controller": true,
                                          "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
    })
}

fn pod(name: &str, ip: &str, sa: &str, injected: bool) -> Value {
    let mut annotations = json!({});
    if injected {
        annotations["weft.dev/injected"] = json!("true");
    }
    // `api-1` is an `app: api` pod, as Deployments label them.
    let app = name.rsplit_once('-').map_or(name, |(app, _)| app);
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "labels": {"app": app}, "annotations": annotations},
        "spec": {"serviceAccountName": sa, "nodeName": "node-1",
                 "containers": [{"name": "app", "image": "registry.example/api:1.4",
                                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn traffic_policy(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop", "generation": 1,
                        "creationTimestamp": "2026-11-01T10:00:00Z"},
           "spec": spec})
}

/// The endpoints (address → proxy) a destination shows, once it is found.
fn endpoints_of(view: &DestinationView) -> Option<BTreeMap<String, String>> {
    match view {
        DestinationView::Found { endpoints, .. } => Some(
            endpoints
                .iter()
                .map(|(a, e)| (a.clone(), e.proxy_address.clone()))
                .collect(),
        ),
        DestinationView::NotFound => None,
    }
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<weft_control::index::DestinationState>>,
    what: &str,
    pred: impl Fn(&DestinationView) -> bool,
) {
    let ok = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| pred(&s.view)))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        ok,
        "timed out waiting for {what}; last state: {:?}",
        rx.borrow().view
    );
}

fn eps(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter().map(|(a, p)| (a.to_string(), p.to_string())).collect()
}

fn seed(api: &FakeApi) {
    api.apply(SERVICES, service("api", "10.96.0.20"));
    api.apply(
        SLICES,
        slice(
            "api",
            8080,
            vec![
                endpoint("10.244.1.5", "api-1", true),
                endpoint("10.244.3.9", "legacy-1", true),
            ],
        ),
    );
    api.apply(PODS, pod("api-1", "10.244.1.5", "api-sa", true));
    api.apply(PODS, pod("legacy-1", "10.244.3.9", "default", false));
    api.apply(
        TRAFFIC,
        traffic_policy(
            "api",
            json!({"targetRef": {"name": "api"}, "loadBalancer": "roundRobin"}),
        ),
    );
    api.apply(
        TRAFFIC,
        traffic_policy(
            "broken",
            json!({"targetRef": {"name": "api"}, "retries": {"attempts": 99}}),
        ),
    );
}

// ------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_churn_bookmarks_and_410_relist_reach_the_index() {
    let api = FakeApi::start().await;
    seed(&api);
    let index = Index::new(IndexConfig::default());
    let source = KubernetesSource::start(api.client(), Default::default());
    tokio::spawn(source.run(
        index.clone(),
        Arc::new(ControlMetrics::default()),
        Duration::from_millis(20),
    ));

    // Initial list: the service with its two ready endpoints; the injected
    // pod over its proxy, the other directly; the valid policy in force.
    let mut rx = index.watch_destination(
        Target::Service {
            namespace: "shop".into(),
            name: "api".into(),
            port: 80,
        },
        "web",
    );
    let first = eps(&[("10.244.1.5:8080", "10.244.1.5:4143"), ("10.244.3.9:8080", "")]);
    wait_for(&mut rx, "the initial list", |v| {
        endpoints_of(v) == Some(first.clone())
    })
    .await;
    match &rx.borrow().view {
        DestinationView::Found {
            policy, endpoints, ..
        } => {
            assert_eq!(
                policy.load_balancer,
                weft_api::v1::LoadBalancer::RoundRobin as i32
            );
            assert_eq!(
                endpoints["10.244.1.5:8080"].identity,
                "spiffe://cluster.local/ns/shop/sa/api-sa"
            );
        }
        other => panic!("{other:?}"),
    }
    // The ClusterIP leads to the same service.
    let by_ip = index.watch_destination(Target::Address("10.96.0.20:80".parse().unwrap()), "web");
    assert_eq!(endpoints_of(&by_ip.borrow().view), Some(first.clone()));

    // An AuthorizationPolicy on the service reaches the proxies of the
    // pods it selects.
    let api_1 = WorkloadRef::Pod {
        namespace: "shop".into(),
        name: "api-1".into(),
    };
    let inbound = index.watch_inbound(&api_1, 8080);
    api.apply(
        AUTHZ,
        json!({"metadata": {"name": "api", "namespace": "shop", "generation": 1},
               "spec": {"targetRef": {"name": "api", "port": 80}, "mtls": "strict",
                        "rules": [{"from": {"namespaces": ["web"]}}]}}),
    );
    let mut inbound = inbound;
    let strict = tokio::time::timeout(
        Duration::from_secs(10),
        inbound.wait_for(|p| {
            p.as_ref()
                .is_some_and(|p| p.mtls == weft_api::v1::MtlsMode::Strict as i32)
        }),
    )
    .await;
    assert!(strict.is_ok_and(|r| r.is_ok()), "{:?}", *inbound.borrow());
    assert_eq!(inbound.borrow().as_ref().unwrap().rules[0].namespaces, ["web"]);

    // Endpoint churn through watch events: a new ready pod, one going away.
    api.apply(PODS, pod("api-2", "10.244.4.1", "api-sa", true));
    api.apply(
        SLICES,
        slice(
            "api",
            8080,
            vec![
                endpoint("10.244.1.5", "api-1", false),
                endpoint("10.244.3.9", "legacy-1", true),
                endpoint("10.244.4.1", "api-2", true),
            ],
        ),
    );
    let second = eps(&[("10.244.3.9:8080", ""), ("10.244.4.1:8080", "10.244.4.1:4143")]);
    wait_for(&mut rx, "the churn", |v| endpoints_of(v) == Some(second.clone())).await;

    // A watch that ends is resumed from its last version (no relist).
    let lists_before = api.count("list", SLICES);
    api.cut_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.apply(
        SLICES,
        slice("api", 8080, vec![endpoint("10.244.4.1", "api-2", true)]),
    );
    let third = eps(&[("10.244.4.1:8080", "10.244.4.1:4143")]);
    wait_for(&mut rx, "a change after a resumed watch", |v| {
        endpoints_of(v) == Some(third.clone())
    })
    .await;
    assert_eq!(api.count("list", SLICES), lists_before, "resumed, not relisted");

    // Events missed (a partition), history compacted, watch ended: the
    // resumed watch gets 410 Gone → relist, and the missed change is seen.
    api.mute.store(true, std::sync::atomic::Ordering::SeqCst);
    api.apply(
        SLICES,
        slice(
            "api",
            8080,
            vec![
                endpoint("10.244.4.1", "api-2", true),
                endpoint("10.244.5.5", "api-3", true),
            ],
        ),
    );
    api.apply(PODS, pod("api-3", "10.244.5.5", "api-sa", true));
    api.compact_and_cut();
    api.mute.store(false, std::sync::atomic::Ordering::SeqCst);
    let fourth = eps(&[
        ("10.244.4.1:8080", "10.244.4.1:4143"),
        ("10.244.5.5:8080", "10.244.5.5:4143"),
    ]);
    wait_for(&mut rx, "the state after 410 and relist", |v| {
        endpoints_of(v) == Some(fourth.clone())
    })
    .await;
    assert!(
        api.count("list", &format!("gone {SLICES}")) >= 1,
        "the resumed watch was told 410 Gone"
    );
    assert!(
        api.count("list", SLICES) > lists_before,
        "410 forced a relist: lists {} (before {lists_before}), watches {}",
        api.count("list", SLICES),
        api.count("watch", SLICES)
    );
    assert!(api.count("watch", SLICES) >= 3);

    // Deleting the service: NotFound.
    api.delete(SERVICES, "shop", "api");
    wait_for(&mut rx, "the service gone", |v| *v == DestinationView::NotFound).await;

    // Policies got their Accepted condition; the broken one says why.
    let patches = api.state.lock().unwrap().status_patches.clone();
    let find = |name: &str| {
        patches
            .iter()
            .rev()
            .find(|(p, _)| p.ends_with(&format!("/trafficpolicies/{name}/status")))
            .map(|(_, b)| b["status"]["conditions"][0].clone())
    };
    let good = find("api").expect("status written for the valid policy");
    assert_eq!(good["status"], "True");
    let bad = find("broken").expect("status written for the invalid policy");
    assert_eq!(bad["status"], "False");
    assert!(
        bad["message"].as_str().unwrap().contains("spec.retries.attempts"),
        "{bad}"
    );
}

/// Waits up to 20 s for `ok`.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every watched resource reports its state: synced once listed, a relist
/// after the API server compacted its history away (410 Gone) counted,
/// and the time of the last event moving with the cluster's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_metrics_show_sync_relists_and_events_per_resource() {
    use weft_control::metrics::WatchLabels;
    let api = FakeApi::start().await;
    seed(&api);
    let metrics = Arc::new(ControlMetrics::default());
    let index = Index::new(IndexConfig::default());
    let source = KubernetesSource::start(api.client(), metrics.clone());
    tokio::spawn(source.run(index.clone(), metrics.clone(), Duration::from_millis(20)));
    let of = |resource: &str| WatchLabels {
        resource: resource.to_string(),
    };
    let resources = [
        "services",
        "endpointslices",
        "pods",
        "trafficpolicies",
        "authorizationpolicies",
        "httproutes",
        "referencegrants",
    ];
    eventually("every resource synced", || {
        resources
            .iter()
            .all(|r| metrics.watch_synced.get_or_create(&of(r)).get() == 1)
    })
    .await;
    for r in resources {
        assert_eq!(metrics.watch_relists.get_or_create(&of(r)).get(), 0, "{r}");
        assert!(metrics.watch_last_event.get_or_create(&of(r)).get() > 0, "{r}");
    }

    // Compacted history and cut watches: pods relist, and say so.
    // (A change the watch misses, then compacted away.)
    api.mute.store(true, std::sync::atomic::Ordering::SeqCst);
    api.apply(PODS, pod("api-3", "10.244.5.5", "api-sa", true));
    api.compact_and_cut_kinds(&[PODS]);
    api.mute.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("pods relisted", || {
        metrics.watch_relists.get_or_create(&of("pods")).get() >= 1
            && metrics.watch_synced.get_or_create(&of("pods")).get() == 1
    })
    .await;
    assert_eq!(metrics.watch_relists.get_or_create(&of("services")).get(), 0);

    // A change moves the last-event time (whole seconds).
    let before = metrics.watch_last_event.get_or_create(&of("services")).get();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.apply(SERVICES, service("late", "10.96.0.99"));
    eventually("the event seen", || {
        metrics.watch_last_event.get_or_create(&of("services")).get() > before
    })
    .await;

    // And the whole set is in the exposition, by resource.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for r in resources {
        let line = format!("weft_control_kubernetes_watch_synced{{resource=\"{r}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    assert!(text.contains("weft_control_kubernetes_watch_relists_total{resource=\"pods\"} "));
}

/// The real binary, `--kubernetes` with a kubeconfig pointing at the fake
/// API: a gRPC watcher sees the cluster's endpoints and their changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_control_in_kubernetes_mode_serves_grpc_watchers() {
    let api = FakeApi::start().await;
    seed(&api);
    let dir = TempDir::new();
    // As a proxy does: a certificate over server-authenticated TLS, then
    // the watch over mutual TLS.
    let (_control, mut channels) = control_with_clients(&api, &dir, &[("web", "default")]).await;
    let channel = channels.remove(0);
    let mut client = weft_api::v1::destination_client::DestinationClient::new(channel);
    let mut stream = client
        .watch(weft_api::v1::DestinationRequest {
            target: "api.shop.svc.cluster.local:80".into(),
            namespace: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    use weft_api::v1::destination_update::Kind as U;
    let mut addrs: std::collections::BTreeSet<String> = Default::default();
    let wanted_first: std::collections::BTreeSet<String> =
        ["10.244.1.5:8080", "10.244.3.9:8080"].map(String::from).into();
    let wanted_after: std::collections::BTreeSet<String> =
        ["10.244.1.5:8080", "10.244.3.9:8080", "10.244.4.1:8080"]
            .map(String::from)
            .into();
    let mut changed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while addrs != wanted_after {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("updates in time")
            .unwrap()
            .unwrap();
        match msg.kind.unwrap() {
            U::Snapshot(s) => addrs = s.endpoints.into_iter().map(|e| e.address).collect(),
            U::Added(a) => addrs.extend(a.endpoints.into_iter().map(|e| e.address)),
            U::Removed(r) => {
                for a in r.addresses {
                    addrs.remove(&a);
                }
            }
            U::Policy(_) => {}
            U::NotFound(_) => addrs.clear(),
        }
        if addrs == wanted_first && !changed {
            changed = true;
            api.apply(PODS, pod("api-2", "10.244.4.1", "api-sa", true));
            api.apply(
                SLICES,
                slice(
                    "api",
                    8080,
                    vec![
                        endpoint("10.244.1.5", "api-1", true),
                        endpoint("10.244.3.9", "legacy-1", true),
                        endpoint("10.244.4.1", "api-2", true),
                    ],
                ),
            );
        }
    }
    assert!(changed, "saw the initial endpoints, then the new one");
}

/// The real binary against an API server that takes 3 s to answer each
/// list: until every kind has listed, `/ready` is 503 and an
/// Inbound.Watch gets nothing (never the allow-all an empty index would
/// give); then it gets the real policy. A new AuthorizationPolicy that
/// fails validation denies its target, with `Accepted=False` naming the
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_lists_keep_weft_control_unready_and_watches_waiting() {
    const LIST_DELAY: Duration = Duration::from_secs(3);
    let api = FakeApi::start().await;
    seed(&api);
    api.apply(
        AUTHZ,
        json!({"metadata": {"name": "api", "namespace": "shop", "generation": 1},
               "spec": {"targetRef": {"name": "api", "port": 80},
                        "rules": [{"from": {"namespaces": ["web"]}}]}}),
    );
    // A valid Kubernetes name that is not a DNS label: invalid, and new.
    api.apply(SERVICES, service("payments", "10.96.0.30"));
    api.apply(
        SLICES,
        slice("payments", 8080, vec![endpoint("10.244.6.1", "payments-1", true)]),
    );
    api.apply(PODS, pod("payments-1", "10.244.6.1", "payments-sa", true));
    api.apply(
        AUTHZ,
        json!({"metadata": {"name": "payments.strict", "namespace": "shop", "generation": 1},
               "spec": {"targetRef": {"name": "payments", "port": 80},
                        "rules": [{"from": {"namespaces": ["shop"]}}]}}),
    );
    api.state.lock().unwrap().list_delay = LIST_DELAY;

    let dir = TempDir::new();
    let kubeconfig = kubeconfig(&api, &dir);
    let (grpc, admin) = (free_port(), free_port());
    let started = tokio::time::Instant::now();
    let tokens = dir.write(
        "tokens.yaml",
        "- {namespace: shop, serviceAccount: api-sa, token: api-token-0123456789}\n- {namespace: shop, serviceAccount: payments-sa, token: payments-token-0123456789}\n",
    );
    let anchors = dir.path().join("trust-anchors.pem");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .args(["--kubernetes", "--grpc-listen", &grpc.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--tokens")
        .arg(&tokens)
        .arg("--trust-anchors-out")
        .arg(&anchors)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Child(child);

    // Up, and not ready: the lists have not answered.
    let mut ready = None;
    for _ in 0..100 {
        ready = http_status(admin, "/ready").await;
        if ready.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < LIST_DELAY, "the check ran inside the window");
    assert_eq!(ready, Some(503), "not ready before every kind has listed");

    // Each workload watches its own policy, with its own certificate
    // (Certify needs no synced index).
    use weft_control::testing::client;
    let mut bootstrap = None;
    for _ in 0..100 {
        if anchors.exists() {
            if let Ok(c) = client::channel(grpc, client::tls(&anchors, None)).await {
                bootstrap = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bootstrap = bootstrap.expect("the gRPC port answers");
    let mut clients = std::collections::HashMap::new();
    for sa in ["api-sa", "payments-sa"] {
        let token = format!("{}-token-0123456789", sa.trim_end_matches("-sa"));
        let cert = client::certify(bootstrap.clone(), "shop", sa, &token)
            .await
            .unwrap();
        let channel = client::channel(grpc, client::tls(&anchors, Some(&cert)))
            .await
            .unwrap();
        clients.insert(
            format!("shop/{sa}"),
            weft_api::v1::inbound_client::InboundClient::new(channel),
        );
    }
    let watch = |workload: &str, pod: &str| {
        let req = weft_api::v1::InboundRequest {
            workload: workload.into(),
            port: 8080,
            pod: pod.into(),
        };
        let mut client = clients[workload].clone();
        async move { client.watch(req).await.unwrap().into_inner() }
    };
    let mut api_policy = watch("shop/api-sa", "api-1").await;
    let mut payments_policy = watch("shop/payments-sa", "payments-1").await;

    // Nothing during the window: no allow-all from the empty index.
    let early = tokio::time::timeout(Duration::from_millis(500), api_policy.message()).await;
    assert!(early.is_err(), "an answer before sync: {early:?}");
    assert!(
        started.elapsed() < LIST_DELAY,
        "the silence was inside the window"
    );
    assert_eq!(http_status(admin, "/ready").await, Some(503));

    // Then the real policy, no earlier than the lists answered.
    let first = tokio::time::timeout(Duration::from_secs(15), api_policy.message())
        .await
        .expect("a policy once synced")
        .unwrap()
        .expect("the stream is open");
    assert!(started.elapsed() >= LIST_DELAY, "answered only after the lists");
    assert!(!first.default_allow, "{first:?}");
    assert_eq!(first.rules[0].namespaces, ["web"]);
    assert_eq!(http_status(admin, "/ready").await, Some(200));

    // The new invalid policy: its target denies every caller...
    let deny = tokio::time::timeout(Duration::from_secs(5), payments_policy.message())
        .await
        .expect("a policy once synced")
        .unwrap()
        .unwrap();
    assert!(!deny.default_allow && deny.rules.is_empty(), "{deny:?}");
    assert_eq!(deny.mtls, weft_api::v1::MtlsMode::Strict as i32);
    // ...and its status says why, naming the field.
    let mut condition = None;
    for _ in 0..100 {
        condition = api
            .state
            .lock()
            .unwrap()
            .status_patches
            .iter()
            .rev()
            .find(|(p, _)| p.ends_with("/authorizationpolicies/payments.strict/status"))
            .map(|(_, b)| b["status"]["conditions"][0].clone());
        if condition.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let condition = condition.expect("status written for the invalid policy");
    assert_eq!(condition["type"], "Accepted");
    assert_eq!(condition["status"], "False");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("metadata.name") && message.contains("denies every caller"),
        "{message}"
    );
}

/// weft-control in Kubernetes mode against `api`, with a tokens file for
/// `(namespace, service account)` pairs (token `<sa>-token-0123456789`);
/// and a mesh channel per pair once it answers, as a proxy holds one.
async fn control_with_clients(
    api: &FakeApi,
    dir: &TempDir,
    accounts: &[(&str, &str)],
) -> (Child, Vec<tonic::transport::Channel>) {
    let kubeconfig = kubeconfig(api, dir);
    let grpc = free_port();
    let tokens: String = accounts
        .iter()
        .map(|(ns, sa)| {
            format!("- {{namespace: {ns}, serviceAccount: {sa}, token: {sa}-token-0123456789}}\n")
        })
        .collect();
    let tokens = dir.write("tokens.yaml", &tokens);
    let anchors = dir.path().join("trust-anchors.pem");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .args(["--kubernetes", "--grpc-listen", &grpc.to_string()])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--tokens")
        .arg(&tokens)
        .arg("--trust-anchors-out")
        .arg(&anchors)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Child(child);
    use weft_control::testing::client;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let bootstrap = loop {
        if anchors.exists() {
            if let Ok(c) = client::channel(grpc, client::tls(&anchors, None)).await {
                break c;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "weft-control answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut channels = Vec::new();
    for (ns, sa) in accounts {
        let cert = client::certify(bootstrap.clone(), ns, sa, &format!("{sa}-token-0123456789"))
            .await
            .unwrap();
        channels.push(
            client::channel(grpc, client::tls(&anchors, Some(&cert)))
                .await
                .unwrap(),
        );
    }
    (child, channels)
}

/// `cart` and `payments` both run as service account `default`: each pod's
/// proxy gets the policy of the Services selecting that pod, not "the
/// first Service whose pods use the account". A pod the control plane
/// does not know yet gets nothing until it does; a proxy running as
/// another account may not watch the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_gets_the_policy_of_the_services_selecting_it() {
    let api = FakeApi::start().await;
    for (name, ip) in [("cart", "10.96.0.40"), ("payments", "10.96.0.41")] {
        api.apply(SERVICES, service(name, ip));
    }
    api.apply(PODS, pod("cart-1", "10.244.7.1", "default", true));
    api.apply(PODS, pod("payments-1", "10.244.7.2", "default", true));
    api.apply(
        AUTHZ,
        json!({"metadata": {"name": "cart", "namespace": "shop", "generation": 1},
               "spec": {"targetRef": {"name": "cart"}, "rules": [{"from": {"namespaces": ["web"]}}]}}),
    );
    api.apply(
        AUTHZ,
        json!({"metadata": {"name": "payments", "namespace": "shop", "generation": 1},
               "spec": {"targetRef": {"name": "payments", "port": 80}, "mtls": "strict",
                        "rules": [{"from": {"identities": ["spiffe://cluster.local/ns/shop/sa/cart"]}}]}}),
    );
    let dir = TempDir::new();
    let (_control, channels) =
        control_with_clients(&api, &dir, &[("shop", "default"), ("shop", "intruder")]).await;
    let watch = |channel: &tonic::transport::Channel, pod: &str| {
        let mut client = weft_api::v1::inbound_client::InboundClient::new(channel.clone());
        let req = weft_api::v1::InboundRequest {
            workload: "shop/default".into(),
            port: 8080,
            pod: pod.into(),
        };
        async move { client.watch(req).await.unwrap().into_inner() }
    };
    let first = |mut stream: tonic::Streaming<weft_api::v1::ServerPolicy>| async move {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an answer in time")
    };

    let cart = first(watch(&channels[0], "cart-1").await).await.unwrap().unwrap();
    assert_eq!(cart.sources, ["shop/cart"]);
    assert_eq!(cart.rules[0].namespaces, ["web"]);
    assert_eq!(cart.mtls, weft_api::v1::MtlsMode::Permissive as i32);
    let payments = first(watch(&channels[0], "payments-1").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payments.sources, ["shop/payments"]);
    assert_eq!(payments.mtls, weft_api::v1::MtlsMode::Strict as i32);
    assert_eq!(
        payments.rules[0].identities,
        ["spiffe://cluster.local/ns/shop/sa/cart"]
    );

    // Another account may not read (or learn the shape of) the pod's policy.
    let mut client = weft_api::v1::inbound_client::InboundClient::new(channels[1].clone());
    let denied = client
        .watch(weft_api::v1::InboundRequest {
            workload: "shop/intruder".into(),
            port: 8080,
            pod: "cart-1".into(),
        })
        .await;
    let code = match denied {
        Err(status) => status.code(),
        Ok(rsp) => first(rsp.into_inner()).await.unwrap_err().code(),
    };
    assert_eq!(code, tonic::Code::PermissionDenied);

    // A pod that is not there yet: silence (never a default allow-all),
    // then its policy once the pod appears.
    let mut late = watch(&channels[0], "cart-2").await;
    let early = tokio::time::timeout(Duration::from_millis(500), late.message()).await;
    assert!(early.is_err(), "an answer for an unknown pod: {early:?}");
    api.apply(PODS, pod("cart-2", "10.244.7.3", "default", true));
    let policy = first(late).await.unwrap().unwrap();
    assert_eq!(policy.sources, ["shop/cart"]);
}
