//! The control plane's metrics, served at `admin:/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::index::IndexStats;

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `issued`, or why it was refused (`bad_token`, `wrong_identity`,
    /// `csr_identity`, `bad_csr`, `signing`).
    pub result: &'static str,
}

#[derive(Debug, Default)]
pub struct ControlMetrics {
    pub certificates: Family<CertLabels, Counter>,
    pub watchers: Family<ApiLabels, Gauge>,
    pub updates: Family<UpdateLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub config_errors: Counter,
    pub index: Family<IndexLabels, Gauge>,
}

impl ControlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(weft_api::exposition::ProcessCollector::new()));
        registry.register(
            "weft_control_certificates",
            "Certificate requests, by result",
            self.certificates.clone(),
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
            "weft_control_index_objects",
            "Objects in the index, by kind",
            self.index.clone(),
        );
        // A gauge fixed at 1 rather than an OpenMetrics `info`, which
        // the Prometheus text format (and promtool) does not know.
        let build: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("weft_control_build_info", "Build information", build);
    }

    /// Counts one watch update sent on `api`'s streams.
    pub fn update_sent(&self, api: &'static str, kind: &'static str) {
        self.updates.get_or_create(&UpdateLabels { api, kind }).inc();
    }

    /// Counts one certificate request: `issued`, or why it was refused.
    pub fn certificate(&self, result: &'static str) {
        self.certificates.get_or_create(&CertLabels { result }).inc();
    }

    /// Counts one reload that found changed config files: accepted when it
    /// found no invalid documents, else rejected, with `errors` added to
    /// the config errors.
    pub fn config_reloaded(&self, errors: usize) {
        let result = if errors == 0 { "accepted" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.config_errors.inc_by(errors as u64);
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
