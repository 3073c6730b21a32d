//! The Gateway API kinds the mesh reads: `HTTPRoute` and `GRPCRoute`
//! (GAMMA: a Service parent) and `ReferenceGrant`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{one, opt_duration, GATEWAY_API_GROUP};

/// `ReferenceGrant` (gateway.networking.k8s.io/v1beta1), in the namespace
/// of what it grants: lets the listed kinds in other namespaces refer to
/// it. The mesh reads grants from `HTTPRoute`s to `Service`s, which a
/// route's `backendRefs` into another namespace need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrantTo {
    /// `""`: the core group (Services).
    #[serde(default)]
    pub group: String,
    pub kind: String,
    /// `None`: every object of the kind in the namespace.
    #[serde(default)]
    pub name: Option<String>,
}

impl ReferenceGrantSpec {
    /// Whether a route of `kind` (`HTTPRoute`, `GRPCRoute`) in
    /// `route_namespace` may name Service `name` (in the grant's
    /// namespace) as a backend.
    pub fn lets_route_use_service(&self, kind: &str, route_namespace: &str, name: &str) -> bool {
        self.lets(kind, route_namespace, "Service", name)
    }

    /// Whether a Gateway in `gateway_namespace` may name Secret `name`
    /// (in the grant's namespace) in a listener's certificateRefs.
    pub fn lets_gateway_use_secret(&self, gateway_namespace: &str, name: &str) -> bool {
        self.lets("Gateway", gateway_namespace, "Secret", name)
    }

    /// Whether a Gateway API `from_kind` in `from_namespace` may refer to
    /// core `to_kind` `name`.
    fn lets(&self, from_kind: &str, from_namespace: &str, to_kind: &str, name: &str) -> bool {
        self.from
            .iter()
            .any(|f| f.group == GATEWAY_API_GROUP && f.kind == from_kind && f.namespace == from_namespace)
            && self.to.iter().any(|t| {
                t.group.is_empty() && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == name)
            })
    }
}

/// `HTTPRoute` (gateway.networking.k8s.io/v1), the subset the mesh uses
/// (GAMMA: the parent is a Service).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Not supported by the mesh (a Service port is chosen with `port`);
    /// read so validation can refuse it rather than widen the route.
    #[serde(default)]
    pub section_name: Option<String>,
}

impl ParentRef {
    /// A Gateway (an edge gateway's listeners), not a Service. Files
    /// default to a Service parent.
    pub fn is_gateway(&self) -> bool {
        self.kind.as_deref() == Some("Gateway")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<RouteTimeouts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default = "path_prefix")]
    pub kind: String,
    pub value: String,
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
}

/// An HTTPRoute filter: `type` names which of the other fields applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub request_redirect: Option<RedirectFilter>,
    #[serde(default)]
    pub url_rewrite: Option<RewriteFilter>,
    #[serde(default)]
    pub request_mirror: Option<MirrorFilter>,
    /// Not supported by the mesh; read so the error can say so.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub extension_ref: Option<serde_json::Value>,
    /// Not supported by the mesh (CORS, GEP-1767); read so the error can
    /// say so.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub cors: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderFilter {
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectFilter {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RewriteFilter {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
}

/// `ReplaceFullPath` or `ReplacePrefixMatch`, as `type` says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifierSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorFilter {
    pub backend_ref: MirrorBackendRef,
    /// Percent of requests mirrored (0-100); with neither this nor
    /// `fraction`, all.
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorBackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTimeouts {
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default)]
    pub request: Option<Duration>,
    #[schemars(with = "Option<String>")]
    #[serde(with = "opt_duration", default, rename = "backendRequest")]
    pub backend_request: Option<Duration>,
}

/// `GRPCRoute` (gateway.networking.k8s.io/v1) with a Service parent. A gRPC
/// call is an HTTP/2 `POST /<service>/<method>`, so the mesh routes it as
/// the HTTPRoute [`GrpcRouteSpec::as_http`] makes of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

impl GrpcMethodMatch {
    /// The path match of the calls this selects: `Exact` service and
    /// method is the exact path, a service alone a `PathPrefix` (its
    /// methods), a method alone an expression for it under any service;
    /// `RegularExpression` parts an expression (a missing part: any).
    pub fn as_path(&self) -> PathMatch {
        let regex = self.kind.as_deref() == Some("RegularExpression");
        let any = "[^/]+".to_string();
        let (kind, value) = match (regex, self.service.as_deref(), self.method.as_deref()) {
            (false, Some(s), Some(m)) => ("Exact", format!("/{s}/{m}")),
            (false, Some(s), None) => ("PathPrefix", format!("/{s}")),
            (false, None, Some(m)) => ("RegularExpression", format!("/{any}/{}", regex::escape(m))),
            (true, s, m) => (
                "RegularExpression",
                format!(
                    "/{}/{}",
                    s.map_or(any.clone(), str::to_string),
                    m.map_or(any.clone(), str::to_string)
                ),
            ),
            (false, None, None) => ("PathPrefix", "/".to_string()),
        };
        PathMatch {
            kind: kind.to_string(),
            value,
        }
    }
}

impl GrpcRouteSpec {
    /// The HTTPRoute this GRPCRoute routes as.
    pub fn as_http(&self) -> HttpRouteSpec {
        HttpRouteSpec {
            parent_refs: self.parent_refs.clone(),
            hostnames: self.hostnames.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| RouteRule {
                    name: r.name.clone(),
                    matches: r
                        .matches
                        .iter()
                        .map(|m| RouteMatch {
                            path: m.method.as_ref().map(GrpcMethodMatch::as_path),
                            method: None,
                            headers: m.headers.clone(),
                            query_params: Vec::new(),
                        })
                        .collect(),
                    filters: r.filters.clone(),
                    backend_refs: r.backend_refs.clone(),
                    timeouts: None,
                })
                .collect(),
        }
    }
}
