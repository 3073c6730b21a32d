//! Routing: from the destination a request names and the request's head
//! to a [`Plan`] — which HTTPRoute rule, which backend, which timeout. A
//! pure function: no sockets, no discovery; the backend service is
//! resolved by the caller.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Method, Request, StatusCode};

use super::lookup::Named;
use crate::discover::{Backend, Destination, RouteMatch};
use crate::errors::ProxyError;
use crate::grpc;
use crate::http::is_upgrade;
use crate::routes::{Filter, HeaderModifier, Rewrite};

/// What routing decided for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The authority the request is sent with (a `URLRewrite` hostname
    /// replaces the caller's).
    pub authority: Authority,
    /// The matching HTTPRoute rule; `None` when the destination has no
    /// routes.
    pub route: Option<String>,
    pub to: To,
    /// Until the response headers, over all tries: the route rule's
    /// timeout, else the named destination's policy's, and the caller's
    /// `grpc-timeout` when that is tighter. `None`: no limit.
    pub timeout: Option<Duration>,
    /// Each try's timeout, when the rule sets one (`backendRequest`);
    /// else the backend's policy's.
    pub try_timeout: Option<Duration>,
    /// `CONNECT` or an HTTP/1 upgrade: balanced per connection, without
    /// retries or timeouts.
    pub tunnel: bool,
    /// `ResponseHeaderModifier`s (the rule's, then the backend's), for the
    /// upstream's response.
    pub response_headers: Vec<HeaderModifier>,
    /// `RequestMirror`s this request was sampled for: each gets a copy.
    pub mirrors: Vec<Backend>,
    /// Gateway routes: the matching rule's edge policy.
    pub edge: Option<Arc<crate::gateway::edge::Edge>>,
}

/// Where a plan sends the request.
#[derive(Debug, Clone)]
pub enum To {
    /// The destination the request named (it has no routes).
    Destination(Arc<Destination>),
    /// The backend service a route rule picked, still to be resolved.
    Backend { host: String, port: u16 },
    /// A `RequestRedirect`: the proxy answers itself.
    Redirect { status: StatusCode, location: String },
}

/// Routes one request and applies the request side of the rule's filters
/// to it (header modifiers, URL rewrite). The named destination's rules
/// arrive in the spec's precedence order, so the first that matches wins;
/// it picks a backend by weight (or redirects).
pub fn plan<B>(req: &mut Request<B>, named: Named) -> Result<Plan, ProxyError> {
    let mut plan = Plan {
        authority: named.authority.clone(),
        route: None,
        to: To::Destination(named.dest.clone()),
        timeout: named.dest.policy.timeouts.request,
        try_timeout: None,
        tunnel: req.method() == Method::CONNECT || is_upgrade(req),
        response_headers: Vec::new(),
        mirrors: Vec::new(),
        edge: None,
    };
    if !named.dest.routes.is_empty() {
        let (rule, matched) = named
            .dest
            .routes
            .iter()
            .filter(|r| r.serves(&named.host))
            .find_map(|r| r.matched(req).map(|m| (r, m)))
            .ok_or_else(|| ProxyError::NoRoute(format!("{}:{}", named.host, named.port)))?;
        plan.route = Some(rule.name.clone());
        plan.edge = rule.edge.clone();
        plan.timeout = rule.timeout.or(plan.timeout);
        plan.try_timeout = rule.backend_timeout;
        let prefix = matched.and_then(RouteMatch::prefix);
        let redirect = rule.filters.iter().find_map(|f| match f {
            Filter::Redirect(r) => Some(r),
            _ => None,
        });
        if let Some(r) = redirect {
            // The host as the caller wrote it (for redirected traffic, not
            // the address it dialled).
            let location = r.location(req.uri(), named.authority.host(), named.port, prefix);
            plan.to = To::Redirect {
                status: r.status,
                location,
            };
            return Ok(plan);
        }
        // No backends, or every weight 0: 500, as the spec says.
        let backend = rule
            .pick_backend()
            .ok_or_else(|| ProxyError::NoBackend(rule.name.clone()))?;
        // The control plane sends an unresolved backend without a name.
        if backend.host.is_empty() {
            return Err(ProxyError::UnresolvedBackend(rule.name.clone()));
        }
        for filter in rule.filters.iter().chain(&backend.filters) {
            match filter {
                Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
                Filter::ResponseHeaders(m) => plan.response_headers.push(m.clone()),
                Filter::Rewrite(r) => rewrite(req, &mut plan.authority, r, prefix, named.port),
                Filter::Mirror(m) => {
                    if !m.backend.host.is_empty() && m.sampled() {
                        plan.mirrors.push(m.backend.clone());
                    }
                }
                // A redirect on a backendRef is not in the spec; refused
                // by validation, and here as an unknown filter.
                Filter::Redirect(_) | Filter::Unsupported(_) => {
                    return Err(ProxyError::UnsupportedFilter(rule.name.clone()))
                }
            }
        }
        plan.to = To::Backend {
            host: backend.host.clone(),
            port: backend.port.unwrap_or(named.port),
        };
    }
    // gRPC callers bring their own deadline; the tighter one wins.
    plan.timeout = [plan.timeout, grpc::timeout(req.headers())]
        .into_iter()
        .flatten()
        .min();
    Ok(plan)
}

/// `URLRewrite`: the hostname replaces the authority (and `Host`), the
/// path is replaced in full or by its matched prefix; the query stays.
fn rewrite<B>(req: &mut Request<B>, authority: &mut Authority, r: &Rewrite, prefix: Option<&str>, port: u16) {
    if let Some(host) = &r.hostname {
        if let Ok(a) = host.parse::<Authority>() {
            *authority = a;
        } else if let Ok(a) = format!("{host}:{port}").parse::<Authority>() {
            *authority = a;
        }
        if let Ok(v) = http::HeaderValue::from_str(host) {
            if req.headers().contains_key(http::header::HOST) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    if let Some(path) = &r.path {
        let new_path = path.apply(req.uri().path(), prefix);
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = path_and_query.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Backend, PathMatch, Route, RouteMatch};
    use crate::resilience::Policy;
    use crate::routes::{Mirror, PathModifier, Redirect};
    use http::header::{HeaderName, HeaderValue};

    fn named(routes: Vec<Route>, request_timeout: Option<Duration>) -> Named {
        let mut dest = Destination::from_endpoints("web", Arc::from([]));
        dest.routes = routes.into();
        let mut policy = Policy::default();
        policy.timeouts.request = request_timeout;
        dest.policy = Arc::new(policy);
        Named {
            authority: Authority::from_static("web.demo:8080"),
            host: "web.demo".into(),
            port: 8080,
            dest: Arc::new(dest),
        }
    }

    fn rule(name: &str, prefix: Option<&str>, backends: &[(&str, u32)]) -> Route {
        Route {
            name: name.into(),
            matches: prefix
                .map(|p| RouteMatch {
                    path: Some(PathMatch::Prefix(p.into())),
                    ..RouteMatch::default()
                })
                .into_iter()
                .collect(),
            backends: backends.iter().map(|(a, w)| Backend::new(a, *w)).collect(),
            ..Route::default()
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    fn backend(plan: &Plan) -> (&str, u16) {
        match &plan.to {
            To::Backend { host, port } => (host, *port),
            To::Destination(d) => panic!("no backend: {}", d.service),
            To::Redirect { location, .. } => panic!("a redirect to {location}"),
        }
    }

    #[test]
    fn an_unresolved_backend_is_a_500() {
        let rules = vec![rule("shop/r/0", None, &[("", 1)])];
        let e = plan(&mut get("/"), named(rules, None)).unwrap_err();
        assert_eq!(e.reason(), "unresolved-backend");
        assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn without_routes_the_named_destination_is_called() {
        let p = plan(&mut get("/"), named(vec![], Some(Duration::from_secs(2)))).unwrap();
        assert!(matches!(&p.to, To::Destination(d) if &*d.service == "web"));
        assert_eq!(p.route, None);
        assert_eq!(p.timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.authority, "web.demo:8080");
        assert!(!p.tunnel);
    }

    #[test]
    fn the_first_matching_rule_picks_the_backend() {
        let routes = vec![
            rule("api", Some("/api"), &[("api.demo:9090", 1)]),
            rule("rest", None, &[("web-v2.demo", 1)]),
        ];
        let p = plan(&mut get("/api/users"), named(routes.clone(), None)).unwrap();
        assert_eq!(p.route.as_deref(), Some("api"));
        assert_eq!(backend(&p), ("api.demo", 9090));
        let p = plan(&mut get("/apix"), named(routes, None)).unwrap();
        assert_eq!(p.route.as_deref(), Some("rest"));
        assert_eq!(backend(&p), ("web-v2.demo", 8080), "no port: the request's");
    }

    #[test]
    fn weights_split_and_zero_weights_never_win() {
        let routes = vec![rule("split", None, &[("v1", 3), ("v2", 1), ("v3", 0)])];
        let n = named(routes, None);
        let mut v2 = 0;
        for _ in 0..4000 {
            match backend(&plan(&mut get("/"), n.clone()).unwrap()).0 {
                "v2" => v2 += 1,
                "v1" => {}
                other => panic!("{other} has weight 0"),
            }
        }
        assert!((800..1200).contains(&v2), "about a quarter to v2: {v2}");
        let zero = named(vec![rule("off", None, &[("v1", 0)])], None);
        let e = plan(&mut get("/"), zero).unwrap_err();
        assert!(matches!(&e, ProxyError::NoBackend(r) if r == "off"), "{e}");
        assert_eq!(
            e.status(),
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "as the spec says"
        );
        let none = named(vec![rule("empty", None, &[])], None);
        assert_eq!(plan(&mut get("/"), none).unwrap_err().reason(), "no-backend");
    }

    #[test]
    fn no_matching_rule_is_no_route() {
        let n = named(vec![rule("api", Some("/api"), &[("api", 1)])], None);
        let e = plan(&mut get("/other"), n).unwrap_err();
        assert!(
            matches!(&e, ProxyError::NoRoute(d) if d == "web.demo:8080"),
            "{e}"
        );
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn timeouts_rule_over_policy_and_the_tighter_grpc_deadline() {
        let mut timed = rule("timed", Some("/slow"), &[("web", 1)]);
        timed.timeout = Some(Duration::from_secs(5));
        let routes = vec![timed, rule("rest", None, &[("web", 1)])];
        let n = named(routes, Some(Duration::from_secs(1)));
        assert_eq!(
            plan(&mut get("/slow"), n.clone()).unwrap().timeout,
            Some(Duration::from_secs(5)),
            "the rule's own"
        );
        assert_eq!(
            plan(&mut get("/"), n.clone()).unwrap().timeout,
            Some(Duration::from_secs(1)),
            "the policy's"
        );
        let grpc = |t: &str| Request::post("/slow").header("grpc-timeout", t).body(()).unwrap();
        assert_eq!(
            plan(&mut grpc("200m"), n.clone()).unwrap().timeout,
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            plan(&mut grpc("60S"), n.clone()).unwrap().timeout,
            Some(Duration::from_secs(5)),
            "a looser caller deadline does not extend the route's"
        );
        assert_eq!(
            plan(&mut grpc("3S"), named(vec![], None)).unwrap().timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(plan(&mut get("/"), named(vec![], None)).unwrap().timeout, None);
    }

    #[test]
    fn connect_and_upgrades_are_tunnels() {
        let mut connect = Request::connect("web.demo:8080").body(()).unwrap();
        assert!(plan(&mut connect, named(vec![], None)).unwrap().tunnel);
        let mut ws = Request::get("/chat")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(plan(&mut ws, named(vec![], None)).unwrap().tunnel);
    }

    fn header(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static(name), HeaderValue::from_static(value))
    }

    #[test]
    fn request_filters_change_the_request_and_response_filters_ride_on_the_plan() {
        let mut r = rule("f", Some("/shop"), &[("store.demo:80", 1)]);
        r.filters = vec![
            Filter::RequestHeaders(HeaderModifier {
                set: vec![header("x-rule", "1")],
                ..Default::default()
            }),
            Filter::Rewrite(Rewrite {
                hostname: Some("store.internal".into()),
                path: Some(PathModifier::Prefix("/".into())),
            }),
            Filter::ResponseHeaders(HeaderModifier {
                add: vec![header("x-served-by", "rule")],
                ..Default::default()
            }),
            Filter::Mirror(Mirror {
                backend: Backend::new("audit.demo:80", 1),
                numerator: 0,
                denominator: 0,
            }),
            Filter::Mirror(Mirror {
                backend: Backend::new("", 1),
                numerator: 0,
                denominator: 0,
            }),
        ];
        r.backends[0].filters = vec![Filter::RequestHeaders(HeaderModifier {
            set: vec![header("x-rule", "backend")],
            add: vec![header("x-backend", "1")],
            ..Default::default()
        })];
        r.backend_timeout = Some(Duration::from_millis(300));
        let mut req = Request::get("/shop/cart?id=7")
            .header("host", "web.demo:8080")
            .body(())
            .unwrap();
        let p = plan(&mut req, named(vec![r], None)).unwrap();
        assert_eq!(
            req.uri(),
            "/cart?id=7",
            "the matched prefix replaced, the query kept"
        );
        assert_eq!(p.authority, "store.internal");
        assert_eq!(req.headers()["host"], "store.internal");
        assert_eq!(
            req.headers()["x-rule"],
            "backend",
            "the backend's filters after the rule's"
        );
        assert_eq!(req.headers()["x-backend"], "1");
        assert_eq!(p.response_headers.len(), 1);
        assert_eq!(
            p.mirrors,
            [Backend::new("audit.demo:80", 1)],
            "an unresolved mirror is skipped"
        );
        assert_eq!(p.try_timeout, Some(Duration::from_millis(300)));
        assert_eq!(backend(&p), ("store.demo", 80));
    }

    #[test]
    fn a_redirect_is_answered_without_a_backend() {
        let mut r = rule("moved", Some("/old"), &[]);
        r.filters = vec![Filter::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: Some(PathModifier::Prefix("/new".into())),
            status: StatusCode::MOVED_PERMANENTLY,
        })];
        let p = plan(&mut get("/old/x?y=1"), named(vec![r], None)).unwrap();
        match p.to {
            To::Redirect { status, location } => {
                assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
                assert_eq!(location, "https://web.demo/new/x?y=1");
            }
            other => panic!("not a redirect: {other:?}"),
        }
        assert_eq!(p.route.as_deref(), Some("moved"));
    }

    #[test]
    fn a_filter_the_proxy_cannot_apply_fails_the_rule_closed() {
        let mut r = rule("odd", None, &[("web", 1)]);
        r.filters = vec![Filter::Unsupported("a filter this proxy does not know".into())];
        let e = plan(&mut get("/"), named(vec![r], None)).unwrap_err();
        assert_eq!(
            (e.status(), e.reason()),
            (StatusCode::INTERNAL_SERVER_ERROR, "unsupported-filter")
        );
    }
}
