//! The control plane's metrics, served at `admin:/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::index::IndexStats;
use crate::model::{DocError, Document, InForce};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `destination` or `inbound`.
    pub api: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    pub api: &'static str,
    /// `snapshot`, `added`, `removed`, `policy`, `not_found`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `accepted` or `rejected`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexLabels {
    /// `services`, `endpoints`, `policies`, `routes`, `watched_destinations`.
    pub kind: &'static str,
}

/// An HTTPRoute parent's condition, as route status writes it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteConditionLabels {
    /// `Accepted` or `ResolvedRefs`.
    pub condition: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    /// The Gateway API reason (`Accepted`, `NoMatchingParent`,
    /// `ResolvedRefs`, `BackendNotFound`, `RefNotPermitted`, `InvalidKind`).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `issued`, or why it was refused (`bad_token`, `wrong_identity`,
    /// `csr_identity`, `bad_csr`, `signing`).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvalidLabels {
    /// `files` or `kubernetes`.
    pub source: &'static str,
    /// The document's kind (`AuthorizationPolicy`, ...; `unknown` when
    /// it could not be read).
    pub kind: String,
    /// What is in force instead: `last_good`, `deny_all` or `none`.
    pub in_force: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `too_many_connections`, `tls_handshake` (a plaintext client, an
    /// untrusted certificate), `handshake_timeout`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    /// `destination`, `inbound`.
    pub api: &'static str,
    /// The gRPC code: `unauthenticated`, `permission_denied`,
    /// `invalid_argument`.
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// `applied` (a ConfigMap written), `failed` (an apply refused or
    /// unanswered) or `watch_failed` (listing or watching namespaces or
    /// the ConfigMaps failed).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `injected`, `skipped` (not for injection: opted out, already
    /// injected, not a pod…), `failed` (injection refused with a warning;
    /// the pod was admitted without a proxy) or `bad_request` (not an
    /// AdmissionReview).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The watched resource (`services`, `endpointslices`, `pods`,
    /// `trafficpolicies`, `authorizationpolicies`, `httproutes`,
    /// `referencegrants`).
    pub resource: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `cache_hit` (no call made), `authenticated`, `rejected` (the API
    /// server said no, or named no service account) or `error` (the call
    /// failed: the certificate request is refused as unavailable).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The version the proxy reports (`unknown` when it reports none,
    /// `other` past [`MAX_VERSIONS`] distinct ones).
    pub version: String,
}

/// Distinct proxy versions given their own series; a fleet mid-upgrade has
/// two or three, so more means a client making them up.
pub const MAX_VERSIONS: usize = 16;

/// Webhook review latency buckets, seconds.
const WEBHOOK_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

#[derive(Debug)]
pub struct ControlMetrics {
    /// gRPC connections closed before any RPC, by reason.
    pub grpc_refused: Family<RefusedLabels, Counter>,
    /// RPCs refused for who called or what they asked.
    pub grpc_denied: Family<DeniedLabels, Counter>,
    pub certificates: Family<CertLabels, Counter>,
    pub watchers: Family<ApiLabels, Gauge>,
    pub updates: Family<UpdateLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub config_errors: Counter,
    pub index: Family<IndexLabels, Gauge>,
    /// HTTPRoute parents by condition, status and reason.
    pub route_conditions: Family<RouteConditionLabels, Gauge>,
    pub invalid: Family<InvalidLabels, Gauge>,
    /// The label sets `invalid` has, to zero the ones that went away.
    invalid_seen: std::sync::Mutex<std::collections::HashSet<InvalidLabels>>,
    /// The versions `connected_proxies` has series for.
    versions_seen: std::sync::Mutex<Vec<String>>,
    /// The `weft-trust-anchors` ConfigMaps published (Kubernetes).
    pub trust_anchors: Family<PublishLabels, Counter>,
    /// Admission reviews answered, by result, and how long each took.
    pub webhook_reviews: Family<WebhookLabels, Counter>,
    pub webhook_duration: prometheus_client::metrics::histogram::Histogram,
    /// When the issuing CA's certificate expires (Unix seconds).
    pub ca_expiry: Gauge,
    /// When the first of the trust anchors handed out expires.
    pub trust_anchor_expiry: Gauge,
    /// Per watched Kubernetes resource: listed and watching (1) or not
    /// (0: listing, relisting or failing), when the last event arrived,
    /// relists after the first list, and list or watch errors.
    pub watch_synced: Family<WatchLabels, Gauge>,
    pub watch_last_event: Family<WatchLabels, Gauge>,
    pub watch_relists: Family<WatchLabels, Counter>,
    pub watch_errors: Family<WatchLabels, Counter>,
    /// TokenReviews by result, and how long the calls made took.
    pub token_reviews: Family<ReviewLabels, Counter>,
    pub token_review_duration: prometheus_client::metrics::histogram::Histogram,
    /// Proxies with an open Destination stream, by the version they report.
    pub connected_proxies: Family<VersionLabels, Gauge>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            grpc_refused: Family::default(),
            grpc_denied: Family::default(),
            certificates: Family::default(),
            watchers: Family::default(),
            updates: Family::default(),
            reloads: Family::default(),
            config_errors: Counter::default(),
            index: Family::default(),
            route_conditions: Family::default(),
            invalid: Family::default(),
            invalid_seen: Default::default(),
            versions_seen: Default::default(),
            trust_anchors: Family::default(),
            webhook_reviews: Family::default(),
            webhook_duration: prometheus_client::metrics::histogram::Histogram::new(WEBHOOK_BUCKETS),
            ca_expiry: Gauge::default(),
            trust_anchor_expiry: Gauge::default(),
            watch_synced: Family::default(),
            watch_last_event: Family::default(),
            watch_relists: Family::default(),
            watch_errors: Family::default(),
            token_reviews: Family::default(),
            token_review_duration: prometheus_client::metrics::histogram::Histogram::new(WEBHOOK_BUCKETS),
            connected_proxies: Family::default(),
        }
    }
}

impl ControlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(weft_api::exposition::ProcessCollector::new()));
        registry.register(
            "weft_control_webhook_reviews",
            "Admission reviews answered, by result (failed: admitted without a proxy)",
            self.webhook_reviews.clone(),
        );
        registry.register(
            "weft_control_webhook_review_duration_seconds",
            "Time to answer one admission review",
            self.webhook_duration.clone(),
        );
        registry.register(
            "weft_control_ca_expiration_timestamp_seconds",
            "When the issuing CA's certificate expires (Unix time)",
            self.ca_expiry.clone(),
        );
        registry.register(
            "weft_control_trust_anchor_expiration_timestamp_seconds",
            "When the first of the trust anchors expires (Unix time)",
            self.trust_anchor_expiry.clone(),
        );
        registry.register(
            "weft_control_kubernetes_watch_synced",
            "1 while the resource is listed and watched, 0 while it lists, relists or fails",
            self.watch_synced.clone(),
        );
        registry.register(
            "weft_control_kubernetes_watch_last_event_timestamp_seconds",
            "When the last list or watch event of the resource arrived (Unix time)",
            self.watch_last_event.clone(),
        );
        registry.register(
            "weft_control_kubernetes_watch_relists",
            "Lists of the resource after the first (a watch expired or failed)",
            self.watch_relists.clone(),
        );
        registry.register(
            "weft_control_kubernetes_watch_errors",
            "Failed lists and watches of the resource (each retried with backoff)",
            self.watch_errors.clone(),
        );
        registry.register(
            "weft_control_token_reviews",
            "Service-account tokens checked, by result (cache_hit: answered without a TokenReview; error: the API server could not be asked)",
            self.token_reviews.clone(),
        );
        registry.register(
            "weft_control_token_review_duration_seconds",
            "Time a TokenReview call to the API server took",
            self.token_review_duration.clone(),
        );
        registry.register(
            "weft_control_connected_proxies",
            "Proxies with an open Destination stream, by the version they report",
            self.connected_proxies.clone(),
        );
        registry.register(
            "weft_control_certificates",
            "Certificate requests, by result",
            self.certificates.clone(),
        );
        registry.register(
            "weft_control_grpc_connections_refused",
            "gRPC connections closed before any call, by reason (tls_handshake: a plaintext client or an untrusted certificate)",
            self.grpc_refused.clone(),
        );
        registry.register(
            "weft_control_grpc_denied",
            "Calls refused for the caller's identity or request, by API and gRPC code",
            self.grpc_denied.clone(),
        );
        registry.register(
            "weft_control_watchers",
            "Open watch streams",
            self.watchers.clone(),
        );
        registry.register(
            "weft_control_updates_sent",
            "Watch updates sent, by kind",
            self.updates.clone(),
        );
        registry.register(
            "weft_control_config_reloads",
            "Config file reloads, by result",
            self.reloads.clone(),
        );
        registry.register(
            "weft_control_config_errors",
            "Invalid documents found (each keeps the last good version in force)",
            self.config_errors.clone(),
        );
        registry.register(
            "weft_control_invalid_documents",
            "Documents that failed validation now, by source, kind and what is in force instead (an invalid AuthorizationPolicy never opens its port: last_good or deny_all)",
            self.invalid.clone(),
        );
        registry.register(
            "weft_control_index_objects",
            "Objects in the index, by kind",
            self.index.clone(),
        );
        registry.register(
            "weft_control_httproute_parents",
            "HTTPRoute parents the index holds, by condition (Accepted, ResolvedRefs), status and Gateway API reason",
            self.route_conditions.clone(),
        );
        // A gauge fixed at 1 rather than an OpenMetrics `info`, which
        // the Prometheus text format (and promtool) does not know.
        let build: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("weft_control_build_info", "Build information", build);
        registry.register(
            "weft_control_trust_anchor_publishes",
            "Applies of the weft-trust-anchors ConfigMap into namespaces, by result (failed and watch_failed are retried with backoff)",
            self.trust_anchors.clone(),
        );
    }

    /// Counts one gRPC connection closed before any call.
    pub fn grpc_connection_refused(&self, reason: &'static str) {
        self.grpc_refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// Counts one call refused with `status`, and hands it back.
    pub fn denied(&self, api: &'static str, status: tonic::Status) -> tonic::Status {
        let code = match status.code() {
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::PermissionDenied => "permission_denied",
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            _ => "other",
        };
        self.grpc_denied.get_or_create(&DeniedLabels { api, code }).inc();
        status
    }

    /// Counts one watch update sent on `api`'s streams.
    pub fn update_sent(&self, api: &'static str, kind: &'static str) {
        self.updates.get_or_create(&UpdateLabels { api, kind }).inc();
    }

    /// Counts one certificate request: `issued`, or why it was refused.
    pub fn certificate(&self, result: &'static str) {
        self.certificates.get_or_create(&CertLabels { result }).inc();
    }

    /// Counts one apply of a namespace's trust-anchor ConfigMap, or one
    /// failed watch: `applied`, `failed`, `watch_failed`.
    pub fn trust_anchors_published(&self, result: &'static str) {
        self.trust_anchors.get_or_create(&PublishLabels { result }).inc();
    }

    /// Counts one reload that found changed config files: accepted when it
    /// found no invalid documents, else rejected, with `errors` added to
    /// the config errors.
    pub fn config_reloaded(&self, errors: usize) {
        let result = if errors == 0 { "accepted" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.config_errors.inc_by(errors as u64);
    }

    /// Sets the invalid documents of `source` now: `errors`, with `docs`
    /// what the source hands the index.
    pub fn invalid_documents(&self, source: &'static str, errors: &[DocError], docs: &[Document]) {
        let mut counts: std::collections::HashMap<InvalidLabels, i64> = Default::default();
        for e in errors {
            let kind = e
                .doc
                .name
                .as_deref()
                .and_then(|n| n.split_once(' '))
                .map_or("unknown", |(kind, _)| kind);
            let labels = InvalidLabels {
                source,
                kind: kind.to_string(),
                in_force: InForce::of(e, docs).as_str(),
            };
            *counts.entry(labels).or_default() += 1;
        }
        let mut seen = self.invalid_seen.lock().expect("metrics lock");
        for labels in seen.iter().filter(|l| l.source == source) {
            if !counts.contains_key(labels) {
                self.invalid.get_or_create(labels).set(0);
            }
        }
        for (labels, n) in counts {
            self.invalid.get_or_create(&labels).set(n);
            seen.insert(labels);
        }
    }

    /// Records one event (or error) of the watch on `resource`.
    pub fn watch_event(&self, resource: &str, event: WatchEvent) {
        let labels = WatchLabels {
            resource: resource.to_string(),
        };
        self.watch_last_event
            .get_or_create(&labels)
            .set(crate::metrics::unix_now());
        match event {
            WatchEvent::Listing { relist } => {
                self.watch_synced.get_or_create(&labels).set(0);
                if relist {
                    self.watch_relists.get_or_create(&labels).inc();
                }
            }
            WatchEvent::Synced => {
                self.watch_synced.get_or_create(&labels).set(1);
            }
            WatchEvent::Changed => {}
            WatchEvent::Failed => {
                self.watch_synced.get_or_create(&labels).set(0);
                self.watch_errors.get_or_create(&labels).inc();
            }
        }
    }

    /// Counts one token checked: `cache_hit`, `authenticated`, `rejected`
    /// or `error`; `took` is the API call's time (none for a cache hit).
    pub fn token_review(&self, result: &'static str, took: Option<std::time::Duration>) {
        self.token_reviews.get_or_create(&ReviewLabels { result }).inc();
        if let Some(took) = took {
            self.token_review_duration.observe(took.as_secs_f64());
        }
    }

    /// Sets the connected proxies by version from `versions` (one entry
    /// per connected proxy), removing the versions no proxy reports any
    /// more.
    pub fn connected_proxies<'a>(&self, versions: impl Iterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        for v in versions {
            let v = if v.is_empty() { "unknown" } else { v };
            let known = counts.len() < MAX_VERSIONS || counts.contains_key(v);
            *counts
                .entry(if known { v } else { "other" }.to_string())
                .or_default() += 1;
        }
        let mut seen = self.versions_seen.lock().expect("metrics lock");
        for gone in seen.iter().filter(|v| !counts.contains_key(*v)) {
            self.connected_proxies.remove(&VersionLabels {
                version: gone.clone(),
            });
        }
        for (version, n) in &counts {
            self.connected_proxies
                .get_or_create(&VersionLabels {
                    version: version.clone(),
                })
                .set(*n);
        }
        *seen = counts.into_keys().collect();
    }

    /// Sets the route condition gauges from the index's verdicts (series
    /// that no route has any more go to 0).
    pub fn route_verdicts(&self, verdicts: &[(String, Vec<crate::index::ParentVerdict>)]) {
        let mut counts: std::collections::HashMap<RouteConditionLabels, i64> =
            std::collections::HashMap::new();
        for (_, parents) in verdicts {
            for p in parents {
                for (condition, v) in [("Accepted", &p.accepted), ("ResolvedRefs", &p.resolved_refs)] {
                    let labels = RouteConditionLabels {
                        condition,
                        status: if v.ok { "True" } else { "False" },
                        reason: v.reason,
                    };
                    *counts.entry(labels).or_default() += 1;
                }
            }
        }
        self.route_conditions.clear();
        for (labels, n) in counts {
            self.route_conditions.get_or_create(&labels).set(n);
        }
    }

    pub fn index_stats(&self, s: IndexStats) {
        for (kind, n) in [
            ("services", s.services),
            ("endpoints", s.endpoints),
            ("policies", s.policies),
            ("routes", s.routes),
            ("watched_destinations", s.watched_destinations),
        ] {
            self.index.get_or_create(&IndexLabels { kind }).set(n as i64);
        }
    }
}

/// What happened on one Kubernetes watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// A list began: the first, or a relist.
    Listing { relist: bool },
    /// The list completed (or the resource is not served: listed, empty).
    Synced,
    /// An object was added, changed or deleted.
    Changed,
    /// A list or watch failed.
    Failed,
}

/// Now, Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
