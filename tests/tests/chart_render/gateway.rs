//! The edge gateway (`gateway.enabled`): rendered only when asked; runs
//! `weft-proxy gateway` with its Gateway's name, its listener ports on the
//! container and the Service, and each certificate Secret mounted where
//! the gateway reads `<dir>/<namespace>/<name>/tls.{crt,key}`; and joins
//! the mesh as a proxy the injector builds does (the same control plane,
//! identity, trust anchors and token), without being injected itself.

use std::collections::BTreeMap;

use serde_json::Value;
use weft_control::inject::annotations::Overrides;
use weft_control::inject::containers::{proxy_container, volumes};
use weft_control::inject::{inject_pod, ControlPlane, InjectConfig, Outcome, Skip};

use crate::tool::{helm_template, tools};
use crate::{control_args, control_deployment, of_kind, renders, str_of, Render, OLDEST};

/// The cases that enable the gateway, with the certificate Secrets each
/// gives.
const CASES: &[(&str, &[&str])] = &[
    ("gateway", &["shop-tls"]),
    (
        "gateway: one replica (no PDB), NodePort, no scrape annotations",
        &[],
    ),
    (
        "gateway: every value (values file), another release and namespace",
        &["shop-tls", "api.example.com"],
    ),
];

/// The gateway's objects of a render: those of component `gateway`.
fn gateway_objects(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway")
        .collect()
}

/// The gateway's Deployment, pod spec and container.
fn gateway_deployment(r: &Render) -> (&Value, &Value, &Value) {
    let deployments: Vec<&Value> = gateway_objects(&r.docs)
        .into_iter()
        .filter(|d| d["kind"] == "Deployment")
        .collect();
    let [deployment] = deployments[..] else {
        panic!("{}: one gateway Deployment", r.label())
    };
    let spec = &deployment["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{}: one container", r.label());
    (deployment, spec, &containers[0])
}

/// The container's env as name → value, or name → valueFrom.
fn env(container: &Value) -> BTreeMap<&str, &Value> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let v = if e.get("value").is_some() {
                &e["value"]
            } else {
                &e["valueFrom"]
            };
            (str_of(&e["name"]), v)
        })
        .collect()
}

fn gateway_renders() -> Option<Vec<&'static Render>> {
    let renders = renders()?;
    let out: Vec<&Render> = renders
        .iter()
        .filter(|r| CASES.iter().any(|(name, _)| r.case.name == *name))
        .collect();
    assert_eq!(
        out.len(),
        CASES.len() * 2,
        "each gateway case, for both Kubernetes versions"
    );
    Some(out)
}

#[test]
fn the_gateway_is_rendered_only_when_enabled() {
    let Some(renders) = renders() else { return };
    for r in renders {
        let mut kinds: Vec<&str> = gateway_objects(&r.docs)
            .iter()
            .map(|d| str_of(&d["kind"]))
            .collect();
        kinds.sort();
        if !CASES.iter().any(|(name, _)| r.case.name == *name) {
            assert_eq!(kinds, Vec::<&str>::new(), "{}: off by default", r.label());
            assert_eq!(of_kind(&r.docs, "Deployment").len(), 1, "{}", r.label());
            continue;
        }
        let (deployment, ..) = gateway_deployment(r);
        let mut want = vec!["Deployment", "Service", "ServiceAccount"];
        if deployment["spec"]["replicas"].as_u64() > Some(1) {
            want.push("PodDisruptionBudget");
        }
        want.sort();
        assert_eq!(kinds, want, "{}", r.label());
        // All named <fullname>-gateway, beside <fullname>-control.
        let control = str_of(&control_deployment(&r.docs)["metadata"]["name"]);
        let name = format!("{}-gateway", control.strip_suffix("-control").unwrap());
        for d in gateway_objects(&r.docs) {
            assert_eq!(
                d["metadata"]["name"],
                name.as_str(),
                "{}: {}",
                r.label(),
                d["kind"]
            );
        }
    }
}

#[test]
fn the_gateway_runs_weft_proxy_gateway_for_its_gateway() {
    let Some(renders) = gateway_renders() else { return };
    for r in renders.iter().filter(|r| r.case.name == "gateway") {
        let (deployment, spec, c) = gateway_deployment(r);
        assert_eq!(deployment["spec"]["replicas"], 2);
        assert_eq!(c["command"], serde_json::json!(["weft-proxy"]));
        assert_eq!(c["args"], serde_json::json!(["gateway"]), "{}", r.label());
        let env = env(c);
        assert_eq!(env["WEFT_GATEWAY_NAME"], "weft-gateway");
        assert_eq!(
            env["WEFT_GATEWAY_CERTIFICATES"],
            "/var/run/weft/gateway/certificates"
        );
        assert_eq!(env["WEFT_GATEWAY_LISTEN_IP"], "0.0.0.0");
        assert_eq!(env["WEFT_ADMIN_LISTEN"], "0.0.0.0:4191");
        for absent in [
            "WEFT_INBOUND_LISTEN",
            "WEFT_OUTBOUND_LISTEN",
            "WEFT_APP_PORTS",
            "WEFT_INBOUND_TO_POD_IP",
            "WEFT_INBOUND_ANY_PORT",
        ] {
            assert!(!env.contains_key(absent), "{}: no {absent}", r.label());
        }

        // The secret, at <dir>/<namespace>/<secret>, whole (no subPath:
        // the kubelet updates it in place).
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/var/run/weft/gateway/certificates/weft-system/shop-tls")
            .expect("shop-tls mounted at <dir>/weft-system/shop-tls");
        assert_eq!(mount["readOnly"], true);
        assert!(mount.get("subPath").is_none(), "{mount}");
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["secret"]["secretName"], "shop-tls");

        // Ports: the listeners' and the admin port; probes on the latter.
        let ports: Vec<(&str, u64)> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (str_of(&p["name"]), p["containerPort"].as_u64().unwrap()))
            .collect();
        assert_eq!(ports, [("http", 8080), ("https", 8443), ("weft-admin", 4191)]);
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            serde_json::json!({"path": "/ready", "port": "weft-admin"})
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"],
            serde_json::json!({"path": "/live", "port": "weft-admin"})
        );
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/port"], "4191");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");

        // The Service: the listeners' ports, by name, not the admin port.
        let services: Vec<&Value> = gateway_objects(&r.docs)
            .into_iter()
            .filter(|d| d["kind"] == "Service")
            .collect();
        let service = services[0];
        assert_eq!(service["spec"]["type"], "LoadBalancer");
        let service_ports: Vec<(&str, u64, &str)> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_of(&p["name"]),
                    p["port"].as_u64().unwrap(),
                    str_of(&p["targetPort"]),
                )
            })
            .collect();
        assert_eq!(service_ports, [("http", 8080, "http"), ("https", 8443, "https")]);

        // The PodDisruptionBudget: minAvailable 1 of the gateway's pods.
        let pdbs: Vec<&Value> = gateway_objects(&r.docs)
            .into_iter()
            .filter(|d| d["kind"] == "PodDisruptionBudget")
            .collect();
        let pdb = pdbs[0];
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );

        // Non-root, read-only, no capabilities; its own ServiceAccount,
        // whose API token it does not mount.
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"], serde_json::json!({"drop": ["ALL"]}));
        assert_eq!(spec["serviceAccountName"], "weft-gateway");
        assert_eq!(spec["automountServiceAccountToken"], false);
        // The proxy drains before the kubelet's SIGKILL, preStop included.
        assert_eq!(spec["terminationGracePeriodSeconds"], 40);
        assert_eq!(env["WEFT_SHUTDOWN_GRACE"], "30s");
        assert_eq!(
            c["lifecycle"]["preStop"]["exec"]["command"],
            serde_json::json!(["sleep", "5"])
        );
        // Spread over nodes.
        let term = &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
            ["podAffinityTerm"];
        assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(
            term["labelSelector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
    }

    // Every value of its own, set.
    for r in renders
        .iter()
        .filter(|r| r.case.name.starts_with("gateway: every value"))
    {
        let (deployment, spec, c) = gateway_deployment(r);
        assert_eq!(deployment["metadata"]["namespace"], "edge");
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert_eq!(env(c)["WEFT_GATEWAY_NAME"], "edge");
        assert_eq!(env(c)["WEFT_SHUTDOWN_GRACE"], "50s");
        assert_eq!(spec["terminationGracePeriodSeconds"], 60);
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        let service = gateway_objects(&r.docs)
            .into_iter()
            .find(|d| d["kind"] == "Service")
            .unwrap();
        assert_eq!(service["spec"]["type"], "ClusterIP");
        assert_eq!(service["metadata"]["annotations"]["example.com/lb"], "internal");
        let names: Vec<&str> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| str_of(&p["name"]))
            .collect();
        assert_eq!(names, ["web", "web-tls", "grpc-tls"]);
        let pdb = gateway_objects(&r.docs)
            .into_iter()
            .find(|d| d["kind"] == "PodDisruptionBudget")
            .unwrap();
        assert_eq!(pdb["spec"]["minAvailable"], 2);
    }
}

#[test]
fn the_gateway_mounts_each_certificate_secret() {
    let Some(renders) = gateway_renders() else { return };
    for r in renders {
        let secrets = CASES.iter().find(|(name, _)| r.case.name == *name).unwrap().1;
        let (deployment, spec, c) = gateway_deployment(r);
        let namespace = str_of(&deployment["metadata"]["namespace"]);
        let dir = str_of(env(c)["WEFT_GATEWAY_CERTIFICATES"]);
        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (str_of(&v["name"]), v))
            .collect();
        let mut mounted = Vec::new();
        for m in c["volumeMounts"].as_array().unwrap() {
            let Some(rest) = str_of(&m["mountPath"]).strip_prefix(&format!("{dir}/")) else {
                continue;
            };
            let secret = &volumes[str_of(&m["name"])]["secret"];
            let name = str_of(&secret["secretName"]);
            assert_eq!(rest, format!("{namespace}/{name}"), "{}: {m}", r.label());
            assert!(m.get("subPath").is_none(), "{}: {m}", r.label());
            assert_eq!(m["readOnly"], true);
            let items: Vec<(&str, &str)> = secret["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| (str_of(&i["key"]), str_of(&i["path"])))
                .collect();
            assert_eq!(items, [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]);
            mounted.push(name);
        }
        assert_eq!(mounted, secrets, "{}", r.label());
    }
}

/// What the injector would give a proxy in this render: the chart's
/// control plane (its `--inject-*`, `--trust-domain` flags and its
/// ServiceAccount), as `WebhookArgs::inject_config` builds it.
fn inject_config(r: &Render) -> InjectConfig {
    let args = control_args(&r.docs);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{}: {name} in {args:?}", r.label()))
            .to_string()
    };
    let control = control_deployment(&r.docs);
    let cp = ControlPlane {
        namespace: str_of(&control["metadata"]["namespace"]).into(),
        service_account: str_of(&control["spec"]["template"]["spec"]["serviceAccountName"]).into(),
        trust_domain: flag("--trust-domain"),
        cluster_domain: flag("--cluster-domain"),
    };
    InjectConfig {
        proxy_image: flag("--inject-proxy-image"),
        control_plane: flag("--inject-control-plane"),
        control_plane_identity: cp.identity(),
        trust_domain: cp.trust_domain.clone(),
        ..InjectConfig::default()
    }
}

/// Whether a webhook's objectSelector (matchExpressions In/NotIn) selects
/// a pod with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let values: Vec<&Value> = e["values"].as_array().into_iter().flatten().collect();
            let has = labels.get(str_of(&e["key"])).is_some_and(|v| values.contains(&v));
            match str_of(&e["operator"]) {
                "In" => has,
                "NotIn" => !has,
                op => panic!("operator {op}"),
            }
        })
}

#[test]
fn the_gateway_joins_the_mesh_as_an_injected_proxy_does_and_is_never_injected() {
    let Some(renders) = gateway_renders() else { return };
    for r in renders {
        let cfg = inject_config(r);
        let sidecar = proxy_container(&cfg, &Overrides::default(), &[]);
        let (deployment, spec, c) = gateway_deployment(r);
        let (gateway_env, sidecar_env) = (env(c), env(&sidecar));
        for name in [
            "WEFT_CONTROL_PLANE",
            "WEFT_CONTROL_PLANE_IDENTITY",
            "WEFT_TRUST_ANCHORS",
            "WEFT_TRUST_DOMAIN",
            "WEFT_NAMESPACE",
            "WEFT_SERVICE_ACCOUNT",
            "WEFT_WORKLOAD",
            "WEFT_POD_NAME",
            "WEFT_PROXY_ID",
            "WEFT_IDENTITY_TOKEN_FILE",
            "WEFT_ADMIN_LISTEN",
            "WEFT_LOG_FORMAT",
        ] {
            assert_eq!(
                gateway_env.get(name),
                sidecar_env.get(name),
                "{}: {name} as the injector sets it",
                r.label()
            );
        }
        let cluster_domain = control_args(&r.docs)
            .into_iter()
            .find_map(|a| a.strip_prefix("--cluster-domain=").map(str::to_string))
            .unwrap();
        assert_eq!(gateway_env["WEFT_CLUSTER_DOMAIN"], cluster_domain.as_str());
        assert_eq!(
            c["image"],
            sidecar["image"],
            "{}: the injected proxy's image",
            r.label()
        );
        assert_eq!(
            c["securityContext"]["runAsUser"],
            sidecar["securityContext"]["runAsUser"]
        );

        // The token and trust-anchor volumes and mounts, as injected.
        let injected_volumes = volumes(&cfg);
        for m in sidecar["volumeMounts"].as_array().unwrap() {
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["name"] == m["name"])
                .unwrap_or_else(|| panic!("{}: mount {}", r.label(), m["name"]));
            assert_eq!(mount, m, "{}", r.label());
            let volume = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap();
            let injected = injected_volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
            assert_eq!(volume, injected, "{}", r.label());
        }
        // The admin port by the name the injector gives it (what the
        // PodMonitor scrapes).
        let admin = |c: &Value| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["containerPort"] == cfg.admin_port)
                .map(|p| p["name"].clone())
        };
        assert_eq!(admin(c), admin(&sidecar), "{}", r.label());

        // Never injected: the injector skips the template...
        let mut template = deployment["spec"]["template"].clone();
        let namespace = str_of(&deployment["metadata"]["namespace"]);
        assert_eq!(
            inject_pod(&cfg, namespace, &mut template),
            Ok(Outcome::Skipped(Skip::Disabled)),
            "{}",
            r.label()
        );
        // ...and no webhook is called for its pods.
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for w in of_kind(&r.docs, "MutatingWebhookConfiguration") {
            for hook in w["webhooks"].as_array().unwrap() {
                assert!(
                    !selects(&hook["objectSelector"], labels),
                    "{}: {} selects the gateway",
                    r.label(),
                    hook["name"]
                );
            }
        }
    }
}

/// A repeated port name or number, or the admin port's name, is refused
/// by the template (the schema cannot see repeats of one field): at
/// install, `template` and `upgrade`. `helm lint` only logs a template's
/// `fail` (`[INFO] Fail: …`) and passes, so it is not asked here.
#[test]
fn repeated_gateway_ports_fail_at_install() {
    if !tools() {
        return;
    }
    for ports in [
        r#"[{"name":"a","port":8080},{"name":"b","port":8080}]"#,
        r#"[{"name":"a","port":8080},{"name":"a","port":8081}]"#,
        r#"[{"name":"weft-admin","port":8080}]"#,
    ] {
        let args = [
            "--set".to_string(),
            "gateway.enabled=true".to_string(),
            "--set-json".to_string(),
            format!("gateway.ports={ports}"),
        ];
        let r = helm_template("weft", "weft-system", OLDEST, &args);
        assert!(
            !r.ok && r.stderr.contains("gateway.ports"),
            "{ports}: ok={} {}",
            r.ok,
            r.stderr
        );
    }
}
