//! Whether `weft-proxy init` installs ip6tables rules: IPv6 is intercepted
//! wherever the pod can use it, and a node without IPv6 is said so and
//! left with the IPv4 rules.
//!
//! The facts are gathered once ([`Probe::gather`]: `/proc/net/if_inet6`,
//! `net.ipv6.conf.all.disable_ipv6`, and whether `ip6tables -t nat -S`
//! works) and judged by a pure function ([`decide`]), tested without a
//! kernel. IPv6 is left alone only when no IPv6 caller can reach the pod
//! or be sent from it: the kernel has none, it is disabled, or ip6tables'
//! nat table is unusable and no interface has an IPv6 address beyond
//! loopback and link-local. A pod that has such an address but no usable
//! ip6tables is an error, not a warning: its IPv6 traffic would bypass the
//! proxy (mTLS and authorization) unseen.

use std::net::Ipv6Addr;

use super::{InitError, Iptables};

/// What the node says about IPv6.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `/proc/net/if_inet6`, `None` when absent (a kernel without IPv6, or
    /// booted with `ipv6.disable=1`).
    pub if_inet6: Option<String>,
    /// `/proc/sys/net/ipv6/conf/all/disable_ipv6`, when readable.
    pub disable_ipv6: Option<String>,
    /// Whether ip6tables can list its nat table.
    pub nat: Nat,
}

/// The outcome of `ip6tables -t nat -S`.
#[derive(Debug, Clone)]
pub enum Nat {
    Usable,
    /// No binary, no nat table (no `ip6table_nat` / nft IPv6 nat), …: why.
    Unusable(String),
    /// Not allowed to look (no `NET_ADMIN`): the same error IPv4 would
    /// hit, reported as such.
    Denied(String),
}

/// What to do about IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6 {
    /// Install (or remove) the ip6tables rules too.
    Intercept,
    /// IPv4 only, and why: nothing can use IPv6 here.
    Absent(String),
}

impl Probe {
    /// Reads `/proc` and asks `ip6tables` (read-only).
    pub fn gather(ip6tables: &Iptables) -> Self {
        let nat = match ip6tables.listing() {
            Ok(_) => Nat::Usable,
            Err(e @ InitError::Failed { hint, .. }) if !hint.is_empty() => Nat::Denied(e.to_string()),
            Err(e) => Nat::Unusable(e.to_string()),
        };
        Self {
            if_inet6: std::fs::read_to_string("/proc/net/if_inet6").ok(),
            disable_ipv6: std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").ok(),
            nat,
        }
    }
}

/// The decision (see the module doc).
pub fn decide(p: &Probe) -> Result<Ipv6, InitError> {
    let Some(if_inet6) = &p.if_inet6 else {
        return Ok(Ipv6::Absent(
            "the kernel has no IPv6: /proc/net/if_inet6 is missing".into(),
        ));
    };
    if p.disable_ipv6.as_deref().map(str::trim) == Some("1") {
        return Ok(Ipv6::Absent(
            "IPv6 is disabled: net.ipv6.conf.all.disable_ipv6 = 1".into(),
        ));
    }
    match &p.nat {
        Nat::Usable => Ok(Ipv6::Intercept),
        Nat::Denied(e) => Err(InitError::Ipv6 { why: e.clone() }),
        Nat::Unusable(why) => {
            let routable = routable_addresses(if_inet6);
            if routable.is_empty() {
                Ok(Ipv6::Absent(format!(
                    "ip6tables cannot use its nat table ({why}), and no interface has an IPv6 address beyond loopback and link-local"
                )))
            } else {
                let list: Vec<String> = routable.iter().map(ToString::to_string).collect();
                Err(InitError::Ipv6 {
                    why: format!(
                        "this pod has IPv6 address {} but ip6tables cannot use its nat table ({why}): its IPv6 traffic would bypass the proxy; install ip6tables with IPv6 nat support, or turn IPv6 off in the pod",
                        list.join(", ")
                    ),
                })
            }
        }
    }
}

/// The decision for `--uninstall`: remove ip6tables rules wherever
/// ip6tables works (IPv6 since disabled included); where it does not,
/// there are none to remove.
pub fn decide_uninstall(p: &Probe) -> Result<Ipv6, InitError> {
    match &p.nat {
        Nat::Usable => Ok(Ipv6::Intercept),
        Nat::Denied(e) => Err(InitError::Ipv6 { why: e.clone() }),
        Nat::Unusable(why) => Ok(Ipv6::Absent(format!(
            "ip6tables cannot use its nat table ({why})"
        ))),
    }
}

/// The addresses in `/proc/net/if_inet6` other than loopback (scope
/// `10`) and link-local (scope `20`).
///
/// Each line: address (32 hex digits), interface index, prefix length,
/// scope, flags, interface name.
fn routable_addresses(if_inet6: &str) -> Vec<Ipv6Addr> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let hex = fields.next()?;
            let scope = fields.nth(2)?;
            if scope == "10" || scope == "20" {
                return None;
            }
            u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK_AND_LINK: &str = "00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000c8a1ffffe2b3c4d 02 40 20 80     eth0\n";
    const ULA: &str = "fd000213000100000000000000000002 02 40 00 80     eth0\n";

    fn probe(if_inet6: Option<&str>, disable: &str, nat: Nat) -> Probe {
        Probe {
            if_inet6: if_inet6.map(str::to_string),
            disable_ipv6: Some(format!("{disable}\n")),
            nat,
        }
    }

    fn unusable() -> Nat {
        Nat::Unusable("`ip6tables -t nat -S` failed (exit status: 3): ip6tables v1.8.9 (legacy): can't initialize ip6tables table `nat': Table does not exist".into())
    }

    #[test]
    fn a_node_with_ipv6_and_ip6tables_is_intercepted() {
        let both = format!("{LOOPBACK_AND_LINK}{ULA}");
        assert_eq!(
            decide(&probe(Some(&both), "0", Nat::Usable)).unwrap(),
            Ipv6::Intercept
        );
        // Even with no address yet: one may come, and the rules cost nothing.
        assert_eq!(
            decide(&probe(Some(LOOPBACK_AND_LINK), "0", Nat::Usable)).unwrap(),
            Ipv6::Intercept
        );
    }

    #[test]
    fn a_kernel_without_ipv6_or_with_it_disabled_is_ipv4_only() {
        let Ipv6::Absent(why) = decide(&probe(None, "0", unusable())).unwrap() else {
            panic!("expected IPv4 only");
        };
        assert!(why.contains("/proc/net/if_inet6 is missing"), "{why}");
        let Ipv6::Absent(why) = decide(&probe(Some(""), "1", Nat::Usable)).unwrap() else {
            panic!("expected IPv4 only");
        };
        assert!(why.contains("disable_ipv6 = 1"), "{why}");
    }

    #[test]
    fn no_ipv6_nat_is_fine_only_without_a_routable_ipv6_address() {
        let Ipv6::Absent(why) = decide(&probe(Some(LOOPBACK_AND_LINK), "0", unusable())).unwrap() else {
            panic!("expected IPv4 only");
        };
        assert!(why.contains("Table does not exist"), "{why}");
        let both = format!("{LOOPBACK_AND_LINK}{ULA}");
        let e = decide(&probe(Some(&both), "0", unusable()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fd00:213:1::2"), "{e}");
        assert!(e.contains("bypass the proxy"), "{e}");
    }

    #[test]
    fn a_permission_error_is_an_error() {
        let denied = Nat::Denied(
            "`ip6tables -t nat -S` failed: Permission denied (changing iptables needs CAP_NET_ADMIN …)"
                .into(),
        );
        let e = decide(&probe(Some(LOOPBACK_AND_LINK), "0", denied))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NET_ADMIN"), "{e}");
    }

    #[test]
    fn uninstall_removes_ip6tables_rules_wherever_ip6tables_works() {
        assert_eq!(
            decide_uninstall(&probe(None, "1", Nat::Usable)).unwrap(),
            Ipv6::Intercept
        );
        let both = format!("{LOOPBACK_AND_LINK}{ULA}");
        assert!(matches!(
            decide_uninstall(&probe(Some(&both), "0", unusable())).unwrap(),
            Ipv6::Absent(_)
        ));
    }

    #[test]
    fn if_inet6_addresses_are_read() {
        let all = format!("{LOOPBACK_AND_LINK}{ULA}garbage\n");
        assert_eq!(
            routable_addresses(&all),
            ["fd00:213:1::2".parse::<Ipv6Addr>().unwrap()]
        );
    }
}
