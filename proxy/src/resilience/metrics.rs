//! Counters for each resilience mechanism (see docs/metrics.md), labelled
//! by the destination service as the request metrics are (inbound, for
//! rate limits: the service this proxy fronts).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `success`, `failure` (the retry's own outcome) or `budget_exhausted`
    /// (a retry the budget refused).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct ResilienceMetrics {
    pub retries: Family<RetryLabels, Counter>,
    pub ejections: Family<ServiceLabels, Counter>,
    /// reason: `queue_full`, `pending_timeout`.
    pub load_shed: Family<ReasonLabels, Counter>,
    /// reason: `total`, `identity`.
    pub rate_limited: Family<ReasonLabels, Counter>,
    /// reason: `delay`, `abort`.
    pub faults: Family<ReasonLabels, Counter>,
}

impl ResilienceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_retries",
            "Retries sent, by their outcome, and retries the budget refused",
            self.retries.clone(),
        );
        registry.register(
            "weft_endpoint_ejections",
            "Endpoints ejected by the circuit breaker (including failed probes)",
            self.ejections.clone(),
        );
        registry.register(
            "weft_load_shed",
            "Requests refused by the bulkhead (503 load-shed)",
            self.load_shed.clone(),
        );
        registry.register(
            "weft_rate_limited",
            "Inbound requests refused by a rate limit (429)",
            self.rate_limited.clone(),
        );
        registry.register(
            "weft_faults_injected",
            "Requests delayed or aborted by fault injection",
            self.faults.clone(),
        );
    }

    pub fn service(service: &str, namespace: &str) -> ServiceLabels {
        ServiceLabels {
            destination_service_name: service.to_string(),
            destination_service_namespace: namespace.to_string(),
        }
    }

    pub fn reason(service: &str, namespace: &str, reason: &'static str) -> ReasonLabels {
        ReasonLabels {
            destination_service_name: service.to_string(),
            destination_service_namespace: namespace.to_string(),
            reason,
        }
    }
}
