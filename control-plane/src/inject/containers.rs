//! The containers and volumes the injector adds, as Kubernetes JSON.

use serde_json::{json, Map, Value};

use super::annotations::Overrides;
use super::{
    InjectConfig, INIT_CONTAINER, PROXY_CONTAINER, TOKEN_DIR, TOKEN_FILE, TOKEN_VOLUME, TRUST_ANCHORS_DIR,
    TRUST_ANCHORS_FILE, TRUST_ANCHORS_VOLUME,
};

/// The emptyDir `weft-init` mounts at `/run`, so iptables can take its
/// lock (`/run/xtables.lock`) under a read-only root filesystem.
pub const INIT_RUN_VOLUME: &str = "weft-init-run";

/// `weft-init`: runs `weft-proxy init` once, as root with `NET_ADMIN` and
/// `NET_RAW` only, to install the iptables rules.
pub fn init_container(cfg: &InjectConfig, o: &Overrides) -> Value {
    let mut args: Vec<String> = vec![
        "init".into(),
        "--proxy-uid".into(),
        cfg.proxy_uid.to_string(),
        "--inbound-port".into(),
        cfg.inbound_port.to_string(),
        "--outbound-port".into(),
        cfg.outbound_port.to_string(),
        "--admin-port".into(),
        cfg.admin_port.to_string(),
    ];
    for (flag, values) in [
        ("--skip-inbound-ports", &o.skip_inbound_ports),
        ("--skip-outbound-ports", &o.skip_outbound_ports),
        ("--skip-outbound-cidrs", &o.skip_outbound_cidrs),
    ] {
        if !values.is_empty() {
            args.push(flag.into());
            args.push(values.join(","));
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": cfg.proxy_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["weft-proxy"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "volumeMounts": [{"name": INIT_RUN_VOLUME, "mountPath": "/run"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// `weft-proxy`: the proxy as a native sidecar (an init container that
/// keeps running). Its startup probe holds the pod's later init containers
/// and its app containers until `/ready` answers.
pub fn proxy_container(cfg: &InjectConfig, o: &Overrides, app_ports: &[u16]) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        ("WEFT_CONTROL_PLANE", json!(cfg.control_plane)),
        ("WEFT_CONTROL_PLANE_IDENTITY", json!(cfg.control_plane_identity)),
        ("WEFT_TRUST_ANCHORS", json!(TRUST_ANCHORS_FILE)),
        ("WEFT_TRUST_DOMAIN", json!(cfg.trust_domain)),
        ("WEFT_NAMESPACE", field("metadata.namespace")),
        ("WEFT_SERVICE_ACCOUNT", field("spec.serviceAccountName")),
        ("WEFT_WORKLOAD", field("spec.serviceAccountName")),
        // Its inbound policy: that of every Service selecting this pod.
        ("WEFT_POD_NAME", field("metadata.name")),
        ("WEFT_PROXY_ID", field("metadata.name")),
        ("WEFT_IDENTITY_TOKEN_FILE", json!(TOKEN_FILE)),
        (
            "WEFT_INBOUND_LISTEN",
            json!(format!("0.0.0.0:{}", cfg.inbound_port)),
        ),
        (
            "WEFT_OUTBOUND_LISTEN",
            json!(format!("127.0.0.1:{}", cfg.outbound_port)),
        ),
        ("WEFT_ADMIN_LISTEN", json!(format!("0.0.0.0:{}", cfg.admin_port))),
        ("WEFT_LOG_FORMAT", json!("json")),
        // Inbound goes to the pod IP, as the caller dialled it: a listener
        // the app bound to loopback only stays private to the pod.
        ("WEFT_INBOUND_TO_POD_IP", json!("true")),
        // Every port the app listens on is reachable through the mesh, as
        // without it, declared as a containerPort or not.
        ("WEFT_INBOUND_ANY_PORT", json!("true")),
    ];
    if !app_ports.is_empty() {
        env.push(("WEFT_APP_PORTS", json!(join(app_ports))));
    }
    if let Some(opaque) = o.opaque_ports.as_deref().filter(|p| !p.is_empty()) {
        env.push(("WEFT_OPAQUE_PORTS", json!(join(opaque))));
    }
    if !o.upstreams.is_empty() {
        env.push(("WEFT_UPSTREAMS", json!(o.upstreams.join(","))));
    }
    let env: Vec<Value> = env
        .into_iter()
        .map(|(name, v)| match v {
            Value::String(s) => json!({"name": name, "value": s}),
            from => json!({"name": name, "valueFrom": from}),
        })
        .collect();

    let r = &cfg.resources;
    let pick = |pairs: [(&str, &Option<String>, &Option<String>); 2]| -> Map<String, Value> {
        pairs
            .into_iter()
            .filter_map(|(key, ours, default)| {
                let q = ours.as_ref().or(default.as_ref())?;
                Some((key.to_string(), json!(q)))
            })
            .collect()
    };
    let requests = pick([
        ("cpu", &o.cpu_request, &r.cpu_request),
        ("memory", &o.memory_request, &r.memory_request),
    ]);
    let limits = pick([
        ("cpu", &o.cpu_limit, &r.cpu_limit),
        ("memory", &o.memory_limit, &r.memory_limit),
    ]);
    let mut resources = Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }

    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": cfg.admin_port},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };
    json!({
        "name": PROXY_CONTAINER,
        "image": cfg.proxy_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["weft-proxy"],
        "restartPolicy": "Always",
        "ports": [
            {"name": "weft-inbound", "containerPort": cfg.inbound_port, "protocol": "TCP"},
            {"name": "weft-admin", "containerPort": cfg.admin_port, "protocol": "TCP"},
        ],
        "env": env,
        "resources": resources,
        "securityContext": {
            "runAsUser": cfg.proxy_uid,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // Up to 2 minutes (120 × 1 s) to get a certificate before the
        // kubelet restarts the proxy; the app waits meanwhile.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": TRUST_ANCHORS_VOLUME, "mountPath": TRUST_ANCHORS_DIR, "readOnly": true},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The projected ServiceAccount token (audience `weft`) the proxy sends
/// to the control plane, the trust anchors it checks the control plane's
/// certificate against (a ConfigMap weft-control publishes in every
/// namespace; not optional, so the pod waits for it rather than start a
/// proxy that cannot trust anyone), and `weft-init`'s scratch `/run`.
pub fn volumes(cfg: &InjectConfig) -> [Value; 3] {
    [
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": cfg.token_audience,
                "expirationSeconds": cfg.token_expiration_seconds,
                "path": "token",
            }}]},
        }),
        json!({"name": TRUST_ANCHORS_VOLUME, "configMap": {"name": cfg.trust_anchors_configmap}}),
        json!({"name": INIT_RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ]
}

fn join(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}
