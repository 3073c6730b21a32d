//! HTTPRoute status written against the in-test API server (no real
//! cluster can run here; `common` speaks list/watch and records status
//! patches with realistic JSON): `status.parents[]` under controller
//! `weft.dev/mesh`, with `Accepted` and `ResolvedRefs` and the Gateway
//! API's reasons, for a good route, a missing backend, a cross-namespace
//! backend without a ReferenceGrant (and with one), a missing parent and
//! a route validation refuses; and the status of a Gateway of class weft
//! and of the routes attached to it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use weft_control::index::{Index, IndexConfig};
use weft_control::kubernetes::KubernetesSource;
use weft_control::metrics::ControlMetrics;

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "creationTimestamp": "2026-11-01T10:00:00Z"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
        "status": {"loadBalancer": {}}
    })
}

fn route(name: &str, generation: i64, rules: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "generation": generation,
                     "uid": format!("uid-route-{name}"), "creationTimestamp": "2026-11-02T10:00:00Z"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}], "rules": rules},
        // Another implementation's entry, which Weft must keep.
        "status": {"parents": [{"parentRef": {"name": "api", "kind": "Service"},
                                "controllerName": "example.com/other",
                                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                "message": "", "observedGeneration": generation,
                                                "lastTransitionTime": "2026-11-02T10:00:00Z"}]}]}
    })
}

/// The latest status patch for route `name`.
fn latest(api: &FakeApi, name: &str) -> Option<Value> {
    let patches = api.state.lock().unwrap().status_patches.clone();
    patches
        .iter()
        .rev()
        .find(|(p, _)| p.ends_with(&format!("/namespaces/shop/httproutes/{name}/status")))
        .map(|(_, b)| b["status"]["parents"].clone())
}

/// Weft's entry's condition `kind` in a status: (status, reason).
fn condition(parents: &Value, kind: &str) -> Option<(String, String)> {
    let ours = parents
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/mesh")?;
    let c = ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_status_says_whether_each_route_is_accepted_and_resolved() {
    let api = FakeApi::start_with_gateway_api().await;
    api.apply(SERVICES, service("shop", "api", "10.96.0.20"));
    api.apply(SERVICES, service("finance", "ledger", "10.96.0.30"));
    let backend =
        |name: &str, ns: &str| json!([{"backendRefs": [{"name": name, "namespace": ns, "port": 80}]}]);
    api.apply(HTTPROUTES, route("good", 3, backend("api", "shop")));
    api.apply(HTTPROUTES, route("missing", 1, backend("nope", "shop")));
    api.apply(HTTPROUTES, route("cross", 1, backend("ledger", "finance")));
    api.apply(
        HTTPROUTES,
        route(
            "odd-kind",
            1,
            json!([{"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]}]),
        ),
    );
    api.apply(
        HTTPROUTES,
        route("invalid", 1, json!([{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "y", "name": "z"}}],
                                     "backendRefs": [{"name": "api", "port": 80}]}])),
    );
    let mut grpc = route(
        "rpc",
        2,
        json!([{"matches": [{"method": {"service": "shop.Cart", "method": "Add"}}],
                                            "backendRefs": [{"name": "nope", "port": 80}]}]),
    );
    grpc["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    api.apply(GRPCROUTES, grpc);
    let mut orphan = route("orphan", 1, backend("api", "shop"));
    orphan["spec"]["parentRefs"][0]["name"] = json!("gone");
    api.apply(HTTPROUTES, orphan);

    let index = Index::new(IndexConfig::default());
    let source = KubernetesSource::start(api.client(), Default::default());
    tokio::spawn(source.run(
        index,
        Arc::new(ControlMetrics::default()),
        Duration::from_millis(20),
    ));

    let names = ["good", "missing", "cross", "odd-kind", "invalid", "orphan"];
    until("every route's status", || {
        names.iter().all(|n| latest(&api, n).is_some())
    })
    .await;

    let good = latest(&api, "good").unwrap();
    let ours = good
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/mesh")
        .unwrap();
    assert_eq!(ours["parentRef"]["name"], "api", "{good}");
    assert_eq!(ours["parentRef"]["port"], 80);
    assert_eq!(ours["conditions"][0]["observedGeneration"], 3);
    assert!(
        good.as_array()
            .unwrap()
            .iter()
            .any(|p| p["controllerName"] == "example.com/other"),
        "another controller's entry is kept: {good}"
    );
    let t = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
    assert_eq!(condition(&good, "Accepted"), t("True", "Accepted"));
    assert_eq!(condition(&good, "ResolvedRefs"), t("True", "ResolvedRefs"));
    let missing = latest(&api, "missing").unwrap();
    assert_eq!(condition(&missing, "Accepted"), t("True", "Accepted"));
    assert_eq!(condition(&missing, "ResolvedRefs"), t("False", "BackendNotFound"));
    let cross = latest(&api, "cross").unwrap();
    assert_eq!(condition(&cross, "ResolvedRefs"), t("False", "RefNotPermitted"));
    assert_eq!(
        condition(&latest(&api, "odd-kind").unwrap(), "ResolvedRefs"),
        t("False", "InvalidKind")
    );
    let invalid = latest(&api, "invalid").unwrap();
    assert_eq!(condition(&invalid, "Accepted"), t("False", "UnsupportedValue"));
    let message = invalid[1]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
        + invalid[0]["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
    assert!(
        message.contains("spec.rules[0].filters[0].type"),
        "the message names the field: {message}"
    );
    assert_eq!(
        condition(&latest(&api, "orphan").unwrap(), "Accepted"),
        t("False", "NoMatchingParent")
    );

    // A ReferenceGrant in finance resolves the cross-namespace backend.
    api.apply(
        GRANTS,
        json!({"metadata": {"name": "shop-routes", "namespace": "finance"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                        "to": [{"group": "", "kind": "Service", "name": "ledger"}]}}),
    );
    until("the grant resolves the cross-namespace backend", || {
        latest(&api, "cross").is_some_and(|s| condition(&s, "ResolvedRefs") == t("True", "ResolvedRefs"))
    })
    .await;
}

/// A Gateway of class weft gets `Accepted`/`Programmed` and per listener
/// `attachedRoutes`; a route attaching to it gets `Accepted` with the
/// Gateway API's reasons (a listener that allows only its own namespace,
/// a hostname no listener serves); another class's Gateway is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_status_and_routes_attached_to_a_gateway() {
    let api = FakeApi::start_with_gateway_api().await;
    api.apply(SERVICES, service("shop", "api", "10.96.0.20"));
    let gateway = |name: &str, class: &str| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "shop", "generation": 2, "uid": format!("uid-gw-{name}"),
                         "creationTimestamp": "2026-11-02T10:00:00Z"},
            "spec": {"gatewayClassName": class, "listeners": [
                {"name": "web", "port": 8080, "protocol": "HTTP", "hostname": "*.example.com"},
                {"name": "admin", "port": 8081, "protocol": "HTTP", "hostname": "admin.example.com"},
                {"name": "tls", "port": 8443, "protocol": "HTTPS", "hostname": "secure.example.com",
                 "tls": {"certificateRefs": [{"name": "own"}, {"name": "shared", "namespace": "vault"}]}}
            ]}
        })
    };
    api.apply(GATEWAYS, gateway("edge", "weft"));
    api.apply(GATEWAYS, gateway("theirs", "other"));
    let attached = |name: &str, ns: &str, hostnames: Value, section: Option<&str>| {
        let mut parent = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": "shop"});
        if let Some(s) = section {
            parent["sectionName"] = json!(s);
        }
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "generation": 1, "uid": format!("uid-{ns}-{name}"),
                         "creationTimestamp": "2026-11-02T10:00:00Z"},
            "spec": {"parentRefs": [parent], "hostnames": hostnames,
                     "rules": [{"backendRefs": [{"name": "api", "namespace": "shop", "port": 80}]}]}
        })
    };
    api.apply(
        HTTPROUTES,
        attached("shop-web", "shop", json!(["www.example.com"]), None),
    );
    api.apply(HTTPROUTES, attached("elsewhere", "other", json!([]), None));
    api.apply(
        HTTPROUTES,
        attached("wrong-host", "shop", json!(["www.example.org"]), Some("web")),
    );

    let index = Index::new(IndexConfig::default());
    let source = KubernetesSource::start(api.client(), Default::default());
    tokio::spawn(source.run(
        index,
        Arc::new(ControlMetrics::default()),
        Duration::from_millis(20),
    ));
    let gateway_status = |name: &str| {
        let patches = api.state.lock().unwrap().status_patches.clone();
        patches
            .iter()
            .rev()
            .find(|(p, _)| p.ends_with(&format!("/namespaces/shop/gateways/{name}/status")))
            .map(|(_, b)| b["status"].clone())
    };
    until("the Gateway's status", || gateway_status("edge").is_some()).await;
    let status = gateway_status("edge").unwrap();
    for (i, kind) in ["Accepted", "Programmed"].iter().enumerate() {
        assert_eq!(status["conditions"][i]["type"], *kind, "{status}");
        assert_eq!(status["conditions"][i]["status"], "True", "{status}");
        assert_eq!(status["conditions"][i]["observedGeneration"], 2, "{status}");
    }
    let listeners = status["listeners"].as_array().unwrap();
    let web = listeners.iter().find(|l| l["name"] == "web").unwrap();
    let admin = listeners.iter().find(|l| l["name"] == "admin").unwrap();
    // shop-web (www.example.com under *.example.com) on web only; the
    // route from namespace other is not allowed (Same by default).
    assert_eq!(
        (web["attachedRoutes"].as_u64(), admin["attachedRoutes"].as_u64()),
        (Some(1), Some(0)),
        "{status}"
    );

    // A certificate in another namespace without a ReferenceGrant.
    let resolved = |l: &Value| {
        l["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ResolvedRefs"))
            .map(|c| (c["status"].clone(), c["reason"].clone()))
    };
    let tls = listeners.iter().find(|l| l["name"] == "tls").unwrap();
    assert_eq!(
        resolved(web),
        Some((json!("True"), json!("ResolvedRefs"))),
        "{status}"
    );
    assert_eq!(
        resolved(tls),
        Some((json!("False"), json!("RefNotPermitted"))),
        "{status}"
    );

    let t = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
    until("the routes' status", || {
        ["shop-web", "wrong-host"]
            .iter()
            .all(|n| latest(&api, n).is_some())
    })
    .await;
    assert_eq!(
        condition(&latest(&api, "shop-web").unwrap(), "Accepted"),
        t("True", "Accepted")
    );
    assert_eq!(
        condition(&latest(&api, "wrong-host").unwrap(), "Accepted"),
        t("False", "NoMatchingListenerHostname")
    );
    let elsewhere = {
        let patches = api.state.lock().unwrap().status_patches.clone();
        patches
            .iter()
            .rev()
            .find(|(p, _)| p.ends_with("/namespaces/other/httproutes/elsewhere/status"))
            .map(|(_, b)| b["status"]["parents"].clone())
    };
    assert_eq!(
        condition(&elsewhere.unwrap(), "Accepted"),
        t("False", "NotAllowedByListeners")
    );
    // Another controller's Gateway: never written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(gateway_status("theirs").is_none());
}
