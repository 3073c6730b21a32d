//! Validation of documents beyond their shape: names, ports, ranges,
//! references. Each failure names the field and what was expected.

use super::validate_edge::{check_hostname, gateway, gateway_policy};
use super::*;

/// A DNS-1123 label: lowercase alphanumerics and `-`, 1..=63 characters.
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn check(
    ok: bool,
    field: impl Into<String>,
    problem: impl Into<String>,
) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err((field.into(), problem.into()))
    }
}

/// A rate limit: 0 (none), or between one request per 1,000 s and a
/// billion per second. Smaller positive rates would make the proxy's
/// `Retry-After` arithmetic overflow.
pub(super) fn check_rate(v: f64, field: &str) -> Result<(), FieldError> {
    check(
        v == 0.0 || (0.001..=1e9).contains(&v),
        field,
        format!("expected 0 (no limit) or a rate between 0.001 and 1e9 requests per second, got {v}"),
    )
}

fn check_percent(v: f64, field: &str) -> Result<(), FieldError> {
    check(
        (0.0..=100.0).contains(&v),
        field,
        format!("expected a percentage within 0..=100, got {v}"),
    )
}

fn check_target(target: &Option<TargetRef>) -> Result<(), FieldError> {
    let Some(t) = target else {
        return Err((
            "spec.targetRef".into(),
            "expected the service this policy applies to (`name`)".into(),
        ));
    };
    check(
        t.kind == "Service" || t.kind == "MeshService",
        "spec.targetRef.kind",
        format!("expected `Service` or `MeshService`, got `{}`", t.kind),
    )?;
    check(
        is_dns_label(&t.name),
        "spec.targetRef.name",
        format!("expected a DNS label, got `{}`", t.name),
    )?;
    check(
        t.port != Some(0),
        "spec.targetRef.port",
        "expected a port in 1..=65535",
    )
}

pub(super) fn validate(doc: &Document) -> Result<(), FieldError> {
    check(
        is_dns_label(&doc.meta.name),
        "metadata.name",
        format!(
            "expected a DNS label (lowercase letters, digits, `-`), got `{}`",
            doc.meta.name
        ),
    )?;
    check(
        is_dns_label(&doc.meta.namespace),
        "metadata.namespace",
        format!("expected a DNS label, got `{}`", doc.meta.namespace),
    )?;
    match &doc.spec {
        Spec::MeshService(s) => {
            let mut ports = BTreeSet::new();
            for (i, p) in s.ports.iter().enumerate() {
                check(
                    p.port != 0,
                    format!("spec.ports[{i}].port"),
                    "expected a port in 1..=65535",
                )?;
                check(
                    ports.insert(p.port),
                    format!("spec.ports[{i}].port"),
                    format!("port {} is listed twice", p.port),
                )?;
            }
            if let Some(sa) = &s.service_account {
                check(
                    is_dns_label(sa),
                    "spec.serviceAccount",
                    format!("expected a DNS label, got `{sa}`"),
                )?;
            }
            let mut addrs = BTreeSet::new();
            for (i, e) in s.endpoints.iter().enumerate() {
                check(
                    e.address.port() != 0,
                    format!("spec.endpoints[{i}].address"),
                    "expected a port in 1..=65535",
                )?;
                check(
                    addrs.insert(e.address),
                    format!("spec.endpoints[{i}].address"),
                    format!("{} is listed twice", e.address),
                )?;
                check(
                    (1..=1_000_000).contains(&e.weight),
                    format!("spec.endpoints[{i}].weight"),
                    format!("expected 1..=1000000, got {}", e.weight),
                )?;
            }
        }
        Spec::TrafficPolicy(p) => {
            check_target(&p.target_ref)?;
            if let Some(r) = &p.retries {
                check(
                    r.attempts <= 10,
                    "spec.retries.attempts",
                    format!("expected 0..=10, got {}", r.attempts),
                )?;
                for (i, on) in r.on.iter().enumerate() {
                    let known = matches!(on.as_str(), "5xx" | "gateway-error" | "connect-failure" | "reset")
                        || on.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                    check(
                        known,
                        format!("spec.retries.retryOn[{i}]"),
                        format!("expected `5xx`, `gateway-error`, `connect-failure`, `reset` or a status code, got `{on}`"),
                    )?;
                }
                for (i, code) in r.grpc_codes.iter().enumerate() {
                    check(
                        weft_api::grpc_code(code).is_some(),
                        format!("spec.retries.grpcCodes[{i}]"),
                        format!("expected a gRPC status name such as `unavailable` or `resource-exhausted`, or a number 0..=16, got `{code}`"),
                    )?;
                }
                if let Some(b) = &r.budget {
                    check(
                        (0.0..=1.0).contains(&b.ratio),
                        "spec.retries.budget.ratio",
                        format!("expected 0.0..=1.0, got {}", b.ratio),
                    )?;
                }
                if let Some(b) = &r.backoff {
                    if let (Some(base), Some(max)) = (b.base, b.max) {
                        check(base <= max, "spec.retries.backoff.max", "expected max >= base")?;
                    }
                }
            }
            if let Some(c) = &p.circuit_breaker {
                if let Some(pct) = c.max_ejected_percent {
                    check_percent(pct, "spec.circuitBreaker.maxEjectedPercent")?;
                }
            }
            if let Some(f) = &p.fault {
                if let Some(d) = &f.delay {
                    check_percent(d.percent, "spec.fault.delay.percent")?;
                }
                if let Some(a) = &f.abort {
                    check_percent(a.percent, "spec.fault.abort.percent")?;
                    check(
                        (200..=599).contains(&a.status),
                        "spec.fault.abort.status",
                        format!("expected an HTTP status 200..=599, got {}", a.status),
                    )?;
                }
            }
        }
        Spec::AuthorizationPolicy(p) => {
            check_target(&p.target_ref)?;
            for (i, rule) in p.rules.iter().enumerate() {
                if let Some(from) = &rule.from {
                    for (j, id) in from.identities.iter().enumerate() {
                        check(
                            id.starts_with("spiffe://") || id == "*",
                            format!("spec.rules[{i}].from.identities[{j}]"),
                            format!("expected a SPIFFE ID (spiffe://...) or `*`, got `{id}`"),
                        )?;
                    }
                }
                if let Some(to) = &rule.to {
                    for (j, p) in to.paths.iter().enumerate() {
                        check(
                            p.starts_with('/'),
                            format!("spec.rules[{i}].to.paths[{j}]"),
                            "expected a path starting with `/`",
                        )?;
                    }
                }
            }
            if let Some(r) = &p.rate_limit {
                check_rate(r.requests_per_second, "spec.rateLimit.requestsPerSecond")?;
                if let Some(pi) = &r.per_identity {
                    check_rate(
                        pi.requests_per_second,
                        "spec.rateLimit.perIdentity.requestsPerSecond",
                    )?;
                }
            }
        }
        // Made by the sources (for an invalid policy; from a pod), never
        // parsed.
        Spec::DenyAll(_) | Spec::Workload(_) => {}
        Spec::ReferenceGrant(g) => {
            check(!g.from.is_empty(), "spec.from", "expected at least one entry")?;
            check(!g.to.is_empty(), "spec.to", "expected at least one entry")?;
            for (i, f) in g.from.iter().enumerate() {
                check(
                    is_dns_label(&f.namespace),
                    format!("spec.from[{i}].namespace"),
                    "expected a namespace (a DNS label)",
                )?;
            }
        }
        Spec::Gateway(g) => gateway(g)?,
        Spec::GatewayPolicy(p) => gateway_policy(p)?,
        Spec::HttpRoute(r) => {
            parent_refs(&r.parent_refs)?;
            for (i, h) in r.hostnames.iter().enumerate() {
                check_hostname(h, &format!("spec.hostnames[{i}]"))?;
            }
            http_route_rules(&r.rules)?;
        }
        Spec::GrpcRoute(r) => {
            parent_refs(&r.parent_refs)?;
            grpc_route_rules(&r.rules)?;
        }
    }
    Ok(())
}

/// A route's parents: Services (the GAMMA mesh profile) or Gateways (an
/// edge gateway; `sectionName` picks a listener).
fn parent_refs(parents: &[ParentRef]) -> Result<(), FieldError> {
    check(
        !parents.is_empty(),
        "spec.parentRefs",
        "expected at least one parent (a Service, or a Gateway)",
    )?;
    for (i, p) in parents.iter().enumerate() {
        // Files default to a Service parent (Weft's documented default; in
        // a cluster the Gateway API's CRD fills in `kind` itself).
        let kind = p.kind.as_deref().unwrap_or("Service");
        let gateway = kind == "Gateway";
        check(
            kind == "Service" || kind == "MeshService" || gateway,
            format!("spec.parentRefs[{i}].kind"),
            format!("expected `Service` (the GAMMA mesh profile) or `Gateway`, got `{kind}`"),
        )?;
        if gateway {
            check(
                p.group.as_deref().is_none_or(|g| g == GATEWAY_API_GROUP),
                format!("spec.parentRefs[{i}].group"),
                format!("expected `{GATEWAY_API_GROUP}` for a Gateway"),
            )?;
        }
        check(
            is_dns_label(&p.name),
            format!("spec.parentRefs[{i}].name"),
            "expected a DNS label",
        )?;
        check(
            gateway || p.section_name.is_none(),
            format!("spec.parentRefs[{i}].sectionName"),
            "expected no sectionName for a Service parent (not supported by the mesh; choose the Service port with `port`)",
        )?;
    }
    Ok(())
}

/// A GRPCRoute's rules: method and header matches, the filters gRPC
/// allows (header modifiers, mirror), backends.
fn grpc_route_rules(rules: &[GrpcRouteRule]) -> Result<(), FieldError> {
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name {
            check(is_dns_label(name), format!("{at}.name"), "expected a DNS label")?;
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(method) = &m.method {
                let kind = method.kind.as_deref().unwrap_or("Exact");
                check(
                    kind == "Exact" || kind == "RegularExpression",
                    format!("{at}.method.type"),
                    format!("expected `Exact` or `RegularExpression`, got `{kind}`"),
                )?;
                check(
                    method.service.is_some() || method.method.is_some(),
                    format!("{at}.method"),
                    "expected `service`, `method` or both",
                )?;
                for (part, v) in [("service", &method.service), ("method", &method.method)] {
                    let Some(v) = v else { continue };
                    if kind == "RegularExpression" {
                        check_regex(v, &format!("{at}.method.{part}"))?;
                    } else {
                        check(
                            !v.is_empty() && !v.contains('/') && v.bytes().all(|b| b.is_ascii_graphic()),
                            format!("{at}.method.{part}"),
                            format!("expected a gRPC {part} name (no `/`), got `{v}`"),
                        )?;
                    }
                }
            }
            value_matches(&m.headers, &format!("{at}.headers"), true)?;
        }
        let grpc_filters = |filters: &[RouteFilter], at: &str| -> Result<(), FieldError> {
            for (k, f) in filters.iter().enumerate() {
                check(
                    matches!(
                        f.kind.as_str(),
                        "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror"
                    ),
                    format!("{at}[{k}].type"),
                    format!(
                        "expected RequestHeaderModifier, ResponseHeaderModifier or RequestMirror (what a GRPCRoute allows), got `{}`",
                        f.kind
                    ),
                )?;
            }
            route_filters(filters, at, true, false)
        };
        grpc_filters(&rule.filters, &format!("{at}.filters"))?;
        for (j, b) in rule.backend_refs.iter().enumerate() {
            backend_ref(b, &format!("{at}.backendRefs[{j}]"))?;
            grpc_filters(&b.filters, &format!("{at}.backendRefs[{j}].filters"))?;
        }
    }
    Ok(())
}

/// An HTTPRoute's rules: backends, matches and filters the mesh can apply.
fn http_route_rules(rules: &[RouteRule]) -> Result<(), FieldError> {
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name {
            check(is_dns_label(name), format!("{at}.name"), "expected a DNS label")?;
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            backend_ref(b, &format!("{at}.backendRefs[{j}]"))?;
            route_filters(
                &b.filters,
                &format!("{at}.backendRefs[{j}].filters"),
                false,
                false,
            )?;
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(p) = &m.path {
                check(
                    matches!(p.kind.as_str(), "PathPrefix" | "Exact" | "RegularExpression"),
                    format!("{at}.path.type"),
                    format!(
                        "expected `PathPrefix`, `Exact` or `RegularExpression`, got `{}`",
                        p.kind
                    ),
                )?;
                if p.kind == "RegularExpression" {
                    check_regex(&p.value, &format!("{at}.path.value"))?;
                } else {
                    check(
                        p.value.starts_with('/'),
                        format!("{at}.path.value"),
                        "expected a path starting with `/`",
                    )?;
                }
            }
            if let Some(method) = &m.method {
                check(
                    matches!(
                        method.as_str(),
                        "GET"
                            | "HEAD"
                            | "POST"
                            | "PUT"
                            | "DELETE"
                            | "CONNECT"
                            | "OPTIONS"
                            | "TRACE"
                            | "PATCH"
                    ),
                    format!("{at}.method"),
                    format!("expected an HTTP method (GET, POST, ...), got `{method}`"),
                )?;
            }
            value_matches(&m.headers, &format!("{at}.headers"), true)?;
            value_matches(&m.query_params, &format!("{at}.queryParams"), false)?;
        }
        let prefix_only = !rule.matches.is_empty()
            && rule
                .matches
                .iter()
                .all(|m| m.path.as_ref().is_some_and(|p| p.kind == "PathPrefix"));
        route_filters(
            &rule.filters,
            &format!("{at}.filters"),
            true,
            prefix_only || rule.matches.is_empty(),
        )?;
    }
    Ok(())
}

/// `filters` of a rule (`on_rule`) or a backendRef. `prefix_matched`:
/// every match of the rule is a `PathPrefix` (or it has none), which
/// `ReplacePrefixMatch` needs.
fn route_filters(
    filters: &[RouteFilter],
    at: &str,
    on_rule: bool,
    prefix_matched: bool,
) -> Result<(), FieldError> {
    let count = |kind: &str| filters.iter().filter(|f| f.kind == kind).count();
    check(
        count("RequestRedirect") == 0 || count("URLRewrite") == 0,
        at,
        "expected RequestRedirect or URLRewrite, not both",
    )?;
    for kind in [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
    ] {
        check(count(kind) <= 1, at, format!("expected at most one {kind}"))?;
    }
    for (i, f) in filters.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let field = |name: &str| format!("{at}.{name}");
        let missing = |name: &str| (field(name), format!("expected `{name}` for type {}", f.kind));
        match f.kind.as_str() {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let (name, m) = if f.kind == "RequestHeaderModifier" {
                    ("requestHeaderModifier", &f.request_header_modifier)
                } else {
                    ("responseHeaderModifier", &f.response_header_modifier)
                };
                let m = m.as_ref().ok_or_else(|| missing(name))?;
                for (list, part) in [(&m.set, "set"), (&m.add, "add")] {
                    for (j, h) in list.iter().enumerate() {
                        check_header_name(&h.name, &format!("{at}.{name}.{part}[{j}].name"))?;
                        check(
                            http::HeaderValue::from_str(&h.value).is_ok(),
                            format!("{at}.{name}.{part}[{j}].value"),
                            "expected a header value (visible ASCII, spaces and tabs)",
                        )?;
                    }
                }
                for (j, h) in m.remove.iter().enumerate() {
                    check_header_name(h, &format!("{at}.{name}.remove[{j}]"))?;
                }
            }
            "RequestRedirect" => {
                check(on_rule, field("type"), "expected RequestRedirect on a rule, not a backendRef")?;
                let r = f.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
                if let Some(scheme) = &r.scheme {
                    check(
                        scheme == "http" || scheme == "https",
                        field("requestRedirect.scheme"),
                        format!("expected `http` or `https`, got `{scheme}`"),
                    )?;
                }
                if let Some(code) = r.status_code {
                    check(
                        matches!(code, 301 | 302 | 303 | 307 | 308),
                        field("requestRedirect.statusCode"),
                        format!("expected 301, 302, 303, 307 or 308, got {code}"),
                    )?;
                }
                if let Some(p) = &r.port {
                    check(*p != 0, field("requestRedirect.port"), "expected 1..=65535")?;
                }
                if let Some(p) = &r.path {
                    path_modifier(p, &field("requestRedirect.path"), prefix_matched)?;
                }
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
                if let Some(p) = &r.path {
                    path_modifier(p, &field("urlRewrite.path"), prefix_matched)?;
                }
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or_else(|| missing("requestMirror"))?;
                check(
                    is_dns_label(&m.backend_ref.name),
                    field("requestMirror.backendRef.name"),
                    "expected a DNS label",
                )?;
                check(
                    m.percent.is_none() || m.fraction.is_none(),
                    field("requestMirror"),
                    "expected `percent` or `fraction`, not both",
                )?;
                if let Some(p) = m.percent {
                    check(p <= 100, field("requestMirror.percent"), format!("expected 0..=100, got {p}"))?;
                }
                if let Some(fr) = &m.fraction {
                    check(
                        fr.denominator > 0 && fr.numerator <= fr.denominator,
                        field("requestMirror.fraction"),
                        "expected 0 <= numerator <= denominator and denominator > 0",
                    )?;
                }
            }
            other => {
                return Err((
                    field("type"),
                    format!(
                        "expected RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite or RequestMirror, got `{other}` (not supported by the mesh)"
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn path_modifier(p: &PathModifierSpec, at: &str, prefix_matched: bool) -> Result<(), FieldError> {
    match p.kind.as_str() {
        "ReplaceFullPath" => {
            let v = p.replace_full_path.as_deref().ok_or_else(|| {
                (
                    format!("{at}.replaceFullPath"),
                    "expected a path for ReplaceFullPath".to_string(),
                )
            })?;
            check(
                v.starts_with('/'),
                format!("{at}.replaceFullPath"),
                "expected a path starting with `/`",
            )
        }
        "ReplacePrefixMatch" => {
            check(
                prefix_matched,
                format!("{at}.type"),
                "expected ReplacePrefixMatch only on a rule whose every match is a PathPrefix",
            )?;
            let v = p.replace_prefix_match.as_deref().ok_or_else(|| {
                (
                    format!("{at}.replacePrefixMatch"),
                    "expected a path for ReplacePrefixMatch".to_string(),
                )
            })?;
            check(
                v.starts_with('/'),
                format!("{at}.replacePrefixMatch"),
                "expected a path starting with `/`",
            )
        }
        other => Err((
            format!("{at}.type"),
            format!("expected `ReplaceFullPath` or `ReplacePrefixMatch`, got `{other}`"),
        )),
    }
}

/// Header (`headers`) or query parameter matches: `Exact` or
/// `RegularExpression`, a name, an expression that compiles.
fn value_matches(list: &[HeaderMatch], at: &str, headers: bool) -> Result<(), FieldError> {
    for (k, h) in list.iter().enumerate() {
        let at = format!("{at}[{k}]");
        let kind = h.kind.as_deref().unwrap_or("Exact");
        check(
            kind == "Exact" || kind == "RegularExpression",
            format!("{at}.type"),
            format!("expected `Exact` or `RegularExpression`, got `{kind}`"),
        )?;
        if headers {
            check_header_name(&h.name, &format!("{at}.name"))?;
        } else {
            check(
                !h.name.is_empty(),
                format!("{at}.name"),
                "expected a parameter name",
            )?;
        }
        if kind == "RegularExpression" {
            check_regex(&h.value, &format!("{at}.value"))?;
        }
    }
    Ok(())
}

/// A backendRef's name and weight.
fn backend_ref(b: &BackendRef, at: &str) -> Result<(), FieldError> {
    check(
        is_dns_label(&b.name),
        format!("{at}.name"),
        "expected a DNS label",
    )?;
    check(
        b.weight <= 1_000_000,
        format!("{at}.weight"),
        format!("expected 0..=1000000, got {}", b.weight),
    )
}

fn check_regex(v: &str, at: &str) -> Result<(), FieldError> {
    regex::RegexBuilder::new(v)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| {
            (
                at.to_string(),
                format!("expected a regular expression (RE2 syntax): {e}"),
            )
        })
}

pub(super) fn check_header_name(v: &str, at: &str) -> Result<(), FieldError> {
    check(
        http::HeaderName::from_bytes(v.as_bytes()).is_ok(),
        at,
        format!("expected a header name, got `{v}`"),
    )
}
