//! The values `weft-proxy init` takes for skipped ports and networks, parsed
//! the same way by the proxy (its flags) and by the injector (pod
//! annotations that become those flags), so an annotation the injector
//! accepts is one `weft-proxy init` accepts too.

use std::net::IpAddr;

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

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`; a bare address is
/// a `/32` or a `/128`), normalised (`FD00:0::/8` becomes `fd00::/8`).
/// `weft-proxy init` hands IPv4 networks to iptables and IPv6 networks to
/// ip6tables ([`is_ipv6_cidr`]).
pub fn parse_cidr(s: &str) -> Result<String, String> {
    let bad = || format!("expected an IPv4 or IPv6 network such as `10.0.0.0/8` or `fd00::/8`, got `{s}`");
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        Some(len) => len.parse().map_err(|_| bad())?,
        None => max,
    };
    if len > max {
        return Err(bad());
    }
    Ok(format!("{ip}/{len}"))
}

/// Whether a network [`parse_cidr`] returned is an IPv6 one.
pub fn is_ipv6_cidr(cidr: &str) -> bool {
    cidr.contains(':')
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
        assert_eq!(parse_cidr("fd00::/8").unwrap(), "fd00::/8");
        assert_eq!(parse_cidr("FD00:0::1").unwrap(), "fd00::1/128");
        assert!(parse_cidr("fd00::/129").is_err());
        assert!(parse_cidr("[fd00::]/8").is_err());
        assert!(is_ipv6_cidr(&parse_cidr("::ffff:10.0.0.0/104").unwrap()));
        assert!(!is_ipv6_cidr(&parse_cidr("10.0.0.0/8").unwrap()));
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn a_port_range_is_accepted_only_in_range_and_comes_out_canonical(
                s in prop_oneof!["[+]?[0-9]{1,6}([:-][+]?[0-9]{0,6})?", "[ -~]{0,14}"],
            ) {
                match parse_port_range(&s) {
                    Ok(out) => {
                        let ports: Vec<u32> = out.split(':').map(|p| p.parse().unwrap()).collect();
                        prop_assert!(ports.iter().all(|p| (1..=65535).contains(p)), "{} -> {}", s, out);
                        prop_assert!(ports.windows(2).all(|w| w[0] <= w[1]) && ports.len() <= 2);
                        prop_assert!(out.bytes().all(|b| b.is_ascii_digit() || b == b':'), "iptables form: {}", out);
                        prop_assert_eq!(parse_port_range(&out), Ok(out.clone()), "canonical");
                    }
                    Err(e) => prop_assert!(e.contains(&format!("`{s}`")), "the error quotes the value: {}", e),
                }
            }

            #[test]
            fn a_network_comes_out_canonical_and_in_its_family(
                s in prop_oneof![
                    "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[+]?[0-9]{1,3})?",
                    "[0-9a-fA-F:]{2,20}(/[0-9]{1,3})?",
                    "[ -~]{0,20}",
                ],
            ) {
                match parse_cidr(&s) {
                    Ok(out) => {
                        let (ip, len) = out.split_once('/').unwrap();
                        let ip: IpAddr = ip.parse().unwrap();
                        let len: u8 = len.parse().unwrap();
                        let max = if ip.is_ipv4() { 32 } else { 128 };
                        prop_assert!(len <= max, "{}", out);
                        prop_assert_eq!(is_ipv6_cidr(&out), ip.is_ipv6());
                        prop_assert_eq!(parse_cidr(&out), Ok(out.clone()), "canonical");
                        prop_assert_eq!(format!("{ip}/{len}"), out);
                    }
                    Err(e) => prop_assert!(e.contains(&format!("`{s}`")), "the error quotes the value: {}", e),
                }
            }
        }
    }
}
