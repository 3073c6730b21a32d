//! The edge gateway's kinds: Gateway API `Gateway` (the listeners
//! `weft-proxy gateway` serves) and Weft's `GatewayPolicy` (JWT
//! authentication and rate limits attached to a Gateway, one of its
//! listeners, or a route).

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{opt_duration, PolicyStatus};

/// The `gatewayClassName` Weft serves; Gateways of other classes belong
/// to another controller and are left alone.
pub const GATEWAY_CLASS: &str = "weft";

/// `Gateway` (gateway.networking.k8s.io/v1), the subset an edge gateway
/// serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub tls: Option<GatewayTls>,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTls {
    /// `Terminate` (the default; `Passthrough` is not served).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<SecretRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default) or `All`.
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
}

impl GatewayListener {
    /// Whether a route of `kind` in `route_namespace` may attach to this
    /// listener of a Gateway in `gateway_namespace`.
    pub fn allows(&self, kind: &str, route_namespace: &str, gateway_namespace: &str) -> bool {
        let allowed = self.allowed_routes.as_ref();
        let from = allowed
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref())
            .unwrap_or("Same");
        let namespace_ok = from == "All" || route_namespace == gateway_namespace;
        let kinds = allowed.map(|a| a.kinds.as_slice()).unwrap_or_default();
        namespace_ok && (kinds.is_empty() || kinds.iter().any(|k| k.kind == kind))
    }

    /// The TLS Secrets of an `HTTPS` listener, as `namespace/name`.
    pub fn certificates(&self, gateway_namespace: &str) -> Vec<String> {
        self.tls
            .iter()
            .flat_map(|t| &t.certificate_refs)
            .map(|c| {
                format!(
                    "{}/{}",
                    c.namespace.as_deref().unwrap_or(gateway_namespace),
                    c.name
                )
            })
            .collect()
    }
}

/// Whether `host` (a listener's or a route's hostname, possibly
/// `*.suffix`) and `other` have a name in common; `None` stands for any
/// host. Returns the narrower of the two.
pub fn hostname_intersection<'a>(listener: Option<&'a str>, route: &'a str) -> Option<&'a str> {
    let Some(listener) = listener else {
        return Some(route);
    };
    // `*.x` covers every name under `.x`, and every narrower wildcard.
    let covers = |wild: &str, name: &str| {
        let name = name.trim_start_matches('*');
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    if listener == route || covers(listener, route) {
        Some(route)
    } else if covers(route, listener) {
        Some(listener)
    } else {
        None
    }
}

/// `GatewayPolicy`: what an edge gateway checks before routing a request
/// of the Gateway, listener or route it targets. A route's policy
/// replaces its listener's.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "GatewayPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "wgp",
    category = "weft",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.targetRef.kind"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayPolicySpec {
    pub target_ref: PolicyTargetRef,
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
    #[serde(default)]
    pub rate_limit: Option<EdgeRateLimitSpec>,
}

/// A Gateway (optionally one listener, by `sectionName`), an `HTTPRoute`
/// or a `GRPCRoute`, in the policy's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtSpec {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// A token must name one of these in `aud`; empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks: JwksSpec,
    /// Leeway for `exp`, `nbf` and `iat`; default 30s.
    #[serde(default, with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub clock_skew: Option<Duration>,
    /// Claims set as request headers for the backend (any value a client
    /// sent for those headers is removed first).
    #[serde(default)]
    pub forward_claims: Vec<ClaimHeaderSpec>,
}

/// Exactly one of `file` (on the gateway's filesystem, re-read when it
/// changes) or `url` (`https://`, refreshed every 5 minutes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksSpec {
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimHeaderSpec {
    pub claim: String,
    pub header: String,
}

/// A token bucket per client IP, or per value of a JWT claim.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeRateLimitSpec {
    pub requests_per_second: f64,
    /// 0: one second's worth.
    #[serde(default)]
    pub burst: u32,
    /// One bucket per value of this claim (a JWT must be configured);
    /// unset: one per client IP.
    #[serde(default)]
    pub per_claim: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_intersect_as_the_gateway_api_says() {
        assert_eq!(
            hostname_intersection(None, "a.example.com"),
            Some("a.example.com")
        );
        assert_eq!(
            hostname_intersection(Some("*.example.com"), "a.example.com"),
            Some("a.example.com")
        );
        assert_eq!(
            hostname_intersection(Some("a.example.com"), "*.example.com"),
            Some("a.example.com")
        );
        assert_eq!(
            hostname_intersection(Some("*.example.com"), "*.example.com"),
            Some("*.example.com")
        );
        assert_eq!(hostname_intersection(Some("*.example.com"), "example.com"), None);
        assert_eq!(
            hostname_intersection(Some("a.example.com"), "b.example.com"),
            None
        );
        assert_eq!(
            hostname_intersection(Some("*.example.com"), "a.b.example.com"),
            Some("a.b.example.com")
        );
        assert_eq!(
            hostname_intersection(Some("*.example.com"), "*.b.example.com"),
            Some("*.b.example.com")
        );
    }
}
