//! The configuration model: Kubernetes-style documents (`apiVersion`,
//! `kind`, `metadata`, `spec`) and their validation.
//!
//! Every source (the files and the Kubernetes API) produces
//! [`Document`]s; a document that fails validation is a [`DocError`] naming
//! the file, the document (index and name), the field and what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const WEFT_API_VERSION: &str = "weft.dev/v1alpha1";
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// ReferenceGrant's API version (it is not in v1).
pub const GATEWAY_API_BETA_VERSION: &str = "gateway.networking.k8s.io/v1beta1";
/// The API group of HTTPRoutes, as a ReferenceGrant's `from` names it.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// A validated document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub meta: Metadata,
    pub spec: Spec,
}

// Documents are parsed on config changes only: size is no concern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    MeshService(MeshServiceSpec),
    TrafficPolicy(TrafficPolicySpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    HttpRoute(HttpRouteSpec),
    GrpcRoute(GrpcRouteSpec),
    ReferenceGrant(ReferenceGrantSpec),
    Gateway(GatewaySpec),
    GatewayPolicy(GatewayPolicySpec),
    /// Stands in for an AuthorizationPolicy that failed validation and
    /// has no last good version: never parsed, made by the sources.
    DenyAll(DenyAll),
    /// A pod, as its proxy's inbound policy needs it: never parsed, made
    /// by the Kubernetes source.
    Workload(WorkloadSpec),
}

impl Spec {
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::MeshService(_) => "MeshService",
            Spec::TrafficPolicy(_) => "TrafficPolicy",
            Spec::AuthorizationPolicy(_) | Spec::DenyAll(_) => "AuthorizationPolicy",
            Spec::HttpRoute(_) => "HTTPRoute",
            Spec::GrpcRoute(_) => "GRPCRoute",
            Spec::ReferenceGrant(_) => "ReferenceGrant",
            Spec::Gateway(_) => "Gateway",
            Spec::GatewayPolicy(_) => "GatewayPolicy",
            Spec::Workload(_) => "Pod",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the API server created the object (RFC 3339, as it writes
    /// it): orders HTTPRoutes whose matches tie. Files rarely say.
    #[serde(
        default,
        rename = "creationTimestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_timestamp: Option<String>,
}

/// `metadata` as read: [`Metadata`] plus the fields a Kubernetes API server
/// writes (so `kubectl get -o yaml` output loads), accepted and ignored.
/// Anything else is an error, so a misspelt `namespace` cannot silently
/// land in `default`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMetadata {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "generation")]
    _generation: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "creationTimestamp")]
    creation_timestamp: Option<String>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<serde::de::IgnoredAny>,
}

impl From<RawMetadata> for Metadata {
    fn from(m: RawMetadata) -> Self {
        Self {
            name: m.name,
            namespace: m.namespace,
            labels: m.labels,
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
        }
    }
}

fn default_namespace() -> String {
    "default".into()
}

/// Names the document inside its source, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    pub file: String,
    /// 0-based position in the file.
    pub index: usize,
    /// `Kind namespace/name` when known.
    pub name: Option<String>,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.index)?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// A document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doc}: field `{field}`: {problem}")]
pub struct DocError {
    pub doc: DocRef,
    pub field: String,
    pub problem: String,
    /// Set when the document is an AuthorizationPolicy: what could be
    /// read of it, so that it fails closed rather than being dropped.
    pub authz: Option<Box<RejectedAuthz>>,
}

/// An AuthorizationPolicy that failed validation, as far as it could be
/// read. Dropping it would leave its port allow-all, so a source keeps
/// its last good version in force or, with none, puts a [`DenyAll`] on
/// its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedAuthz {
    pub namespace: String,
    pub name: String,
    /// The service (and port) it names, when `spec.targetRef.name` is a
    /// string; a port that is not a valid one widens it to every port.
    pub target: Option<TargetRef>,
}

/// A pod of the cluster (document name: the pod's name): who it runs as and
/// which Services select it, with their ports as this pod serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub service_account: String,
    /// Every Service in the pod's namespace whose selector matches its
    /// labels, whether or not the pod is ready.
    pub services: Vec<WorkloadService>,
}

/// One Service selecting a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadService {
    pub name: String,
    /// (service port, the pod's port it targets), for the TCP ports whose
    /// target resolves on this pod (a named `targetPort` through its
    /// containers' ports).
    pub ports: Vec<(u16, u16)>,
}

/// Denies every caller of `target` (mTLS strict, no allow rules): what an
/// invalid AuthorizationPolicy with no last good version enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyAll {
    pub target: TargetRef,
    /// The field that failed validation.
    pub field: String,
    /// The whole validation error.
    pub reason: String,
}

impl DocError {
    /// The [`DenyAll`] stand-in for this error's AuthorizationPolicy;
    /// `None` when it is not one, or names no target that can be closed.
    pub fn deny_all(&self) -> Option<Document> {
        let authz = self.authz.as_ref()?;
        Some(Document {
            meta: Metadata {
                name: authz.name.clone(),
                namespace: authz.namespace.clone(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                creation_timestamp: None,
            },
            spec: Spec::DenyAll(DenyAll {
                target: authz.target.clone()?,
                field: self.field.clone(),
                reason: self.to_string(),
            }),
        })
    }

    /// `Kind namespace/name` of the document, when known.
    fn key(&self) -> Option<&str> {
        self.doc.name.as_deref()
    }
}

/// What is in force in place of a document that failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InForce {
    /// Its last good version.
    LastGood,
    /// Nothing: its target denies every caller ([`DenyAll`]).
    DenyAll,
    /// Nothing: it has no effect (a route or traffic policy not applied;
    /// an authorization policy whose target cannot be read).
    Nothing,
}

impl InForce {
    /// Of `error`, among the documents `docs` a source hands the index.
    pub fn of(error: &DocError, docs: &[Document]) -> Self {
        let Some(key) = error.key() else {
            return InForce::Nothing;
        };
        let found = docs
            .iter()
            .find(|d| key == format!("{} {}/{}", d.spec.kind(), d.meta.namespace, d.meta.name));
        match found.map(|d| &d.spec) {
            Some(Spec::DenyAll(_)) => InForce::DenyAll,
            Some(_) => InForce::LastGood,
            None => InForce::Nothing,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            InForce::LastGood => "last_good",
            InForce::DenyAll => "deny_all",
            InForce::Nothing => "none",
        }
    }

    /// For logs and status conditions.
    pub fn explain(self) -> &'static str {
        match self {
            InForce::LastGood => "the last good version stays in force",
            InForce::DenyAll => "no last good version: its target denies every caller until it is fixed",
            InForce::Nothing => "it has no effect",
        }
    }
}

// ---------------------------------------------------------------- specs

/// `status` of the weft.dev custom resources: whether the control plane
/// accepted the spec (condition `Accepted`), and why not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes-style status condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    #[serde(default)]
    pub last_transition_time: Option<String>,
}

/// `MeshService` (files only): a service and its endpoints, standing in for
/// Service + EndpointSlice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshServiceSpec {
    /// The ports clients call. Default: one HTTP port, 80.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The service account its workloads run as (their identity). Default:
    /// the service name.
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<MeshEndpoint>,
    /// The service's virtual IP (a Kubernetes ClusterIP): an
    /// intercepted app that dials `clusterIP:port` reaches this service.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: AppProtocol,
    /// The port the workloads serve this port on, when it differs from the
    /// endpoints' own port (a Kubernetes `targetPort`).
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http,
    Grpc,
    /// Opaque TCP: no protocol detection.
    Tcp,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshEndpoint {
    /// Where the replica serves (`ip:port`).
    pub address: SocketAddr,
    /// Its Weft proxy's inbound listener; omit for an unmeshed endpoint.
    #[serde(default)]
    pub proxy: Option<SocketAddr>,
    /// The service account this replica runs as (its SPIFFE ID); default
    /// the service's `serviceAccount`, else its name. In a cluster: its
    /// own pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The workload (its proxy's `workload`) this replica belongs to: that
    /// proxy's inbound policy includes this service's policies. A proxy
    /// whose workload is the service's own name needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// Names the service a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// `Service` or `MeshService` (same thing to the mesh).
    #[serde(default = "service_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub port: Option<u16>,
}

fn service_kind() -> String {
    "Service".into()
}

/// `TrafficPolicy`: how clients call one service. The same spec is read
/// from files and, as the `weft.dev/v1alpha1` custom resource
/// [`TrafficPolicy`], from a cluster.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "wtp",
    category = "weft",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Balancer","type":"string","jsonPath":".spec.loadBalancer"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub retries: Option<Retries>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    #[serde(default)]
    pub fault: Option<Fault>,
    /// `required`: clients call only meshed endpoints (mTLS with the
    /// endpoint's own identity) and refuse unmeshed ones; `optional`
    /// (default, unless weft-control runs with `--require-mtls`): unmeshed
    /// endpoints are called in plaintext.
    #[serde(default)]
    pub mtls: Option<ClientMtls>,
}

/// Whether clients of a service may call its unmeshed endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClientMtls {
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    PeakEwma,
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try.
    #[serde(default = "one")]
    pub attempts: u32,
    /// What to retry: `5xx`, `gateway-error`, `connect-failure`, `reset`, or
    /// status codes. `retryOn`, not `on`: YAML 1.1 readers (kubectl, Helm)
    /// take a plain `on` for the boolean `true` (an `on` is refused, naming
    /// `retryOn`).
    #[serde(default, rename = "retryOn")]
    pub on: Vec<String>,
    #[serde(default)]
    pub grpc_codes: Vec<String>,
    #[serde(default)]
    pub budget: Option<RetryBudget>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Retry non-idempotent methods too.
    #[serde(default)]
    pub non_idempotent: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed as a share of original requests, 0.0..=1.0.
    pub ratio: f64,
    #[serde(default)]
    pub min_per_second: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub base: Option<Duration>,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub max: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub request: Option<Duration>,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub per_try: Option<Duration>,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub connect: Option<Duration>,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub idle: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    #[serde(default)]
    pub consecutive_failures: u32,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub base_ejection: Option<Duration>,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub max_ejection: Option<Duration>,
    /// At most this share of endpoints ejected at once, 0..=100.
    #[serde(default)]
    pub max_ejected_percent: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Concurrency {
    #[serde(default)]
    pub max_in_flight: u32,
    #[serde(default)]
    pub max_pending: u32,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub pending_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde_compat")]
    pub fixed: Duration,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    pub status: u16,
    pub percent: f64,
}

/// `AuthorizationPolicy`: who may call one service (port), and how fast.
/// Also the `weft.dev/v1alpha1` custom resource [`AuthorizationPolicy`].
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "wap",
    category = "weft",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"mTLS","type":"string","jsonPath":".spec.mtls"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Permissive,
    Strict,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationRule {
    #[serde(default)]
    pub from: Option<RuleFrom>,
    #[serde(default)]
    pub to: Option<RuleTo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default)]
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: u32,
    #[serde(default)]
    pub per_identity: Option<PerIdentityLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PerIdentityLimit {
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: u32,
}

mod edge;
mod gateway;
mod parse;
mod validate;
mod validate_edge;

/// `(field path, problem)`: what parsing and validation report.
type FieldError = (String, String);

pub use edge::*;
pub use gateway::*;
pub use parse::{parse_file, parse_object, yaml_documents};

/// Optional durations written as `500ms`, `3s`.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            humantime::parse_duration(&t).map_err(|e| {
                serde::de::Error::custom(format!(
                    "expected a duration such as `500ms` or `3s`, got `{t}` ({e})"
                ))
            })
        })
        .transpose()
    }
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let t = String::deserialize(d)?;
        humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a duration such as `500ms` or `3s`, got `{t}` ({e})"
            ))
        })
    }
}
