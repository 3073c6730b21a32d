use serde_json::json;

use super::*;

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "initContainers": [{"name": "migrate", "image": "web:1"}],
            "containers": [
                {"name": "web", "image": "web:1", "ports": [
                    {"containerPort": 8080},
                    {"containerPort": 8080, "protocol": "TCP", "name": "again"},
                    {"containerPort": 5353, "protocol": "UDP"},
                ]},
                {"name": "metrics", "image": "exporter:1", "ports": [{"containerPort": 9100}]},
            ],
        },
    })
}

fn inject(v: &mut Value) -> Result<Outcome, InjectError> {
    inject_manifest(&InjectConfig::default(), v)
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn a_pod_gets_init_then_sidecar_before_its_own_init_containers() {
    let mut p = pod();
    assert_eq!(inject(&mut p).unwrap(), Outcome::Injected);
    let init = p["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<_> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["weft-init", "weft-proxy", "migrate"]);

    let proxy = &init[1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["command"], json!(["weft-proxy"]));
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 4191})
    );
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(env(proxy, "WEFT_APP_PORTS").unwrap()["value"], "8080,9100");
    assert_eq!(
        env(proxy, "WEFT_SERVICE_ACCOUNT").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(
        env(proxy, "WEFT_IDENTITY_TOKEN_FILE").unwrap()["value"],
        TOKEN_FILE
    );
    assert!(env(proxy, "WEFT_OPAQUE_PORTS").is_none());
    assert_eq!(
        proxy["resources"]["requests"],
        json!({"cpu": "100m", "memory": "64Mi"})
    );
    assert_eq!(proxy["resources"]["limits"], json!({"memory": "256Mi"}));

    let init = &init[0];
    assert_eq!(init["command"], json!(["weft-proxy"]));
    assert_eq!(init["args"][0], "init");
    assert_eq!(
        init["args"].as_array().unwrap()[1..3],
        [json!("--proxy-uid"), json!("2102")]
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(init["securityContext"]["runAsUser"], 0);

    let volumes = p["spec"]["volumes"].as_array().unwrap();
    let token = &volumes[0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(
        *token,
        json!({"audience": "weft", "expirationSeconds": 3600, "path": "token"})
    );
    let a = &p["metadata"]["annotations"];
    assert_eq!(a["weft.dev/injected"], "true");
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "4191");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    // The app containers are untouched.
    assert_eq!(p["spec"]["containers"], pod()["spec"]["containers"]);
}

#[test]
fn injecting_twice_is_injecting_once() {
    let mut once = pod();
    inject(&mut once).unwrap();
    let mut twice = once.clone();
    assert_eq!(
        inject(&mut twice).unwrap(),
        Outcome::Skipped(Skip::AlreadyInjected)
    );
    assert_eq!(once, twice);
    // A proxy container without the marker counts too.
    let mut p = pod();
    p["spec"]["containers"][1]["name"] = json!("weft-proxy");
    assert_eq!(inject(&mut p).unwrap(), Outcome::Skipped(Skip::AlreadyInjected));
}

#[test]
fn skipped_pods_are_untouched() {
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    let mut system = pod();
    system["metadata"]["namespace"] = json!("kube-system");
    let mut disabled = pod();
    disabled["metadata"]["annotations"] = json!({"weft.dev/inject": "disabled"});
    let mut service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
    for (mut v, why) in [
        (host, Skip::HostNetwork),
        (system, Skip::KubeSystem),
        (disabled, Skip::Disabled),
        (service.take(), Skip::NotAWorkload),
    ] {
        let before = v.clone();
        assert_eq!(inject(&mut v).unwrap(), Outcome::Skipped(why));
        assert_eq!(v, before);
    }
}

#[test]
fn every_workload_kind_has_its_template_found() {
    let template =
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}});
    let cases = [
        ("apps/v1", "Deployment", json!({"template": template})),
        ("apps/v1", "StatefulSet", json!({"template": template})),
        ("apps/v1", "DaemonSet", json!({"template": template})),
        ("apps/v1", "ReplicaSet", json!({"template": template})),
        ("batch/v1", "Job", json!({"template": template})),
        (
            "batch/v1",
            "CronJob",
            json!({"jobTemplate": {"spec": {"template": template}}}),
        ),
    ];
    for (api_version, kind, spec) in cases {
        let mut doc =
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": spec});
        assert_eq!(inject(&mut doc).unwrap(), Outcome::Injected, "{kind}");
        let pointer = pod_template_pointer(api_version, kind).unwrap();
        let t = doc.pointer(pointer).unwrap();
        assert_eq!(t["spec"]["initContainers"][1]["name"], "weft-proxy", "{kind}");
        assert_eq!(
            t["metadata"]["annotations"]["weft.dev/injected"], "true",
            "{kind}"
        );
        assert!(
            doc["metadata"].get("annotations").is_none(),
            "{kind}: only the template is annotated"
        );
    }
    // A Deployment of some other group is not ours to touch.
    let mut other =
        json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {"template": template}});
    assert_eq!(inject(&mut other).unwrap(), Outcome::Skipped(Skip::NotAWorkload));
    // A workload in kube-system is skipped by its manifest's namespace.
    let mut sys = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "x", "namespace": "kube-system"}, "spec": {"template": template}});
    assert_eq!(inject(&mut sys).unwrap(), Outcome::Skipped(Skip::KubeSystem));
    let mut broken = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}});
    assert_eq!(
        inject(&mut broken).unwrap_err().to_string(),
        "`spec.template`: expected the pod template (an object)"
    );
}

#[test]
fn annotations_override_ports_and_resources() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({
        "weft.dev/inbound-ports": "8080",
        "weft.dev/opaque-ports": "7000,7001",
        "weft.dev/skip-inbound-ports": "22",
        "weft.dev/skip-outbound-ports": "443,9000-9100",
        "weft.dev/skip-outbound-cidrs": "169.254.169.254/32",
        "weft.dev/proxy-cpu-limit": "1",
        "weft.dev/proxy-memory-request": "32Mi",
        "weft.dev/upstreams": "127.0.0.1:15432=db.shop:5432, 127.0.0.1:11883=mqtt:1883",
    });
    inject(&mut p).unwrap();
    let init = &p["spec"]["initContainers"][0]["args"];
    let args: Vec<_> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[9..],
        [
            "--skip-inbound-ports",
            "22",
            "--skip-outbound-ports",
            "443,9000:9100",
            "--skip-outbound-cidrs",
            "169.254.169.254/32"
        ]
    );
    let proxy = &p["spec"]["initContainers"][1];
    assert_eq!(env(proxy, "WEFT_APP_PORTS").unwrap()["value"], "8080");
    assert_eq!(env(proxy, "WEFT_OPAQUE_PORTS").unwrap()["value"], "7000,7001");
    assert_eq!(
        env(proxy, "WEFT_UPSTREAMS").unwrap()["value"],
        "127.0.0.1:15432=db.shop:5432,127.0.0.1:11883=mqtt:1883"
    );
    assert_eq!(
        proxy["resources"]["requests"],
        json!({"cpu": "100m", "memory": "32Mi"})
    );
    assert_eq!(
        proxy["resources"]["limits"],
        json!({"cpu": "1", "memory": "256Mi"})
    );
    // The user's annotations stay.
    assert_eq!(p["metadata"]["annotations"]["weft.dev/inbound-ports"], "8080");
}

#[test]
fn errors_name_what_is_wrong_and_leave_the_pod_alone() {
    let cases = [
        (
            json!({"weft.dev/inject": "yes"}),
            "annotation `weft.dev/inject`: expected `enabled` or `disabled`, got \"yes\"",
        ),
        (
            json!({"weft.dev/inbound-ports": "4191"}),
            "annotation `weft.dev/inbound-ports`: port 4191 is the proxy's admin port",
        ),
        (
            json!({"weft.dev/proxy-cpu-request": "fast"}),
            "annotation `weft.dev/proxy-cpu-request`: expected a Kubernetes quantity",
        ),
        (
            json!({"weft.dev/upstreams": "15432=db.shop:5432"}),
            "annotation `weft.dev/upstreams`: expected LISTEN=SERVICE:PORT",
        ),
    ];
    for (annotations, expected) in cases {
        let mut p = pod();
        p["metadata"]["annotations"] = annotations;
        let before = p.clone();
        let e = inject(&mut p).unwrap_err().to_string();
        assert!(e.starts_with(expected), "{e}");
        assert_eq!(p, before);
    }
    let mut p = pod();
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(4143);
    assert_eq!(
        inject(&mut p).unwrap_err().to_string(),
        "`spec.containers[0].ports[0].containerPort`: port 4143 is the proxy's inbound port; the app cannot use it"
    );
}

#[test]
fn a_pod_without_ports_or_annotations_gets_no_app_ports() {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "batch"},
        "spec": {"containers": [{"name": "job", "image": "job:1"}]}});
    inject(&mut p).unwrap();
    let proxy = &p["spec"]["initContainers"][1];
    assert!(env(proxy, "WEFT_APP_PORTS").is_none());
    assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 3);
}

#[test]
fn the_proxy_trusts_the_published_anchors_and_expects_the_control_planes_identity() {
    let mut p = pod();
    inject(&mut p).unwrap();
    let proxy = &p["spec"]["initContainers"][1];
    assert_eq!(
        env(proxy, "WEFT_CONTROL_PLANE").unwrap()["value"],
        "https://weft-control.weft-system.svc.cluster.local:8086"
    );
    assert_eq!(
        env(proxy, "WEFT_CONTROL_PLANE_IDENTITY").unwrap()["value"],
        "spiffe://cluster.local/ns/weft-system/sa/weft-control"
    );
    assert_eq!(
        env(proxy, "WEFT_TRUST_ANCHORS").unwrap()["value"],
        "/var/run/weft/trust-anchors/ca.crt"
    );
    assert_eq!(
        proxy["volumeMounts"][1],
        json!({"name": "weft-trust-anchors", "mountPath": "/var/run/weft/trust-anchors", "readOnly": true})
    );
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    let anchors = volumes
        .iter()
        .find(|v| v["name"] == "weft-trust-anchors")
        .unwrap();
    assert_eq!(
        *anchors,
        json!({"name": "weft-trust-anchors", "configMap": {"name": "weft-trust-anchors"}}),
        "not optional: without anchors the pod waits"
    );

    // Another ConfigMap name, and another control plane.
    let cfg = InjectConfig {
        trust_anchors_configmap: "mesh-roots".into(),
        control_plane_identity: "spiffe://example.org/ns/mesh/sa/cp".into(),
        ..InjectConfig::default()
    };
    let mut p = pod();
    inject_manifest(&cfg, &mut p).unwrap();
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["configMap"]["name"] == "mesh-roots"));
    assert_eq!(
        env(&p["spec"]["initContainers"][1], "WEFT_CONTROL_PLANE_IDENTITY").unwrap()["value"],
        "spiffe://example.org/ns/mesh/sa/cp"
    );
}

#[test]
fn the_control_planes_url_and_identity_follow_its_namespace_and_service_account() {
    let chart = ControlPlane::default();
    assert_eq!(chart.url(), DEFAULT_CONTROL_PLANE);
    assert_eq!(chart.identity(), DEFAULT_CONTROL_PLANE_IDENTITY);
    let other = ControlPlane {
        namespace: "mesh".into(),
        service_account: "cp".into(),
        trust_domain: "example.org".into(),
        cluster_domain: "corp.internal".into(),
    };
    assert_eq!(other.url(), "https://weft-control.mesh.svc.corp.internal:8086");
    assert_eq!(other.identity(), "spiffe://example.org/ns/mesh/sa/cp");
}

#[test]
fn opted_in_reads_annotation_or_label() {
    let mut p = pod();
    assert!(!opted_in(&p));
    p["metadata"]["labels"]["weft.dev/inject"] = json!("enabled");
    assert!(opted_in(&p));
    let mut p = pod();
    p["metadata"]["annotations"] = json!({"weft.dev/inject": "enabled"});
    assert!(opted_in(&p));
}

#[test]
fn the_workload_is_the_pods_controller() {
    let owned = |kind: &str, name: &str, labels: Value| {
        json!({"metadata": {
            "generateName": format!("{name}-"),
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": true}],
        }})
    };
    let deployment = owned(
        "ReplicaSet",
        "web-7c5ddbdf54",
        json!({"pod-template-hash": "7c5ddbdf54"}),
    );
    assert_eq!(workload_of(&deployment).as_deref(), Some("web"));
    // The canary's own Deployment: told apart from the primary.
    let canary = owned(
        "ReplicaSet",
        "web-canary-5f6d7c8b9",
        json!({"pod-template-hash": "5f6d7c8b9"}),
    );
    assert_eq!(workload_of(&canary).as_deref(), Some("web-canary"));
    assert_eq!(
        workload_of(&owned("StatefulSet", "db", json!({}))).as_deref(),
        Some("db")
    );
    assert_eq!(
        workload_of(&owned("Job", "nightly-29163840", json!({}))).as_deref(),
        Some("nightly"),
        "a CronJob's Job"
    );
    assert_eq!(
        workload_of(&owned("Job", "migrate-v2", json!({}))).as_deref(),
        Some("migrate-v2")
    );
    let bare = json!({"metadata": {"name": "debug", "labels": {"app.kubernetes.io/name": "toolbox"}}});
    assert_eq!(workload_of(&bare).as_deref(), Some("toolbox"));
    assert_eq!(
        workload_of(&json!({"metadata": {"name": "debug"}})).as_deref(),
        Some("debug")
    );
}

#[test]
fn the_apps_own_scrape_annotations_are_kept_for_the_proxy_to_merge() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/actuator/prometheus",
    });
    inject(&mut p).unwrap();
    let proxy = &p["spec"]["initContainers"][1];
    assert_eq!(env(proxy, "WEFT_APP_METRICS_PORT").unwrap()["value"], "8080");
    assert_eq!(
        env(proxy, "WEFT_APP_METRICS_PATH").unwrap()["value"],
        "/actuator/prometheus"
    );
    assert_eq!(
        p["metadata"]["annotations"]["prometheus.io/port"], "4191",
        "the proxy is scraped"
    );
    assert_eq!(p["metadata"]["annotations"]["prometheus.io/path"], "/metrics");
    // No annotations of its own (or scraping off): nothing to merge.
    let mut plain = pod();
    inject(&mut plain).unwrap();
    assert!(env(&plain["spec"]["initContainers"][1], "WEFT_APP_METRICS_PORT").is_none());
}
