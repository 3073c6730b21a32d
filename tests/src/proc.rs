//! Owning real processes: building the binaries once, starting
//! `weft-proxy` with a config on ephemeral ports, reading its logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use weft_control::testing::TempDir;

/// Path of a workspace binary, built (once per test process) with the same
/// profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test-exe> → target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--quiet", "--manifest-path"])
            .arg(&manifest);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the workspace binaries failed");
        dir
    });
    dir.join(name)
}

/// A child process, killed on drop, whose stderr lines are kept.
pub struct Proc {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info,weft_proxy=debug,weft_control=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start process");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout is piped");
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            logs,
            stdout,
            lines,
        }
    }

    /// Waits for a log line containing every one of `parts`.
    pub fn wait_line(&mut self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return line,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no log line with {parts:?} within {timeout:?}; logs:\n{}",
                        self.logs()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Lines written to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends a signal by name (`TERM`, `KILL`, …) through `kill`, to stay
    /// free of unsafe code.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `key=<socket address>` out of a log line.
pub fn addr_field(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("socket address")
}

/// The three listeners of a running proxy.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

/// A running `weft-proxy`, killed on drop.
pub struct ProxyProc {
    pub proc: Proc,
    pub addrs: Addrs,
    pub dir: TempDir,
}

impl ProxyProc {
    /// Starts a proxy with `yaml` plus listeners on 127.0.0.1:0.
    pub fn start(yaml: &str) -> Self {
        Self::start_in(TempDir::new(), yaml)
    }

    /// As [`start`](Self::start), with a static endpoints file.
    pub fn start_with_endpoints(yaml: &str, endpoints: &str) -> Self {
        let dir = TempDir::new();
        let file = dir.write("endpoints.yaml", endpoints);
        Self::start_in(dir, &format!("endpointsFile: {}\n{yaml}", file.display()))
    }

    fn start_in(dir: TempDir, yaml: &str) -> Self {
        let config = format!(
            "outboundListen: 127.0.0.1:0\ninboundListen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\n{yaml}"
        );
        let path = dir.write("proxy.yaml", &config);
        let mut cmd = Command::new(bin("weft-proxy"));
        cmd.arg("--config").arg(&path).env_remove("WEFT_CONFIG");
        let mut proc = Proc::spawn(cmd);
        let line = proc.wait_line(&["listening", "outbound="], Duration::from_secs(30));
        let addrs = Addrs {
            outbound: addr_field(&line, "outbound"),
            inbound: addr_field(&line, "inbound"),
            admin: addr_field(&line, "admin"),
        };
        Self { proc, addrs, dir }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits (up to 15 s) until `/ready` answers 200: started, and holding
    /// a fresh certificate when it has an identity. Before that its inbound
    /// listener refuses mesh TLS.
    pub async fn ready(&self) {
        crate::eventually(Duration::from_secs(15), "the proxy is ready", || async {
            (crate::apps::admin_get(self.addrs.admin, "/ready").await.0 == http::StatusCode::OK).then_some(())
        })
        .await;
    }

    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    pub fn sigterm(&self) {
        self.proc.signal("TERM");
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.proc.wait_exit(timeout)
    }
}

/// A running `weft-control` over a config directory, killed on drop.
///
/// It writes its trust anchors into its own temp dir, and, unless the
/// test passes `--tokens`, checks tokens against a file this handle keeps:
/// [`ControlProc::proxy_config`] adds a token for each workload it
/// configures (the control plane re-reads the file when it changes).
pub struct ControlProc {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Trust anchors, tokens file, token files, and the CA unless the test
    /// brought one: kept across [`restart`](Self::restart)s, as a real
    /// control plane keeps its CA.
    pub secrets: Arc<TempDir>,
    /// (namespace, service account) with a token in the managed file;
    /// `None` when the test brought its own `--tokens`.
    tokens: Option<Mutex<Vec<(String, String)>>>,
    config: PathBuf,
    env: Vec<(String, PathBuf)>,
}

/// A CA certificate and PKCS#8 key, as an operator brings them.
fn write_ca(cert: &Path, key: &Path) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = params.self_signed(&pair).expect("self-signed CA");
    std::fs::write(key, pair.serialize_pem()).expect("write CA key");
    std::fs::write(cert, ca.pem()).expect("write CA certificate");
}

impl ControlProc {
    /// Starts on `grpc` (use `127.0.0.1:0` for any port).
    pub fn start(config: &Path, grpc: SocketAddr) -> Self {
        Self::start_with(config, grpc, &[])
    }

    /// As [`start`](Self::start), with extra flags.
    pub fn start_with(config: &Path, grpc: SocketAddr, extra: &[&str]) -> Self {
        Self::start_with_env(config, grpc, extra, &[])
    }

    /// As [`start_with`](Self::start_with), with environment variables
    /// (e.g. `KUBECONFIG` for `--token-review`). The ones that would point
    /// it at a real cluster are removed.
    pub fn start_with_env(config: &Path, grpc: SocketAddr, extra: &[&str], env: &[(&str, &Path)]) -> Self {
        let secrets = Arc::new(TempDir::new());
        let managed = !extra.iter().any(|a| *a == "--tokens" || *a == "--token-review");
        if managed {
            secrets.write("tokens.yaml", "[]\n");
        }
        let env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        let (proc, grpc, admin) = Self::spawn(&secrets, managed, config, grpc, extra, &env);
        Self {
            proc,
            grpc,
            admin,
            secrets,
            tokens: managed.then(|| Mutex::new(Vec::new())),
            config: config.to_path_buf(),
            env,
        }
    }

    fn spawn(
        secrets: &TempDir,
        managed: bool,
        config: &Path,
        grpc: SocketAddr,
        extra: &[&str],
        env: &[(String, PathBuf)],
    ) -> (Proc, SocketAddr, SocketAddr) {
        let mut cmd = Command::new(bin("weft-control"));
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd.args(extra);
        if managed {
            cmd.arg("--tokens").arg(secrets.path().join("tokens.yaml"));
        }
        if !extra.contains(&"--ca-cert") {
            let (cert, key) = (secrets.path().join("ca.pem"), secrets.path().join("ca.key"));
            if !cert.exists() {
                write_ca(&cert, &key);
            }
            cmd.arg("--ca-cert").arg(cert).arg("--ca-key").arg(key);
        }
        cmd.arg("--trust-anchors-out")
            .arg(secrets.path().join("trust-anchors.pem"))
            .arg("--config")
            .arg(config)
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--poll-interval",
                "50ms",
                "--debounce",
                "50ms",
            ]);
        let mut proc = Proc::spawn(cmd);
        let line = proc.wait_line(&["listening", "grpc="], Duration::from_secs(30));
        (proc, addr_field(&line, "grpc"), addr_field(&line, "admin"))
    }

    /// Kills the process and waits for it to end.
    pub fn kill(&mut self) {
        if self.proc.running() {
            self.proc.signal("KILL");
            self.proc.wait_exit(Duration::from_secs(5));
        }
    }

    /// Kills it and starts another on the same gRPC address with the same
    /// secrets (CA, tokens, trust-anchors file) and `extra` flags.
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill();
        let (proc, grpc, admin) = Self::spawn(
            &self.secrets,
            self.tokens.is_some(),
            &self.config,
            self.grpc,
            extra,
            &self.env,
        );
        (self.proc, self.grpc, self.admin) = (proc, grpc, admin);
    }

    /// The PEM bundle proxies verify this control plane against.
    pub fn trust_anchors(&self) -> PathBuf {
        self.secrets.path().join("trust-anchors.pem")
    }

    /// Proxy config lines to reach this control plane: `controlPlane` and
    /// `trustAnchors` (the test adds `identityTokenFile`).
    pub fn client_config(&self) -> String {
        format!(
            "controlPlane: {}\ntrustAnchors: {}\n",
            self.url(),
            self.trust_anchors().display()
        )
    }

    /// Proxy config lines for a workload running as `namespace`/`sa`:
    /// [`client_config`](Self::client_config), `namespace`,
    /// `serviceAccount` and a token file whose token this control plane
    /// accepts (added to its tokens file).
    pub fn proxy_config(&self, namespace: &str, sa: &str) -> String {
        let token = format!("{namespace}.{sa}.token-0123456789");
        let file = self.secrets.write(&format!("{namespace}.{sa}.token"), &token);
        let tokens = self
            .tokens
            .as_ref()
            .expect("proxy_config needs the tokens file this handle manages (no --tokens)");
        let mut known = tokens.lock().expect("tokens lock");
        if !known.iter().any(|(n, s)| n == namespace && s == sa) {
            known.push((namespace.to_string(), sa.to_string()));
            let list: String = known
                .iter()
                .map(|(n, s)| {
                    format!(
                        "- {{namespace: {n}, serviceAccount: {s}, token: \"{n}.{s}.token-0123456789\"}}\n"
                    )
                })
                .collect();
            // Replaced in one step: the control plane never reads half a file.
            let tmp = self.secrets.write("tokens.yaml.tmp", &list);
            std::fs::rename(tmp, self.secrets.path().join("tokens.yaml")).expect("replace tokens file");
        }
        format!(
            "{}namespace: {namespace}\nserviceAccount: {sa}\nidentityTokenFile: {}\n",
            self.client_config(),
            file.display()
        )
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }
}
