//! Child processes the demo starts: each owned by a handle that stops it on
//! drop, with its stderr kept and searchable.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> std::io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                let mut logs = sink.lock().expect("log lock");
                if logs.len() > 200 {
                    logs.remove(0);
                }
                logs.push(line);
            }
        });
        Ok(Self {
            name: name.into(),
            child,
            lines,
            logs,
        })
    }

    /// Waits for a stderr line containing every one of `parts`.
    pub fn wait_line(&mut self, parts: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "{} did not start within {timeout:?}; its last output:\n{}",
                        self.name,
                        self.logs.lock().expect("log lock").join("\n")
                    ))
                }
            }
        }
    }

    /// Whether it exited already (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop (SIGTERM via `kill`), waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Reads `key=<socket address>` out of a log line.
pub fn addr_field(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}
