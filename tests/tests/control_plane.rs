//! Discovery from a real `weft-control` over YAML files: endpoints follow
//! the files, the proxy rides out control-plane outages, bad config is
//! rejected with the last good state kept, unknown names go to DNS, and
//! nothing goes anywhere while the control plane has not answered.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use weft_tests::apps::*;
use weft_tests::{eventually, ControlProc, ProxyProc, TempDir};

/// A meshed app: echo server plus its server-side proxy.
struct Workload {
    app: EchoApp,
    proxy: ProxyProc,
}

/// Its proxy has its certificate from `control` (service account `echo`,
/// the identity MeshService `echo` promises for its endpoints).
async fn workload(control: &ControlProc) -> Workload {
    let app = echo_app().await;
    let proxy = ProxyProc::start(&format!(
        "appPorts: [{}]\nworkload: echo\n{}",
        app.addr.port(),
        control.proxy_config("demo", "echo")
    ));
    proxy.ready().await;
    Workload { app, proxy }
}

/// Writes `yaml` to `file` and waits until `control` holds `endpoints`
/// endpoints.
async fn publish(control: &ControlProc, file: &std::path::Path, yaml: &str, endpoints: usize) {
    std::fs::write(file, yaml).unwrap();
    let want = format!("weft_control_index_objects{{kind=\"endpoints\"}} {endpoints}\n");
    eventually(
        Duration::from_secs(5),
        "the control plane has the file",
        || async {
            admin_get(control.admin, "/metrics")
                .await
                .1
                .contains(&want)
                .then_some(())
        },
    )
    .await;
}

fn mesh_service(name: &str, replicas: &[&Workload]) -> String {
    let eps: String = replicas
        .iter()
        .map(|w| {
            format!(
                "    - address: {}\n      proxy: {}\n",
                w.app.addr, w.proxy.addrs.inbound
            )
        })
        .collect();
    let eps = if eps.is_empty() {
        "    []\n".to_string()
    } else {
        eps
    };
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  ports: [{{port: 80}}]\n  endpoints:\n{eps}"
    )
}

async fn client_proxy(control: &ControlProc) -> ProxyProc {
    let proxy = ProxyProc::start(&control.proxy_config("demo", "default"));
    proxy.ready().await;
    proxy
}

/// GET http://echo/ through `outbound`; returns status and the serving app.
async fn call(outbound: SocketAddr, host: &str) -> (StatusCode, Option<String>) {
    get_echo(outbound, host).await
}

/// Which apps served 20 calls.
async fn servers(outbound: SocketAddr) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, server) = call(outbound, "echo").await;
        assert_eq!(status, StatusCode::OK);
        seen.insert(server.unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_yaml_file_without_losing_requests() {
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let (a, b) = (workload(&control).await, workload(&control).await);
    publish(&control, &file, &mesh_service("echo", &[&a]), 1).await;
    let client = client_proxy(&control).await;
    let out = client.addrs.outbound;
    let (a_addr, b_addr) = (a.app.addr.to_string(), b.app.addr.to_string());

    assert_eq!(servers(out).await, [a_addr.clone()].into());

    std::fs::write(&file, mesh_service("echo", &[&a, &b])).unwrap();
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(2),
        "the new endpoint gets traffic",
        || async { (servers(out).await.len() == 2).then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // Remove an endpoint under a steady request rate: no request fails.
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..150 {
            statuses.push(call(out, "echo").await.0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, mesh_service("echo", &[&b])).unwrap();
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    eventually(Duration::from_secs(1), "only the remaining endpoint", || async {
        (servers(out).await == [b_addr.clone()].into()).then_some(())
    })
    .await;

    let (_, config) = admin_get(client.addrs.admin, "/config").await;
    assert!(
        config.contains("echo:80") && config.contains(&b_addr),
        "/config shows the watch: {config}"
    );
    assert!(!config.contains(&a_addr), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_rides_out_a_control_plane_restart() {
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let mut control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let (a, b) = (workload(&control).await, workload(&control).await);
    publish(&control, &file, &mesh_service("echo", &[&a]), 1).await;
    let client = client_proxy(&control).await;
    let out = client.addrs.outbound;
    assert_eq!(call(out, "echo").await.0, StatusCode::OK);

    control.kill();
    for _ in 0..20 {
        let (status, server) = call(out, "echo").await;
        assert_eq!(status, StatusCode::OK, "served from the last known state");
        assert_eq!(server.unwrap(), a.app.addr.to_string());
    }

    // A change made while the control plane is down applies once it is back.
    std::fs::write(&file, mesh_service("echo", &[&b])).unwrap();
    control.restart(&[]);
    let b_addr = b.app.addr.to_string();
    eventually(Duration::from_secs(10), "resync after restart", || async {
        (servers(out).await == [b_addr.clone()].into()).then_some(())
    })
    .await;
    let (_, metrics) = admin_get(client.addrs.admin, "/metrics").await;
    assert!(
        metrics.contains("weft_control_plane_reconnects_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_change_is_rejected_and_the_last_good_state_served() {
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let mut control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let (a, b) = (workload(&control).await, workload(&control).await);
    publish(&control, &file, &mesh_service("echo", &[&a]), 1).await;
    let client = client_proxy(&control).await;
    let out = client.addrs.outbound;
    assert_eq!(call(out, "echo").await.0, StatusCode::OK);

    let bad = mesh_service("echo", &[&b]).replace(&b.app.addr.to_string(), "not-an-address");
    std::fs::write(&file, bad).unwrap();
    let line = control
        .proc
        .wait_line(&["config rejected"], Duration::from_secs(5));
    assert!(line.contains("mesh.yaml"), "names the file: {line}");
    assert!(
        line.contains("document 0 (MeshService demo/echo)"),
        "names the document: {line}"
    );
    assert!(
        line.contains("spec.endpoints[0].address"),
        "names the field: {line}"
    );

    for _ in 0..10 {
        let (status, server) = call(out, "echo").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            server.unwrap(),
            a.app.addr.to_string(),
            "the old state is still served"
        );
    }
    let (_, metrics) = admin_get(control.admin, "/metrics").await;
    assert!(
        metrics.contains("weft_control_config_errors_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_control_config_reloads_total{result="rejected"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_fall_back_to_dns() {
    let app = echo_app().await;
    let dir = TempDir::new();
    dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let client = client_proxy(&control).await;
    let (status, server) = call(client.addrs.outbound, &format!("localhost:{}", app.addr.port())).await;
    assert_eq!(status, StatusCode::OK, "{}", client.logs());
    assert_eq!(server.unwrap(), app.addr.to_string());
    let (status, _) = call(client.addrs.outbound, "no-such-host.invalid").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (_, metrics) = admin_get(client.addrs.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"weft_dns_fallback_total{result="resolved"} 1"#),
        "{metrics}"
    );
    assert!(
        weft_tests::series_sum(
            &metrics,
            "weft_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_workload", "unknown"),
                ("destination_principal", "unknown"),
                ("destination_service_name", "external"),
                ("destination_service_namespace", "unknown"),
                ("response_code", "200"),
                ("connection_security_policy", "none"),
                ("classification", "success"),
                ("error", ""),
            ]
        ) == Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_watch_per_destination_closed_when_idle() {
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let a = workload(&control).await;
    publish(&control, &file, &mesh_service("echo", &[&a]), 1).await;
    let client = ProxyProc::start(&format!(
        "{}destinationIdleTimeout: 500ms\n",
        control.proxy_config("demo", "default")
    ));
    // Many requests on several connections: one watch.
    for _ in 0..5 {
        assert_eq!(call(client.addrs.outbound, "echo").await.0, StatusCode::OK);
    }
    let (_, metrics) = admin_get(client.addrs.admin, "/metrics").await;
    assert!(metrics.contains("weft_destination_watches 1\n"), "{metrics}");
    let (_, cp) = admin_get(control.admin, "/metrics").await;
    assert!(
        cp.contains(r#"weft_control_watchers{api="destination"} 1"#),
        "{cp}"
    );

    eventually(
        Duration::from_secs(5),
        "the idle watch is closed on both sides",
        || async {
            let (_, metrics) = admin_get(client.addrs.admin, "/metrics").await;
            let (_, cp) = admin_get(control.admin, "/metrics").await;
            (metrics.contains("weft_destination_watches 0\n")
                && cp.contains(r#"weft_control_watchers{api="destination"} 0"#))
            .then_some(())
        },
    )
    .await;
    // And reopened on demand.
    assert_eq!(call(client.addrs.outbound, "echo").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_the_mesh_does_not_know_never_go_to_dns() {
    let dir = TempDir::new();
    dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let client = client_proxy(&control).await;
    for name in ["ghost.demo.svc.cluster.local", "ghost.demo.svc"] {
        let mut c = h1_client(client.addrs.outbound).await;
        let req = Request::get("/")
            .header("host", name)
            .body(full(Bytes::new()))
            .unwrap();
        let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_eq!(headers["weft-error"], "no-endpoints", "{name}");
    }
    let (_, metrics) = admin_get(client.addrs.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"weft_dns_fallback_total{result="refused"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"result="resolved""#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answer_from_the_control_plane_nothing_is_sent() {
    // An app DNS would find (localhost), and a control plane that is not
    // there: the request is refused, not sent to DNS's answer in plaintext.
    let app = echo_app().await;
    let dir = TempDir::new();
    let mut control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let config = control.proxy_config("demo", "default");
    control.proc.signal("KILL");
    control.proc.wait_exit(Duration::from_secs(5));
    let client = ProxyProc::start(&format!("{config}discoveryTimeout: 300ms\n"));
    let started = std::time::Instant::now();
    let mut c = h1_client(client.addrs.outbound).await;
    let req = Request::get("/")
        .header("host", format!("localhost:{}", app.addr.port()))
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", client.logs());
    assert_eq!(headers["weft-error"], "discovery-unavailable");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "a bounded wait: {waited:?}"
    );
    assert_eq!(
        app.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
    let (_, metrics) = admin_get(client.addrs.admin, "/metrics").await;
    assert!(
        metrics.contains("weft_discovery_unavailable_total 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("weft_dns_fallback_total{"), "{metrics}");
}

/// `cart` and `payments` both run as service account `default` (as most
/// Deployments do): each proxy enforces its own service's
/// AuthorizationPolicy, never the other's, and a second workload named by
/// a MeshService's endpoints (`workload: cart-canary`) gets cart's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_sharing_a_service_account_each_enforce_their_own_policy() {
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let mut workloads = Vec::new();
    for name in ["cart", "payments", "cart-canary"] {
        let app = echo_app().await;
        let proxy = ProxyProc::start(&format!(
            "appPorts: [{}]\nworkload: {name}\n{}",
            app.addr.port(),
            control.proxy_config("shop", "default")
        ));
        workloads.push((app, proxy));
    }
    let endpoint = |i: usize, extra: &str| {
        format!(
            "    - {{address: '{}', proxy: '{}'{extra}}}\n",
            workloads[i].0.addr, workloads[i].1.addrs.inbound
        )
    };
    let yaml = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  serviceAccount: default\n  endpoints:\n{}{}---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: payments, namespace: shop}}\nspec:\n  serviceAccount: default\n  endpoints:\n{}---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  targetRef: {{name: cart}}\n  rules: [{{from: {{namespaces: [web]}}}}]\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: payments, namespace: shop}}\nspec:\n  targetRef: {{name: payments}}\n  rules: [{{from: {{identities: ['spiffe://cluster.local/ns/shop/sa/default']}}}}]\n",
        endpoint(0, ""),
        endpoint(2, ", workload: cart-canary"),
        endpoint(1, ""),
    );
    publish(&control, &file, &yaml, 3).await;
    // Ready once their services are published: until then the control
    // plane does not let them watch a workload it cannot tie to their
    // account.
    for (_, proxy) in &workloads {
        proxy.ready().await;
    }
    let web = ProxyProc::start(&control.proxy_config("web", "web"));
    let shop = ProxyProc::start(&control.proxy_config("shop", "default"));
    web.ready().await;
    shop.ready().await;

    // Each side's policy, checked by the proxy in front of each app.
    let statuses = |out: SocketAddr, host: &'static str| async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            seen.insert(call(out, host).await.0);
        }
        seen
    };
    let ok = std::collections::BTreeSet::from([StatusCode::OK]);
    let forbidden = std::collections::BTreeSet::from([StatusCode::FORBIDDEN]);
    eventually(Duration::from_secs(10), "both policies in force", || async {
        (statuses(web.addrs.outbound, "cart.shop").await == ok
            && statuses(web.addrs.outbound, "payments.shop").await == forbidden)
            .then_some(())
    })
    .await;
    assert_eq!(
        statuses(shop.addrs.outbound, "payments").await,
        ok,
        "payments admits shop/default"
    );
    assert_eq!(
        statuses(shop.addrs.outbound, "cart").await,
        forbidden,
        "cart (and its canary) admit namespace web only"
    );
    for (i, (_, proxy)) in workloads.iter().enumerate() {
        let (_, config) = admin_get(proxy.addrs.admin, "/config").await;
        let want = ["shop/cart", "shop/payments", "shop/cart"][i];
        assert!(config.contains(want), "workload {i} enforces {want}: {config}");
    }
}

/// A meshed app in `ns` running as service account `name`, published as
/// MeshService `name` there.
async fn service_in(control: &ControlProc, ns: &str, name: &str) -> (Workload, String) {
    let app = echo_app().await;
    let proxy = ProxyProc::start(&format!(
        "appPorts: [{}]\nworkload: {name}\n{}",
        app.addr.port(),
        control.proxy_config(ns, name)
    ));
    let doc = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  endpoints:\n    - {{address: '{}', proxy: '{}'}}\n---\n",
        app.addr, proxy.addrs.inbound
    );
    (Workload { app, proxy }, doc)
}

/// The Gateway API mesh model (GEP-1426): an HTTPRoute in namespace
/// `evil` whose parent is `payments.shop` is a consumer route. It applies
/// to clients in `evil` only; a client in `web` still reaches payments. A
/// route's backend in another namespace needs a ReferenceGrant there:
/// without one it is unresolved (500), with one it is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_from_another_namespace_cannot_take_over_a_service() {
    let dir = TempDir::new();
    let file = dir.write("mesh.yaml", "");
    let control = ControlProc::start(dir.path(), "127.0.0.1:0".parse().unwrap());
    let (payments, mut yaml) = service_in(&control, "shop", "payments").await;
    let (thief, doc) = service_in(&control, "evil", "thief").await;
    yaml.push_str(&doc);
    let (ledger, doc) = service_in(&control, "finance", "ledger").await;
    yaml.push_str(&doc);
    yaml.push_str("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: takeover, namespace: evil}\nspec:\n  parentRefs: [{kind: Service, name: payments, namespace: shop, port: 80}]\n  rules: [{backendRefs: [{name: thief, port: 80}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: books, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: payments, port: 80}]\n  rules:\n    - matches: [{path: {type: PathPrefix, value: /books}}]\n      backendRefs: [{name: ledger, namespace: finance, port: 80}]\n    - backendRefs: [{name: payments, port: 80}]\n");
    publish(&control, &file, &yaml, 3).await;
    for w in [&payments, &thief, &ledger] {
        w.proxy.ready().await;
    }
    let web = ProxyProc::start(&control.proxy_config("web", "web"));
    let evil = ProxyProc::start(&control.proxy_config("evil", "client"));
    web.ready().await;
    evil.ready().await;
    let served_by = |w: &Workload| Some(w.app.addr.to_string());
    let get = |out: SocketAddr, path: &'static str| async move {
        let mut c = h1_client(out).await;
        let req = Request::get(format!("http://payments.shop{path}"))
            .body(full(Bytes::new()))
            .unwrap();
        let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
        let server = headers
            .get("x-echo-server")
            .map(|v| v.to_str().unwrap().to_string());
        (status, server, headers.get("weft-error").cloned())
    };

    for _ in 0..10 {
        let (status, server, _) = get(web.addrs.outbound, "/").await;
        assert_eq!(
            (status, server),
            (StatusCode::OK, served_by(&payments)),
            "web reaches payments"
        );
        let (status, server, _) = get(evil.addrs.outbound, "/").await;
        assert_eq!(
            (status, server),
            (StatusCode::OK, served_by(&thief)),
            "evil's own consumer route"
        );
    }
    // The producer route's cross-namespace backend, without a grant.
    let (status, server, error) = get(web.addrs.outbound, "/books").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(server, None, "nothing was sent to finance");
    assert_eq!(error.unwrap(), "unresolved-backend");

    yaml.push_str("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: shop-routes, namespace: finance}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]\n  to: [{group: '', kind: Service, name: ledger}]\n");
    std::fs::write(&file, &yaml).unwrap();
    eventually(
        Duration::from_secs(5),
        "the grant lets the route use ledger",
        || async {
            let (status, server, _) = get(web.addrs.outbound, "/books").await;
            (status == StatusCode::OK && server == served_by(&ledger)).then_some(())
        },
    )
    .await;
}
