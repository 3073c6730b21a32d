//! Validation of the edge gateway's kinds: Gateway listeners,
//! GatewayPolicies and Gateway API hostnames.

use super::validate::{check, check_header_name, check_rate, is_dns_label};
use super::*;

/// A Gateway's listeners: `HTTP` or `HTTPS` (terminated here, with at
/// least one Secret), unique names, valid hostnames, route kinds the
/// gateway serves and the namespaces it understands.
pub(super) fn gateway(g: &GatewaySpec) -> Result<(), FieldError> {
    check(
        !g.gateway_class_name.is_empty(),
        "spec.gatewayClassName",
        format!("expected a GatewayClass name (Weft serves `{GATEWAY_CLASS}`)"),
    )?;
    check(
        !g.listeners.is_empty(),
        "spec.listeners",
        "expected at least one listener",
    )?;
    let mut names = BTreeSet::new();
    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    for (i, l) in g.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        check(
            is_dns_label(&l.name),
            format!("{at}.name"),
            "expected a DNS label",
        )?;
        check(
            names.insert(l.name.as_str()),
            format!("{at}.name"),
            format!("expected a unique name, `{}` is used twice", l.name),
        )?;
        check(l.port != 0, format!("{at}.port"), "expected a port in 1..=65535")?;
        check(
            l.protocol == "HTTP" || l.protocol == "HTTPS",
            format!("{at}.protocol"),
            format!(
                "expected `HTTP` or `HTTPS` (TLS terminated by the gateway), got `{}`",
                l.protocol
            ),
        )?;
        // One port is TLS or plain, never both (a client could not tell
        // which it gets).
        let first = *ports.entry(l.port).or_insert(l.protocol.as_str());
        check(
            first == l.protocol,
            format!("{at}.protocol"),
            format!(
                "expected `{first}` like the other listeners on port {} (a port is HTTP or HTTPS, not both)",
                l.port
            ),
        )?;
        if let Some(h) = &l.hostname {
            check_hostname(h, &format!("{at}.hostname"))?;
        }
        if l.protocol == "HTTPS" {
            let tls = l.tls.as_ref().ok_or_else(|| {
                (
                    format!("{at}.tls"),
                    "expected `certificateRefs` for an HTTPS listener".to_string(),
                )
            })?;
            check(
                tls.mode.as_deref().is_none_or(|m| m == "Terminate"),
                format!("{at}.tls.mode"),
                "expected `Terminate` (the gateway does not pass TLS through)",
            )?;
            check(
                !tls.certificate_refs.is_empty(),
                format!("{at}.tls.certificateRefs"),
                "expected at least one Secret",
            )?;
            for (j, c) in tls.certificate_refs.iter().enumerate() {
                let at = format!("{at}.tls.certificateRefs[{j}]");
                check(
                    c.group.as_deref().is_none_or(|g| g.is_empty() || g == "core")
                        && c.kind.as_deref().is_none_or(|k| k == "Secret"),
                    format!("{at}.kind"),
                    "expected a core `Secret`",
                )?;
                check(
                    is_dns_label(&c.name) || is_dns_subdomain(&c.name),
                    format!("{at}.name"),
                    "expected a Secret name",
                )?;
            }
        }
        if let Some(a) = &l.allowed_routes {
            if let Some(from) = a.namespaces.as_ref().and_then(|n| n.from.as_deref()) {
                check(
                    from == "Same" || from == "All",
                    format!("{at}.allowedRoutes.namespaces.from"),
                    format!("expected `Same` or `All` (`Selector` is not supported yet), got `{from}`"),
                )?;
            }
            for (j, k) in a.kinds.iter().enumerate() {
                check(
                    k.kind == "HTTPRoute" || k.kind == "GRPCRoute",
                    format!("{at}.allowedRoutes.kinds[{j}].kind"),
                    format!("expected `HTTPRoute` or `GRPCRoute`, got `{}`", k.kind),
                )?;
            }
        }
    }
    Ok(())
}

/// A GatewayPolicy: a target the gateway knows, and well-formed JWT and
/// rate limit settings.
pub(super) fn gateway_policy(p: &GatewayPolicySpec) -> Result<(), FieldError> {
    let t = &p.target_ref;
    check(
        ["Gateway", "HTTPRoute", "GRPCRoute"].contains(&t.kind.as_str()),
        "spec.targetRef.kind",
        format!("expected `Gateway`, `HTTPRoute` or `GRPCRoute`, got `{}`", t.kind),
    )?;
    check(
        t.group.as_deref().is_none_or(|g| g == GATEWAY_API_GROUP),
        "spec.targetRef.group",
        format!("expected `{GATEWAY_API_GROUP}`"),
    )?;
    check(
        is_dns_label(&t.name),
        "spec.targetRef.name",
        "expected a DNS label",
    )?;
    check(
        t.section_name.is_none() || t.kind == "Gateway",
        "spec.targetRef.sectionName",
        "expected a sectionName (a listener) only for a Gateway target",
    )?;
    check(
        p.jwt.is_some() || p.rate_limit.is_some(),
        "spec",
        "expected `jwt`, `rateLimit` or both",
    )?;
    if let Some(j) = &p.jwt {
        check(
            !j.issuer.is_empty(),
            "spec.jwt.issuer",
            "expected the issuer (`iss`) tokens must carry",
        )?;
        match (&j.jwks.file, &j.jwks.url) {
            (Some(f), None) => check(
                f.starts_with('/'),
                "spec.jwt.jwks.file",
                format!("expected an absolute path on the gateway, got `{f}`"),
            )?,
            (None, Some(u)) => check(
                jwks_url_ok(u),
                "spec.jwt.jwks.url",
                format!("expected an https:// URL (plain http only to a loopback host), got `{u}`"),
            )?,
            _ => {
                return Err((
                    "spec.jwt.jwks".into(),
                    "expected exactly one of `file` or `url`".into(),
                ))
            }
        }
        for (i, c) in j.forward_claims.iter().enumerate() {
            check(
                !c.claim.is_empty(),
                format!("spec.jwt.forwardClaims[{i}].claim"),
                "expected a claim name",
            )?;
            check_header_name(&c.header, &format!("spec.jwt.forwardClaims[{i}].header"))?;
        }
    }
    if let Some(r) = &p.rate_limit {
        check(
            r.requests_per_second != 0.0,
            "spec.rateLimit.requestsPerSecond",
            "expected a rate above 0",
        )?;
        check_rate(r.requests_per_second, "spec.rateLimit.requestsPerSecond")?;
        check(
            r.per_claim.is_none() || p.jwt.is_some(),
            "spec.rateLimit.perClaim",
            "expected `jwt` in the same policy: a claim is only known once a token is verified",
        )?;
    }
    Ok(())
}

/// A hostname as Gateway API writes it: a DNS name, optionally starting
/// with `*.`; no IP address, no port.
pub(super) fn check_hostname(h: &str, at: &str) -> Result<(), FieldError> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    check(
        is_dns_subdomain(name) && name.contains(|c: char| c.is_ascii_alphabetic()),
        at,
        format!("expected a hostname such as `shop.example.com` or `*.example.com`, got `{h}`"),
    )
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A JWKS URL the gateway will fetch: `https://` with a host, or
/// `http://` to `localhost` or a loopback address (the same rule the
/// proxy applies).
fn jwks_url_ok(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        _ if host.is_empty() => false,
        Some("https") => true,
        Some("http") => loopback,
        _ => false,
    }
}
