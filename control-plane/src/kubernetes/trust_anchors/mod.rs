//! Trust anchors where injected pods can mount them: a ConfigMap
//! `weft-trust-anchors` (key `ca.crt`, the PEM bundle the CA hands proxies)
//! in every namespace but `kube-system`, `kube-public` and
//! `kube-node-lease`, the way Istio publishes `istio-ca-root-cert`. A pod
//! can only mount a ConfigMap of its own namespace, so one in weft-system
//! would not do.
//!
//! Two watches drive it: Namespaces (a new one gets its ConfigMap) and the
//! ConfigMaps of that name (field selector `metadata.name=…`; one deleted
//! or changed is put back). Writes are server-side applies (field manager
//! `weft-control`, forced, so an edit by someone else is taken back), which
//! are idempotent: every replica publishes, no leader is needed.
//!
//! During a rollout that changes the anchors, old and new replicas publish
//! different bundles and each sees the other's write as a change. Putting
//! back a *changed* ConfigMap therefore waits until [`REAPPLY_HOLDOFF`]
//! after this replica last wrote it: the two alternate at most once per
//! hold-off and namespace, and once the old replicas are gone the new
//! bundle stays. A deleted ConfigMap is put back at once. A failed apply is
//! retried with backoff (1 s doubling to 5 min), logged and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::metrics::ControlMetrics;

/// The ConfigMap's name in every namespace.
pub const CONFIGMAP: &str = "weft-trust-anchors";
/// Its one key: the PEM bundle.
pub const KEY: &str = "ca.crt";
/// The server-side apply field manager, and the `managed-by` label.
pub const FIELD_MANAGER: &str = "weft-control";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Namespaces that get no ConfigMap: nothing there is meshed.
pub const SKIPPED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// How long after its last write of a namespace's ConfigMap this replica
/// waits before taking back a change to it (see the module docs).
pub const REAPPLY_HOLDOFF: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The ConfigMap as applied to `namespace`: what `kubectl create configmap
/// weft-trust-anchors --from-file=ca.crt=<bundle>` makes, plus the label.
pub fn config_map(namespace: &str, pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some([(MANAGED_BY.to_string(), FIELD_MANAGER.to_string())].into()),
            ..ObjectMeta::default()
        },
        data: Some([(KEY.to_string(), pem.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// Whether `current` (the namespace's ConfigMap, if any) must be applied
/// for it to hold `pem` with our label. Other keys and labels are left
/// alone: they are not ours.
pub fn needs_apply(current: Option<&ConfigMap>, pem: &str) -> bool {
    let Some(cm) = current else { return true };
    let data = cm.data.as_ref().and_then(|d| d.get(KEY));
    let label = cm.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY));
    data.map(String::as_str) != Some(pem) || label.map(String::as_str) != Some(FIELD_MANAGER)
}

/// Whether a namespace gets a ConfigMap: not a system one, not going away
/// (an apply there would be refused).
pub fn wanted(ns: &Namespace) -> bool {
    let name = ns.metadata.name.as_deref().unwrap_or("");
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !name.is_empty() && !SKIPPED_NAMESPACES.contains(&name) && !terminating
}

/// What one look at a namespace came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Failed,
    /// Its ConfigMap was right already.
    Fine,
    /// The namespace is gone or going.
    Gone,
}

/// One namespace's schedule.
#[derive(Debug, Default)]
struct Slot {
    /// When to look at it next (`None`: nothing to do).
    due: Option<Instant>,
    /// When this replica last wrote it.
    applied: Option<Instant>,
    /// Failed applies in a row.
    failures: u32,
}

/// When to look at which namespace: the decisions of the watch events, with
/// no I/O (the publisher does that), so they are tested under paused time.
#[derive(Debug)]
pub struct Schedule {
    slots: HashMap<String, Slot>,
    holdoff: Duration,
    namespaces_listed: bool,
    config_maps_listed: bool,
}

impl Schedule {
    pub fn new(holdoff: Duration) -> Self {
        Self {
            slots: HashMap::new(),
            holdoff,
            namespaces_listed: false,
            config_maps_listed: false,
        }
    }

    /// A namespace event: a new or changed namespace is looked at now.
    pub fn namespace(&mut self, event: &watcher::Event<Namespace>, now: Instant) {
        match event {
            watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                if wanted(ns) {
                    self.slots.entry(name).or_default().due.get_or_insert(now);
                } else {
                    self.slots.remove(&name);
                }
            }
            watcher::Event::Delete(ns) => {
                self.slots.remove(ns.metadata.name.as_deref().unwrap_or(""));
            }
            // Each listed namespace came as an `InitApply`, due now.
            watcher::Event::InitDone => self.namespaces_listed = true,
            watcher::Event::Init => {}
        }
    }

    /// A ConfigMap event: one deleted is put back now, one changed away
    /// from `pem` once the hold-off since this replica's last write is over.
    pub fn config_map(&mut self, event: &watcher::Event<ConfigMap>, pem: &str, now: Instant) {
        match event {
            watcher::Event::Delete(cm) => {
                if let Some(s) = self.slot_of(cm) {
                    tracing::info!(namespace = ?cm.metadata.namespace, "{CONFIGMAP} was deleted; putting it back");
                    s.due = Some(now);
                }
            }
            watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) if needs_apply(Some(cm), pem) => {
                let holdoff = self.holdoff;
                if let Some(s) = self.slot_of(cm) {
                    let after = s.applied.map_or(now, |t| (t + holdoff).max(now));
                    s.due = Some(s.due.map_or(after, |d| d.min(after)));
                }
            }
            watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Init => {}
            watcher::Event::InitDone => {
                self.config_maps_listed = true;
                self.all_due(now);
            }
        }
    }

    fn slot_of(&mut self, cm: &ConfigMap) -> Option<&mut Slot> {
        self.slots.get_mut(cm.metadata.namespace.as_deref()?)
    }

    /// After a relist of the ConfigMaps, which may have missed deletions:
    /// every namespace is looked at (no write where all is well).
    fn all_due(&mut self, now: Instant) {
        for slot in self.slots.values_mut() {
            slot.due.get_or_insert(now);
        }
    }

    /// When the next namespace is due; `None` before both kinds have
    /// listed, so the first round knows which ConfigMaps are right.
    pub fn next(&self) -> Option<Instant> {
        if !(self.namespaces_listed && self.config_maps_listed) {
            return None;
        }
        self.slots.values().filter_map(|s| s.due).min()
    }

    /// The namespaces due at `now`, taken off the schedule.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        if self.next().is_none() {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (ns, slot) in &mut self.slots {
            if slot.due.is_some_and(|d| d <= now) {
                slot.due = None;
                due.push(ns.clone());
            }
        }
        due.sort();
        due
    }

    /// Records what a look at `ns` came to; a failure is retried after
    /// 1 s, 2 s, 4 s … up to 5 min.
    pub fn done(&mut self, ns: &str, outcome: Outcome, now: Instant) {
        if outcome == Outcome::Gone {
            self.slots.remove(ns);
            return;
        }
        let Some(slot) = self.slots.get_mut(ns) else {
            return;
        };
        match outcome {
            Outcome::Applied => {
                slot.applied = Some(now);
                slot.failures = 0;
            }
            Outcome::Failed => {
                let backoff = RETRY_FIRST * 2u32.pow(slot.failures.min(9));
                slot.failures += 1;
                let retry = now + backoff.min(RETRY_MAX);
                slot.due = Some(slot.due.map_or(retry, |d| d.min(retry)));
            }
            Outcome::Fine | Outcome::Gone => slot.failures = 0,
        }
    }
}

/// Publishes the trust-anchor bundle into every namespace.
pub struct TrustAnchorPublisher {
    client: Client,
    pem: String,
    holdoff: Duration,
}

impl TrustAnchorPublisher {
    /// Publishes `pem` (the bundle the CA hands proxies).
    pub fn new(client: Client, pem: String) -> Self {
        Self {
            client,
            pem,
            holdoff: REAPPLY_HOLDOFF,
        }
    }

    /// Another hold-off than [`REAPPLY_HOLDOFF`] (tests).
    pub fn with_holdoff(mut self, holdoff: Duration) -> Self {
        self.holdoff = holdoff;
        self
    }

    /// Watches and applies until aborted.
    pub async fn run(self, metrics: Arc<ControlMetrics>) {
        let config = watcher::Config::default().any_semantic();
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let (maps, cm_writer) = reflector::store::<ConfigMap>();
        let ns_events = watcher(Api::<Namespace>::all(self.client.clone()), config.clone())
            .default_backoff()
            .reflect(ns_writer)
            .map(Trigger::Namespace)
            .boxed();
        let cm_config = config.fields(&format!("metadata.name={CONFIGMAP}"));
        let cm_events = watcher(Api::<ConfigMap>::all(self.client.clone()), cm_config)
            .default_backoff()
            .reflect(cm_writer)
            .map(Trigger::ConfigMap)
            .boxed();
        let mut events = futures_util::stream::select(ns_events, cm_events);
        let mut schedule = Schedule::new(self.holdoff);
        loop {
            let next = schedule.next();
            tokio::select! {
                event = events.next() => match event {
                    None => return,
                    Some(Trigger::Namespace(Ok(e))) => schedule.namespace(&e, Instant::now()),
                    Some(Trigger::ConfigMap(Ok(e))) => schedule.config_map(&e, &self.pem, Instant::now()),
                    Some(Trigger::Namespace(Err(e)) | Trigger::ConfigMap(Err(e))) => {
                        metrics.trust_anchors_published("watch_failed");
                        tracing::warn!(error = %e, "trust anchors: watching namespaces or ConfigMaps failed; retrying with backoff");
                    }
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    for ns in schedule.take_due(Instant::now()) {
                        let outcome = self.reconcile(&ns, &namespaces, &maps, &metrics).await;
                        schedule.done(&ns, outcome, Instant::now());
                    }
                }
            }
        }
    }

    /// Applies `ns`'s ConfigMap if it needs it.
    async fn reconcile(
        &self,
        ns: &str,
        namespaces: &Store<Namespace>,
        maps: &Store<ConfigMap>,
        metrics: &ControlMetrics,
    ) -> Outcome {
        let live = || namespaces.get(&ObjectRef::new(ns)).is_some_and(|n| wanted(&n));
        if !live() {
            return Outcome::Gone;
        }
        let current = maps.get(&ObjectRef::new(CONFIGMAP).within(ns));
        if !needs_apply(current.as_deref(), &self.pem) {
            return Outcome::Fine;
        }
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), ns);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch(CONFIGMAP, &params, &Patch::Apply(config_map(ns, &self.pem)))
            .await
        {
            Ok(_) => {
                metrics.trust_anchors_published("applied");
                tracing::debug!(namespace = ns, "trust anchors published");
                Outcome::Applied
            }
            // The namespace went away meanwhile: nothing to publish.
            Err(_) if !live() => Outcome::Gone,
            Err(e) => {
                metrics.trust_anchors_published("failed");
                tracing::warn!(namespace = ns, error = %e, "could not publish the trust anchors ({CONFIGMAP}); retrying with backoff. Injected pods in this namespace cannot start without it");
                Outcome::Failed
            }
        }
    }
}

enum Trigger {
    Namespace(Result<watcher::Event<Namespace>, watcher::Error>),
    ConfigMap(Result<watcher::Event<ConfigMap>, watcher::Error>),
}

#[cfg(test)]
mod tests;
