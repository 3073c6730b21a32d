//! The `weft` command line: `weft demo` runs a whole mesh and reacts to
//! edits of its YAML; `weft check` validates documents.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::{bin, TempDir};

fn copy_demo_config(to: &TempDir) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo");
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.path().join(path.file_name().unwrap())).unwrap();
    }
}

/// `SERVICE RPS SUCCESS P50 P99 [REQUESTS]` rows of one table.
fn row<'a>(table: &'a [String], service: &str) -> Option<Vec<&'a str>> {
    table
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&service))
}

fn percent(cell: &str) -> f64 {
    cell.trim_end_matches('%').parse().unwrap()
}

#[test]
fn demo_runs_the_mesh_and_follows_yaml_edits() {
    let dir = TempDir::new();
    copy_demo_config(&dir);
    let mut child = Command::new(bin("weft"))
        .args(["demo", "--duration", "10s", "--rate", "40", "--config"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut edited_at = None;
    let mut tables: Vec<(Duration, Vec<String>)> = Vec::new();
    let mut summary = Vec::new();
    let mut in_summary = false;
    let mut gateway_url = None;
    let mut via_gateway = None;
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("gateway demo/web: ") {
            gateway_url = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        if line.starts_with("summary over") {
            in_summary = true;
            continue;
        }
        if in_summary {
            summary.push(line);
            continue;
        }
        if line.starts_with("weft demo ·") {
            tables.push((started.elapsed(), Vec::new()));
            // The printed gateway URL answers, through the mesh.
            if tables.len() == 2 {
                via_gateway = gateway_url.as_deref().map(http_get_status);
            }
            // Shift the whole split to v2 once traffic flows.
            if edited_at.is_none() && tables.len() == 4 {
                let routes = dir.path().join("routes.yaml");
                let text = std::fs::read_to_string(&routes).unwrap();
                std::fs::write(
                    &routes,
                    text.replace("weight: 80", "weight: 0")
                        .replace("weight: 20", "weight: 100"),
                )
                .unwrap();
                edited_at = Some(started.elapsed());
            }
        } else if let Some((_, t)) = tables.last_mut() {
            t.push(line);
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        via_gateway,
        Some(200),
        "weft demo printed a gateway URL ({gateway_url:?}) that answers 200"
    );
    assert!(status.success(), "weft demo failed: {status}");

    for service in ["frontend", "backend-v1", "backend-v2", "store"] {
        let cols =
            row(&summary, service).unwrap_or_else(|| panic!("{service} missing from summary: {summary:?}"));
        assert!(
            percent(cols[2]) > 0.0,
            "{service} has successful traffic: {cols:?}"
        );
        assert!(
            cols[7].parse::<u64>().unwrap() > 0,
            "{service} has requests: {cols:?}"
        );
    }
    let frontend = row(&summary, "frontend").unwrap();
    assert!(percent(frontend[2]) > 80.0, "mostly successful: {frontend:?}");

    // Within ~1 s of the edit (plus one table window), v1 gets nothing.
    let edited_at = edited_at.expect("the demo printed enough tables to edit");
    let after: Vec<_> = tables
        .iter()
        .filter(|(t, _)| *t > edited_at + Duration::from_secs(2))
        .collect();
    assert!(!after.is_empty(), "tables after the edit");
    for (t, table) in after {
        if let Some(cols) = row(table, "backend-v1") {
            assert_eq!(
                cols[1], "0.0",
                "backend-v1 still gets traffic {t:?} after the edit at {edited_at:?}: {table:?}"
            );
        }
        let v2 = row(table, "backend-v2").expect("backend-v2 row");
        assert!(
            v2[1].parse::<f64>().unwrap() > 10.0,
            "backend-v2 takes the traffic: {table:?}"
        );
    }
}

/// `weft check PATH`: whether it passed, and what it printed.
fn weft_check(path: impl AsRef<std::ffi::OsStr>) -> (bool, String) {
    let out = Command::new(bin("weft")).arg("check").arg(path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `weft check` says what route status would: a backend that is not a
/// Service the files define, or one in another namespace without a
/// ReferenceGrant (valid config: warnings, and the check passes).
#[test]
fn check_warns_of_routes_whose_backends_do_not_resolve() {
    let dir = TempDir::new();
    dir.write(
        "routes.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: web, namespace: shop}\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: ledger, namespace: finance}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: web}]\n  rules:\n  - backendRefs: [{name: nope}]\n  - backendRefs: [{name: ledger, namespace: finance}]\n",
    );
    let (out, text) = weft_check(dir.path());
    assert!(out, "{text}");
    assert!(
        text.contains("! HTTPRoute shop/r: parentRefs[0]: ResolvedRefs False (BackendNotFound): backend shop/nope: no such Service"),
        "{text}"
    );
    assert!(text.contains("1 route warnings"), "{text}");
    dir.write(
        "routes.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: web, namespace: shop}\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: ledger, namespace: finance}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: web}]\n  rules:\n  - backendRefs: [{name: ledger, namespace: finance}]\n",
    );
    let (_, text) = weft_check(dir.path());
    assert!(text.contains("ResolvedRefs False (RefNotPermitted)"), "{text}");
}

#[test]
fn check_reports_each_document_and_fails_on_errors() {
    let (good, out) = weft_check(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config"));
    assert!(good, "{out}");
    assert!(
        out.contains("✔") && out.contains("MeshService demo/frontend") && out.contains("0 invalid"),
        "{out}"
    );

    let dir = TempDir::new();
    dir.write(
        "bad.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: ok, namespace: demo}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: tp, namespace: demo}\nspec:\n  targetRef: {name: ok}\n  retries: {attempts: 3, retryOn: [5xx, sometimes]}\n",
    );
    let (bad, out) = weft_check(dir.path());
    assert!(!bad, "{out}");
    assert!(out.contains("✔") && out.contains("MeshService demo/ok"), "{out}");
    assert!(
        out.contains("✘")
            && out.contains("bad.yaml: document 1 (TrafficPolicy demo/tp): field `spec.retries.retryOn[1]`"),
        "{out}"
    );

    // The field's old name, as in files written before the rename: kubectl
    // (YAML 1.1) would send it as `true`, so it is refused naming `retryOn`.
    let dir = TempDir::new();
    dir.write(
        "old.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: tp, namespace: demo}\nspec:\n  targetRef: {name: ok}\n  retries:\n    attempts: 2\n    on: [5xx]\n",
    );
    let (old, out) = weft_check(dir.path());
    assert!(!old, "{out}");
    assert!(
        out.contains(
            "old.yaml: document 0 (TrafficPolicy demo/tp): field `spec.retries.on`: expected `retryOn`"
        ) && out.contains("YAML 1.1"),
        "{out}"
    );
}

/// The status of `GET url` (`http://host:port/`), over a plain socket.
fn http_get_status(url: &str) -> u16 {
    use std::io::{Read, Write};
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
