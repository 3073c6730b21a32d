//! Cluster objects → the documents every source feeds the index: a
//! `MeshService` per Service (ports, ClusterIP, endpoints from its
//! EndpointSlices, identity from its pods' service account), and the
//! weft.dev policies and Gateway API HTTPRoutes parsed and validated like
//! files.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::DynamicObject;
use kube::ResourceExt;

use crate::model::{
    parse_object, AppProtocol, DocError, Document, MeshEndpoint, MeshServiceSpec, Metadata, ServicePort,
    Spec, WorkloadService, WorkloadSpec,
};

/// The inbound listener of an injected proxy.
pub const PROXY_INBOUND_PORT: u16 = 4143;
/// Set by the injector on the pods it changed.
pub const INJECTED_ANNOTATION: &str = "weft.dev/injected";
/// The label an EndpointSlice names its Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the cluster source has seen, as the reflectors hold it.
#[derive(Default)]
pub struct ClusterObjects {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    /// TrafficPolicies, AuthorizationPolicies, HTTPRoutes.
    pub policies: Vec<Arc<DynamicObject>>,
}

/// Whether the pod runs a Weft proxy (injected, or a sidecar named
/// `weft-proxy`).
pub fn is_meshed(pod: &Pod) -> bool {
    if pod
        .annotations()
        .get(INJECTED_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return true;
    }
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == "weft-proxy")
    })
}

fn app_protocol(port: &k8s_openapi::api::core::v1::ServicePort) -> AppProtocol {
    match port.app_protocol.as_deref() {
        Some("grpc") => AppProtocol::Grpc,
        Some("http" | "kubernetes.io/h2c" | "h2c" | "http2") => AppProtocol::Http,
        Some(_) => AppProtocol::Tcp,
        // Istio's port-name convention as a fallback hint.
        None => match port.name.as_deref().unwrap_or("") {
            n if n == "grpc" || n.starts_with("grpc-") => AppProtocol::Grpc,
            n if n == "tcp" || n.starts_with("tcp-") => AppProtocol::Tcp,
            _ => AppProtocol::Http,
        },
    }
}

/// Keeps each AuthorizationPolicy's last valid version, so that an
/// invalid one fails closed: an invalid update keeps the last good
/// version in force; one with none (new, or first seen invalid after a
/// restart) puts a deny-all on its target ([`Spec::DenyAll`]).
#[derive(Debug, Default)]
pub struct LastGood {
    policies: HashMap<(String, String), Document>,
}

impl LastGood {
    /// Adds to `docs` what stands in for each invalid AuthorizationPolicy
    /// in `errors`, remembers the valid ones, and forgets deleted ones.
    pub fn fail_closed(&mut self, docs: &mut Vec<Document>, errors: &[DocError]) {
        let mut present = std::collections::HashSet::new();
        for doc in docs.iter() {
            if let Spec::AuthorizationPolicy(_) = doc.spec {
                let key = (doc.meta.namespace.clone(), doc.meta.name.clone());
                self.policies.insert(key.clone(), doc.clone());
                present.insert(key);
            }
        }
        for e in errors {
            let Some(authz) = &e.authz else { continue };
            let key = (authz.namespace.clone(), authz.name.clone());
            match self.policies.get(&key) {
                Some(good) => docs.push(good.clone()),
                None => docs.extend(e.deny_all()),
            }
            present.insert(key);
        }
        self.policies.retain(|key, _| present.contains(key));
    }
}

/// Builds every document; objects that cannot be used are returned as
/// errors (and skipped), never fatal. An invalid AuthorizationPolicy's
/// error says what it targets, for [`LastGood::fail_closed`].
pub fn documents(objects: &ClusterObjects) -> (Vec<Document>, Vec<DocError>) {
    let pods: HashMap<(String, String), &Pod> = objects
        .pods
        .iter()
        .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), &**p))
        .collect();
    let mut slices_by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &objects.slices {
        if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
            slices_by_service
                .entry((slice.namespace().unwrap_or_default(), svc.clone()))
                .or_default()
                .push(slice);
        }
    }
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for svc in &objects.services {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let slices = slices_by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        if let Some(doc) = mesh_service(svc, slices, &pods) {
            docs.push(doc);
        }
    }
    docs.extend(workloads(objects));
    for obj in &objects.policies {
        let Some(types) = &obj.types else { continue };
        let value = serde_json::json!({
            "apiVersion": types.api_version,
            "kind": types.kind,
            "metadata": {
                "name": obj.name_any(),
                "namespace": obj.namespace().unwrap_or_else(|| "default".into()),
            },
            "spec": obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
        });
        match parse_object("kubernetes", value) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.push(e),
        }
    }
    (docs, errors)
}

/// A [`Spec::Workload`] per meshed pod that is not finished: the Services
/// selecting it by label (ready or not, so that a starting pod already
/// enforces its policy), with their TCP ports as it serves them.
fn workloads(objects: &ClusterObjects) -> Vec<Document> {
    let mut by_namespace: HashMap<String, Vec<&Service>> = HashMap::new();
    for svc in &objects.services {
        by_namespace
            .entry(svc.namespace().unwrap_or_default())
            .or_default()
            .push(svc);
    }
    let mut docs = Vec::new();
    for pod in &objects.pods {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished || !is_meshed(pod) {
            continue;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        let mut services = by_namespace
            .get(&namespace)
            .into_iter()
            .flatten()
            .filter_map(|svc| {
                let spec = svc.spec.as_ref()?;
                let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    return None;
                }
                let ports = spec
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
                    .filter_map(|p| {
                        let port = u16::try_from(p.port).ok()?;
                        let target = match &p.target_port {
                            None => port,
                            Some(IntOrString::Int(t)) => u16::try_from(*t).ok()?,
                            Some(IntOrString::String(name)) => container_port(pod, name)?,
                        };
                        Some((port, target))
                    })
                    .collect();
                Some(WorkloadService {
                    name: svc.name_any(),
                    ports,
                })
            })
            .collect::<Vec<_>>();
        // In a stable order: the policy's `sources` follow it.
        services.sort_by(|a, b| a.name.cmp(&b.name));
        docs.push(Document {
            meta: Metadata {
                name: pod.name_any(),
                namespace,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                creation_timestamp: None,
            },
            spec: Spec::Workload(WorkloadSpec {
                service_account: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
                services,
            }),
        });
    }
    docs
}

/// The TCP container port of `pod` named `name`.
fn container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

fn mesh_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    pods: &HashMap<(String, String), &Pod>,
) -> Option<Document> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = svc.namespace().unwrap_or_default();
    let slice_ports = |name: Option<&str>| {
        slices.iter().find_map(|s| {
            s.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref().unwrap_or("") == name.unwrap_or("")
                    && p.protocol.as_deref() != Some("UDP"))
                .then_some(p.port)
                .flatten()
            })
        })
    };
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target = slice_ports(p.name.as_deref())
                .and_then(|t| u16::try_from(t).ok())
                .or_else(|| match &p.target_port {
                    Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
                    _ => None,
                })
                .unwrap_or(port);
            Some(ServicePort {
                port,
                name: p.name.clone(),
                protocol: app_protocol(p),
                target_port: Some(target),
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let first_target = ports[0].target_port.unwrap_or(ports[0].port);
    let mut endpoints: BTreeMap<SocketAddr, MeshEndpoint> = BTreeMap::new();
    let mut accounts: BTreeMap<String, usize> = BTreeMap::new();
    for slice in slices {
        for ep in &slice.endpoints {
            // Ready, or not saying (older API servers): serving. Not ready
            // (starting, failing probes, terminating): no traffic.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    pods.get(&(
                        r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                        r.name.clone().unwrap_or_default(),
                    ))
                });
            let meshed = pod.is_some_and(|p| is_meshed(p));
            // Each meshed endpoint is dialled as its own pod's identity.
            let service_account = pod.filter(|_| meshed).map(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into())
            });
            if let Some(sa) = &service_account {
                *accounts.entry(sa.clone()).or_default() += 1;
            }
            let mut labels = BTreeMap::new();
            if let Some(zone) = &ep.zone {
                labels.insert("zone".to_string(), zone.clone());
            }
            let address = SocketAddr::new(ip, first_target);
            endpoints.insert(
                address,
                MeshEndpoint {
                    address,
                    proxy: meshed.then(|| SocketAddr::new(ip, PROXY_INBOUND_PORT)),
                    service_account,
                    workload: None,
                    weight: 1,
                    labels,
                },
            );
        }
    }
    // The identity of the service: its pods' service account (the most
    // common one, should they differ).
    let service_account = accounts.into_iter().max_by_key(|(_, n)| *n).map(|(sa, _)| sa);
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse().ok());
    Some(Document {
        meta: Metadata {
            name: svc.name_any(),
            namespace,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            creation_timestamp: None,
        },
        spec: Spec::MeshService(MeshServiceSpec {
            ports,
            service_account,
            endpoints: endpoints.into_values().collect(),
            cluster_ip,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    pub(crate) fn sample() -> ClusterObjects {
        ClusterObjects {
            services: vec![from_json(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "api", "namespace": "shop", "uid": "1", "resourceVersion": "10"},
                "spec": {
                    "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "type": "ClusterIP",
                    "selector": {"app": "api"},
                    "ports": [
                        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                        {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": "grpc-port", "appProtocol": "grpc"}
                    ]
                }
            }))],
            slices: vec![from_json(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "api-abcde", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "api"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "grpc", "port": 9000, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                     "targetRef": {"kind": "Pod", "name": "api-1", "namespace": "shop"}, "zone": "z1"},
                    {"addresses": ["10.244.2.7"], "conditions": {"ready": false, "serving": true, "terminating": true},
                     "targetRef": {"kind": "Pod", "name": "api-2", "namespace": "shop"}},
                    {"addresses": ["10.244.3.9"], "conditions": {"ready": true},
                     "targetRef": {"kind": "Pod", "name": "legacy-1", "namespace": "shop"}}
                ]
            }))],
            pods: vec![
                from_json(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "api-1", "namespace": "shop", "labels": {"app": "api", "track": "stable"},
                                 "annotations": {"weft.dev/injected": "true"}},
                    "spec": {"serviceAccountName": "api-sa", "containers": [{"name": "app", "image": "api:1",
                             "ports": [{"name": "grpc-port", "containerPort": 9000, "protocol": "TCP"}]}]},
                    "status": {"podIP": "10.244.1.5"}
                })),
                from_json(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "legacy-1", "namespace": "shop"},
                    "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "legacy:1"}]},
                    "status": {"podIP": "10.244.3.9"}
                })),
            ],
            policies: Vec::new(),
        }
    }

    #[test]
    fn services_endpoint_slices_and_pods_become_a_mesh_service() {
        let (docs, errors) = documents(&sample());
        assert!(errors.is_empty(), "{errors:?}");
        let Spec::MeshService(svc) = &docs[0].spec else {
            panic!()
        };
        assert_eq!(docs[0].meta.name, "api");
        assert_eq!(svc.cluster_ip, Some("10.96.0.20".parse().unwrap()));
        assert_eq!(
            svc.service_account.as_deref(),
            Some("api-sa"),
            "from the meshed pod"
        );
        let ports: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.port, p.target_port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (80, Some(8080), AppProtocol::Http),
                (9090, Some(9000), AppProtocol::Grpc)
            ],
            "named target ports come from the slice"
        );
        let eps: Vec<_> = svc
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.proxy))
            .collect();
        assert_eq!(
            eps,
            [
                (
                    "10.244.1.5:8080".to_string(),
                    Some("10.244.1.5:4143".parse().unwrap())
                ),
                ("10.244.3.9:8080".to_string(), None),
            ],
            "terminating endpoint left out; the uninjected pod is called directly"
        );
        assert_eq!(svc.endpoints[0].labels["zone"], "z1");
        let accounts: Vec<_> = svc
            .endpoints
            .iter()
            .map(|e| e.service_account.as_deref())
            .collect();
        assert_eq!(
            accounts,
            [Some("api-sa"), None],
            "each meshed endpoint is its own pod's identity; the unmeshed one has none"
        );
    }

    #[test]
    fn each_meshed_pod_is_a_workload_of_the_services_selecting_it() {
        let mut objects = sample();
        let pod = |name: &str, labels: serde_json::Value, phase: &str| -> Arc<Pod> {
            from_json(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "shop", "labels": labels,
                             "annotations": {"weft.dev/injected": "true"}},
                "spec": {"containers": [{"name": "app", "image": "x:1"}]},
                "status": {"phase": phase}
            }))
        };
        // Starting (not in any EndpointSlice yet) but selected; selected by
        // nothing; finished.
        objects
            .pods
            .push(pod("api-3", serde_json::json!({"app": "api"}), "Pending"));
        objects
            .pods
            .push(pod("batch-1", serde_json::json!({"app": "batch"}), "Running"));
        objects
            .pods
            .push(pod("api-job", serde_json::json!({"app": "api"}), "Succeeded"));
        let (docs, _) = documents(&objects);
        let workloads: BTreeMap<&str, &WorkloadSpec> = docs
            .iter()
            .filter_map(|d| match &d.spec {
                Spec::Workload(w) => Some((d.meta.name.as_str(), w)),
                _ => None,
            })
            .collect();
        assert_eq!(
            workloads.keys().copied().collect::<Vec<_>>(),
            ["api-1", "api-3", "batch-1"],
            "meshed pods that are not finished; the unmeshed legacy-1 is none"
        );
        let api_1 = workloads["api-1"];
        assert_eq!(api_1.service_account, "api-sa");
        assert_eq!(
            api_1.services,
            [WorkloadService {
                name: "api".into(),
                ports: vec![(80, 8080), (9090, 9000)],
            }],
            "a named targetPort resolves through the pod's own container ports"
        );
        let api_3 = workloads["api-3"];
        assert_eq!(api_3.service_account, "default");
        assert_eq!(
            api_3.services,
            [WorkloadService {
                name: "api".into(),
                ports: vec![(80, 8080)],
            }],
            "a pod without the named port serves only the numbered one"
        );
        assert!(workloads["batch-1"].services.is_empty());
    }

    #[test]
    fn bad_policies_are_errors_not_failures() {
        let mut objects = sample();
        let policy = |name: &str, spec: serde_json::Value| -> Arc<DynamicObject> {
            from_json(serde_json::json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy",
                "metadata": {"name": name, "namespace": "shop", "generation": 2},
                "spec": spec,
                "status": {"conditions": []}
            }))
        };
        objects.policies = vec![
            policy(
                "good",
                serde_json::json!({"targetRef": {"name": "api"}, "loadBalancer": "roundRobin"}),
            ),
            policy(
                "bad",
                serde_json::json!({"targetRef": {"name": "api"}, "retries": {"attempts": 99}}),
            ),
        ];
        let (docs, errors) = documents(&objects);
        assert_eq!(docs.len(), 3, "the service, its meshed pod and the good policy");
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(
            e.contains("TrafficPolicy shop/bad") && e.contains("spec.retries.attempts"),
            "{e}"
        );
    }

    #[test]
    fn invalid_authorization_policies_keep_the_last_good_version_or_deny() {
        let authz = |name: &str, spec: serde_json::Value| -> Arc<DynamicObject> {
            from_json(serde_json::json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": "shop", "generation": 1},
                "spec": spec,
            }))
        };
        let good = serde_json::json!({"targetRef": {"name": "api", "port": 80}, "rules": [{"from": {"namespaces": ["web"]}}]});
        // An identity that is not a SPIFFE ID: invalid.
        let bad = serde_json::json!({"targetRef": {"name": "api", "port": 80}, "rules": [{"from": {"identities": ["web"]}}]});
        let mut last_good = LastGood::default();
        let mut view = |objects: Vec<Arc<DynamicObject>>| {
            let mut all = sample();
            all.policies = objects;
            let (mut docs, errors) = documents(&all);
            last_good.fail_closed(&mut docs, &errors);
            let policy = docs
                .iter()
                .find(|d| d.meta.name == "strict")
                .map(|d| d.spec.clone());
            (policy, errors)
        };

        let (policy, _) = view(vec![authz("strict", good.clone())]);
        assert!(matches!(policy, Some(Spec::AuthorizationPolicy(_))));
        // An invalid update: the last good version, not nothing.
        let (policy, errors) = view(vec![authz("strict", bad.clone())]);
        assert_eq!(errors[0].field, "spec.rules[0].from.identities[0]");
        let Some(Spec::AuthorizationPolicy(p)) = policy else {
            panic!("{policy:?}")
        };
        assert_eq!(p.rules[0].from.as_ref().unwrap().namespaces, ["web"]);
        // Deleted: forgotten. Re-created invalid: no last good, deny-all.
        assert_eq!(view(vec![]).0, None);
        let (policy, _) = view(vec![authz("strict", bad)]);
        let Some(Spec::DenyAll(deny)) = policy else {
            panic!("{policy:?}")
        };
        assert_eq!((deny.target.name.as_str(), deny.target.port), ("api", Some(80)));
        assert!(deny.reason.contains("spec.rules[0].from.identities[0]"));
        // A policy whose target cannot be read has nothing to close.
        let (policy, errors) = view(vec![authz("strict", serde_json::json!({"rules": []}))]);
        assert_eq!(errors[0].field, "spec.targetRef");
        assert_eq!(policy, None);
    }
}
