//! HTTP plumbing shared by both directions: the body type, hop-by-hop
//! headers, the mesh headers between two Weft proxies, and finding the
//! destination a request names.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Version};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type at stage edges: what the app sent, or what the proxy
/// made up.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Set by the client proxy on requests it sends over the mesh: the protocol
/// the app spoke (`http/1.1` or `h2`), so the server proxy speaks it to its
/// app. Stripped by the server proxy.
pub const WEFT_PROTO: HeaderName = HeaderName::from_static("weft-proto");
/// Set by the client proxy: the app port the request is for. Stripped by the
/// server proxy.
pub const WEFT_PORT: HeaderName = HeaderName::from_static("weft-port");
/// Set by the client proxy on mesh requests: its workload, for the server
/// proxy's `source_workload` label. Read only over mTLS; stripped by the
/// server proxy.
pub const WEFT_SOURCE_WORKLOAD: HeaderName = HeaderName::from_static("weft-source-workload");
/// Set by the server proxy on responses to mesh peers: its workload, for
/// the client proxy's `destination_workload` label. Read only over mTLS;
/// stripped by the client proxy.
pub const WEFT_WORKLOAD: HeaderName = HeaderName::from_static("weft-workload");

pub fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body as received, passed on without its empty DATA frames: a peer
/// that sends (or echoes) them is otherwise relayed frame for frame, and
/// h2 closes a connection that receives more than 100 empty non-final DATA
/// frames (`GOAWAY ENHANCE_YOUR_CALM`, "too_many_data_frames") — the
/// pooled connection every request to that peer shares.
pub fn incoming(body: Incoming) -> Body {
    // Nothing to relay (a request without a body): the empty body, whose
    // box holds nothing and so allocates nothing.
    if http_body::Body::is_end_stream(&body) {
        return empty_body();
    }
    NoEmptyData(body).map_err(BoxError::from).boxed_unsync()
}

/// Skips empty data frames; everything else (trailers, errors, the end)
/// as the inner body yields it.
struct NoEmptyData<B>(B);

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for NoEmptyData<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        loop {
            match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(Bytes::is_empty) => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// The app protocol of a request, as carried in [`WEFT_PROTO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Http1,
    Http2,
}

impl AppProtocol {
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            AppProtocol::Http1 => "http/1.1",
            AppProtocol::Http2 => "h2",
        })
    }

    pub fn from_header(v: &HeaderValue) -> Option<Self> {
        match v.as_bytes() {
            b"http/1.1" => Some(AppProtocol::Http1),
            b"h2" => Some(AppProtocol::Http2),
            _ => None,
        }
    }
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1),
/// including those the `Connection` header names. `te: trailers` stays: gRPC
/// needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names instead of a
    // lookup (and hash) for each hop-by-hop header.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok());
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .chain(named)
        .collect();
    for name in hop {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A header that concerns one connection only (RFC 9110 §7.6.1), or names
/// others that do (`connection`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
    ]
    .contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The authority a request is for: the URI's (absolute-form, HTTP/2
/// `:authority`, CONNECT), else the `Host` header.
pub fn authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
}

/// Host and port of an authority; the port defaults from the scheme.
pub fn host_port(authority: &Authority, uri: &Uri) -> (String, u16) {
    let default = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    (host.to_ascii_lowercase(), authority.port_u16().unwrap_or(default))
}

/// Whole-segment path prefix: `/api` (or `/api/`) matches `/api` and
/// `/api/x`, not `/apix`; an empty prefix or `/` matches every path.
pub fn has_path_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `http://<authority><path>` for a request's URI.
pub fn absolute_uri(authority: &Authority, uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

/// The origin-form (`/path?query`) of a URI.
pub fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn empty_data_frames_are_not_passed_on() {
        let frames = ["a", "", "b", ""].map(|d| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(d))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut body = NoEmptyData(body);
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(seen, ["a", "b"]);
    }

    #[test]
    fn hop_by_hop_headers_go_but_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn authority_from_uri_or_host() {
        let req = Request::get("http://web.ns:8080/x").body(()).unwrap();
        let a = authority(&req).unwrap();
        assert_eq!(host_port(&a, req.uri()), ("web.ns".into(), 8080));
        let req = Request::get("/x").header("host", "Web").body(()).unwrap();
        let a = authority(&req).unwrap();
        assert_eq!(host_port(&a, req.uri()), ("web".into(), 80));
        assert!(authority(&Request::get("/x").body(()).unwrap()).is_none());
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let req = Request::get("/")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let req = Request::get("/").header("upgrade", "websocket").body(()).unwrap();
        assert!(!is_upgrade(&req));
    }

    /// Found by `props::stripping_leaves_no_hop_by_hop_header_and_everything_else`:
    /// only the first `te` field was read, so `trailers` in a second one
    /// was dropped (and gRPC needs it end to end).
    #[test]
    fn te_trailers_in_any_te_field_stays() {
        let mut h = HeaderMap::new();
        h.append(header::TE, HeaderValue::from_static(""));
        h.append(header::TE, HeaderValue::from_static("gzip,trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get_all(header::TE).iter().collect::<Vec<_>>(), ["trailers"]);
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        const HOP_BY_HOP: &[&str] = &[
            "connection",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "keep-alive",
            "proxy-connection",
        ];

        fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
            let name = prop_oneof![
                Just("connection".to_string()),
                Just("te".to_string()),
                Just("keep-alive".to_string()),
                Just("upgrade".to_string()),
                Just("x-a".to_string()),
                Just("x-b".to_string()),
                "[a-z-]{1,6}",
            ];
            let value = prop_oneof![
                "((x-a|x-b|te|keep-alive|Upgrade|close| |,|\t){0,4})",
                "(gzip|trailers|TRAILERS|deflate)(, ?(gzip|trailers|chunked))*",
                "[ -~]{0,12}",
            ];
            prop::collection::vec((name, value), 0..8)
        }

        proptest! {
            #[test]
            fn stripping_leaves_no_hop_by_hop_header_and_everything_else(headers in headers()) {
                let mut h = HeaderMap::new();
                for (name, value) in &headers {
                    h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
                }
                let listed: Vec<String> = headers
                    .iter()
                    .filter(|(n, _)| n == "connection")
                    .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                    .filter(|t| !t.is_empty())
                    .collect();
                let trailers = headers.iter().any(|(n, v)| n == "te" && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
                let before = h.clone();
                strip_hop_by_hop(&mut h);
                for name in HOP_BY_HOP.iter().copied().chain(listed.iter().map(String::as_str).filter(|n| *n != "te")) {
                    prop_assert!(!h.contains_key(name), "{} is left in {:?}", name, h);
                }
                match h.get_all(header::TE).iter().collect::<Vec<_>>().as_slice() {
                    [] => prop_assert!(!trailers),
                    [v] => prop_assert!(trailers && *v == "trailers", "te: {:?}", v),
                    more => prop_assert!(false, "te: {:?}", more),
                }
                for (name, value) in &before {
                    let gone = HOP_BY_HOP.contains(&name.as_str()) || name == header::TE || listed.iter().any(|l| l == name.as_str());
                    if !gone {
                        prop_assert!(h.get_all(name).iter().any(|v| v == value), "{}: {:?} was dropped", name, value);
                    }
                }
            }
        }
    }
}
