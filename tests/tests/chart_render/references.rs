//! References between rendered objects, which no object schema checks.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use weft_control::kubernetes::trust_anchors::CONFIGMAP as TRUST_ANCHORS_CONFIGMAP;

use crate::{of_kind, str_of, Render};

/// Whether every label of `selector` is in `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// What an API server or a kubelet would refuse, or a cluster would run
/// broken, that no object schema sees: references between the objects.
pub fn references(render: &Render) -> Vec<String> {
    let docs = &render.docs;
    let args = &render.case.args;
    // What the case names itself: its flags (`x=name`, or a JSON list
    // holding `"name"`), and the values files they read (`x: name`, or a
    // list item `- name`).
    let given = |name: &str| {
        args.iter()
            .any(|a| a.ends_with(&format!("={name}")) || a.contains(&format!("\"{name}\"")))
            || render.case.files.iter().any(|f| {
                f.lines().any(|l| {
                    let l = l.trim();
                    l.contains(&format!(": {name}")) || l == format!("- {name}")
                })
            })
    };
    let rendered = |kind: &str, name: &str| of_kind(docs, kind).iter().any(|d| d["metadata"]["name"] == name);
    // The ConfigMap weft-control publishes into every namespace (the
    // release namespace included), which Helm does not render: its keys.
    let published = |cm: &str| (cm == TRUST_ANCHORS_CONFIGMAP).then_some(["ca.crt"]);
    let mut problems = Vec::new();
    let mut pods = Vec::new();
    for d in of_kind(docs, "Deployment") {
        let name = str_of(&d["metadata"]["name"]);
        let template = &d["spec"]["template"];
        let labels = &template["metadata"]["labels"];
        if !selects(&d["spec"]["selector"]["matchLabels"], labels) {
            problems.push(format!("Deployment {name}: selector does not match its pods"));
        }
        let spec = &template["spec"];
        let sa = str_of(&spec["serviceAccountName"]);
        if !rendered("ServiceAccount", sa) && !given(sa) {
            problems.push(format!(
                "Deployment {name}: ServiceAccount {sa} is neither rendered nor given"
            ));
        }
        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (str_of(&v["name"]), v))
            .collect();
        for v in volumes.values() {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                if !rendered("ConfigMap", cm) && published(cm).is_none() {
                    problems.push(format!("volume {}: ConfigMap {cm} is not rendered", v["name"]));
                }
            }
            if let Some(s) = v["secret"]["secretName"].as_str() {
                if !rendered("Secret", s) && !given(s) {
                    problems.push(format!(
                        "volume {}: Secret {s} is neither rendered nor given",
                        v["name"]
                    ));
                }
            }
        }
        let mut ports = BTreeSet::new();
        for c in spec["containers"].as_array().into_iter().flatten() {
            let cname = str_of(&c["name"]);
            let mut mounts = Vec::new();
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let v = str_of(&m["name"]);
                match volumes.get(v) {
                    None => problems.push(format!("{cname}: mount of volume {v}, which is not defined")),
                    Some(vol) => mounts.push((str_of(&m["mountPath"]), *vol)),
                }
            }
            let names: BTreeSet<&str> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| str_of(&p["name"]))
                .collect();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if let Some(p) = c[probe]["httpGet"]["port"].as_str() {
                    if !names.contains(p) {
                        problems.push(format!("{cname}: {probe} on port {p}, which it does not name"));
                    }
                }
            }
            ports.extend(names);
            // Whether a file at `path` is in a mounted volume (and, when
            // the volume lists its items, one of them).
            let provides = |path: &str| {
                mounts.iter().any(|(at, vol)| {
                    let Some(file) = path.strip_prefix(&format!("{at}/")) else {
                        return false;
                    };
                    let items = vol["secret"]["items"]
                        .as_array()
                        .or(vol["configMap"]["items"].as_array());
                    match (items, vol["configMap"]["name"].as_str()) {
                        // A volume that lists its items holds those only.
                        (Some(items), _) => items.iter().any(|i| i["path"] == file),
                        // A whole ConfigMap: its keys, rendered or published.
                        (None, Some(cm)) => {
                            published(cm).is_some_and(|keys| keys.contains(&file))
                                || of_kind(docs, "ConfigMap")
                                    .iter()
                                    .any(|d| d["metadata"]["name"] == cm && d["data"].get(file).is_some())
                        }
                        // A projected volume: its tokens' paths.
                        (None, None) if vol.get("projected").is_some() => vol["projected"]["sources"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|s| s["serviceAccountToken"]["path"] == file),
                        // A whole Secret someone else made: its keys are not known here.
                        (None, None) => true,
                    }
                })
            };
            // A flag naming a file.
            for a in c["args"].as_array().into_iter().flatten() {
                let Some((flag, path)) = str_of(a).split_once("=/") else {
                    continue;
                };
                let path = format!("/{path}");
                if !provides(&path) {
                    problems.push(format!("{cname}: {flag} names {path}, which no mount provides"));
                }
            }
            // An environment variable naming a file; the gateway's
            // certificates directory holds mounts (checked by
            // gateway::the_gateway_mounts_each_certificate_secret).
            for e in c["env"].as_array().into_iter().flatten() {
                let (var, path) = (str_of(&e["name"]), str_of(&e["value"]));
                if path.starts_with('/') && var != "WEFT_GATEWAY_CERTIFICATES" && !provides(path) {
                    problems.push(format!("{cname}: {var} names {path}, which no mount provides"));
                }
            }
        }
        pods.push((str_of(&d["metadata"]["namespace"]), labels, ports));
    }

    let mut services = BTreeMap::new();
    for s in of_kind(docs, "Service") {
        let name = str_of(&s["metadata"]["name"]);
        let ns = str_of(&s["metadata"]["namespace"]);
        let selected: Vec<_> = pods
            .iter()
            .filter(|(pns, labels, _)| *pns == ns && selects(&s["spec"]["selector"], labels))
            .collect();
        if selected.is_empty() {
            problems.push(format!("Service {name}: selects no rendered pods"));
        }
        let mut ports = BTreeSet::new();
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            ports.insert(p["port"].as_u64().unwrap_or(0));
            if let Some(target) = p["targetPort"].as_str() {
                if !selected.iter().all(|(_, _, names)| names.contains(target)) {
                    problems.push(format!(
                        "Service {name}: port {} targets {target}, which its pods do not name",
                        p["name"]
                    ));
                }
            }
        }
        services.insert((ns, name), ports);
    }
    for p in of_kind(docs, "PodDisruptionBudget") {
        let sel = &p["spec"]["selector"]["matchLabels"];
        if !pods.iter().any(|(_, labels, _)| selects(sel, labels)) {
            problems.push(format!(
                "PodDisruptionBudget {}: selects no rendered pods",
                p["metadata"]["name"]
            ));
        }
    }
    for w in of_kind(docs, "MutatingWebhookConfiguration") {
        for hook in w["webhooks"].as_array().into_iter().flatten() {
            let svc = &hook["clientConfig"]["service"];
            let key = (str_of(&svc["namespace"]), str_of(&svc["name"]));
            let port = svc["port"].as_u64().unwrap_or(443);
            if !services.get(&key).is_some_and(|ports| ports.contains(&port)) {
                problems.push(format!(
                    "webhook {}: calls {}/{}:{port}, which no rendered Service serves",
                    hook["name"], key.0, key.1
                ));
            }
        }
    }
    for b in of_kind(docs, "ClusterRoleBinding") {
        let role = str_of(&b["roleRef"]["name"]);
        if !rendered("ClusterRole", role) {
            problems.push(format!("ClusterRoleBinding: ClusterRole {role} is not rendered"));
        }
        for s in b["subjects"].as_array().into_iter().flatten() {
            let sa = str_of(&s["name"]);
            if !rendered("ServiceAccount", sa) && !given(sa) {
                problems.push(format!(
                    "ClusterRoleBinding: ServiceAccount {sa} is neither rendered nor given"
                ));
            }
        }
    }
    problems
}
