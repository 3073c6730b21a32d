//! HTTPRoute rules as the proxy holds them — matches, backends, filters —
//! and the pure functions that apply them to one request. The control
//! plane sends the rules flattened (one per HTTPRoute match) in the
//! spec's precedence order, so the first rule that matches wins.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use serde::{Serialize, Serializer};

/// One HTTPRoute rule (one of its matches, once flattened).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Route {
    /// `namespace/name/rule`: the route label of metrics.
    pub name: String,
    /// Any match selects the route; no matches: every request.
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<Backend>,
    /// All tries, until the response headers (`timeouts.request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Each try (`timeouts.backendRequest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Gateway routes: the host this rule serves, lower case, exact or
    /// `*.suffix` (any name under it); `None`: any host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Gateway routes: the route's edge policy (else the listener's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<std::sync::Arc<crate::gateway::edge::Edge>>,
}

/// A route's backend service, parsed when the route arrives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// The service name as discovery knows it (`name.ns.svc.cluster.local`).
    /// Empty: unresolved (a missing Service, or a cross-namespace
    /// reference without a ReferenceGrant).
    pub host: String,
    /// `None`: the port the request was sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub weight: u32,
    /// The backendRef's own filters, applied after the rule's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

impl Backend {
    /// From an authority `host[:port]` (an unparsable port leaves the
    /// whole string as the host, which then resolves to nothing).
    pub fn new(authority: &str, weight: u32) -> Self {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => match p.parse() {
                Ok(p) => (h, Some(p)),
                Err(_) => (authority, None),
            },
            None => (authority, None),
        };
        Self {
            host: host.to_string(),
            port,
            weight,
            filters: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub method: Option<String>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    Regex(Pattern),
    /// A match this proxy cannot evaluate (a type it does not know, an
    /// invalid expression): it matches nothing, rather than everything.
    Never(String),
}

/// A header or query parameter that must be present with a value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueMatch {
    /// Header names lowercase; query parameter names as written.
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    Exact(String),
    Regex(Pattern),
}

impl Value {
    fn matches(&self, v: &str) -> bool {
        match self {
            Value::Exact(want) => v == want,
            Value::Regex(p) => p.is_match(v),
        }
    }
}

/// A regular expression that must match a whole value (RE2 syntax, as
/// the Gateway API recommends; the `regex` crate's is a superset without
/// backtracking, so no input makes matching slow).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// An HTTPRoute filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
    Mirror(Mirror),
    /// A filter this proxy cannot apply (unknown to it, or invalid): the
    /// rule answers 500 rather than route without it.
    Unsupported(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderModifier {
    #[serde(serialize_with = "header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_names")]
    pub remove: Vec<HeaderName>,
}

fn header_pairs<S: Serializer>(v: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes()))),
    )
}

fn header_names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(HeaderName::as_str))
}

impl HeaderModifier {
    /// `set` replaces every value, `add` appends one, `remove` drops the
    /// header: in that order.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PathModifier {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`: the part the rule's `PathPrefix` matched.
    Prefix(String),
}

impl PathModifier {
    /// The new path for `path`, which matched `prefix` (the rule's
    /// `PathPrefix`; `None` for other matches, where a prefix replacement
    /// leaves the path as it is).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathModifier::Full(p) => p.clone(),
            PathModifier::Prefix(replacement) => {
                let Some(prefix) = prefix else {
                    return path.to_string();
                };
                let prefix = prefix.trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".into()
                } else if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        }
    }
}

/// `RequestRedirect`: the proxy answers with a redirect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    #[serde(serialize_with = "status")]
    pub status: StatusCode,
}

fn status<S: Serializer>(v: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(v.as_u16())
}

impl Redirect {
    /// The `Location` for a request to `host:port` (the service's name as
    /// the caller wrote it, and the service port), as the spec builds it:
    /// each part the filter does not set is the request's; a port not set
    /// is the new scheme's well-known one when the scheme changes, else
    /// the request's; the port is left out when it is the scheme's
    /// default. The query is kept.
    pub fn location(&self, uri: &Uri, host: &str, port: u16, prefix: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(s)) => well_known_port(s),
            (None, None) => Some(port),
        };
        let host = self.hostname.as_deref().unwrap_or(host);
        let path = self
            .path
            .as_ref()
            .map_or_else(|| uri.path().to_string(), |m| m.apply(uri.path(), prefix));
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| Some(*p) != well_known_port(scheme)) {
            location.push_str(&format!(":{p}"));
        }
        location.push_str(&path);
        if let Some(q) = uri.query() {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `URLRewrite`: the request goes on with these parts replaced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// `RequestMirror`: a copy of the request goes to `backend`, its response
/// discarded, for `numerator / denominator` of the requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    pub backend: Backend,
    pub numerator: u32,
    pub denominator: u32,
}

impl Mirror {
    /// Whether this request is mirrored (sampled by the fraction).
    pub fn sampled(&self) -> bool {
        if self.denominator == 0 || self.numerator >= self.denominator {
            return self.denominator == 0 || self.numerator > 0;
        }
        rand::random_range(0..self.denominator) < self.numerator
    }
}

impl Route {
    /// Whether this rule serves `host` (as the request named it, without
    /// a port): its hostname, case-insensitively, or any name under a
    /// wildcard's suffix.
    pub fn serves(&self, host: &str) -> bool {
        let Some(want) = &self.hostname else {
            return true;
        };
        match want.strip_prefix('*') {
            Some(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            None => host.eq_ignore_ascii_case(want),
        }
    }

    /// The match of this rule that `req` satisfies (`Some(None)`: the
    /// rule has no matches, so every request), or `None`.
    pub fn matched<B>(&self, req: &Request<B>) -> Option<Option<&RouteMatch>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(Some)
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.matched(req).is_some()
    }

    /// A backend chosen by weight; `None` when every weight is 0.
    pub fn pick_backend(&self) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut n = rand::random_range(0..total);
        for b in &self.backends {
            if n < u64::from(b.weight) {
                return Some(b);
            }
            n -= u64::from(b.weight);
        }
        None
    }
}

impl RouteMatch {
    fn matches<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::Prefix(p)) => crate::http::has_path_prefix(path, p),
            Some(PathMatch::Regex(p)) => p.is_match(path),
            Some(PathMatch::Never(_)) => false,
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == req.method().as_str())
            && self.headers.iter().all(|m| header_matches(req.headers(), m))
            && (self.query.is_empty() || query_matches(req.uri(), &self.query))
    }

    /// The prefix a `PathPrefix` match matched on.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }
}

/// A header matches when present with the value; a header sent more than
/// once is matched as its values joined with `,` (how HTTP combines them).
fn header_matches(headers: &HeaderMap, m: &ValueMatch) -> bool {
    let mut values = headers.get_all(m.name.as_str()).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let Ok(first) = first.to_str() else {
        return false;
    };
    let mut joined = first.to_string();
    for v in values {
        match v.to_str() {
            Ok(v) => {
                joined.push(',');
                joined.push_str(v);
            }
            Err(_) => return false,
        }
    }
    m.value.matches(&joined)
}

/// Every query match needs the parameter (its first occurrence, percent-
/// decoded) with the value.
fn query_matches(uri: &Uri, matches: &[ValueMatch]) -> bool {
    let query = uri.query().unwrap_or("");
    matches.iter().all(|m| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == m.name.as_str())
            .is_some_and(|(_, v)| m.value.matches(&v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    fn on_path(path: PathMatch) -> RouteMatch {
        RouteMatch {
            path: Some(path),
            method: None,
            headers: vec![],
            query: vec![],
        }
    }

    #[test]
    fn paths_match_exactly_by_segment_prefix_or_whole_expression() {
        let exact = on_path(PathMatch::Exact("/a".into()));
        assert!(exact.matches(&req("/a")) && !exact.matches(&req("/a/")));
        let prefix = on_path(PathMatch::Prefix("/api/".into()));
        assert!(prefix.matches(&req("/api")) && prefix.matches(&req("/api/v1?x=1")));
        assert!(!prefix.matches(&req("/apix")));
        let regex = on_path(PathMatch::Regex(Pattern::new("/v[0-9]+/.*").unwrap()));
        assert!(regex.matches(&req("/v2/users")));
        assert!(!regex.matches(&req("/x/v2/users")), "anchored at the start");
        assert!(!on_path(PathMatch::Never("Glob".into())).matches(&req("/")));
    }

    #[test]
    fn headers_queries_and_methods_all_must_match() {
        let m = RouteMatch {
            path: None,
            method: Some("POST".into()),
            headers: vec![
                ValueMatch {
                    name: "x-version".into(),
                    value: Value::Exact("2".into()),
                },
                ValueMatch {
                    name: "x-user".into(),
                    value: Value::Regex(Pattern::new("a.*").unwrap()),
                },
            ],
            query: vec![ValueMatch {
                name: "tier".into(),
                value: Value::Exact("gold plus".into()),
            }],
        };
        let with = |method: &str, uri: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().method(method).uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            m.matches(&b.body(()).unwrap())
        };
        let good = [("x-version", "2"), ("X-User", "alice")];
        assert!(with("POST", "/?tier=gold%20plus", &good));
        assert!(
            with("POST", "/?a=1&tier=gold+plus&tier=x", &good),
            "the first occurrence"
        );
        assert!(!with("GET", "/?tier=gold%20plus", &good), "method");
        assert!(!with("POST", "/?tier=gold", &good), "query value");
        assert!(!with("POST", "/", &good), "query missing");
        assert!(!with(
            "POST",
            "/?tier=gold%20plus",
            &[("x-version", "2"), ("x-user", "bob")]
        ));
        assert!(
            !with("POST", "/?tier=gold%20plus", &[("x-user", "alice")]),
            "header missing"
        );
        assert!(
            !with(
                "POST",
                "/?tier=gold%20plus",
                &[("x-version", "2"), ("x-version", "3"), ("x-user", "a")]
            ),
            "repeated: matched as `2,3`"
        );
    }

    #[test]
    fn header_modifiers_set_add_then_remove() {
        let m = HeaderModifier {
            set: vec![(HeaderName::from_static("x-a"), HeaderValue::from_static("set"))],
            add: vec![(HeaderName::from_static("x-b"), HeaderValue::from_static("added"))],
            remove: vec![HeaderName::from_static("x-c")],
        };
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-b", HeaderValue::from_static("kept"));
        h.append("x-c", HeaderValue::from_static("gone"));
        m.apply(&mut h);
        let all = |n: &str| -> Vec<&str> { h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-a"), ["set"]);
        assert_eq!(all("x-b"), ["kept", "added"]);
        assert!(all("x-c").is_empty());
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        let p = |r: &str, path: &str, prefix: &str| PathModifier::Prefix(r.into()).apply(path, Some(prefix));
        assert_eq!(p("/one", "/prefix/one/two", "/prefix/one"), "/one/two");
        assert_eq!(p("/", "/strip-prefix/three", "/strip-prefix"), "/three");
        assert_eq!(p("/", "/strip-prefix", "/strip-prefix"), "/");
        assert_eq!(p("/one", "/prefix/one", "/prefix/one/"), "/one");
        assert_eq!(p("/x/", "/a/b/", "/a"), "/x/b/");
        assert_eq!(
            PathModifier::Full("/one".into()).apply("/full/one/two", Some("/full")),
            "/one"
        );
        assert_eq!(PathModifier::Prefix("/x".into()).apply("/a/b", None), "/a/b");
    }

    #[test]
    fn redirects_build_their_location_as_the_spec_says() {
        let redirect = |scheme: Option<&str>,
                        hostname: Option<&str>,
                        port: Option<u16>,
                        path: Option<PathModifier>| Redirect {
            scheme: scheme.map(Into::into),
            hostname: hostname.map(Into::into),
            port,
            path,
            status: StatusCode::FOUND,
        };
        let uri: Uri = "/a/b?q=1".parse().unwrap();
        let loc = |r: Redirect, port: u16| r.location(&uri, "web.shop", port, Some("/a"));
        assert_eq!(
            loc(redirect(None, None, None, None), 8080),
            "http://web.shop:8080/a/b?q=1"
        );
        assert_eq!(
            loc(redirect(None, None, None, None), 80),
            "http://web.shop/a/b?q=1"
        );
        assert_eq!(
            loc(redirect(Some("https"), None, None, None), 8080),
            "https://web.shop/a/b?q=1"
        );
        assert_eq!(
            loc(redirect(Some("https"), None, Some(8443), None), 80),
            "https://web.shop:8443/a/b?q=1"
        );
        assert_eq!(
            loc(
                redirect(
                    None,
                    Some("example.org"),
                    None,
                    Some(PathModifier::Prefix("/z".into()))
                ),
                80
            ),
            "http://example.org/z/b?q=1"
        );
        assert_eq!(
            loc(redirect(None, None, Some(80), None), 8080),
            "http://web.shop/a/b?q=1"
        );
    }

    #[test]
    fn a_rule_matches_when_any_of_its_matches_does() {
        let route = Route {
            name: "r".into(),
            matches: vec![
                RouteMatch {
                    path: Some(PathMatch::Prefix("/api/".into())),
                    method: Some("GET".into()),
                    headers: vec![ValueMatch {
                        name: "x-canary".into(),
                        value: Value::Exact("1".into()),
                    }],
                    query: vec![],
                },
                on_path(PathMatch::Exact("/health".into())),
            ],
            ..Route::default()
        };
        let req = |path: &str, canary: bool| {
            let mut b = Request::get(path);
            if canary {
                b = b.header("x-canary", "1");
            }
            b.body(()).unwrap()
        };
        assert!(route.matches(&req("/api", true)));
        assert!(route.matches(&req("/health", false)));
        assert_eq!(
            route.matched(&req("/health", false)),
            Some(Some(&route.matches[1]))
        );
        assert!(!route.matches(&req("/api/users", false)));
        let any = Route {
            matches: vec![],
            ..route.clone()
        };
        assert_eq!(any.matched(&req("/whatever", false)), Some(None));
    }

    #[test]
    fn backends_follow_weights_and_parse_once() {
        let route = Route {
            name: "split".into(),
            backends: vec![
                Backend::new("v1:80", 90),
                Backend::new("v2:80", 10),
                Backend::new("v3", 0),
            ],
            ..Route::default()
        };
        let mut v2 = 0;
        for _ in 0..10_000 {
            match route.pick_backend().unwrap().host.as_str() {
                "v2" => v2 += 1,
                "v1" => {}
                other => panic!("weight 0 picked: {other}"),
            }
        }
        assert!((700..1300).contains(&v2), "about 10% to v2, got {v2}");
        let none = Route {
            backends: vec![Backend::new("v1:80", 0)],
            ..route
        };
        assert!(none.pick_backend().is_none());
        let b = Backend::new("web.demo:8080", 1);
        assert_eq!((b.host.as_str(), b.port), ("web.demo", Some(8080)));
        assert_eq!(Backend::new("web:http", 1).host, "web:http");
    }

    #[test]
    fn mirror_fractions() {
        let m = |numerator, denominator| Mirror {
            backend: Backend::new("m:80", 1),
            numerator,
            denominator,
        };
        assert!(m(0, 0).sampled(), "no fraction: every request");
        assert!(!m(0, 100).sampled());
        assert!(m(100, 100).sampled());
        let half = m(50, 100);
        let n = (0..4000).filter(|_| half.sampled()).count();
        assert!((1700..2300).contains(&n), "about half: {n}");
    }
}
