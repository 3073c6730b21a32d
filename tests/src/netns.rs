//! A small "node" of network namespaces, to test the mesh the way it runs
//! in a cluster: each pod is a network namespace with its own IP, joined by
//! a veth pair to a bridge that lives in a namespace of its own (the node),
//! so nothing here touches the host's network.
//!
//! ```text
//!             node namespace <id>n: bridge br0 (no IP)
//!          ┌───────────┬───────────┬──────────┐
//!   pod <id>-a      pod <id>-b   pod <id>-c  …   eth0 10.213.<x>.2, .3, …/24
//!                                                     fd00:213:<x>::2, ::3, …/64, lo up
//! ```
//!
//! Every pod is dual-stack: an IPv4 address and an IPv6 ULA one (added
//! `nodad`, so it is usable at once rather than after duplicate address
//! detection).
//!
//! Names start with `wft` and a random suffix, so parallel tests (and a
//! crashed earlier run) never collide. [`Node`] owns everything it creates:
//! on drop (a failing test included) it kills every process left in its
//! namespaces, by PID (`ip netns pids`), and deletes the namespaces, which
//! takes their links with them. Processes started through [`Node::spawn`]
//! are also [`Proc`]s, killed when their handle drops.
//!
//! Needs root, `ip` (iproute2), `iptables`, `ip6tables` and `setpriv`
//! (util-linux):
//! [`Node::available`] says whether the tests can run here.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proc::{bin, Proc};

/// The uid proxies run as in the test bed: `weft-proxy init` exempts it.
pub const PROXY_UID: u32 = 2102;

/// A bridge in its own namespace, and the pods attached to it.
pub struct Node {
    id: String,
    /// The third octet of the pods' 10.213.<x>.0/24 (and the third group
    /// of their fd00:213:<x>::/64).
    subnet: u8,
    node_ns: String,
    namespaces: Mutex<Vec<String>>,
    next_host: Mutex<u8>,
}

/// One pod: a network namespace with an address on the node's bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

fn command_exists(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Six hex digits, different per call and per process.
fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

impl Node {
    /// Whether this machine can build nodes: root, and `ip`, `iptables`,
    /// `ip6tables`, `setpriv` and every command in `extra` installed. When it cannot,
    /// prints why and returns false, or under `CI=true` panics, so CI never
    /// skips silently.
    pub fn available(extra: &[&str]) -> bool {
        let mut missing: Vec<String> = Vec::new();
        if !is_root() {
            missing.push("root (network namespaces and iptables)".into());
        }
        for c in ["ip", "iptables", "ip6tables", "setpriv"].iter().chain(extra) {
            if !command_exists(c) {
                missing.push(format!("`{c}`"));
            }
        }
        if missing.is_empty() {
            return true;
        }
        let why = format!(
            "needs {}; .ci/run installs iptables, iproute2, tcpdump, mosquitto and runs as root",
            missing.join(", ")
        );
        if crate::in_ci() {
            panic!("CI=true but the network-namespace test bed cannot run: {why}");
        }
        eprintln!("SKIPPED: {why}");
        false
    }

    /// Creates the node namespace and its bridge.
    pub fn new() -> Self {
        let id = format!("wft{}", suffix());
        let subnet = u8::from_str_radix(&id[id.len() - 2..], 16).unwrap_or(0);
        let node = Self {
            node_ns: format!("{id}n"),
            id,
            subnet,
            namespaces: Mutex::new(Vec::new()),
            next_host: Mutex::new(2),
        };
        node.add_ns(&node.node_ns.clone());
        let ns = node.node_ns.as_str();
        for cmd in [
            &["ip", "-n", ns, "link", "add", "br0", "type", "bridge"][..],
            &["ip", "-n", ns, "link", "set", "br0", "up"],
            &["ip", "-n", ns, "link", "set", "lo", "up"],
        ] {
            run(cmd).unwrap_or_else(|e| panic!("building the node: {e}"));
        }
        node
    }

    fn add_ns(&self, name: &str) {
        run(&["ip", "netns", "add", name]).unwrap_or_else(|e| panic!("{e}"));
        self.namespaces.lock().unwrap().push(name.to_string());
    }

    /// The namespace holding the bridge and its ports (capture there with
    /// `-i any`: frames forwarded between ports never show on `br0`).
    pub fn node_ns(&self) -> &str {
        &self.node_ns
    }

    /// A new pod: its namespace, a veth pair to the bridge (`eth0` inside),
    /// the next address of the node's /24 and of its /64, loopback up.
    pub fn pod(&self, name: &str) -> Pod {
        let host = {
            let mut next = self.next_host.lock().unwrap();
            let h = *next;
            *next += 1;
            h
        };
        let ns = format!("{}-{name}", self.id);
        self.add_ns(&ns);
        let ip = Ipv4Addr::new(10, 213, self.subnet, host);
        let veth = format!("veth{host}");
        let cidr = format!("{ip}/24");
        let ip6 = Ipv6Addr::new(0xfd00, 0x213, u16::from(self.subnet), 0, 0, 0, 0, u16::from(host));
        let cidr6 = format!("{ip6}/64");
        let node = self.node_ns.as_str();
        for cmd in [
            &[
                "ip", "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ][..],
            &["ip", "-n", node, "link", "set", &veth, "master", "br0", "up"],
            &["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
            &[
                "ip", "-n", &ns, "-6", "addr", "add", &cidr6, "dev", "eth0", "nodad",
            ],
            &["ip", "-n", &ns, "link", "set", "eth0", "up"],
            &["ip", "-n", &ns, "link", "set", "lo", "up"],
        ] {
            run(cmd).unwrap_or_else(|e| panic!("building pod {name}: {e}"));
        }
        Pod { ns, ip, ip6 }
    }

    /// The node's own namespace as a [`Pod`], to run a capture there.
    pub fn node_pod(&self) -> Pod {
        Pod {
            ns: self.node_ns.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            ip6: Ipv6Addr::UNSPECIFIED,
        }
    }

    /// Runs `program args` inside `pod` (as `uid` when given, with no
    /// supplementary groups) and waits for it to finish.
    pub fn exec(&self, pod: &Pod, uid: Option<u32>, program: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = in_pod(pod, uid, program);
        cmd.args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("run {} in {}: {e}", program.display(), pod.ns))
    }

    /// Starts `program args` inside `pod`, owned by the returned handle.
    pub fn spawn(&self, pod: &Pod, uid: Option<u32>, program: &Path, args: &[&str]) -> Proc {
        let mut cmd = in_pod(pod, uid, program);
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// `weft-proxy init` in `pod`, with the test bed's proxy uid; returns
    /// what it reported (stderr).
    pub fn init(&self, pod: &Pod, extra: &[&str]) -> String {
        let uid = PROXY_UID.to_string();
        let mut args = vec!["init", "--proxy-uid", &uid];
        args.extend_from_slice(extra);
        let out = self.exec(pod, None, &bin("weft-proxy"), &args);
        assert!(
            out.status.success(),
            "weft-proxy init in {}: {}",
            pod.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `weft-netapp` in `pod` (as root, so its traffic is intercepted);
    /// returns whether it succeeded and what it printed.
    pub fn netapp(&self, pod: &Pod, args: &[&str]) -> (bool, String) {
        let out = self.exec(pod, None, &bin("weft-netapp"), args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Polls `f` every 100 ms until it returns `Some`, or panics.
    pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `ip netns exec <ns> [setpriv --reuid/--regid <uid> --clear-groups] program`.
fn in_pod(pod: &Pod, uid: Option<u32>, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.ns]);
    if let Some(uid) = uid {
        cmd.arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups");
    }
    cmd.arg(program);
    cmd
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        // Everything still running in our namespaces was started by us.
        for ns in &namespaces {
            if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        for ns in namespaces.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = run(&["ip", "netns", "del", ns]) {
                if Instant::now() > deadline {
                    eprintln!("could not delete network namespace {ns}: {e}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
