//! Validation of documents beyond their shape: names, ports, ranges,
//! references. Each failure names the field and what was expected.

use super::*;

/// A DNS-1123 label: lowercase alphanumerics and `-`, 1..=63 characters.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check(ok: bool, field: impl Into<String>, problem: impl Into<String>) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err((field.into(), problem.into()))
    }
}

/// A rate limit: 0 (none), or between one request per 1,000 s and a
/// billion per second. Smaller positive rates would make the proxy's
/// `Retry-After` arithmetic overflow.
fn check_rate(v: f64, field: &str) -> Result<(), FieldError> {
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
        Spec::HttpRoute(r) => {
            check(
                !r.parent_refs.is_empty(),
                "spec.parentRefs",
                "expected at least one parent Service",
            )?;
            for (i, p) in r.parent_refs.iter().enumerate() {
                let kind = p.kind.as_deref().unwrap_or("Service");
                check(
                    kind == "Service" || kind == "MeshService",
                    format!("spec.parentRefs[{i}].kind"),
                    format!("expected `Service` (the GAMMA mesh profile), got `{kind}`"),
                )?;
                check(
                    is_dns_label(&p.name),
                    format!("spec.parentRefs[{i}].name"),
                    "expected a DNS label",
                )?;
            }
            for (i, rule) in r.rules.iter().enumerate() {
                check(
                    !rule.backend_refs.is_empty(),
                    format!("spec.rules[{i}].backendRefs"),
                    "expected at least one backend",
                )?;
                for (j, b) in rule.backend_refs.iter().enumerate() {
                    check(
                        is_dns_label(&b.name),
                        format!("spec.rules[{i}].backendRefs[{j}].name"),
                        "expected a DNS label",
                    )?;
                    check(
                        b.weight <= 1_000_000,
                        format!("spec.rules[{i}].backendRefs[{j}].weight"),
                        format!("expected 0..=1000000, got {}", b.weight),
                    )?;
                }
                for (j, m) in rule.matches.iter().enumerate() {
                    if let Some(p) = &m.path {
                        check(
                            p.kind == "PathPrefix" || p.kind == "Exact",
                            format!("spec.rules[{i}].matches[{j}].path.type"),
                            format!("expected `PathPrefix` or `Exact`, got `{}`", p.kind),
                        )?;
                        check(
                            p.value.starts_with('/'),
                            format!("spec.rules[{i}].matches[{j}].path.value"),
                            "expected a path starting with `/`",
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}
