//! The sidecar injector's mutation: what the admission webhook
//! ([`crate::webhook`]) and `weft inject` add to a pod. Pure functions over
//! `serde_json::Value`, no I/O; docs/injection.md describes the result.
//!
//! - [`inject_pod`] mutates a Pod, or a workload's pod template (both are
//!   `{metadata, spec}`), in place.
//! - [`inject_manifest`] finds the pod template of a Pod, Deployment,
//!   StatefulSet, DaemonSet, ReplicaSet, Job or CronJob and injects it.
//! - [`annotations`] reads the per-pod overrides; [`containers`] builds
//!   what is added.
//!
//! The pod gains, in order at the front of `initContainers`, `weft-init`
//! (`weft-proxy init`: the iptables rules) then `weft-proxy` (the proxy as
//! a native sidecar, `restartPolicy: Always`, with a startup probe on
//! `/ready`, told the control plane's `https://` URL and SPIFFE ID), the
//! projected token volume, the trust-anchor ConfigMap volume (what the
//! proxy verifies the control plane with), and the Prometheus scrape and
//! `weft.dev/injected` annotations. Injecting twice changes nothing.

pub mod annotations;
pub mod containers;

use serde_json::{json, Map, Value};

use annotations::{Overrides, INBOUND_PORTS, INJECT, INJECTED};

pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";
pub const TOKEN_VOLUME: &str = "weft-token";
/// Where the projected token is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/weft.dev";
pub const TOKEN_FILE: &str = "/var/run/secrets/weft.dev/token";
/// The image holding `weft-proxy` (the Dockerfile builds one image with
/// `weft`, `weft-proxy` and `weft-control`).
pub const DEFAULT_PROXY_IMAGE: &str = concat!("ghcr.io/weft-mesh/weft:", env!("CARGO_PKG_VERSION"));
/// Where the chart installs the control plane (what docs/kubernetes.md
/// installs into), and its ServiceAccount. One default for the injector
/// and `weft inject`: a namespace the install does not own (say `weft`)
/// must not be where proxies look for it.
pub const DEFAULT_CONTROL_PLANE_NAMESPACE: &str = "weft-system";
pub const DEFAULT_CONTROL_PLANE_SERVICE_ACCOUNT: &str = "weft-control";
/// The control plane's gRPC Service as the chart installs it: TLS, so
/// `https://` (a proxy refuses `http://`).
pub const DEFAULT_CONTROL_PLANE: &str = "https://weft-control.weft-system.svc.cluster.local:8086";
/// The SPIFFE ID a proxy expects the control plane's certificate to name.
pub const DEFAULT_CONTROL_PLANE_IDENTITY: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-control";
/// The ConfigMap weft-control publishes into every namespace (key
/// `ca.crt`: the trust-anchor bundle).
pub const DEFAULT_TRUST_ANCHORS_CONFIGMAP: &str = crate::kubernetes::trust_anchors::CONFIGMAP;
pub const TRUST_ANCHORS_VOLUME: &str = "weft-trust-anchors";
/// Where the trust-anchor ConfigMap is mounted in the proxy, and the
/// bundle in it (`WEFT_TRUST_ANCHORS`); the kubelet refreshes it.
pub const TRUST_ANCHORS_DIR: &str = "/var/run/weft/trust-anchors";
pub const TRUST_ANCHORS_FILE: &str = "/var/run/weft/trust-anchors/ca.crt";
/// The uid the proxy runs as, which `weft-proxy init` exempts from
/// redirection.
pub const PROXY_UID: i64 = 2102;

/// Who the control plane is, for the proxies it injects: its namespace
/// and ServiceAccount (which make its SPIFFE ID), trust domain and cluster
/// domain (which make its Service's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub cluster_domain: String,
}

impl Default for ControlPlane {
    /// The chart's: `weft-system`, `weft-control`, `cluster.local`.
    fn default() -> Self {
        Self {
            namespace: DEFAULT_CONTROL_PLANE_NAMESPACE.into(),
            service_account: DEFAULT_CONTROL_PLANE_SERVICE_ACCOUNT.into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

impl ControlPlane {
    /// `https://weft-control.<namespace>.svc.<cluster domain>:8086`: the
    /// Service the chart makes for release `weft`.
    pub fn url(&self) -> String {
        format!(
            "https://weft-control.{}.svc.{}:8086",
            self.namespace, self.cluster_domain
        )
    }

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn identity(&self) -> String {
        crate::index::spiffe_id(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

/// What is injected, apart from the per-pod overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of `weft-proxy` (and `weft-proxy init`).
    pub proxy_image: String,
    /// `IfNotPresent` by default.
    pub image_pull_policy: String,
    /// The control plane's gRPC URL, as the proxies reach it (`https://`).
    pub control_plane: String,
    /// The SPIFFE ID the control plane's certificate must name
    /// (`WEFT_CONTROL_PLANE_IDENTITY`).
    pub control_plane_identity: String,
    /// The ConfigMap (in the pod's namespace) whose `ca.crt` the proxy
    /// verifies the control plane with, mounted at [`TRUST_ANCHORS_DIR`].
    pub trust_anchors_configmap: String,
    /// SPIFFE trust domain (the control plane's `--trust-domain`).
    pub trust_domain: String,
    /// The proxy's uid and gid (2102).
    pub proxy_uid: i64,
    /// The proxy's listeners: 4143, 4140 (loopback), 4191.
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    /// The proxy's default requests and limits.
    pub resources: Resources,
    /// Audience of the projected token: what the control plane's
    /// TokenReview asks for (`weft`).
    pub token_audience: String,
    /// Lifetime of the projected token; the kubelet refreshes it at 80%.
    pub token_expiration_seconds: i64,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane: DEFAULT_CONTROL_PLANE.into(),
            control_plane_identity: DEFAULT_CONTROL_PLANE_IDENTITY.into(),
            trust_anchors_configmap: DEFAULT_TRUST_ANCHORS_CONFIGMAP.into(),
            trust_domain: "cluster.local".into(),
            proxy_uid: PROXY_UID,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            resources: Resources::default(),
            token_audience: "weft".into(),
            token_expiration_seconds: 3600,
        }
    }
}

/// Kubernetes quantities for the proxy container; `None` leaves it unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    /// 100m CPU and 64Mi requested; a 256Mi memory limit; no CPU limit
    /// (a throttled proxy adds latency to every request of its app).
    fn default() -> Self {
        Self {
            cpu_request: Some("100m".into()),
            memory_request: Some("64Mi".into()),
            cpu_limit: None,
            memory_limit: Some("256Mi".into()),
        }
    }
}

/// What [`inject_pod`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(Skip),
}

/// Why a pod was left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It already has the proxy (`weft.dev/injected`, or a container named
    /// `weft-proxy`).
    AlreadyInjected,
    /// `weft.dev/inject: disabled`.
    Disabled,
    /// It runs in `kube-system`.
    KubeSystem,
    /// `spec.hostNetwork: true`: iptables rules would capture the node's
    /// traffic.
    HostNetwork,
    /// The document is not a workload with a pod template.
    NotAWorkload,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::AlreadyInjected => "already injected",
            Skip::Disabled => "annotated weft.dev/inject: disabled",
            Skip::KubeSystem => "in kube-system",
            Skip::HostNetwork => "uses the host network",
            Skip::NotAWorkload => "not a workload",
        }
    }
}

/// A pod that cannot be injected as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation `{annotation}`: {problem}")]
    Annotation { annotation: String, problem: String },
    #[error("`{field}`: {problem}")]
    Field { field: String, problem: String },
}

fn field_error(field: impl Into<String>, problem: impl Into<String>) -> InjectError {
    InjectError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Whether a pod opted in itself: annotation or label
/// `weft.dev/inject: enabled`.
pub fn opted_in(pod: &Value) -> bool {
    ["/metadata/annotations", "/metadata/labels"]
        .iter()
        .any(|p| pod.pointer(p).and_then(|m| m.get(INJECT)).and_then(Value::as_str) == Some("enabled"))
}

/// Where a kind keeps its pod template (a JSON pointer; `""` for a Pod),
/// for the workload kinds of the core, `apps` and `batch` groups.
pub fn pod_template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    match (group, kind) {
        ("", "Pod") => Some(""),
        ("", "ReplicationController") => Some("/spec/template"),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => Some("/spec/template"),
        ("batch", "Job") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects the pod template of a manifest (its namespace: the manifest's
/// `metadata.namespace`, else `default`). Other kinds are
/// [`Skip::NotAWorkload`].
pub fn inject_manifest(cfg: &InjectConfig, doc: &mut Value) -> Result<Outcome, InjectError> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(pointer) = pod_template_pointer(api_version, kind) else {
        return Ok(Outcome::Skipped(Skip::NotAWorkload));
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let field = pointer.trim_start_matches('/').replace('/', ".");
    // A template's workload is the object that holds it.
    let owner = (kind != "Pod")
        .then(|| {
            doc.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .flatten();
    match doc.pointer_mut(pointer) {
        Some(template @ Value::Object(_)) => inject_pod_of(cfg, &namespace, owner.as_deref(), template),
        _ => Err(field_error(field, "expected the pod template (an object)")),
    }
}

/// Injects a Pod or pod template (`{metadata, spec}`) in `namespace`, in
/// place. Skipped pods are left untouched; so are pods on error.
pub fn inject_pod(cfg: &InjectConfig, namespace: &str, pod: &mut Value) -> Result<Outcome, InjectError> {
    inject_pod_of(cfg, namespace, None, pod)
}

/// The workload a pod belongs to, for metrics: its controller (a
/// ReplicaSet's Deployment, found by stripping the `pod-template-hash`; a
/// Job's CronJob, by stripping the schedule suffix; a StatefulSet, a
/// DaemonSet, …), else its `app.kubernetes.io/name` or `app` label, else
/// its name (or `generateName`).
pub fn workload_of(pod: &Value) -> Option<String> {
    let label = |k: &str| {
        pod.pointer(&format!("/metadata/labels/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
    };
    let controller = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|owners| {
            owners
                .iter()
                .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
                .or(owners.first())
        });
    if let Some(owner) = controller {
        let kind = owner.get("kind").and_then(Value::as_str).unwrap_or("");
        if let Some(name) = owner.get("name").and_then(Value::as_str) {
            let name = match (kind, label("pod-template-hash")) {
                ("ReplicaSet", Some(hash)) => name.strip_suffix(&format!("-{hash}")).unwrap_or(name),
                // A CronJob names its Jobs `<cronjob>-<minutes since epoch>`.
                ("Job", _) => match name.rsplit_once('-') {
                    Some((cron, n)) if n.len() >= 8 && n.bytes().all(|b| b.is_ascii_digit()) => cron,
                    _ => name,
                },
                _ => name,
            };
            return Some(name.to_string());
        }
    }
    label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or_else(|| pod.pointer("/metadata/name").and_then(Value::as_str))
        .or_else(|| {
            pod.pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(|g| g.trim_end_matches('-'))
        })
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// Where the app serves its own metrics, from the pod's
/// `prometheus.io/*` annotations before injection points them at the
/// proxy: `(port, path)`.
fn app_metrics(cfg: &InjectConfig, annotations: &Map<String, Value>) -> Option<(u16, String)> {
    let get = |k: &str| annotations.get(k).and_then(Value::as_str);
    if get("prometheus.io/scrape") != Some("true") {
        return None;
    }
    let port: u16 = get("prometheus.io/port")?
        .parse()
        .ok()
        .filter(|p| *p != 0 && *p != cfg.admin_port)?;
    let path = get("prometheus.io/path")
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/metrics");
    Some((port, path.to_string()))
}

/// As [`inject_pod`], for a pod template held by `owner` (the workload's
/// name, for metrics).
pub fn inject_pod_of(
    cfg: &InjectConfig,
    namespace: &str,
    owner: Option<&str>,
    pod: &mut Value,
) -> Result<Outcome, InjectError> {
    let empty = Map::new();
    let annotations = match pod.pointer("/metadata/annotations") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(a)) => a,
        Some(_) => return Err(field_error("metadata.annotations", "expected a map")),
    };
    if annotations.get(INJECTED).and_then(Value::as_str) == Some("true") || has_proxy(pod) {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    match annotations.get(INJECT) {
        None => {}
        Some(v) if v.as_str() == Some("enabled") => {}
        Some(v) if v.as_str() == Some("disabled") => return Ok(Outcome::Skipped(Skip::Disabled)),
        Some(v) => {
            return Err(InjectError::Annotation {
                annotation: INJECT.into(),
                problem: format!("expected `enabled` or `disabled`, got {v}"),
            })
        }
    }
    if namespace == "kube-system" {
        return Ok(Outcome::Skipped(Skip::KubeSystem));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    let overrides = Overrides::from_annotations(annotations)?;
    let app_ports = match &overrides.inbound_ports {
        Some(ports) => {
            for &p in ports {
                check_not_proxy_port(cfg, p).map_err(|problem| InjectError::Annotation {
                    annotation: INBOUND_PORTS.into(),
                    problem,
                })?;
            }
            ports.clone()
        }
        None => container_ports(cfg, pod)?,
    };

    let mut proxy = containers::proxy_container(cfg, &overrides, &app_ports);
    let mut env = Vec::new();
    if let Some(workload) = owner.map(str::to_string).or_else(|| workload_of(pod)) {
        env.push(json!({"name": "WEFT_WORKLOAD_NAME", "value": workload}));
    }
    if let Some((port, path)) = app_metrics(cfg, annotations) {
        env.push(json!({"name": "WEFT_APP_METRICS_PORT", "value": port.to_string()}));
        env.push(json!({"name": "WEFT_APP_METRICS_PATH", "value": path}));
    }
    if let Some(Value::Array(list)) = proxy.get_mut("env") {
        list.extend(env);
    }

    let spec = match pod.get_mut("spec") {
        Some(Value::Object(spec)) => spec,
        _ => return Err(field_error("spec", "expected the pod spec (an object)")),
    };
    let mut init = vec![containers::init_container(cfg, &overrides), proxy];
    match spec.remove("initContainers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(existing)) => init.extend(existing),
        Some(_) => return Err(field_error("spec.initContainers", "expected a list")),
    }
    spec.insert("initContainers".into(), Value::Array(init));
    match spec.entry("volumes").or_insert_with(|| json!([])) {
        Value::Array(volumes) => volumes.extend(containers::volumes(cfg)),
        v @ Value::Null => *v = Value::Array(containers::volumes(cfg).into()),
        _ => return Err(field_error("spec.volumes", "expected a list")),
    }

    let metadata = pod
        .as_object_mut()
        .expect("checked: has a spec")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let Value::Object(metadata) = metadata else {
        return Err(field_error("metadata", "expected a map"));
    };
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if annotations.is_null() {
        *annotations = json!({});
    }
    let annotations = annotations.as_object_mut().expect("checked above: a map");
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", cfg.admin_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
        (INJECTED, "true".to_string()),
    ] {
        annotations.insert(k.into(), Value::String(v));
    }
    Ok(Outcome::Injected)
}

fn has_proxy(pod: &Value) -> bool {
    ["/spec/initContainers", "/spec/containers"].iter().any(|p| {
        pod.pointer(p).and_then(Value::as_array).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
        })
    })
}

fn check_not_proxy_port(cfg: &InjectConfig, port: u16) -> Result<(), String> {
    let which = [
        (cfg.inbound_port, "inbound"),
        (cfg.outbound_port, "outbound"),
        (cfg.admin_port, "admin"),
    ];
    match which.iter().find(|(p, _)| *p == port) {
        Some((p, name)) => Err(format!(
            "port {p} is the proxy's {name} port; the app cannot use it"
        )),
        None => Ok(()),
    }
}

/// The app containers' TCP `containerPort`s, in order, without repeats.
fn container_ports(cfg: &InjectConfig, pod: &Value) -> Result<Vec<u16>, InjectError> {
    let mut ports = Vec::new();
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
    for (i, c) in containers.into_iter().flatten().enumerate() {
        let declared = c.get("ports").and_then(Value::as_array);
        for (j, p) in declared.into_iter().flatten().enumerate() {
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if protocol != "TCP" {
                continue;
            }
            let field = format!("spec.containers[{i}].ports[{j}].containerPort");
            let port = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .ok_or_else(|| field_error(&field, "expected a port 1..=65535"))?;
            check_not_proxy_port(cfg, port).map_err(|problem| field_error(&field, problem))?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests;
