//! `weft-proxy init`: the iptables and ip6tables rules that send a pod's
//! TCP through its proxy, installed in the current network namespace as a
//! mesh init container does (modelled on Linkerd's proxy-init).
//!
//! Everything lives in the `nat` table, in chains of our own, the same for
//! both families (IPv6: `::1/128` for `127/8`, IPv6 skip networks only):
//!
//! ```text
//! PREROUTING ─► WEFT_INBOUND ── admin port, skip ports ─► RETURN
//!                    └─ other TCP ─► WEFT_INBOUND_REDIRECT ─► REDIRECT :inbound
//! OUTPUT ────► WEFT_OUTPUT ──── proxy uid, -o lo, 127/8, skip ports/CIDRs ─► RETURN
//!                    └─ other TCP ─► WEFT_OUTPUT_REDIRECT ─► REDIRECT :outbound
//! ```
//!
//! The proxy's own connections (its uid) escape, so it never loops into
//! itself. Installing flushes and refills our chains and adds each jump
//! only when `iptables -C` says it is absent, so running twice changes
//! nothing. The rules are a pure function of [`Settings`] and the
//! [`Family`] ([`plan`]), tested without iptables; [`Iptables`] runs them
//! through the `iptables` / `ip6tables` binaries (the nft backend on
//! Debian). Whether IPv6 gets rules is [`ipv6`]'s decision: a node without
//! IPv6 is said so and gets the IPv4 rules only.

pub mod ipv6;

use std::process::{Command, ExitCode};

use clap::Args;
use weft_api::init_args::{is_ipv6_cidr, parse_cidr, parse_port_range};

pub const INBOUND: &str = "WEFT_INBOUND";
pub const INBOUND_REDIRECT: &str = "WEFT_INBOUND_REDIRECT";
pub const OUTPUT: &str = "WEFT_OUTPUT";
pub const OUTPUT_REDIRECT: &str = "WEFT_OUTPUT_REDIRECT";

/// `weft-proxy init` flags.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The uid the proxy runs as: its own connections are not redirected.
    #[arg(long, env = "WEFT_PROXY_UID")]
    pub proxy_uid: u32,
    /// The proxy's inbound listener port.
    #[arg(long, default_value_t = 4143)]
    pub inbound_port: u16,
    /// The proxy's outbound listener port.
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,
    /// The proxy's admin port: reached directly, never redirected.
    #[arg(long, default_value_t = 4191)]
    pub admin_port: u16,
    /// Inbound ports not redirected (`8080`, or a range `9000:9100`).
    #[arg(long, value_delimiter = ',', value_parser = parse_port_range)]
    pub skip_inbound_ports: Vec<String>,
    /// Outbound destination ports not redirected (`443`, or `9000:9100`).
    #[arg(long, value_delimiter = ',', value_parser = parse_port_range)]
    pub skip_outbound_ports: Vec<String>,
    /// Outbound destination networks not redirected (`10.0.0.0/8`,
    /// `fd00::/8`): IPv4 ones in iptables, IPv6 ones in ip6tables.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub skip_outbound_cidrs: Vec<String>,
    /// Print the iptables and ip6tables commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules (and our chains) instead of installing them.
    #[arg(long)]
    pub uninstall: bool,
    /// The iptables binary.
    #[arg(long, default_value = "iptables", env = "WEFT_IPTABLES")]
    pub iptables: String,
    /// The ip6tables binary.
    #[arg(long, default_value = "ip6tables", env = "WEFT_IP6TABLES")]
    pub ip6tables: String,
}

/// The address family a plan is for: iptables or ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The loopback network, never redirected.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Whether a network (as [`parse_cidr`] returns it) is this family's.
    fn holds(self, cidr: &str) -> bool {
        is_ipv6_cidr(cidr) == (self == Family::V6)
    }
}

/// What the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<String>,
    pub skip_outbound_ports: Vec<String>,
    pub skip_outbound_cidrs: Vec<String>,
}

impl From<&InitArgs> for Settings {
    fn from(a: &InitArgs) -> Self {
        Self {
            proxy_uid: a.proxy_uid,
            inbound_port: a.inbound_port,
            outbound_port: a.outbound_port,
            admin_port: a.admin_port,
            skip_inbound_ports: a.skip_inbound_ports.clone(),
            skip_outbound_ports: a.skip_outbound_ports.clone(),
            skip_outbound_cidrs: a.skip_outbound_cidrs.clone(),
        }
    }
}

/// One step of an install, as `iptables -t nat` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the chain, or flush it when it exists (`-N` / `-F`).
    Chain(&'static str),
    /// Append a rule to one of our (just flushed) chains.
    Append(Vec<String>),
    /// Append a jump to a built-in chain unless `-C` finds it there.
    Jump { from: &'static str, to: &'static str },
}

impl Step {
    /// The command a fresh namespace runs for this step (what `--dry-run`
    /// prints).
    pub fn args(&self) -> Vec<String> {
        match self {
            Step::Chain(c) => strings(&["-t", "nat", "-N", c]),
            Step::Append(rule) => {
                let mut v = strings(&["-t", "nat", "-A"]);
                v.extend(rule.iter().cloned());
                v
            }
            Step::Jump { from, to } => strings(&["-t", "nat", "-A", from, "-j", to]),
        }
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_string()).collect()
}

/// The install for one family, in order: our chains first, filled, then
/// the jumps into them (so traffic never meets a half-built chain).
pub fn plan(s: &Settings, family: Family) -> Vec<Step> {
    let rule = |chain: &str, rest: &[&str]| {
        let mut v = vec![chain.to_string()];
        v.extend(rest.iter().map(|r| (*r).to_string()));
        Step::Append(v)
    };
    let mut steps = vec![
        Step::Chain(INBOUND_REDIRECT),
        Step::Chain(INBOUND),
        Step::Chain(OUTPUT_REDIRECT),
        Step::Chain(OUTPUT),
    ];
    let inbound = s.inbound_port.to_string();
    let outbound = s.outbound_port.to_string();
    steps.push(rule(
        INBOUND_REDIRECT,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &inbound],
    ));
    let admin = s.admin_port.to_string();
    steps.push(rule(INBOUND, &["-p", "tcp", "--dport", &admin, "-j", "RETURN"]));
    for port in &s.skip_inbound_ports {
        steps.push(rule(INBOUND, &["-p", "tcp", "--dport", port, "-j", "RETURN"]));
    }
    steps.push(rule(INBOUND, &["-p", "tcp", "-j", INBOUND_REDIRECT]));

    steps.push(rule(
        OUTPUT_REDIRECT,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &outbound],
    ));
    let uid = s.proxy_uid.to_string();
    steps.push(rule(
        OUTPUT,
        &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
    ));
    steps.push(rule(OUTPUT, &["-o", "lo", "-j", "RETURN"]));
    steps.push(rule(OUTPUT, &["-d", family.loopback(), "-j", "RETURN"]));
    for port in &s.skip_outbound_ports {
        steps.push(rule(OUTPUT, &["-p", "tcp", "--dport", port, "-j", "RETURN"]));
    }
    for cidr in s.skip_outbound_cidrs.iter().filter(|c| family.holds(c)) {
        steps.push(rule(OUTPUT, &["-d", cidr, "-j", "RETURN"]));
    }
    steps.push(rule(OUTPUT, &["-p", "tcp", "-j", OUTPUT_REDIRECT]));

    steps.push(Step::Jump {
        from: "PREROUTING",
        to: INBOUND,
    });
    steps.push(Step::Jump {
        from: "OUTPUT",
        to: OUTPUT,
    });
    steps
}

/// The jumps, then our chains: what `--uninstall` removes.
pub fn uninstall_plan() -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
    (
        vec![("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)],
        vec![INBOUND, OUTPUT, INBOUND_REDIRECT, OUTPUT_REDIRECT],
    )
}

/// A failed iptables command: which, and what iptables said.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error("IPv6: {why}")]
    Ipv6 { why: String },
}

/// Runs `iptables -t nat …` (or `ip6tables -t nat …`) commands.
pub struct Iptables {
    pub binary: String,
}

/// The outcome of one command that may legitimately fail (a check).
struct Outcome {
    ok: bool,
    stderr: String,
    status: String,
}

impl Iptables {
    fn command_line(&self, args: &[String]) -> String {
        let mut line = self.binary.clone();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }

    fn try_run(&self, args: &[String]) -> Result<Outcome, InitError> {
        let out = Command::new(&self.binary)
            .args(args)
            .output()
            .map_err(|source| InitError::Spawn {
                command: self.command_line(args),
                source,
            })?;
        Ok(Outcome {
            ok: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            status: out.status.to_string(),
        })
    }

    fn run(&self, args: &[String]) -> Result<(), InitError> {
        let o = self.try_run(args)?;
        if o.ok {
            return Ok(());
        }
        Err(self.failure(args, o))
    }

    fn failure(&self, args: &[String], o: Outcome) -> InitError {
        let denied = ["Permission denied", "Operation not permitted", "you must be root"]
            .iter()
            .any(|p| o.stderr.contains(p));
        InitError::Failed {
            command: self.command_line(args),
            status: o.status,
            stderr: o.stderr,
            hint: if denied {
                " (changing iptables needs CAP_NET_ADMIN: run as root, or give the init container the NET_ADMIN and NET_RAW capabilities)"
            } else {
                ""
            },
        }
    }

    /// Whether `-C` finds the rule; any other failure (e.g. permission)
    /// is an error.
    fn exists(&self, args: &[String]) -> Result<bool, InitError> {
        let o = self.try_run(args)?;
        if o.ok {
            return Ok(true);
        }
        if o.stderr.contains("does a matching rule exist") {
            Ok(false)
        } else {
            Err(self.failure(args, o))
        }
    }

    /// Whether the nat table has `chain`, from the full listing: asked
    /// about one missing chain, iptables-nft 1.8.9 answers "incompatible"
    /// rather than "no such chain".
    fn chain_exists(&self, chain: &str) -> Result<bool, InitError> {
        Ok(has_chain(&self.listing()?, chain))
    }

    /// `-t nat -S`: the nat table's chains and rules.
    fn listing(&self) -> Result<String, InitError> {
        let args = strings(&["-t", "nat", "-S"]);
        let out = Command::new(&self.binary)
            .args(&args)
            .output()
            .map_err(|source| InitError::Spawn {
                command: self.command_line(&args),
                source,
            })?;
        if !out.status.success() {
            let o = Outcome {
                ok: false,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                status: out.status.to_string(),
            };
            return Err(self.failure(&args, o));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs (idempotently) the rules of `steps`.
    pub fn install(&self, steps: &[Step]) -> Result<(), InitError> {
        for step in steps {
            match step {
                Step::Chain(c) => {
                    let flag = if self.chain_exists(c)? { "-F" } else { "-N" };
                    self.run(&strings(&["-t", "nat", flag, c]))?;
                }
                Step::Append(_) => self.run(&step.args())?,
                Step::Jump { from, to } => {
                    let check = strings(&["-t", "nat", "-C", from, "-j", to]);
                    if !self.exists(&check)? {
                        self.run(&step.args())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the jumps and our chains; what is already gone is skipped.
    pub fn uninstall(&self) -> Result<(), InitError> {
        let (jumps, chains) = uninstall_plan();
        for (from, to) in jumps {
            if !self.chain_exists(to)? {
                continue;
            }
            // Every copy (a hand-made duplicate included).
            while self.exists(&strings(&["-t", "nat", "-C", from, "-j", to]))? {
                self.run(&strings(&["-t", "nat", "-D", from, "-j", to]))?;
            }
        }
        for c in &chains {
            if self.chain_exists(c)? {
                self.run(&strings(&["-t", "nat", "-F", c]))?;
            }
        }
        for c in &chains {
            if self.chain_exists(c)? {
                self.run(&strings(&["-t", "nat", "-X", c]))?;
            }
        }
        Ok(())
    }
}

/// Whether `iptables -S` output declares `chain` (`-N chain`).
fn has_chain(listing: &str, chain: &str) -> bool {
    listing
        .lines()
        .any(|l| l.strip_prefix("-N ").is_some_and(|c| c.trim() == chain))
}

/// `weft-proxy init`: install (or with `--uninstall`, remove) the rules,
/// IPv4 and, where the node has IPv6, IPv6; with `--dry-run`, print both
/// families' commands (as a fresh namespace with IPv6 runs them).
pub fn run(args: &InitArgs) -> ExitCode {
    let v4 = Iptables {
        binary: args.iptables.clone(),
    };
    let v6 = Iptables {
        binary: args.ip6tables.clone(),
    };
    let settings = Settings::from(args);
    if args.dry_run {
        for (iptables, family) in [(&v4, Family::V4), (&v6, Family::V6)] {
            if args.uninstall {
                let (jumps, chains) = uninstall_plan();
                for (from, to) in jumps {
                    println!("{} -t nat -D {from} -j {to}", iptables.binary);
                }
                for c in &chains {
                    println!("{} -t nat -F {c}", iptables.binary);
                }
                for c in &chains {
                    println!("{} -t nat -X {c}", iptables.binary);
                }
            } else {
                for step in plan(&settings, family) {
                    println!("{}", iptables.command_line(&step.args()));
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let apply = |iptables: &Iptables, family| {
        if args.uninstall {
            iptables.uninstall()
        } else {
            iptables.install(&plan(&settings, family))
        }
    };
    let probe = ipv6::Probe::gather(&v6);
    let ipv6 = if args.uninstall {
        ipv6::decide_uninstall(&probe)
    } else {
        ipv6::decide(&probe)
    };
    let result = ipv6.and_then(|ipv6| {
        apply(&v4, Family::V4)?;
        match ipv6 {
            ipv6::Ipv6::Intercept => apply(&v6, Family::V6).map(|()| "IPv4 and IPv6"),
            ipv6::Ipv6::Absent(why) => {
                eprintln!("weft-proxy init: no IPv6 on this node ({why}); IPv4 rules only");
                Ok("IPv4 only")
            }
        }
    });
    match result {
        Ok(families) => {
            let done = if args.uninstall {
                "rules removed"
            } else {
                "rules installed"
            };
            eprintln!("weft-proxy init: {done} ({families})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-proxy init: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            skip_inbound_ports: vec!["22".into()],
            skip_outbound_ports: vec!["9000:9100".into()],
            skip_outbound_cidrs: vec!["10.96.0.0/12".into(), "fd00:10:96::/112".into()],
        }
    }

    fn lines(steps: &[Step]) -> Vec<String> {
        steps.iter().map(|s| s.args().join(" ")).collect()
    }

    #[test]
    fn rules_redirect_inbound_and_outbound_with_their_exceptions() {
        assert_eq!(
            lines(&plan(&settings(), Family::V4)),
            [
                "-t nat -N WEFT_INBOUND_REDIRECT",
                "-t nat -N WEFT_INBOUND",
                "-t nat -N WEFT_OUTPUT_REDIRECT",
                "-t nat -N WEFT_OUTPUT",
                "-t nat -A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
                "-t nat -A WEFT_INBOUND -p tcp --dport 4191 -j RETURN",
                "-t nat -A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
                "-t nat -A WEFT_INBOUND -p tcp -j WEFT_INBOUND_REDIRECT",
                "-t nat -A WEFT_OUTPUT_REDIRECT -p tcp -j REDIRECT --to-ports 4140",
                "-t nat -A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-t nat -A WEFT_OUTPUT -o lo -j RETURN",
                "-t nat -A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-t nat -A WEFT_OUTPUT -p tcp --dport 9000:9100 -j RETURN",
                "-t nat -A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "-t nat -A WEFT_OUTPUT -p tcp -j WEFT_OUTPUT_REDIRECT",
                "-t nat -A PREROUTING -j WEFT_INBOUND",
                "-t nat -A OUTPUT -j WEFT_OUTPUT",
            ]
        );
    }

    #[test]
    fn ipv6_mirrors_the_chains_with_its_loopback_and_its_own_networks() {
        let v4 = lines(&plan(&settings(), Family::V4));
        let v6 = lines(&plan(&settings(), Family::V6));
        let mirrored: Vec<String> = v4
            .iter()
            .filter(|l| !l.contains("10.96.0.0/12"))
            .map(|l| l.replace("127.0.0.0/8", "::1/128"))
            .collect();
        let expected: Vec<String> = v6
            .iter()
            .filter(|l| !l.contains("fd00:10:96::/112"))
            .cloned()
            .collect();
        assert_eq!(mirrored, expected);
        assert!(
            v6.contains(&"-t nat -A WEFT_OUTPUT -d fd00:10:96::/112 -j RETURN".to_string()),
            "{v6:#?}"
        );
        assert!(!v4.iter().any(|l| l.contains("fd00:")), "{v4:#?}");
        assert!(
            !v6.iter().any(|l| l.contains("10.96.") || l.contains("127.0.0.0")),
            "{v6:#?}"
        );
    }

    #[test]
    fn jumps_come_after_the_chains_they_enter_are_filled() {
        for family in [Family::V4, Family::V6] {
            let steps = plan(&settings(), family);
            let first_jump = steps.iter().position(|s| matches!(s, Step::Jump { .. })).unwrap();
            assert!(steps[first_jump..].iter().all(|s| matches!(s, Step::Jump { .. })));
        }
    }

    #[test]
    fn flags_are_validated() {
        assert_eq!(parse_port_range("8080").unwrap(), "8080");
        assert_eq!(parse_port_range("9000:9100").unwrap(), "9000:9100");
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("9100:9000").is_err());
        assert!(parse_port_range("http").is_err());
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap(), "10.1.2.3/32");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert_eq!(parse_cidr("fd00::/8").unwrap(), "fd00::/8");
        assert!(parse_cidr("example.com/8").is_err());
    }

    #[test]
    fn a_missing_binary_is_named() {
        let ipt = Iptables {
            binary: "/nonexistent/iptables".into(),
        };
        let e = ipt
            .install(&plan(&settings(), Family::V4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot run `/nonexistent/iptables -t nat -S`"), "{e}");
    }

    #[test]
    fn chains_are_found_in_the_listing() {
        let listing = "-P OUTPUT ACCEPT\n-N WEFT_OUTPUT\n-N WEFT_OUTPUT_REDIRECT\n-A OUTPUT -j WEFT_OUTPUT\n";
        assert!(has_chain(listing, OUTPUT));
        assert!(has_chain(listing, OUTPUT_REDIRECT));
        assert!(!has_chain(listing, INBOUND));
    }

    #[test]
    fn permission_errors_hint_at_net_admin() {
        let ipt = Iptables {
            binary: "iptables".into(),
        };
        let e = ipt.failure(
            &strings(&["-t", "nat", "-N", INBOUND]),
            Outcome {
                ok: false,
                stderr: "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)".into(),
                status: "exit status: 4".into(),
            },
        );
        let e = e.to_string();
        assert!(e.contains("`iptables -t nat -N WEFT_INBOUND` failed"), "{e}");
        assert!(e.contains("NET_ADMIN"), "{e}");
    }

    mod props {
        use clap::Parser;
        use proptest::prelude::*;

        use super::*;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            init: InitArgs,
        }

        fn argv() -> impl Strategy<Value = Vec<String>> {
            let flag = prop_oneof![
                Just("--proxy-uid"),
                Just("--inbound-port"),
                Just("--skip-inbound-ports"),
                Just("--skip-outbound-ports"),
                Just("--skip-outbound-cidrs"),
                Just("--dry-run"),
                Just("--bogus"),
            ];
            let value = prop_oneof![
                "[0-9]{1,6}",
                "[0-9]{1,5}[:-][0-9]{1,5}(,[0-9]{1,5})?",
                "10\\.[0-9]{1,3}\\.0\\.0/[0-9]{1,2}",
                "fd00::/[0-9]{1,3}(,::1)?",
                "[ -~]{0,10}",
            ];
            prop::collection::vec((flag, value), 0..6).prop_map(|pairs| {
                let mut v = vec!["init".to_string()];
                for (f, val) in pairs {
                    v.push(f.to_string());
                    v.push(val);
                }
                v
            })
        }

        proptest! {
            #[test]
            fn accepted_flags_hold_only_canonical_values(argv in argv()) {
                let Ok(cli) = Cli::try_parse_from(&argv) else { return Ok(()) };
                let s = Settings::from(&cli.init);
                for p in s.skip_inbound_ports.iter().chain(&s.skip_outbound_ports) {
                    prop_assert_eq!(parse_port_range(p), Ok(p.clone()), "{:?}", argv);
                }
                for c in &s.skip_outbound_cidrs {
                    prop_assert_eq!(parse_cidr(c), Ok(c.clone()), "{:?}", argv);
                }
                for family in [Family::V4, Family::V6] {
                    let rules = plan(&s, family).iter().map(|step| step.args().join(" ")).collect::<Vec<_>>().join("\n");
                    for c in &s.skip_outbound_cidrs {
                        prop_assert_eq!(rules.contains(&format!("-d {c} ")), family.holds(c), "{}", rules);
                    }
                }
            }
        }
    }
}
