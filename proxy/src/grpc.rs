//! gRPC as the data path sees it: the content type that announces it,
//! status codes ([`tonic::Code`]) in headers and trailers, and the
//! `grpc-timeout` header. Errors, retries, the circuit breaker and
//! telemetry all read gRPC through this module.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

pub use tonic::Code;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A status code as a label value: its number (`0`, `14`, …).
pub fn code_label(code: Code) -> &'static str {
    const LABELS: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    LABELS[code as usize]
}

/// Whether headers announce gRPC (`content-type: application/grpc[+…]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in headers or trailers; `None` when absent or not a
/// number.
pub fn status(headers: &HeaderMap) -> Option<Code> {
    let n: i32 = headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(n))
}

/// A gRPC response whose status comes in trailers (not trailers-only):
/// its verdict is known only when the body ends.
pub fn status_in_trailers(headers: &HeaderMap) -> bool {
    is_grpc(headers) && !headers.contains_key(GRPC_STATUS)
}

/// Codes that count as the endpoint failing (not the caller's mistake):
/// UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS.
pub fn is_endpoint_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown | Code::Internal | Code::Unavailable | Code::DataLoss
    )
}

/// The gRPC code for an HTTP status, as the gRPC spec maps them
/// (`doc/http-grpc-status-mapping.md`).
pub fn from_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A code by the name policies use (`unavailable`, `UNAVAILABLE`) or by
/// number.
pub fn code_by_name(name: &str) -> Option<Code> {
    weft_api::grpc_code(name).map(|n| Code::from_i32(n as i32))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit.
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's deadline from `grpc-timeout`, if it sent one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(GRPC_TIMEOUT)?.as_bytes())
}

/// Formats a `grpc-timeout` value (at most 8 digits, as the spec says),
/// rounding down so the server never waits longer than the caller.
pub fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(u128, &str); 4] = [
        (d.as_micros(), "u"),
        (d.as_millis(), "m"),
        (u128::from(d.as_secs()), "S"),
        (u128::from(d.as_secs() / 60), "M"),
    ];
    for (n, unit) in units {
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{}H", (d.as_secs() / 3600).min(MAX as u64))
}

/// Serializes codes as their numbers (for `/config`).
pub(crate) fn ser_codes<S: serde::Serializer>(codes: &[Code], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(codes.iter().map(|c| *c as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_their_numbers() {
        for n in 0..=16 {
            assert_eq!(code_label(Code::from_i32(n)), n.to_string());
        }
    }

    #[test]
    fn timeouts_round_trip() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"123456789m"), None);
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(format_timeout(Duration::from_secs(200)), "200000m");
        assert_eq!(format_timeout(Duration::from_secs(200_000)), "200000S");
        for d in [1u64, 999, 123_456, 86_400_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_timeout(format_timeout(d).as_bytes()), Some(d));
        }
    }

    #[test]
    fn status_and_content_type() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert(
            http::header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        assert!(is_grpc(&h) && status_in_trailers(&h));
        h.insert(GRPC_STATUS, "14".parse().unwrap());
        assert_eq!(status(&h), Some(Code::Unavailable));
        assert!(!status_in_trailers(&h));
        h.insert(GRPC_STATUS, "x".parse().unwrap());
        assert_eq!(status(&h), None);
        assert!(is_endpoint_failure(Code::DataLoss) && !is_endpoint_failure(Code::NotFound));
        assert_eq!(from_http(StatusCode::BAD_GATEWAY), Code::Unavailable);
        assert_eq!(from_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
        assert_eq!(code_by_name("RESOURCE_EXHAUSTED"), Some(Code::ResourceExhausted));
        assert_eq!(code_by_name("14"), Some(Code::Unavailable));
        assert_eq!(code_by_name("nope"), None);
    }

    /// Found by `props::parse_timeout_accepts_exactly_the_spec_grammar`:
    /// `u64::from_str` takes a leading `+`, the spec's grammar does not.
    #[test]
    fn a_signed_timeout_is_refused() {
        assert_eq!(parse_timeout(b"+5S"), None);
        assert_eq!(parse_timeout(b"-5S"), None);
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        /// The largest value the grammar can state: 8 digits of hours.
        const CAP: Duration = Duration::from_secs(99_999_999 * 3600);

        fn unit(u: u8) -> Option<Duration> {
            Some(match u {
                b'H' => Duration::from_secs(3600),
                b'M' => Duration::from_secs(60),
                b'S' => Duration::from_secs(1),
                b'm' => Duration::from_millis(1),
                b'u' => Duration::from_micros(1),
                b'n' => Duration::from_nanos(1),
                _ => return None,
            })
        }

        proptest! {
            #[test]
            fn parse_timeout_accepts_exactly_the_spec_grammar(
                v in prop_oneof!["[+-]?[0-9]{0,10}[HMSmunx ]?", "[0-9]{1,8}[HMSmun]", ".{0,12}"],
            ) {
                let b = v.as_bytes();
                let spec = match b.split_last() {
                    Some((&u, digits))
                        if (1..=8).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
                    {
                        unit(u).map(|unit| unit * v[..digits.len()].parse::<u32>().unwrap())
                    }
                    _ => None,
                };
                let parsed = parse_timeout(b);
                prop_assert_eq!(parsed, spec, "{:?}", v);
                if let Some(d) = parsed {
                    prop_assert!(d <= CAP);
                }
            }

            #[test]
            fn format_timeout_rounds_down_within_its_unit_and_parses_back(
                d in prop_oneof![
                    any::<u64>().prop_map(Duration::from_nanos),
                    (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
                ],
            ) {
                let v = format_timeout(d);
                let (digits, u) = v.split_at(v.len() - 1);
                prop_assert!((1..=8).contains(&digits.len()), "{}", v);
                let back = parse_timeout(v.as_bytes()).unwrap();
                prop_assert!(back <= d.min(CAP), "{:?} became {} ({:?})", d, v, back);
                if d <= CAP {
                    prop_assert!(d - back < unit(u.as_bytes()[0]).unwrap(), "{:?} became {}", d, v);
                }
                prop_assert_eq!(parse_timeout(format_timeout(back).as_bytes()), Some(back), "a round trip is stable");
            }
        }
    }
}
