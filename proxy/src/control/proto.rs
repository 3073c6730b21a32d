//! Every translation from `weft_api` messages to the proxy's own types, in
//! one place, parsed once when a message arrives (never per request).
//!
//! Zero means "unset" in the API (proto3 has no presence for scalars), so a
//! zero field takes the domain default. A message that cannot be used at
//! all (an endpoint whose address does not parse) is a [`ProtoError`] and
//! is skipped by the caller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_api::v1 as api;

use http::header::{HeaderName, HeaderValue};

use crate::discover::{Backend, Destination, Endpoint, PathMatch, Route, RouteMatch};
use crate::policy::{AuthorizationRule, IdentityMatch, MtlsMode, PathPrefix, ServerPolicy};
use crate::resilience::ratelimit::RateLimitParams;
use crate::resilience::{
    retry, BreakerPolicy, ConcurrencyPolicy, FaultPolicy, LoadBalancer, Policy, RetryPolicy, Shared, Timeouts,
};
use crate::routes::{
    Filter, HeaderModifier, Mirror, PathModifier, Pattern, Redirect, Rewrite, Value, ValueMatch,
};

/// A message the proxy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("{field} is not an ip:port: {value:?}")]
    BadAddress { field: &'static str, value: String },
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The destination one `Destination.Watch` stream describes: its service,
/// endpoints (those whose address does not parse are skipped) and client
/// policy, defaults filled in. Fresh per-destination state ([`Shared`]);
/// the caller carries over the previous version's.
pub fn destination<'a>(
    service: Option<&api::ServiceRef>,
    endpoints: impl IntoIterator<Item = &'a api::Endpoint>,
    policy: &api::ClientPolicy,
) -> Destination {
    let endpoints: Vec<Endpoint> = endpoints
        .into_iter()
        .filter_map(|e| match Endpoint::try_from(e) {
            Ok(e) => Some(e),
            Err(error) => {
                tracing::debug!(%error, "endpoint skipped");
                None
            }
        })
        .collect();
    let routes: Vec<Route> = policy.routes.iter().map(Route::from).collect();
    let policy = Policy::from(policy);
    let before = endpoints.len();
    let endpoints: Vec<Endpoint> = if policy.require_mtls {
        endpoints
            .into_iter()
            .filter(|e| e.proxy.is_some() && e.identity.is_some())
            .collect()
    } else {
        endpoints
    };
    Destination {
        service: service.map_or_else(|| "unknown".into(), |s| s.name.as_str().into()),
        namespace: service.map(|s| s.namespace.as_str().into()).unwrap_or_default(),
        unmeshed_refused: before - endpoints.len(),
        endpoints: endpoints.into(),
        routes: routes.into(),
        shared: Arc::new(Shared::new(&policy)),
        policy: Arc::new(policy),
        meshed: true,
        opaque: service.is_some_and(|s| s.protocol == "tcp"),
    }
}

impl TryFrom<&api::Endpoint> for Endpoint {
    type Error = ProtoError;

    /// An unparsable `proxy_address` makes the endpoint unmeshed (called
    /// directly), as an empty one does; weight 0 counts as 1.
    fn try_from(e: &api::Endpoint) -> Result<Self, ProtoError> {
        let addr: SocketAddr = e.address.parse().map_err(|_| ProtoError::BadAddress {
            field: "address",
            value: e.address.clone(),
        })?;
        Ok(Endpoint {
            addr,
            proxy: e.proxy_address.parse().ok(),
            identity: non_empty(&e.identity).map(Arc::from),
            weight: e.weight.max(1),
            stats: Arc::default(),
        })
    }
}

impl From<&api::Route> for Route {
    fn from(r: &api::Route) -> Self {
        Route {
            name: r.name.clone(),
            matches: r.matches.iter().map(RouteMatch::from).collect(),
            backends: r.backends.iter().map(Backend::from).collect(),
            timeout: ms(r.timeout_ms),
            backend_timeout: ms(r.backend_timeout_ms),
            filters: r.filters.iter().map(Filter::from).collect(),
            hostname: Some(r.hostname.to_ascii_lowercase()).filter(|h| !h.is_empty()),
            edge: r.edge.as_ref().map(crate::gateway::edge::Edge::shared),
        }
    }
}

impl From<&api::Backend> for Backend {
    fn from(b: &api::Backend) -> Self {
        Backend {
            filters: b.filters.iter().map(Filter::from).collect(),
            ..Backend::new(&b.authority, b.weight)
        }
    }
}

impl From<&api::RouteMatch> for RouteMatch {
    /// A path type this proxy does not know, or an expression that does
    /// not compile, matches nothing (never everything); likewise a header
    /// or query expression.
    fn from(m: &api::RouteMatch) -> Self {
        let never = |why: String| Some(PathMatch::Never(why));
        let value = |v: &api::ValueMatch| {
            if v.regex {
                Pattern::new(&v.value).map(Value::Regex).ok()
            } else {
                Some(Value::Exact(v.value.clone()))
            }
        };
        let mut broken = None;
        let mut values = |list: &[api::ValueMatch], lowercase: bool| -> Vec<ValueMatch> {
            list.iter()
                .filter_map(|v| match value(v) {
                    Some(value) => Some(ValueMatch {
                        name: if lowercase {
                            v.name.to_ascii_lowercase()
                        } else {
                            v.name.clone()
                        },
                        value,
                    }),
                    None => {
                        broken = Some(format!("invalid expression `{}`", v.value));
                        None
                    }
                })
                .collect()
        };
        let mut headers: Vec<ValueMatch> = m
            .headers
            .iter()
            .map(|(k, v)| ValueMatch {
                name: k.to_ascii_lowercase(),
                value: Value::Exact(v.clone()),
            })
            .collect();
        headers.extend(values(&m.header_matches, true));
        let query = values(&m.query_params, false);
        let path = match m.path_type.as_str() {
            _ if broken.is_some() => never(broken.take().unwrap_or_default()),
            "" => None,
            "exact" => Some(PathMatch::Exact(m.path.clone())),
            "prefix" => Some(PathMatch::Prefix(m.path.clone())),
            "regex" => match Pattern::new(&m.path) {
                Ok(p) => Some(PathMatch::Regex(p)),
                Err(e) => never(format!("invalid expression `{}`: {e}", m.path)),
            },
            other => never(format!("unknown path type `{other}`")),
        };
        RouteMatch {
            path,
            method: non_empty(&m.method),
            headers,
            query,
        }
    }
}

impl From<&api::HeaderModifier> for HeaderModifier {
    /// Header names and values were validated by the control plane; one
    /// that still does not parse makes the whole filter unusable, which
    /// the caller turns into [`Filter::Unsupported`].
    fn from(m: &api::HeaderModifier) -> Self {
        let pair = |h: &api::Header| {
            Some((
                HeaderName::try_from(h.name.as_str()).ok()?,
                HeaderValue::try_from(h.value.as_str()).ok()?,
            ))
        };
        HeaderModifier {
            set: m.set.iter().filter_map(pair).collect(),
            add: m.add.iter().filter_map(pair).collect(),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::try_from(n.as_str()).ok())
                .collect(),
        }
    }
}

fn header_modifier(m: &api::HeaderModifier) -> Option<HeaderModifier> {
    let parsed = HeaderModifier::from(m);
    (parsed.set.len() == m.set.len()
        && parsed.add.len() == m.add.len()
        && parsed.remove.len() == m.remove.len())
    .then_some(parsed)
}

fn path_modifier(kind: &str, path: &str) -> Result<Option<PathModifier>, String> {
    match kind {
        "" => Ok(None),
        "full" => Ok(Some(PathModifier::Full(path.to_string()))),
        "prefix" => Ok(Some(PathModifier::Prefix(path.to_string()))),
        other => Err(format!("unknown path modifier `{other}`")),
    }
}

impl From<&api::Filter> for Filter {
    /// A filter this proxy cannot apply as sent is [`Filter::Unsupported`]:
    /// the rule then answers 500 rather than route without it.
    fn from(f: &api::Filter) -> Self {
        use api::filter::Kind;
        let unsupported = |why: &str| Filter::Unsupported(why.to_string());
        match &f.kind {
            None => unsupported("a filter this proxy does not know"),
            Some(Kind::RequestHeaderModifier(m)) => {
                header_modifier(m).map_or_else(|| unsupported("invalid header"), Filter::RequestHeaders)
            }
            Some(Kind::ResponseHeaderModifier(m)) => {
                header_modifier(m).map_or_else(|| unsupported("invalid header"), Filter::ResponseHeaders)
            }
            Some(Kind::RequestRedirect(r)) => {
                let status = match r.status_code {
                    0 => http::StatusCode::FOUND,
                    code @ (301 | 302 | 303 | 307 | 308) => u16::try_from(code)
                        .ok()
                        .and_then(|c| http::StatusCode::from_u16(c).ok())
                        .unwrap_or(http::StatusCode::FOUND),
                    _ => return unsupported("redirect status other than 301, 302, 303, 307 or 308"),
                };
                match path_modifier(&r.path_type, &r.path) {
                    Ok(path) => Filter::Redirect(Redirect {
                        scheme: non_empty(&r.scheme),
                        hostname: non_empty(&r.hostname),
                        port: u16::try_from(r.port).ok().filter(|p| *p != 0),
                        path,
                        status,
                    }),
                    Err(e) => unsupported(&e),
                }
            }
            Some(Kind::UrlRewrite(r)) => match path_modifier(&r.path_type, &r.path) {
                Ok(path) => Filter::Rewrite(Rewrite {
                    hostname: non_empty(&r.hostname),
                    path,
                }),
                Err(e) => unsupported(&e),
            },
            Some(Kind::RequestMirror(m)) => Filter::Mirror(Mirror {
                backend: Backend::new(&m.authority, 1),
                numerator: m.numerator,
                denominator: m.denominator,
            }),
        }
    }
}

impl From<&api::ClientPolicy> for Policy {
    /// The policy the control plane sent, defaults filled in.
    fn from(p: &api::ClientPolicy) -> Self {
        Policy {
            load_balancer: match api::LoadBalancer::try_from(p.load_balancer) {
                Ok(api::LoadBalancer::RoundRobin) => LoadBalancer::RoundRobin,
                Ok(api::LoadBalancer::LeastRequest) => LoadBalancer::LeastRequest,
                _ => LoadBalancer::PeakEwma,
            },
            retry: p.retry.as_ref().map(RetryPolicy::from).unwrap_or_default(),
            timeouts: p.timeouts.as_ref().map(Timeouts::from).unwrap_or_default(),
            circuit_breaker: p
                .circuit_breaker
                .as_ref()
                .map(BreakerPolicy::from)
                .unwrap_or_default(),
            concurrency: p
                .concurrency
                .as_ref()
                .map(ConcurrencyPolicy::from)
                .unwrap_or_default(),
            fault: p
                .fault
                .as_ref()
                .map(FaultPolicy::from)
                .filter(|f| f.delay_percent > 0.0 || f.abort_percent > 0.0),
            require_mtls: p.require_mtls,
        }
    }
}

impl From<&api::Retry> for RetryPolicy {
    fn from(r: &api::Retry) -> Self {
        let d = RetryPolicy::default();
        let unset_budget = r.budget_ratio == 0.0 && r.min_retries_per_second == 0;
        RetryPolicy {
            attempts: r.attempts,
            on: if r.on.is_empty() {
                d.on.clone()
            } else {
                retry::RetryOn::parse(&r.on)
            },
            grpc_codes: r
                .grpc_codes
                .iter()
                .filter_map(|c| crate::grpc::code_by_name(c))
                .collect(),
            budget_ratio: if unset_budget {
                d.budget_ratio
            } else {
                r.budget_ratio
            },
            min_per_second: if unset_budget {
                d.min_per_second
            } else {
                r.min_retries_per_second
            },
            backoff_base: ms(r.backoff_base_ms).unwrap_or(d.backoff_base),
            backoff_max: ms(r.backoff_max_ms)
                .unwrap_or(d.backoff_max)
                .max(ms(r.backoff_base_ms).unwrap_or_default()),
            non_idempotent: r.non_idempotent,
        }
    }
}

impl From<&api::Timeouts> for Timeouts {
    fn from(t: &api::Timeouts) -> Self {
        Timeouts {
            request: ms(t.request_ms),
            per_try: ms(t.per_try_ms),
            connect: ms(t.connect_ms),
            idle: ms(t.idle_ms).unwrap_or(Timeouts::default().idle),
        }
    }
}

impl From<&api::CircuitBreaker> for BreakerPolicy {
    fn from(c: &api::CircuitBreaker) -> Self {
        let d = BreakerPolicy::default();
        BreakerPolicy {
            consecutive_failures: if c.consecutive_failures == 0 {
                d.consecutive_failures
            } else {
                c.consecutive_failures
            },
            base_ejection: ms(c.base_ejection_ms).unwrap_or(d.base_ejection),
            max_ejection: ms(c.max_ejection_ms)
                .unwrap_or(d.max_ejection)
                .max(ms(c.base_ejection_ms).unwrap_or_default()),
            max_ejected_ratio: if c.max_ejected_ratio > 0.0 {
                c.max_ejected_ratio.min(1.0)
            } else {
                d.max_ejected_ratio
            },
        }
    }
}

impl From<&api::Concurrency> for ConcurrencyPolicy {
    /// An explicit `max_in_flight` with no `max_pending` means no queue.
    fn from(c: &api::Concurrency) -> Self {
        let d = ConcurrencyPolicy::default();
        ConcurrencyPolicy {
            max_in_flight: if c.max_in_flight == 0 {
                d.max_in_flight
            } else {
                c.max_in_flight
            },
            max_pending: if c.max_in_flight == 0 && c.max_pending == 0 {
                d.max_pending
            } else {
                c.max_pending
            },
            pending_timeout: ms(c.pending_timeout_ms).unwrap_or(d.pending_timeout),
        }
    }
}

impl From<&api::Fault> for FaultPolicy {
    fn from(f: &api::Fault) -> Self {
        FaultPolicy {
            delay: Duration::from_millis(f.delay_ms),
            delay_percent: f.delay_percent,
            abort_status: u16::try_from(f.abort_status).unwrap_or(0),
            abort_percent: f.abort_percent,
        }
    }
}

impl From<api::ServerPolicy> for ServerPolicy {
    /// Unspecified (or unknown) mTLS modes are permissive.
    fn from(p: api::ServerPolicy) -> Self {
        ServerPolicy {
            mtls: match api::MtlsMode::try_from(p.mtls) {
                Ok(api::MtlsMode::Strict) => MtlsMode::Strict,
                _ => MtlsMode::Permissive,
            },
            default_allow: p.default_allow,
            rules: p.rules.into_iter().map(AuthorizationRule::from).collect(),
            rate_limit: p.rate_limit.map(RateLimitParams::from),
            sources: p.sources,
        }
    }
}

impl From<api::AuthorizationRule> for AuthorizationRule {
    /// The identity `*` is any authenticated caller.
    fn from(r: api::AuthorizationRule) -> Self {
        AuthorizationRule {
            identities: r
                .identities
                .into_iter()
                .map(|i| {
                    if i == "*" {
                        IdentityMatch::AnyAuthenticated
                    } else {
                        IdentityMatch::Exact(i)
                    }
                })
                .collect(),
            namespaces: r.namespaces,
            path_prefixes: r.path_prefixes.iter().map(|p| PathPrefix::new(p)).collect(),
            methods: r.methods,
        }
    }
}

impl From<api::RateLimit> for RateLimitParams {
    fn from(r: api::RateLimit) -> Self {
        RateLimitParams {
            total_rps: r.total_rps,
            total_burst: r.total_burst,
            per_identity_rps: r.per_identity_rps,
            per_identity_burst: r.per_identity_burst,
        }
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
