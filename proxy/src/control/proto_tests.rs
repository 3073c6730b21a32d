//! Tests of `proto.rs`.

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
    assert_eq!((&*d.service, &*d.namespace), ("unknown", ""));
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
        ..Default::default()
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
