//! Routing: from the destination a request names and the request's head
//! to a [`Plan`] — which HTTPRoute rule, which backend, which timeout. A
//! pure function: no sockets, no discovery; the backend service is
//! resolved by the caller.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Method, Request};

use super::lookup::Named;
use crate::discover::Destination;
use crate::errors::ProxyError;
use crate::grpc;
use crate::http::is_upgrade;

/// What routing decided for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The authority the request is sent with.
    pub authority: Authority,
    /// The matching HTTPRoute rule; `None` when the destination has no
    /// routes.
    pub route: Option<String>,
    pub to: To,
    /// Until the response headers, over all tries: the route rule's
    /// timeout, else the named destination's policy's, and the caller's
    /// `grpc-timeout` when that is tighter. `None`: no limit.
    pub timeout: Option<Duration>,
    /// `CONNECT` or an HTTP/1 upgrade: balanced per connection, without
    /// retries or timeouts.
    pub tunnel: bool,
}

/// Where a plan sends the request.
#[derive(Debug, Clone)]
pub enum To {
    /// The destination the request named (it has no routes).
    Destination(Arc<Destination>),
    /// The backend service a route rule picked, still to be resolved.
    Backend { host: String, port: u16 },
}

/// Routes one request. The rules of the named destination's HTTPRoutes
/// are tried in order; the first that matches picks a backend by weight.
pub fn plan<B>(req: &Request<B>, named: Named) -> Result<Plan, ProxyError> {
    let mut timeout = named.dest.policy.timeouts.request;
    let mut route = None;
    let to = if named.dest.routes.is_empty() {
        To::Destination(named.dest)
    } else {
        let rule = named
            .dest
            .routes
            .iter()
            .find(|r| r.matches(req))
            .ok_or_else(|| ProxyError::NoRoute(format!("{}:{}", named.host, named.port)))?;
        let backend = rule
            .pick_backend()
            .ok_or_else(|| ProxyError::NoEndpoints(rule.name.clone()))?;
        // The control plane sends an unresolved backend without a name.
        if backend.host.is_empty() {
            return Err(ProxyError::UnresolvedBackend(rule.name.clone()));
        }
        timeout = rule.timeout.or(timeout);
        route = Some(rule.name.clone());
        To::Backend {
            host: backend.host.clone(),
            port: backend.port.unwrap_or(named.port),
        }
    };
    // gRPC callers bring their own deadline; the tighter one wins.
    let timeout = [timeout, grpc::timeout(req.headers())]
        .into_iter()
        .flatten()
        .min();
    Ok(Plan {
        authority: named.authority,
        route,
        to,
        timeout,
        tunnel: req.method() == Method::CONNECT || is_upgrade(req),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Backend, PathMatch, Route, RouteMatch};
    use crate::resilience::Policy;

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
                    method: None,
                    headers: vec![],
                })
                .into_iter()
                .collect(),
            backends: backends.iter().map(|(a, w)| Backend::new(a, *w)).collect(),
            timeout: None,
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    fn backend(plan: &Plan) -> (&str, u16) {
        match &plan.to {
            To::Backend { host, port } => (host, *port),
            To::Destination(d) => panic!("no backend: {}", d.service),
        }
    }

    #[test]
    fn an_unresolved_backend_is_a_500() {
        let rules = vec![rule("shop/r/0", None, &[("", 1)])];
        let e = plan(&get("/"), named(rules, None)).unwrap_err();
        assert_eq!(e.reason(), "unresolved-backend");
        assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn without_routes_the_named_destination_is_called() {
        let p = plan(&get("/"), named(vec![], Some(Duration::from_secs(2)))).unwrap();
        assert!(matches!(&p.to, To::Destination(d) if d.service == "web"));
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
        let p = plan(&get("/api/users"), named(routes.clone(), None)).unwrap();
        assert_eq!(p.route.as_deref(), Some("api"));
        assert_eq!(backend(&p), ("api.demo", 9090));
        let p = plan(&get("/apix"), named(routes, None)).unwrap();
        assert_eq!(p.route.as_deref(), Some("rest"));
        assert_eq!(backend(&p), ("web-v2.demo", 8080), "no port: the request's");
    }

    #[test]
    fn weights_split_and_zero_weights_never_win() {
        let routes = vec![rule("split", None, &[("v1", 3), ("v2", 1), ("v3", 0)])];
        let n = named(routes, None);
        let mut v2 = 0;
        for _ in 0..4000 {
            match backend(&plan(&get("/"), n.clone()).unwrap()).0 {
                "v2" => v2 += 1,
                "v1" => {}
                other => panic!("{other} has weight 0"),
            }
        }
        assert!((800..1200).contains(&v2), "about a quarter to v2: {v2}");
        let zero = named(vec![rule("off", None, &[("v1", 0)])], None);
        let e = plan(&get("/"), zero).unwrap_err();
        assert!(matches!(&e, ProxyError::NoEndpoints(r) if r == "off"), "{e}");
    }

    #[test]
    fn no_matching_rule_is_no_route() {
        let n = named(vec![rule("api", Some("/api"), &[("api", 1)])], None);
        let e = plan(&get("/other"), n).unwrap_err();
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
            plan(&get("/slow"), n.clone()).unwrap().timeout,
            Some(Duration::from_secs(5)),
            "the rule's own"
        );
        assert_eq!(
            plan(&get("/"), n.clone()).unwrap().timeout,
            Some(Duration::from_secs(1)),
            "the policy's"
        );
        let grpc = |t: &str| Request::post("/slow").header("grpc-timeout", t).body(()).unwrap();
        assert_eq!(
            plan(&grpc("200m"), n.clone()).unwrap().timeout,
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            plan(&grpc("60S"), n.clone()).unwrap().timeout,
            Some(Duration::from_secs(5)),
            "a looser caller deadline does not extend the route's"
        );
        assert_eq!(
            plan(&grpc("3S"), named(vec![], None)).unwrap().timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(plan(&get("/"), named(vec![], None)).unwrap().timeout, None);
    }

    #[test]
    fn connect_and_upgrades_are_tunnels() {
        let connect = Request::connect("web.demo:8080").body(()).unwrap();
        assert!(plan(&connect, named(vec![], None)).unwrap().tunnel);
        let ws = Request::get("/chat")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(plan(&ws, named(vec![], None)).unwrap().tunnel);
    }
}
