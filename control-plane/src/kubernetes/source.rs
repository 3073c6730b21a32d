//! The Kubernetes source: reflectors (kube-rs list+watch, with backoff,
//! relisting after `410 Gone`) over Services, EndpointSlices, Pods, the
//! weft.dev policies and Gateway API HTTPRoutes. On any change (debounced)
//! the whole cluster view is converted to documents and handed to the same
//! index the file source feeds.
//!
//! The first view is applied only once every kind has listed (or turned out
//! not to exist: a cluster without the Gateway API CRDs simply has no
//! routes), so proxies never see a half-synced, empty mesh.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;

use super::convert::{documents, ClusterObjects, LastGood};
use crate::index::{Index, Verdict, CONTROLLER_NAME};
use crate::metrics::{ControlMetrics, WatchEvent};
use crate::model::{AuthorizationPolicy, GatewayPolicy, InForce, TrafficPolicy};

/// The name the cluster's documents are registered under in the index.
pub const SOURCE: &str = "kubernetes";

/// Gateway API HTTPRoute (`gateway.networking.k8s.io/v1`).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Gateway API Gateway (`gateway.networking.k8s.io/v1`): an edge
/// gateway's listeners.
pub fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    )
}

/// Gateway API GRPCRoute (`gateway.networking.k8s.io/v1`).
pub fn grpc_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute"),
        "grpcroutes",
    )
}

/// Gateway API ReferenceGrant (`gateway.networking.k8s.io/v1beta1`): what
/// cross-namespace `backendRefs` need.
pub fn reference_grant_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1beta1", "ReferenceGrant"),
        "referencegrants",
    )
}

/// Counts kinds that finished their first list.
struct Synced {
    kinds: AtomicUsize,
    changed: Notify,
}

pub struct KubernetesSource {
    client: Client,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    policies: Vec<Store<DynamicObject>>,
    synced: Arc<Synced>,
    kinds: usize,
}

impl KubernetesSource {
    /// Starts the reflectors (cluster-wide) on `client`'s runtime; each
    /// records its state in `metrics`.
    pub fn start(client: Client, metrics: Arc<ControlMetrics>) -> Self {
        let synced = Arc::new(Synced {
            kinds: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let watch = Watch {
            synced: synced.clone(),
            metrics,
        };
        let services = watch.reflect(Api::<Service>::all(client.clone()), (), "services");
        let slices = watch.reflect(Api::<EndpointSlice>::all(client.clone()), (), "endpointslices");
        let pods = watch.reflect(Api::<Pod>::all(client.clone()), (), "pods");
        let policies = [
            ApiResource::erase::<TrafficPolicy>(&()),
            ApiResource::erase::<AuthorizationPolicy>(&()),
            http_route_resource(),
            reference_grant_resource(),
            grpc_route_resource(),
            gateway_resource(),
            ApiResource::erase::<GatewayPolicy>(&()),
        ]
        .into_iter()
        .map(|ar| {
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            let what = ar.plural.clone();
            watch.reflect(api, ar, &what)
        })
        .collect();
        Self {
            client,
            services,
            slices,
            pods,
            policies,
            synced,
            kinds: 10,
        }
    }

    fn objects(&self) -> ClusterObjects {
        ClusterObjects {
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            policies: self.policies.iter().flat_map(Store::state).collect(),
        }
    }

    /// Applies the cluster view to `index` after every change, `debounce`
    /// after the change settles. Runs until aborted.
    pub async fn run(self, index: Arc<Index>, metrics: Arc<ControlMetrics>, debounce: Duration) {
        // The first list of every kind.
        loop {
            let notified = self.synced.changed.notified();
            if self.synced.kinds.load(Ordering::Acquire) >= self.kinds {
                break;
            }
            notified.await;
        }
        tracing::info!("Kubernetes: every kind listed; serving the cluster's state");
        let mut known_errors = std::collections::HashSet::new();
        let mut last_good = LastGood::default();
        loop {
            let notified = self.synced.changed.notified();
            let (mut docs, errors) = documents(&self.objects());
            last_good.fail_closed(&mut docs, &errors);
            metrics.invalid_documents(SOURCE, &errors, &docs);
            // Each rejected object is reported once, not on every rebuild;
            // the message says what is in force instead.
            let errors: std::collections::HashSet<String> = errors
                .iter()
                .map(|e| format!("{e}; {}", InForce::of(e, &docs).explain()))
                .collect();
            for e in errors.difference(&known_errors) {
                tracing::warn!(error = %e, "Kubernetes object rejected");
                metrics.config_errors.inc();
            }
            index.apply(SOURCE, docs);
            self.report_status(&errors);
            self.report_route_status(&index, &errors);
            self.report_gateway_status(&index, &errors);
            metrics.route_verdicts(&index.all_route_verdicts());
            known_errors = errors;
            metrics.index_stats(index.stats());
            notified.await;
            // Let a burst of events (a rollout) settle into one rebuild.
            tokio::time::sleep(debounce).await;
        }
    }
}

impl KubernetesSource {
    /// Writes each weft.dev policy's `Accepted` condition (`True`, or
    /// `False` with the validation error), when it differs from what the
    /// object shows, so `kubectl get trafficpolicies` tells whether Weft
    /// uses it.
    fn report_status(&self, errors: &std::collections::HashSet<String>) {
        // TrafficPolicies, AuthorizationPolicies (the first two stores) and
        // GatewayPolicies (the last).
        for store in self.policies[..2].iter().chain(self.policies.last()) {
            for obj in store.state() {
                let Some(types) = &obj.types else { continue };
                let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
                    continue;
                };
                let tag = format!("({} {ns}/{name})", types.kind);
                let problem = errors.iter().find(|e| e.contains(&tag));
                let generation = obj.metadata.generation;
                let (status, reason, message) = match problem {
                    None => ("True", "Accepted", "in force".to_string()),
                    Some(e) => ("False", "Invalid", e.clone()),
                };
                let current = obj
                    .data
                    .pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .and_then(|c| c.iter().find(|c| c["type"] == "Accepted"));
                let same = current.is_some_and(|c| {
                    c["status"] == status
                        && c["message"] == message.as_str()
                        && c["observedGeneration"].as_i64() == generation
                });
                if same {
                    continue;
                }
                let patch = serde_json::json!({"status": {"conditions": [{
                    "type": "Accepted",
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": generation,
                    "lastTransitionTime": rfc3339_now(),
                }]}});
                let ar = ApiResource::from_gvk(&GroupVersionKind::try_from(types).expect("typed object"));
                let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &ar);
                tokio::spawn(async move {
                    if let Err(e) = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        tracing::debug!(%name, error = %e, "could not write the policy's status");
                    }
                });
            }
        }
    }
}

impl KubernetesSource {
    /// Writes `status.parents[]` of every HTTPRoute and GRPCRoute: for
    /// each parent, the `Accepted` and `ResolvedRefs` conditions under
    /// controller `weft.dev/mesh` (entries of other controllers are kept),
    /// when they differ from what the object shows.
    fn report_route_status(&self, index: &Index, errors: &std::collections::HashSet<String>) {
        let routes = self.policies[2]
            .state()
            .into_iter()
            .map(|o| ("HTTPRoute", http_route_resource(), o))
            .chain(
                self.policies[4]
                    .state()
                    .into_iter()
                    .map(|o| ("GRPCRoute", grpc_route_resource(), o)),
            );
        for (kind, resource, obj) in routes {
            let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
                continue;
            };
            let generation = obj.metadata.generation;
            let parent_refs: Vec<serde_json::Value> = obj
                .data
                .pointer("/spec/parentRefs")
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            let tag = format!("({kind} {ns}/{name})");
            // A route refused by validation says why, even while its last
            // good version stays in force.
            let refused = errors.iter().find(|e| e.contains(&tag));
            let ours: Vec<serde_json::Value> = match (refused, index.route_verdicts(kind, &ns, &name)) {
                (None, Some(verdicts)) => verdicts
                    .iter()
                    .map(|v| {
                        route_parent_status(
                            parent_refs.get(v.parent_index).cloned().unwrap_or_default(),
                            &[("Accepted", &v.accepted), ("ResolvedRefs", &v.resolved_refs)],
                            generation,
                        )
                    })
                    .collect(),
                (refused, _) => {
                    let refused = Verdict {
                        ok: false,
                        reason: "UnsupportedValue",
                        message: refused
                            .cloned()
                            .unwrap_or_else(|| "not read by the mesh".to_string()),
                    };
                    parent_refs
                        .iter()
                        .map(|p| route_parent_status(p.clone(), &[("Accepted", &refused)], generation))
                        .collect()
                }
            };
            let current: Vec<serde_json::Value> = obj
                .data
                .pointer("/status/parents")
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            let (mine, others): (Vec<_>, Vec<_>) = current
                .into_iter()
                .partition(|p| p["controllerName"] == CONTROLLER_NAME);
            let comparable = |list: &[serde_json::Value]| -> Vec<serde_json::Value> {
                list.iter()
                    .map(|p| {
                        let mut p = p.clone();
                        if let Some(conditions) = p["conditions"].as_array_mut() {
                            for c in conditions {
                                if let Some(c) = c.as_object_mut() {
                                    c.remove("lastTransitionTime");
                                }
                            }
                        }
                        p
                    })
                    .collect()
            };
            if comparable(&mine) == comparable(&ours) {
                continue;
            }
            let ours = keep_transition_times(ours, &mine);
            let parents: Vec<serde_json::Value> = others.into_iter().chain(ours).collect();
            let patch = serde_json::json!({"status": {"parents": parents}});
            let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &resource);
            tokio::spawn(async move {
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    tracing::debug!(%name, error = %e, "could not write the route's status");
                }
            });
        }
    }
}

impl KubernetesSource {
    /// Writes the status of every Gateway of class weft: `Accepted` and
    /// `Programmed` (its listeners are published to the gateway proxies;
    /// both `False` with the validation error for one refused), and per
    /// listener `attachedRoutes`, the route kinds it supports and the same
    /// two conditions. Written only when it differs from the object's.
    fn report_gateway_status(&self, index: &Index, errors: &std::collections::HashSet<String>) {
        // The Gateway store: after TrafficPolicy, AuthorizationPolicy,
        // HTTPRoute, ReferenceGrant, GRPCRoute.
        for obj in self.policies[5].state() {
            let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
                continue;
            };
            if obj
                .data
                .pointer("/spec/gatewayClassName")
                .and_then(|c| c.as_str())
                != Some(crate::model::GATEWAY_CLASS)
            {
                continue;
            }
            let generation = obj.metadata.generation;
            let tag = format!("(Gateway {ns}/{name})");
            let refused = errors.iter().find(|e| e.contains(&tag));
            let attached = index.gateway_listener_status(&ns, &name);
            let (ok, reason, message) = match (refused, &attached) {
                (Some(e), _) => (false, "Invalid", e.clone()),
                (None, Some(_)) => (true, "Accepted", "served by weft-proxy gateway".to_string()),
                (None, None) => (false, "Pending", "not read by the control plane yet".to_string()),
            };
            let condition = |kind: &str, reason_ok: &str| {
                serde_json::json!({
                    "type": kind,
                    "status": if ok { "True" } else { "False" },
                    "reason": if ok { reason_ok } else { reason },
                    "message": message,
                    "observedGeneration": generation,
                    "lastTransitionTime": rfc3339_now(),
                })
            };
            let listeners: Vec<serde_json::Value> = attached
                .unwrap_or_default()
                .into_iter()
                .map(|l| {
                    let resolved = if l.refused_certificates.is_empty() {
                        condition("ResolvedRefs", "ResolvedRefs")
                    } else {
                        serde_json::json!({
                            "type": "ResolvedRefs",
                            "status": "False",
                            "reason": "RefNotPermitted",
                            "message": format!(
                                "no ReferenceGrant lets Gateway {ns}/{name} use Secret {}",
                                l.refused_certificates.join(", ")
                            ),
                            "observedGeneration": generation,
                            "lastTransitionTime": rfc3339_now(),
                        })
                    };
                    serde_json::json!({
                        "name": l.name,
                        "attachedRoutes": l.attached_routes,
                        "supportedKinds": [
                            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
                            {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"},
                        ],
                        "conditions": [
                            condition("Accepted", "Accepted"),
                            condition("Programmed", "Programmed"),
                            resolved,
                        ],
                    })
                })
                .collect();
            let ours = serde_json::json!({
                "conditions": [condition("Accepted", reason), condition("Programmed", "Programmed")],
                "listeners": listeners,
            });
            let current = obj.data.get("status").cloned().unwrap_or_default();
            let strip = |v: &serde_json::Value| -> serde_json::Value {
                let mut v = v.clone();
                strip_transition_times(&mut v);
                v
            };
            let mine = serde_json::json!({
                "conditions": current.get("conditions").cloned().unwrap_or_default(),
                "listeners": current.get("listeners").cloned().unwrap_or_default(),
            });
            if strip(&mine) == strip(&ours) {
                continue;
            }
            let patch = serde_json::json!({"status": ours});
            let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &gateway_resource());
            tokio::spawn(async move {
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    tracing::debug!(%name, error = %e, "could not write the Gateway's status");
                }
            });
        }
    }
}

/// Removes every `lastTransitionTime`, to compare statuses by content.
fn strip_transition_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("lastTransitionTime");
            map.values_mut().for_each(strip_transition_times);
        }
        serde_json::Value::Array(list) => list.iter_mut().for_each(strip_transition_times),
        _ => {}
    }
}

/// A condition whose status did not change keeps the
/// `lastTransitionTime` it has (the time it last flipped, as Kubernetes
/// conditions mean it).
fn keep_transition_times(
    mut ours: Vec<serde_json::Value>,
    before: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    for entry in &mut ours {
        let Some(old) = before.iter().find(|b| b["parentRef"] == entry["parentRef"]) else {
            continue;
        };
        let Some(conditions) = entry["conditions"].as_array_mut() else {
            continue;
        };
        for c in conditions {
            let was = old["conditions"]
                .as_array()
                .and_then(|list| list.iter().find(|o| o["type"] == c["type"]));
            if let Some(was) = was.filter(|w| w["status"] == c["status"]) {
                c["lastTransitionTime"] = was["lastTransitionTime"].clone();
            }
        }
    }
    ours
}

/// One `status.parents[]` entry.
fn route_parent_status(
    parent_ref: serde_json::Value,
    conditions: &[(&str, &Verdict)],
    generation: Option<i64>,
) -> serde_json::Value {
    let now = rfc3339_now();
    serde_json::json!({
        "parentRef": parent_ref,
        "controllerName": CONTROLLER_NAME,
        "conditions": conditions.iter().map(|(kind, v)| serde_json::json!({
            "type": kind,
            "status": if v.ok { "True" } else { "False" },
            "reason": v.reason,
            "message": v.message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        })).collect::<Vec<_>>(),
    })
}

/// Now, RFC 3339 (what `lastTransitionTime` holds).
fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What every reflector reports to.
struct Watch {
    synced: Arc<Synced>,
    metrics: Arc<ControlMetrics>,
}

impl Watch {
    /// A reflector for one kind, driven by its own task; every event wakes
    /// the source and is counted in the watch metrics. A kind the API
    /// server does not serve (404: CRD not installed) counts as listed and
    /// empty, and is retried with backoff.
    fn reflect<K>(&self, api: Api<K>, dyntype: K::DynamicType, what: &str) -> Store<K>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let writer = reflector::store::Writer::new(dyntype);
        let store = writer.as_reader();
        let synced = self.synced.clone();
        let metrics = self.metrics.clone();
        let what = what.to_string();
        let config = watcher::Config::default().any_semantic();
        tokio::spawn(async move {
            let mut listed = false;
            let mut lists = 0u64;
            let mark_listed = |listed: &mut bool| {
                if !*listed {
                    *listed = true;
                    synced.kinds.fetch_add(1, Ordering::AcqRel);
                }
            };
            let mut stream = watcher(api, config).default_backoff().reflect(writer).boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => {
                        metrics.watch_event(&what, WatchEvent::Listing { relist: lists > 0 });
                        lists += 1;
                    }
                    Ok(watcher::Event::InitDone) => {
                        tracing::debug!(kind = %what, "listed");
                        metrics.watch_event(&what, WatchEvent::Synced);
                        mark_listed(&mut listed);
                    }
                    Ok(_) => metrics.watch_event(&what, WatchEvent::Changed),
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                        if status.code == 404 =>
                    {
                        if !listed {
                            tracing::info!(kind = %what, "not served by this cluster (CRD not installed?); treated as empty");
                        }
                        metrics.watch_event(&what, WatchEvent::Synced);
                        mark_listed(&mut listed);
                    }
                    Err(e) => {
                        metrics.watch_event(&what, WatchEvent::Failed);
                        if listed {
                            tracing::warn!(kind = %what, error = %e, "Kubernetes watch failed; retrying with backoff")
                        } else {
                            tracing::warn!(
                                kind = %what,
                                error = %e,
                                "Kubernetes list failed; retrying with backoff. weft-control stays unready, and its watches unanswered, until every kind has listed"
                            )
                        }
                    }
                }
                synced.changed.notify_waiters();
            }
        });
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let entry = |accepted: &str, resolved: &str, time: &str| {
            json!({"parentRef": {"name": "api"}, "controllerName": CONTROLLER_NAME, "conditions": [
                {"type": "Accepted", "status": accepted, "lastTransitionTime": time},
                {"type": "ResolvedRefs", "status": resolved, "lastTransitionTime": time},
            ]})
        };
        let before = [entry("True", "False", "2026-01-01T00:00:00Z")];
        let now = keep_transition_times(vec![entry("True", "True", "2026-12-03T08:00:00Z")], &before);
        assert_eq!(
            now[0]["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z",
            "unchanged"
        );
        assert_eq!(
            now[0]["conditions"][1]["lastTransitionTime"], "2026-12-03T08:00:00Z",
            "flipped"
        );
    }
}
