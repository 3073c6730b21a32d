//! Per-pod overrides, read from the pod's (or pod template's) annotations.
//!
//! Every value is checked: a bad one is an [`InjectError::Annotation`]
//! naming the annotation, the value and what was expected.

use serde_json::{Map, Value};
use weft_api::init_args::{parse_cidr, parse_port_range};

use super::InjectError;

/// `enabled` / `disabled`: opt a pod in or out.
pub const INJECT: &str = "weft.dev/inject";
/// Set on every injected pod; a pod carrying it is left alone.
pub const INJECTED: &str = "weft.dev/injected";
/// The app's ports (the proxy's `WEFT_APP_PORTS`), replacing the
/// containers' `containerPort`s: `8080,9090`.
pub const INBOUND_PORTS: &str = "weft.dev/inbound-ports";
/// Ports whose traffic skips protocol detection (`WEFT_OPAQUE_PORTS`).
pub const OPAQUE_PORTS: &str = "weft.dev/opaque-ports";
/// Inbound ports `weft-proxy init` does not redirect: `22,9000:9100`.
pub const SKIP_INBOUND_PORTS: &str = "weft.dev/skip-inbound-ports";
/// Outbound destination ports not redirected: `443,9000:9100`.
pub const SKIP_OUTBOUND_PORTS: &str = "weft.dev/skip-outbound-ports";
/// Outbound destination networks not redirected (IPv4 or IPv6):
/// `10.0.0.0/8,169.254.169.254/32,fd00:ec2::254/128`.
pub const SKIP_OUTBOUND_CIDRS: &str = "weft.dev/skip-outbound-cidrs";
pub const PROXY_CPU_REQUEST: &str = "weft.dev/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "weft.dev/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "weft.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
/// Upstream listeners, `LISTEN=SERVICE:PORT` comma-separated
/// (`WEFT_UPSTREAMS`).
pub const UPSTREAMS: &str = "weft.dev/upstreams";

/// What a pod's annotations change in the injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub inbound_ports: Option<Vec<u16>>,
    pub opaque_ports: Option<Vec<u16>>,
    /// `N` or `low:high`, as `weft-proxy init` takes them.
    pub skip_inbound_ports: Vec<String>,
    pub skip_outbound_ports: Vec<String>,
    /// `a.b.c.d/len`.
    pub skip_outbound_cidrs: Vec<String>,
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    /// `LISTEN=SERVICE:PORT`, as `weft-proxy --upstream` takes them.
    pub upstreams: Vec<String>,
}

impl Overrides {
    /// Reads every `weft.dev/` override from `annotations`.
    pub fn from_annotations(annotations: &Map<String, Value>) -> Result<Self, InjectError> {
        let get = |name: &'static str| -> Result<Option<&str>, InjectError> {
            match annotations.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(bad(name, other, "expected a string value")),
            }
        };
        let ports = |name: &'static str| -> Result<Option<Vec<u16>>, InjectError> {
            get(name)?.map(|v| parse_list(name, v, parse_port)).transpose()
        };
        let list = |name: &'static str, parse: fn(&str) -> Result<String, String>| {
            get(name)
                .and_then(|v| v.map(|v| parse_list(name, v, parse)).transpose())
                .map(Option::unwrap_or_default)
        };
        let quantity = |name: &'static str| -> Result<Option<String>, InjectError> {
            match get(name)? {
                None => Ok(None),
                Some(v) if is_quantity(v.trim()) => Ok(Some(v.trim().to_string())),
                Some(v) => Err(bad(
                    name,
                    &Value::from(v),
                    "expected a Kubernetes quantity such as `100m`, `0.5`, `64Mi` or `1Gi`",
                )),
            }
        };
        Ok(Self {
            inbound_ports: ports(INBOUND_PORTS)?,
            opaque_ports: ports(OPAQUE_PORTS)?,
            skip_inbound_ports: list(SKIP_INBOUND_PORTS, parse_port_range)?,
            skip_outbound_ports: list(SKIP_OUTBOUND_PORTS, parse_port_range)?,
            skip_outbound_cidrs: list(SKIP_OUTBOUND_CIDRS, parse_cidr)?,
            cpu_request: quantity(PROXY_CPU_REQUEST)?,
            memory_request: quantity(PROXY_MEMORY_REQUEST)?,
            cpu_limit: quantity(PROXY_CPU_LIMIT)?,
            memory_limit: quantity(PROXY_MEMORY_LIMIT)?,
            upstreams: list(UPSTREAMS, parse_upstream)?,
        })
    }
}

fn bad(name: &str, value: &Value, problem: &str) -> InjectError {
    let value = match value {
        Value::String(s) => format!("`{s}`"),
        other => other.to_string(),
    };
    InjectError::Annotation {
        annotation: name.to_string(),
        problem: format!("{problem}, got {value}"),
    }
}

/// A comma-separated list; blanks around items and empty items are ignored.
fn parse_list<T>(
    name: &str,
    value: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, InjectError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            parse(item).map_err(|problem| InjectError::Annotation {
                annotation: name.to_string(),
                problem: format!("{problem} (in `{value}`)"),
            })
        })
        .collect()
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("expected a port 1..=65535, got `{s}`")),
        Ok(p) => Ok(p),
    }
}

/// `LISTEN=SERVICE:PORT` (e.g. `127.0.0.1:15432=db.shop:5432`), checked
/// as the proxy will read it.
fn parse_upstream(s: &str) -> Result<String, String> {
    let expected =
        || format!("expected LISTEN=SERVICE:PORT such as `127.0.0.1:15432=db.shop:5432`, got `{s}`");
    let (listen, target) = s.split_once('=').ok_or_else(expected)?;
    listen.parse::<std::net::SocketAddr>().map_err(|_| expected())?;
    let (service, port) = target.rsplit_once(':').ok_or_else(expected)?;
    let service_ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !service_ok || parse_port(port).is_err() {
        return Err(expected());
    }
    Ok(s.to_string())
}

/// A Kubernetes resource quantity: a decimal number (`1`, `0.5`, `.5`),
/// optionally followed by a binary suffix (`Ki` … `Ei`), a decimal one
/// (`m`, `k`, `M` … `E`) or an exponent (`1e3`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = number.matches('.').count() <= 1 && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Overrides, InjectError> {
        Overrides::from_annotations(v.as_object().unwrap())
    }

    #[test]
    fn none_is_the_default() {
        assert_eq!(parse(json!({})).unwrap(), Overrides::default());
    }

    #[test]
    fn every_override_is_read() {
        let o = parse(json!({
            INBOUND_PORTS: "8080, 9090",
            OPAQUE_PORTS: "7000",
            SKIP_INBOUND_PORTS: "22,9000-9100",
            SKIP_OUTBOUND_PORTS: "443,5000:5010",
            SKIP_OUTBOUND_CIDRS: "10.0.0.0/8,169.254.169.254,fd00:ec2::254",
            PROXY_CPU_REQUEST: "250m",
            PROXY_MEMORY_REQUEST: "128Mi",
            PROXY_CPU_LIMIT: "1",
            PROXY_MEMORY_LIMIT: "1Gi",
        }))
        .unwrap();
        assert_eq!(o.inbound_ports, Some(vec![8080, 9090]));
        assert_eq!(o.opaque_ports, Some(vec![7000]));
        assert_eq!(o.skip_inbound_ports, ["22", "9000:9100"]);
        assert_eq!(o.skip_outbound_ports, ["443", "5000:5010"]);
        assert_eq!(
            o.skip_outbound_cidrs,
            ["10.0.0.0/8", "169.254.169.254/32", "fd00:ec2::254/128"]
        );
        assert_eq!(o.cpu_request.as_deref(), Some("250m"));
        assert_eq!(o.memory_limit.as_deref(), Some("1Gi"));
        // An empty list is a list: no app ports.
        assert_eq!(
            parse(json!({INBOUND_PORTS: ""})).unwrap().inbound_ports,
            Some(vec![])
        );
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let cases = [
            (INBOUND_PORTS, json!("8080,http"), "`http`"),
            (INBOUND_PORTS, json!("0"), "1..=65535"),
            (OPAQUE_PORTS, json!(7000), "expected a string value, got 7000"),
            (SKIP_INBOUND_PORTS, json!("9100:9000"), "low <= high"),
            (SKIP_OUTBOUND_CIDRS, json!("10.0.0.0/33"), "IPv4 or IPv6 network"),
            (SKIP_OUTBOUND_CIDRS, json!("fd00::/129"), "IPv4 or IPv6 network"),
            (PROXY_MEMORY_LIMIT, json!("lots"), "Kubernetes quantity"),
            (PROXY_CPU_REQUEST, json!("100 m"), "Kubernetes quantity"),
        ];
        for (name, value, expected) in cases {
            let e = parse(json!({ name: value })).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("annotation `{name}`: ")), "{msg}");
            assert!(msg.contains(expected), "{msg}");
        }
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "0.5", ".5", "100m", "64Mi", "1Gi", "2k", "1e3", "1.5E-2", "+1",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "1mi", "1 Gi", "Gi", "1e", "1Kb", "-"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
