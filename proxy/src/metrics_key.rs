//! Request series looked up by borrowed labels (part of `metrics.rs`).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use super::{Classification, Direction, RequestLabels, RequestProtocol, SecurityPolicy};

/// [`RequestLabels`] borrowed from the request and its target: what each
/// request looks its series up by, so no label is copied unless the
/// series is new. Same fields, same order.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct RequestKey<'a> {
    pub direction: Direction,
    pub source_workload: &'a str,
    pub source_workload_namespace: &'a str,
    pub source_principal: &'a str,
    pub destination_workload: &'a str,
    pub destination_workload_namespace: &'a str,
    pub destination_principal: &'a str,
    pub destination_service_name: &'a str,
    pub destination_service_namespace: &'a str,
    pub route: &'a str,
    pub response_code: u16,
    pub grpc_response_status: &'a str,
    pub request_protocol: RequestProtocol,
    pub connection_security_policy: SecurityPolicy,
    pub classification: Classification,
    pub error: &'static str,
}

impl RequestKey<'_> {
    pub(super) fn to_labels(self) -> RequestLabels {
        RequestLabels {
            direction: self.direction,
            source_workload: self.source_workload.to_string(),
            source_workload_namespace: self.source_workload_namespace.to_string(),
            source_principal: self.source_principal.to_string(),
            destination_workload: self.destination_workload.to_string(),
            destination_workload_namespace: self.destination_workload_namespace.to_string(),
            destination_principal: self.destination_principal.to_string(),
            destination_service_name: self.destination_service_name.to_string(),
            destination_service_namespace: self.destination_service_namespace.to_string(),
            route: self.route.to_string(),
            response_code: self.response_code,
            grpc_response_status: self.grpc_response_status.to_string(),
            request_protocol: self.request_protocol,
            connection_security_policy: self.connection_security_policy,
            classification: self.classification,
            error: self.error,
        }
    }
}

/// What the series map is searched by: owned labels or a borrowed key
/// (std's maps look up by a type the key borrows as; a struct of borrowed
/// fields can only be reached that way through a trait object).
pub(super) trait AsRequestKey {
    fn key(&self) -> RequestKey<'_>;
}

impl AsRequestKey for RequestLabels {
    fn key(&self) -> RequestKey<'_> {
        RequestKey {
            direction: self.direction,
            source_workload: &self.source_workload,
            source_workload_namespace: &self.source_workload_namespace,
            source_principal: &self.source_principal,
            destination_workload: &self.destination_workload,
            destination_workload_namespace: &self.destination_workload_namespace,
            destination_principal: &self.destination_principal,
            destination_service_name: &self.destination_service_name,
            destination_service_namespace: &self.destination_service_namespace,
            route: &self.route,
            response_code: self.response_code,
            grpc_response_status: &self.grpc_response_status,
            request_protocol: self.request_protocol,
            connection_security_policy: self.connection_security_policy,
            classification: self.classification,
            error: self.error,
        }
    }
}

impl AsRequestKey for RequestKey<'_> {
    fn key(&self) -> RequestKey<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsRequestKey + 'a> for RequestLabels {
    fn borrow(&self) -> &(dyn AsRequestKey + 'a) {
        self
    }
}

/// Owned and borrowed forms hash alike: both hash the borrowed key.
impl Hash for RequestLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl Hash for dyn AsRequestKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for dyn AsRequestKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn AsRequestKey + '_ {}
