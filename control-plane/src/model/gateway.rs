//! The Gateway API kinds the mesh reads: `HTTPRoute` (GAMMA: a Service
//! parent) and `ReferenceGrant`.

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
    /// Whether an HTTPRoute in `route_namespace` may name Service `name`
    /// (in the grant's namespace) as a backend.
    pub fn lets_route_use_service(&self, route_namespace: &str, name: &str) -> bool {
        self.from
            .iter()
            .any(|f| f.group == GATEWAY_API_GROUP && f.kind == "HTTPRoute" && f.namespace == route_namespace)
            && self.to.iter().any(|t| {
                t.group.is_empty() && t.kind == "Service" && t.name.as_deref().is_none_or(|n| n == name)
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
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
