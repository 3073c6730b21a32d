//! A destination's HTTPRoutes as the proxy gets them: flattened to one
//! rule per match and sorted in the precedence the HTTPRoute spec
//! defines, so the proxy can take the first rule that matches.
//!
//! The spec orders matches across every route that applies: an `Exact`
//! path first, then the longest `PathPrefix`; then a method match; then
//! the most header matches; then the most query parameter matches; ties
//! go to the oldest route (creation time), then to `namespace/name` in
//! alphabetical order, then to the first rule and match in list order.
//! `RegularExpression` paths are implementation-specific; Weft orders
//! them after `Exact` and before every `PathPrefix` (the longer
//! expression first), as Envoy Gateway does, so a rule without a path
//! (`PathPrefix /`) never shadows one.

use std::cmp::Reverse;

use weft_api::v1 as api;

use super::{ms, Index, IndexConfig, Inner, RouteEntry};
use crate::model::{
    BackendRef, HeaderFilter, HeaderMatch, MirrorBackendRef, PathModifierSpec, RouteFilter, RouteMatch,
};

/// A backendRef or a mirror's backendRef.
struct Ref<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<u16>,
}

impl<'a> Ref<'a> {
    fn backend(b: &'a BackendRef) -> Self {
        Self {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        }
    }

    fn mirror(b: &'a MirrorBackendRef) -> Self {
        Self {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        }
    }

    /// A core Service (the only backend kind the mesh has).
    fn is_service(&self) -> bool {
        self.group.is_none_or(|g| g.is_empty() || g == "core") && self.kind.is_none_or(|k| k == "Service")
    }
}

/// Where one match stands: smaller sorts first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Precedence<'a> {
    /// 0 `Exact`, 1 `RegularExpression`, 2 `PathPrefix`.
    path_kind: u8,
    path_len: Reverse<usize>,
    /// A method match first.
    no_method: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// An older route first; a route without a creation time after those
    /// with one.
    created: (bool, Option<&'a str>),
    name: &'a str,
    rule: usize,
    matched: usize,
}

fn precedence<'a>(
    route: &'a RouteEntry,
    rule: usize,
    matched: usize,
    m: Option<&RouteMatch>,
) -> Precedence<'a> {
    let (path_kind, path_len) = match m.and_then(|m| m.path.as_ref()) {
        Some(p) if p.kind == "Exact" => (0, p.value.len()),
        Some(p) if p.kind == "RegularExpression" => (1, p.value.len()),
        Some(p) => (2, p.value.len()),
        None => (2, 1),
    };
    Precedence {
        path_kind,
        path_len: Reverse(path_len),
        no_method: m.is_none_or(|m| m.method.is_none()),
        headers: Reverse(m.map_or(0, |m| m.headers.len())),
        query: Reverse(m.map_or(0, |m| m.query_params.len())),
        created: (route.created.is_none(), route.created.as_deref()),
        name: &route.full_name,
        rule,
        matched,
    }
}

impl Inner {
    /// The routes on service `namespace/name` port `port` for a client in
    /// `client_namespace`, one per match, in precedence order.
    pub(super) fn flat_routes(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        client_namespace: &str,
        config: &IndexConfig,
    ) -> Vec<api::Route> {
        let mut flat = Vec::new();
        for route in self.routes_for(namespace, name, port, client_namespace) {
            flat.extend(self.flatten_route(route, (namespace, name), port, config));
        }
        flat.sort_by(|a, b| a.0.cmp(&b.0));
        flat.into_iter().map(|(_, r)| r).collect()
    }

    /// One route's rules for the proxy, one per match, each with where it
    /// stands. `parent` is the Service a backend may name without a grant
    /// (none for a Gateway); `port` the parent's, which a backendRef
    /// without a port defaults to (0: none, the backend is unresolved).
    pub(super) fn flatten_route<'a>(
        &self,
        route: &'a RouteEntry,
        parent: (&str, &str),
        port: u16,
        config: &IndexConfig,
    ) -> Vec<(Precedence<'a>, api::Route)> {
        let mut flat = Vec::new();
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let rule_name = format!(
                "{}/{}",
                route.full_name,
                rule.name.clone().unwrap_or_else(|| i.to_string())
            );
            let filters: Vec<api::Filter> = rule
                .filters
                .iter()
                .filter_map(|f| self.filter(route, parent, f, port, config))
                .collect();
            let backends: Vec<api::Backend> = rule
                .backend_refs
                .iter()
                .map(|b| api::Backend {
                    authority: self.backend_authority(route, parent, &Ref::backend(b), port, config),
                    weight: b.weight,
                    filters: b
                        .filters
                        .iter()
                        .filter_map(|f| self.filter(route, parent, f, port, config))
                        .collect(),
                })
                .collect();
            let flat_one = |m: Option<&RouteMatch>| api::Route {
                name: rule_name.clone(),
                matches: m.map(route_match).into_iter().collect(),
                backends: backends.clone(),
                timeout_ms: ms(rule.timeouts.as_ref().and_then(|t| t.request)),
                backend_timeout_ms: ms(rule.timeouts.as_ref().and_then(|t| t.backend_request)),
                filters: filters.clone(),
                ..api::Route::default()
            };
            if rule.matches.is_empty() {
                flat.push((precedence(route, i, 0, None), flat_one(None)));
            }
            for (j, m) in rule.matches.iter().enumerate() {
                flat.push((precedence(route, i, j, Some(m)), flat_one(Some(m))));
            }
        }
        flat
    }

    /// A backend's `host:port` authority, or empty when it does not
    /// resolve — not a Service, no such Service, or another namespace's
    /// Service without a ReferenceGrant: the proxy answers requests for it
    /// 500, as the spec says. The route's own parent Service needs no
    /// grant: a consumer route that sends its clients on to the Service
    /// they called gives them nothing they did not have (the upstream case
    /// mesh-consumer-route relies on it).
    fn backend_authority(
        &self,
        route: &RouteEntry,
        parent: (&str, &str),
        r: &Ref<'_>,
        port: u16,
        config: &IndexConfig,
    ) -> String {
        // Gateway API: a backendRef without a namespace is in the route's.
        let ns = r.namespace.unwrap_or(&route.namespace);
        let permitted =
            (ns, r.name) == parent || self.backend_permitted(route.kind, &route.namespace, ns, r.name);
        let exists = self.services.contains_key(&(ns.to_string(), r.name.to_string()));
        // A Gateway's route must say which port (the spec requires it).
        let has_port = r.port.is_some() || port != 0;
        if r.is_service() && exists && permitted && has_port {
            format!(
                "{}.{ns}.svc.{}:{}",
                r.name,
                config.cluster_domain,
                r.port.unwrap_or(port)
            )
        } else {
            String::new()
        }
    }

    /// One filter for the proxy; `None` for kinds validation refused
    /// (which never reach the index).
    fn filter(
        &self,
        route: &RouteEntry,
        parent: (&str, &str),
        f: &RouteFilter,
        port: u16,
        config: &IndexConfig,
    ) -> Option<api::Filter> {
        use api::filter::Kind;
        let kind = match f.kind.as_str() {
            "RequestHeaderModifier" => {
                Kind::RequestHeaderModifier(header_modifier(f.request_header_modifier.as_ref()?))
            }
            "ResponseHeaderModifier" => {
                Kind::ResponseHeaderModifier(header_modifier(f.response_header_modifier.as_ref()?))
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref()?;
                let (path_type, path) = path_modifier(r.path.as_ref());
                Kind::RequestRedirect(api::Redirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    port: r.port.map_or(0, u32::from),
                    path_type,
                    path,
                    status_code: r.status_code.map_or(0, u32::from),
                })
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref()?;
                let (path_type, path) = path_modifier(r.path.as_ref());
                Kind::UrlRewrite(api::Rewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path_type,
                    path,
                })
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref()?;
                let (numerator, denominator) = match (m.percent, &m.fraction) {
                    (Some(p), _) => (p, 100),
                    (None, Some(f)) => (f.numerator, f.denominator),
                    (None, None) => (0, 0),
                };
                Kind::RequestMirror(api::Mirror {
                    authority: self.backend_authority(
                        route,
                        parent,
                        &Ref::mirror(&m.backend_ref),
                        port,
                        config,
                    ),
                    numerator,
                    denominator,
                })
            }
            _ => return None,
        };
        Some(api::Filter { kind: Some(kind) })
    }
}

/// The controller name Weft writes in route status.
pub const CONTROLLER_NAME: &str = "weft.dev/mesh";

/// What the mesh made of one HTTPRoute for one of its parents: the
/// `Accepted` and `ResolvedRefs` conditions the Gateway API defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentVerdict {
    /// The route's `spec.parentRefs[i]`, as written.
    pub parent_index: usize,
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// The spec's reason (`Accepted`, `NoMatchingParent`, `ResolvedRefs`,
    /// `BackendNotFound`, `RefNotPermitted`, `InvalidKind`).
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub(super) fn ok(reason: &'static str, message: &str) -> Self {
        Self {
            ok: true,
            reason,
            message: message.to_string(),
        }
    }

    pub(super) fn failed(reason: &'static str, message: String) -> Self {
        Self {
            ok: false,
            reason,
            message,
        }
    }
}

impl Index {
    /// The verdicts for route `kind` (`HTTPRoute`, `GRPCRoute`)
    /// `namespace/name`, one per parent; `None` when the index does not
    /// hold the route (rejected by validation, or not read).
    pub fn route_verdicts(&self, kind: &str, namespace: &str, name: &str) -> Option<Vec<ParentVerdict>> {
        let inner = self.inner.lock().expect("index lock poisoned");
        let full_name = format!("{namespace}/{name}");
        let route = inner
            .routes
            .values()
            .chain(inner.gateway_routes.values())
            .flatten()
            .find(|r| r.kind == kind && r.full_name == full_name)?;
        Some(inner.verdicts(route))
    }

    /// Every route the index holds (`Kind namespace/name`), with its
    /// verdicts.
    pub fn all_route_verdicts(&self) -> Vec<(String, Vec<ParentVerdict>)> {
        let inner = self.inner.lock().expect("index lock poisoned");
        let mut seen = std::collections::BTreeMap::new();
        for route in inner
            .routes
            .values()
            .chain(inner.gateway_routes.values())
            .flatten()
        {
            seen.entry(format!("{} {}", route.kind, route.full_name))
                .or_insert_with(|| inner.verdicts(route));
        }
        seen.into_iter().collect()
    }
}

impl Inner {
    fn verdicts(&self, route: &RouteEntry) -> Vec<ParentVerdict> {
        let resolved_refs = self.resolved_refs(route);
        route
            .spec
            .parent_refs
            .iter()
            .enumerate()
            .map(|(i, parent)| {
                let ns = parent.namespace.as_deref().unwrap_or(&route.namespace);
                let accepted = if parent.is_gateway() {
                    self.gateway_acceptance(route, ns, parent)
                } else if self.services.contains_key(&(ns.to_string(), parent.name.clone())) {
                    Verdict::ok("Accepted", "attached to the Service")
                } else {
                    Verdict::failed("NoMatchingParent", format!("no Service {ns}/{}", parent.name))
                };
                ParentVerdict {
                    parent_index: i,
                    accepted,
                    resolved_refs: resolved_refs.clone(),
                }
            })
            .collect()
    }

    /// Whether every backendRef (and mirror) of the route resolves: a
    /// Service, that exists, in the route's namespace or granted to it.
    fn resolved_refs(&self, route: &RouteEntry) -> Verdict {
        let parents: Vec<(String, String)> = route
            .spec
            .parent_refs
            .iter()
            .filter(|p| !p.is_gateway())
            .map(|p| {
                (
                    p.namespace.clone().unwrap_or_else(|| route.namespace.clone()),
                    p.name.clone(),
                )
            })
            .collect();
        let mirrors = route.spec.rules.iter().flat_map(|r| {
            r.filters
                .iter()
                .chain(r.backend_refs.iter().flat_map(|b| &b.filters))
                .filter_map(|f| f.request_mirror.as_ref())
                .map(|m| Ref::mirror(&m.backend_ref))
        });
        let refs = route
            .spec
            .rules
            .iter()
            .flat_map(|r| &r.backend_refs)
            .map(Ref::backend)
            .chain(mirrors);
        for r in refs {
            let name = r.name;
            if !r.is_service() {
                return Verdict::failed(
                    "InvalidKind",
                    format!(
                        "backend {name}: kind {} is not a Service",
                        r.kind.unwrap_or("Service")
                    ),
                );
            }
            let namespace = r.namespace;
            let ns = namespace.unwrap_or(&route.namespace);
            let key = (ns.to_string(), name.to_string());
            if !parents.contains(&key) && !self.backend_permitted(route.kind, &route.namespace, ns, name) {
                return Verdict::failed(
                    "RefNotPermitted",
                    format!(
                        "backend {ns}/{name}: no ReferenceGrant in {ns} lets {}s from {} use it",
                        route.kind, route.namespace
                    ),
                );
            }
            if !self.services.contains_key(&key) {
                return Verdict::failed("BackendNotFound", format!("backend {ns}/{name}: no such Service"));
            }
        }
        Verdict::ok("ResolvedRefs", "every backend resolves")
    }
}

fn route_match(m: &RouteMatch) -> api::RouteMatch {
    let values = |list: &[HeaderMatch], lowercase: bool| -> Vec<api::ValueMatch> {
        list.iter()
            .map(|h| api::ValueMatch {
                name: if lowercase {
                    h.name.to_ascii_lowercase()
                } else {
                    h.name.clone()
                },
                value: h.value.clone(),
                regex: h.kind.as_deref() == Some("RegularExpression"),
            })
            .collect()
    };
    api::RouteMatch {
        path_type: m.path.as_ref().map_or(String::new(), |p| {
            match p.kind.as_str() {
                "Exact" => "exact",
                "RegularExpression" => "regex",
                _ => "prefix",
            }
            .to_string()
        }),
        path: m.path.as_ref().map_or(String::new(), |p| p.value.clone()),
        method: m.method.clone().unwrap_or_default(),
        headers: Default::default(),
        header_matches: values(&m.headers, true),
        query_params: values(&m.query_params, false),
    }
}

fn header_modifier(m: &HeaderFilter) -> api::HeaderModifier {
    let pairs = |list: &[crate::model::HttpHeader]| {
        list.iter()
            .map(|h| api::Header {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
            .collect()
    };
    api::HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn path_modifier(p: Option<&PathModifierSpec>) -> (String, String) {
    match p {
        Some(p) if p.kind == "ReplaceFullPath" => {
            ("full".into(), p.replace_full_path.clone().unwrap_or_default())
        }
        Some(p) if p.kind == "ReplacePrefixMatch" => (
            "prefix".into(),
            p.replace_prefix_match.clone().unwrap_or_default(),
        ),
        _ => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HttpRouteSpec, PathMatch, RouteRule};

    fn entry(name: &str, created: Option<&str>, rules: Vec<RouteRule>) -> RouteEntry {
        RouteEntry {
            kind: "HTTPRoute",
            namespace: "shop".into(),
            full_name: format!("shop/{name}"),
            parent_port: None,
            section: None,
            created: created.map(Into::into),
            spec: HttpRouteSpec {
                rules,
                ..Default::default()
            },
        }
    }

    fn m(path: Option<(&str, &str)>, method: Option<&str>, headers: usize, query: usize) -> RouteMatch {
        let hm = |i| HeaderMatch {
            kind: None,
            name: format!("h{i}"),
            value: "v".into(),
        };
        RouteMatch {
            path: path.map(|(kind, value)| PathMatch {
                kind: kind.into(),
                value: value.into(),
            }),
            method: method.map(Into::into),
            headers: (0..headers).map(hm).collect(),
            query_params: (0..query).map(hm).collect(),
        }
    }

    /// `a` is ordered before `b` (each the only match of its own route).
    fn before(a: RouteMatch, b: RouteMatch) {
        let (ra, rb) = (entry("a", None, vec![]), entry("b", None, vec![]));
        let (pa, pb) = (precedence(&rb, 0, 0, Some(&a)), precedence(&ra, 0, 0, Some(&b)));
        assert!(
            pa < pb,
            "{a:?} should come before {b:?}, even with the later name"
        );
    }

    #[test]
    fn matches_are_ordered_as_the_spec_says() {
        before(
            m(Some(("Exact", "/a")), None, 0, 0),
            m(Some(("PathPrefix", "/a/b/c")), Some("GET"), 3, 3),
        );
        before(
            m(Some(("PathPrefix", "/a/b")), None, 0, 0),
            m(Some(("PathPrefix", "/a")), Some("GET"), 3, 3),
        );
        before(
            m(Some(("PathPrefix", "/a")), Some("GET"), 0, 0),
            m(Some(("PathPrefix", "/a")), None, 3, 3),
        );
        before(m(None, None, 2, 0), m(None, None, 1, 5));
        before(m(None, None, 1, 2), m(None, None, 1, 1));
        before(
            m(Some(("RegularExpression", "/x.*")), None, 0, 0),
            m(Some(("PathPrefix", "/xyz")), None, 0, 0),
        );
        before(
            m(Some(("Exact", "/x")), None, 0, 0),
            m(Some(("RegularExpression", "/x")), None, 0, 0),
        );
        // No path is `PathPrefix /`.
        before(
            m(Some(("PathPrefix", "/a")), None, 0, 0),
            m(None, Some("GET"), 0, 0),
        );
    }

    #[test]
    fn ties_go_to_the_older_route_then_the_name_then_list_order() {
        let same = m(Some(("PathPrefix", "/")), None, 0, 0);
        let old = entry("z-old", Some("2024-01-01T00:00:00Z"), vec![]);
        let new = entry("a-new", Some("2025-01-01T00:00:00Z"), vec![]);
        let undated = entry("0-undated", None, vec![]);
        assert!(precedence(&old, 0, 0, Some(&same)) < precedence(&new, 0, 0, Some(&same)));
        assert!(precedence(&new, 0, 0, Some(&same)) < precedence(&undated, 0, 0, Some(&same)));
        let (a, b) = (entry("a", None, vec![]), entry("b", None, vec![]));
        assert!(precedence(&a, 1, 0, Some(&same)) < precedence(&b, 0, 0, Some(&same)));
        assert!(precedence(&a, 0, 1, Some(&same)) < precedence(&a, 1, 0, Some(&same)));
        assert!(precedence(&a, 0, 0, Some(&same)) < precedence(&a, 0, 1, Some(&same)));
    }
}
