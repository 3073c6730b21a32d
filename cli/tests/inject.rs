//! `weft inject` golden files: every `tests/inject/*.yaml` is injected and
//! compared with `tests/inject/golden/<same name>`. `WEFT_BLESS=1`
//! rewrites the golden files; review the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use weft::inject::inject_yaml;
use weft_control::inject::InjectConfig;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn cfg() -> InjectConfig {
    InjectConfig {
        proxy_image: "registry.example.com/weft/weft:0.1.0".into(),
        ..InjectConfig::default()
    }
}

fn inputs() -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn every_workload_kind_matches_its_golden_file() {
    let inputs = inputs();
    assert!(inputs.len() >= 10, "{inputs:?}");
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    let mut stale = Vec::new();
    for input in inputs {
        let name = input.file_name().unwrap();
        let golden = dir().join("golden").join(name);
        let (out, _) = inject_yaml(&std::fs::read_to_string(&input).unwrap(), &cfg())
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        if bless {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &out).unwrap();
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == out => {}
            Ok(_) => stale.push(format!("{} differs", golden.display())),
            Err(e) => stale.push(format!("{}: {e}", golden.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:#?}\n(WEFT_BLESS=1 rewrites the golden files)"
    );
}

#[test]
fn injecting_the_output_again_changes_nothing() {
    for input in inputs() {
        let (once, _) = inject_yaml(&std::fs::read_to_string(&input).unwrap(), &cfg()).unwrap();
        let (twice, report) = inject_yaml(&once, &cfg()).unwrap();
        assert_eq!(once, twice, "{}", input.display());
        let injected = |l: &String| l.split_once(' ').is_some_and(|(_, what)| what == "injected");
        assert!(!report.iter().any(injected), "{report:?}");
    }
}

#[test]
fn workloads_are_injected_and_other_kinds_pass_through() {
    let text = std::fs::read_to_string(dir().join("mixed.yaml")).unwrap();
    let (out, report) = inject_yaml(&text, &cfg()).unwrap();
    let (before, after) = (docs(&text), docs(&out));
    assert_eq!(before.len(), 4);
    assert_eq!(after.len(), 4);
    assert_eq!(before[..3], after[..3], "Namespace, Service, ConfigMap unchanged");
    assert_eq!(
        after[2]["data"]["enabled"], "true",
        "strings that look like booleans stay strings"
    );
    assert_eq!(after[2]["data"]["port"], "8080");
    let template = &after[3]["spec"]["template"];
    assert_eq!(template["spec"]["initContainers"][1]["name"], "weft-proxy");
    assert_eq!(report, ["replicaset/web-canary injected"]);
}

#[test]
fn host_network_kube_system_and_disabled_are_skipped() {
    let text = std::fs::read_to_string(dir().join("skipped.yaml")).unwrap();
    let (out, report) = inject_yaml(&text, &cfg()).unwrap();
    assert_eq!(docs(&text), docs(&out));
    assert_eq!(
        report,
        [
            "daemonset/node-agent skipped: uses the host network",
            "deployment/coredns skipped: in kube-system",
            "pod/debug skipped: annotated weft.dev/inject: disabled",
        ]
    );
}

#[test]
fn annotations_override_the_defaults() {
    let text = std::fs::read_to_string(dir().join("overrides.yaml")).unwrap();
    let (out, _) = inject_yaml(&text, &cfg()).unwrap();
    let pod = &docs(&out)[0]["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0]["args"];
    let args: Vec<&str> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.ends_with(&[
            "--skip-inbound-ports",
            "22",
            "--skip-outbound-ports",
            "443,6000:6010",
            "--skip-outbound-cidrs",
            "10.96.0.1/32"
        ]),
        "{args:?}"
    );
    let proxy = &pod["initContainers"][1];
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env("WEFT_APP_PORTS").unwrap(), "8080", "not 8080,8081");
    assert_eq!(env("WEFT_OPAQUE_PORTS").unwrap(), "9000,9001");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "250m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(proxy["resources"]["limits"]["cpu"], "1");
}

#[test]
fn a_bad_annotation_fails_naming_the_document_and_annotation() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    weft.dev/skip-outbound-ports: \"https\"\nspec:\n  containers: [{name: c, image: c}]\n";
    let e = inject_yaml(text, &cfg()).unwrap_err();
    assert!(
        e.starts_with("document 2 (pod/p): annotation `weft.dev/skip-outbound-ports`: expected a port"),
        "{e}"
    );
    assert!(inject_yaml("a: [", &cfg()).unwrap_err().starts_with("not YAML"));
}

#[test]
fn the_command_reads_a_file_or_stdin() {
    let input = dir().join("deployment.yaml");
    let expected = inject_yaml(
        &std::fs::read_to_string(&input).unwrap(),
        &InjectConfig::default(),
    )
    .unwrap()
    .0;
    let weft = env!("CARGO_BIN_EXE_weft");
    let out = Command::new(weft)
        .args(["inject", "-f"])
        .arg(&input)
        .env_remove("WEFT_INJECT_PROXY_IMAGE")
        .env_remove("WEFT_INJECT_CONTROL_PLANE")
        .env_remove("WEFT_INJECT_CONTROL_PLANE_IDENTITY")
        .env_remove("WEFT_INJECT_TRUST_ANCHORS_CONFIGMAP")
        .env_remove("WEFT_TRUST_DOMAIN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "deployment/web injected\n"
    );

    let mut child = Command::new(weft)
        .args(["inject", "-f", "-", "--proxy-image", "example/weft:test"])
        .args(["--control-plane", "https://weft-control.mesh:8086"])
        .args(["--control-plane-identity", "spiffe://example.org/ns/mesh/sa/cp"])
        .args(["--trust-anchors-configmap", "mesh-roots"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        std::fs::read(&input).unwrap().as_slice(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let doc = &docs(&String::from_utf8(out.stdout).unwrap())[0];
    let proxy = &doc["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(proxy["image"], "example/weft:test");
    let env = |name: &str| -> Value {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {proxy}"))["value"]
            .clone()
    };
    assert_eq!(env("WEFT_CONTROL_PLANE"), "https://weft-control.mesh:8086");
    assert_eq!(
        env("WEFT_CONTROL_PLANE_IDENTITY"),
        "spiffe://example.org/ns/mesh/sa/cp"
    );
    assert_eq!(env("WEFT_TRUST_ANCHORS"), "/var/run/weft/trust-anchors/ca.crt");
    let volumes = doc["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "weft-trust-anchors" && v["configMap"]["name"] == "mesh-roots"),
        "{volumes:?}"
    );

    // The expected identity follows the trust domain unless given.
    let out = Command::new(weft)
        .args(["inject", "-f"])
        .arg(&input)
        .args(["--trust-domain", "example.org"])
        .env_remove("WEFT_INJECT_CONTROL_PLANE_IDENTITY")
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc = &docs(&String::from_utf8(out.stdout).unwrap())[0];
    let proxy = &doc["spec"]["template"]["spec"]["initContainers"][1];
    let identity = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WEFT_CONTROL_PLANE_IDENTITY")
        .unwrap();
    assert_eq!(
        identity["value"],
        "spiffe://example.org/ns/weft-system/sa/weft-control"
    );

    let out = Command::new(weft)
        .args(["inject", "-f", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}
