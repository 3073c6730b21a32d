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
        service: service.map_or_else(|| "unknown".into(), |s| s.name.clone()),
        namespace: service.map(|s| s.namespace.clone()).unwrap_or_default(),
        unmeshed_refused: before - endpoints.len(),
        endpoints: endpoints.into(),
        routes: routes.into(),
        shared: Arc::new(Shared::new(&policy)),
        policy: Arc::new(policy),
        meshed: true,
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
            identity: non_empty(&e.identity),
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
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_defaults() {
        assert_eq!(Policy::from(&api::ClientPolicy::default()), Policy::default());
        let p = Policy::from(&api::ClientPolicy {
            load_balancer: api::LoadBalancer::RoundRobin as i32,
            retry: Some(api::Retry {
                attempts: 3,
                on: vec!["5xx".into()],
                ..Default::default()
            }),
            circuit_breaker: Some(api::CircuitBreaker {
                consecutive_failures: 2,
                ..Default::default()
            }),
            concurrency: Some(api::Concurrency {
                max_in_flight: 10,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(p.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(p.retry.attempts, 3);
        assert!(p.retry.on.five_xx && !p.retry.on.connect_failure);
        assert_eq!(p.retry.budget_ratio, 0.2, "default budget");
        assert_eq!(p.circuit_breaker.consecutive_failures, 2);
        assert_eq!(p.circuit_breaker.base_ejection, Duration::from_secs(1));
        assert_eq!(p.concurrency.max_in_flight, 10);
        assert_eq!(p.concurrency.max_pending, 0, "an explicit limit with no queue");
        assert!(p.fault.is_none());
    }

    #[test]
    fn required_mtls_leaves_unmeshed_endpoints_out() {
        let meshed = api::Endpoint {
            address: "10.0.0.1:8080".into(),
            proxy_address: "10.0.0.1:4143".into(),
            identity: "spiffe://cluster.local/ns/shop/sa/cart".into(),
            weight: 1,
            ..Default::default()
        };
        let unmeshed = api::Endpoint {
            address: "10.0.0.2:8080".into(),
            weight: 1,
            ..Default::default()
        };
        let both = [meshed.clone(), unmeshed.clone()];
        let optional = destination(None, &both, &api::ClientPolicy::default());
        assert_eq!((optional.endpoints.len(), optional.unmeshed_refused), (2, 0));
        let policy = api::ClientPolicy {
            require_mtls: true,
            ..Default::default()
        };
        let required = destination(None, &both, &policy);
        assert_eq!((required.endpoints.len(), required.unmeshed_refused), (1, 1));
        assert_eq!(required.endpoints[0].addr, "10.0.0.1:8080".parse().unwrap());
        let none_meshed = destination(None, [&unmeshed], &policy);
        assert_eq!(
            (none_meshed.endpoints.len(), none_meshed.unmeshed_refused),
            (0, 1)
        );
    }

    #[test]
    fn zero_sub_messages_are_the_defaults() {
        let p = Policy::from(&api::ClientPolicy {
            retry: Some(api::Retry::default()),
            timeouts: Some(api::Timeouts::default()),
            circuit_breaker: Some(api::CircuitBreaker::default()),
            concurrency: Some(api::Concurrency::default()),
            fault: Some(api::Fault::default()),
            ..Default::default()
        });
        assert_eq!(p.retry.attempts, 0, "a retry policy's attempts are taken as sent");
        assert_eq!(
            Policy {
                retry: RetryPolicy {
                    attempts: 1,
                    ..p.retry.clone()
                },
                ..p
            },
            Policy::default(),
            "every other zero is unset"
        );
        let p = Policy::from(&api::ClientPolicy {
            timeouts: Some(api::Timeouts {
                request_ms: 1500,
                ..Default::default()
            }),
            circuit_breaker: Some(api::CircuitBreaker {
                base_ejection_ms: 60_000,
                max_ejected_ratio: 7.0,
                ..Default::default()
            }),
            fault: Some(api::Fault {
                abort_status: 503,
                abort_percent: 10.0,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(p.timeouts.request, Some(Duration::from_millis(1500)));
        assert_eq!(p.timeouts.idle, Timeouts::default().idle);
        assert_eq!(
            p.circuit_breaker.max_ejection,
            Duration::from_secs(60),
            "the ceiling is at least the base"
        );
        assert_eq!(p.circuit_breaker.max_ejected_ratio, 1.0);
        assert_eq!(p.fault.map(|f| f.abort_status), Some(503));
    }

    #[test]
    fn endpoints_parse_and_bad_addresses_are_skipped() {
        let ep = |address: &str, proxy: &str| api::Endpoint {
            address: address.into(),
            proxy_address: proxy.into(),
            ..Default::default()
        };
        let meshed = Endpoint::try_from(&api::Endpoint {
            identity: "spiffe://t/ns/demo/sa/web".into(),
            weight: 3,
            ..ep("10.0.0.1:80", "10.0.0.1:4143")
        })
        .unwrap();
        assert_eq!(meshed.addr, "10.0.0.1:80".parse().unwrap());
        assert_eq!(meshed.proxy, Some("10.0.0.1:4143".parse().unwrap()));
        assert_eq!(meshed.identity.as_deref(), Some("spiffe://t/ns/demo/sa/web"));
        assert_eq!(meshed.weight, 3);
        let plain = Endpoint::try_from(&ep("10.0.0.2:80", "")).unwrap();
        assert_eq!((plain.proxy, plain.identity, plain.weight), (None, None, 1));
        assert_eq!(
            Endpoint::try_from(&ep("web:80", "")).unwrap_err(),
            ProtoError::BadAddress {
                field: "address",
                value: "web:80".into()
            }
        );
        let d = destination(
            None,
            &[ep("10.0.0.1:80", ""), ep("nowhere", ""), ep("10.0.0.3:80", "")],
            &api::ClientPolicy::default(),
        );
        let addrs: Vec<String> = d.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:80"]);
        assert_eq!((d.service.as_str(), d.namespace.as_str()), ("unknown", ""));
        assert!(d.meshed && d.routes.is_empty());
    }

    #[test]
    fn routes_parse_matches_backends_and_timeouts() {
        let route = Route::from(&api::Route {
            name: "demo/split/0".into(),
            matches: vec![
                api::RouteMatch {
                    path_type: "prefix".into(),
                    path: "/api".into(),
                    method: "GET".into(),
                    headers: [("X-Canary".to_string(), "1".to_string())].into(),
                    header_matches: vec![api::ValueMatch {
                        name: "X-User".into(),
                        value: "a.*".into(),
                        regex: true,
                    }],
                    query_params: vec![api::ValueMatch {
                        name: "Tier".into(),
                        value: "gold".into(),
                        regex: false,
                    }],
                },
                api::RouteMatch {
                    path_type: "exact".into(),
                    path: "/health".into(),
                    ..Default::default()
                },
                api::RouteMatch {
                    path_type: "regex".into(),
                    path: "/v[0-9]+".into(),
                    ..Default::default()
                },
            ],
            backends: vec![
                api::Backend {
                    authority: "v1:80".into(),
                    weight: 9,
                    filters: vec![],
                },
                api::Backend {
                    authority: "v2:80".into(),
                    weight: 1,
                    filters: vec![],
                },
            ],
            timeout_ms: 0,
            backend_timeout_ms: 250,
            filters: vec![],
        });
        assert_eq!(route.name, "demo/split/0");
        assert_eq!(
            route.matches,
            [
                RouteMatch {
                    path: Some(PathMatch::Prefix("/api".into())),
                    method: Some("GET".into()),
                    headers: vec![
                        ValueMatch {
                            name: "x-canary".into(),
                            value: Value::Exact("1".into())
                        },
                        ValueMatch {
                            name: "x-user".into(),
                            value: Value::Regex(Pattern::new("a.*").unwrap())
                        },
                    ],
                    query: vec![ValueMatch {
                        name: "Tier".into(),
                        value: Value::Exact("gold".into())
                    }],
                },
                RouteMatch {
                    path: Some(PathMatch::Exact("/health".into())),
                    method: None,
                    headers: vec![],
                    query: vec![],
                },
                RouteMatch {
                    path: Some(PathMatch::Regex(Pattern::new("/v[0-9]+").unwrap())),
                    method: None,
                    headers: vec![],
                    query: vec![],
                },
            ]
        );
        assert_eq!(
            route.backends,
            [Backend::new("v1:80", 9), Backend::new("v2:80", 1)]
        );
        assert_eq!(
            (route.backends[0].host.as_str(), route.backends[0].port),
            ("v1", Some(80)),
            "parsed when the route arrives"
        );
        assert_eq!(route.timeout, None, "0: the policy's timeout");
        assert_eq!(route.backend_timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn what_a_proxy_cannot_evaluate_matches_nothing_and_fails_the_rule() {
        let m = RouteMatch::from(&api::RouteMatch {
            path_type: "glob".into(),
            path: "/*".into(),
            ..Default::default()
        });
        assert!(matches!(m.path, Some(PathMatch::Never(_))), "{m:?}");
        let m = RouteMatch::from(&api::RouteMatch {
            header_matches: vec![api::ValueMatch {
                name: "x".into(),
                value: "(".into(),
                regex: true,
            }],
            ..Default::default()
        });
        assert!(
            matches!(m.path, Some(PathMatch::Never(_))),
            "a broken header expression: {m:?}"
        );
        assert!(matches!(
            Filter::from(&api::Filter { kind: None }),
            Filter::Unsupported(_)
        ));
        let bad_header = api::Filter {
            kind: Some(api::filter::Kind::RequestHeaderModifier(api::HeaderModifier {
                set: vec![api::Header {
                    name: "bad header".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            })),
        };
        assert!(matches!(Filter::from(&bad_header), Filter::Unsupported(_)));
        let redirect = api::Filter {
            kind: Some(api::filter::Kind::RequestRedirect(api::Redirect {
                scheme: "https".into(),
                status_code: 301,
                path_type: "prefix".into(),
                path: "/new".into(),
                ..Default::default()
            })),
        };
        assert_eq!(
            Filter::from(&redirect),
            Filter::Redirect(Redirect {
                scheme: Some("https".into()),
                hostname: None,
                port: None,
                path: Some(PathModifier::Prefix("/new".into())),
                status: http::StatusCode::MOVED_PERMANENTLY,
            })
        );
    }

    #[test]
    fn server_policies_are_typed() {
        let p = ServerPolicy::from(api::ServerPolicy {
            protocol: "http".into(),
            mtls: api::MtlsMode::Strict as i32,
            rules: vec![api::AuthorizationRule {
                identities: vec!["*".into(), "spiffe://t/ns/a/sa/b".into()],
                namespaces: vec!["a".into()],
                path_prefixes: vec!["/api/".into()],
                methods: vec!["GET".into()],
            }],
            default_allow: false,
            rate_limit: Some(api::RateLimit {
                total_rps: 20.0,
                total_burst: 10,
                ..Default::default()
            }),
            sources: vec!["demo/ap".into()],
        });
        assert_eq!(p.mtls, MtlsMode::Strict);
        assert!(!p.default_allow);
        assert_eq!(
            p.rules,
            [AuthorizationRule {
                identities: vec![
                    IdentityMatch::AnyAuthenticated,
                    IdentityMatch::Exact("spiffe://t/ns/a/sa/b".into())
                ],
                namespaces: vec!["a".into()],
                path_prefixes: vec![PathPrefix::new("/api")],
                methods: vec!["GET".into()],
            }]
        );
        assert_eq!(
            p.rate_limit,
            Some(RateLimitParams {
                total_rps: 20.0,
                total_burst: 10,
                per_identity_rps: 0.0,
                per_identity_burst: 0,
            })
        );
        assert_eq!(p.sources, ["demo/ap"]);
        let unset = ServerPolicy::from(api::ServerPolicy::default());
        assert_eq!(unset.mtls, MtlsMode::Permissive, "unspecified is permissive");
        assert!(unset.rules.is_empty() && unset.rate_limit.is_none());
    }
}
