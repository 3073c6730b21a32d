//! The values `weft-proxy init` takes for skipped ports and networks, parsed
//! the same way by the proxy (its flags) and by the injector (pod
//! annotations that become those flags), so an annotation the injector
//! accepts is one `weft-proxy init` accepts too.

use std::net::Ipv4Addr;

/// A port (`8080`) or a range (`9000:9100`, also `9000-9100`), normalised
/// to iptables' `low:high` form.
pub fn parse_port_range(s: &str) -> Result<String, String> {
    let bad = || format!("expected a port 1..=65535 or a range `low:high`, got `{s}`");
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    };
    match s.split_once([':', '-']) {
        None => port(s).map(|p| p.to_string()),
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(format!("expected `low:high` with low <= high, got `{s}`"));
            }
            Ok(format!("{lo}:{hi}"))
        }
    }
}

/// An IPv4 network (`10.0.0.0/8`; a bare address is a `/32`).
pub fn parse_cidr(s: &str) -> Result<String, String> {
    let bad = || format!("expected an IPv4 network such as `10.0.0.0/8`, got `{s}`");
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok(format!("{ip}/{len}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_ranges_and_networks() {
        assert_eq!(parse_port_range("8080").unwrap(), "8080");
        assert_eq!(parse_port_range("9000:9100").unwrap(), "9000:9100");
        assert_eq!(parse_port_range("9000-9100").unwrap(), "9000:9100");
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("9100:9000").is_err());
        assert!(parse_port_range("http").is_err());
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap(), "10.1.2.3/32");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("fd00::/8").is_err());
    }
}
