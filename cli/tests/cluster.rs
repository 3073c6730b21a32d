//! `weft check --cluster`, `weft check --pre`, `weft diagnostics` and
//! `weft version`, run as the real binary against the in-test Kubernetes
//! API server (no real one can run here; it speaks the list/get/proxy
//! protocol kube-rs uses with realistic JSON), a real control plane (`weft
//! control`) behind its Service's proxy subresource and a real proxy
//! behind a pod's. A healthy install passes; a missing CRD, a caBundle of
//! the wrong CA, an expiring trust anchor and missing permissions are each
//! named.

#[path = "../../control-plane/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Child, FakeApi, CONFIGMAPS, CRDS, DEPLOYMENTS, SECRETS, WEBHOOKS};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use weft_control::testing::TempDir;

const NS: &str = "weft-system";

/// A CA: its PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str, days: i64) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A serving certificate for `dns`, signed by `ca`.
fn serving(ca: &Ca, dns: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = CertificateParams::new(vec![dns.to_string()]).unwrap();
    params.signed_by(&key, &ca.issuer).unwrap().pem()
}

fn tls_secret(name: &str, crt: &str) -> Value {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
                (
                    "tls.key".to_string(),
                    ByteString(b"(not needed by the checks)".to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    serde_json::to_value(secret).unwrap()
}

fn webhook_config(ca_bundle: &str) -> Value {
    let hook = |name: &str| MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        client_config: WebhookClientConfig {
            ca_bundle: Some(ByteString(ca_bundle.as_bytes().to_vec())),
            service: Some(ServiceReference {
                name: "weft-control".into(),
                namespace: NS.into(),
                path: Some("/inject".into()),
                port: Some(443),
            }),
            url: None,
        },
        ..Default::default()
    };
    let config = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some("weft-injector".into()),
            ..Default::default()
        },
        webhooks: Some(vec![
            hook("namespace.inject.weft.dev"),
            hook("pod.inject.weft.dev"),
        ]),
    };
    serde_json::to_value(config).unwrap()
}

/// The control plane's Deployment as the chart renders it, with a status.
fn deployment(ready: i32) -> Value {
    json!({
        "metadata": {"name": "weft-control", "namespace": NS, "uid": "uid-deploy",
                     "labels": {"app.kubernetes.io/part-of": "weft", "app.kubernetes.io/component": "control-plane",
                                "app.kubernetes.io/name": "weft", "app.kubernetes.io/instance": "weft"}},
        "spec": {"replicas": 1,
                 "selector": {"matchLabels": {"app.kubernetes.io/component": "control-plane"}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/component": "control-plane"}},
                              "spec": {"containers": [{"name": "weft-control", "image": "registry.example.com/weft/weft:0.1.0"}],
                                       "volumes": [
                                           {"name": "issuer", "secret": {"secretName": "weft-issuer"}},
                                           {"name": "webhook-tls", "secret": {"secretName": "weft-webhook-tls"}}]}}},
        "status": {"replicas": 1, "readyReplicas": ready, "updatedReplicas": 1, "availableReplicas": ready}
    })
}

/// An installed mesh: the fake API holds what the chart creates, and a
/// real control plane answers behind the Service's proxy subresource.
struct Install {
    api: FakeApi,
    dir: TempDir,
    kubeconfig: std::path::PathBuf,
    _control: Child,
    webhook_ca: Ca,
}

impl Install {
    async fn start() -> Self {
        let api = FakeApi::start().await;
        let dir = TempDir::new();
        let kubeconfig = common::kubeconfig(&api, &dir);
        for (_, crd) in weft_control::kubernetes::crds::crds() {
            api.apply(CRDS, serde_json::to_value(crd).unwrap());
        }
        let webhook_ca = ca("weft-control-webhook-ca", 3650);
        let svc = format!("weft-control.{NS}.svc");
        api.apply(
            SECRETS,
            tls_secret("weft-webhook-tls", &serving(&webhook_ca, &svc)),
        );
        let mesh_ca = ca("weft mesh CA", 365);
        api.apply(SECRETS, tls_secret("weft-issuer", &mesh_ca.pem));
        api.apply(CONFIGMAPS, anchors(&mesh_ca.pem));
        api.apply(WEBHOOKS, webhook_config(&webhook_ca.pem));
        api.apply(DEPLOYMENTS, deployment(1));
        let (control, admin) = control_plane(&dir);
        api.forward(&format!("services/{NS}/weft-control:admin"), admin);
        Install {
            api,
            dir,
            kubeconfig,
            _control: control,
            webhook_ca,
        }
    }

    /// Runs `weft ARGS` with this cluster's kubeconfig.
    fn weft(&self, args: &[&str]) -> (bool, String) {
        run_weft(&self.kubeconfig, args)
    }
}

fn anchors(pem: &str) -> Value {
    json!({"metadata": {"name": "weft-trust-anchors", "namespace": NS}, "data": {"ca.crt": pem}})
}

fn run_weft(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run weft");
    let out = String::from_utf8_lossy(&stdout).to_string() + &String::from_utf8_lossy(&stderr);
    println!("$ weft {}\n{out}", args.join(" "));
    (status.success(), out)
}

/// Starts `weft ARGS` and waits for a stderr line containing `ready`.
fn spawn_weft(args: &[String], ready: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let child = Child(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
        if line.contains(ready) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, line);
        }
    }
    panic!("weft {} did not log {ready:?} within 30 s", args.join(" "));
}

fn addr_after(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 1;
    line[start..].split_whitespace().next().unwrap().parse().unwrap()
}

/// A real control plane (file mode) on loopback: its admin address.
fn control_plane(dir: &TempDir) -> (Child, SocketAddr) {
    std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
    let args: Vec<String> = [
        "control",
        "--config",
        &dir.path().join("mesh").display().to_string(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--trust-anchors-out",
        &dir.path().join("anchors.pem").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (child, line) = spawn_weft(&args, "listening");
    (child, addr_after(&line, "admin"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_install_passes_every_check() {
    let install = Install::start().await;
    let (ok, out) = install.weft(&["check", "--cluster"]);
    assert!(ok, "{out}");
    for check in [
        "✔ kubernetes-api: reachable, v1.33.2",
        "✔ crds: 3 installed and current",
        "✔ control-plane: 1 of 1 replicas ready, /ready answers",
        "✔ webhook: weft-injector: 2 webhooks, each caBundle verifies the serving certificate",
        "✔ trust-anchors: 1 anchors, none expiring within 60 days",
        "✔ issuer: Secret weft-issuer, not expiring within 60 days",
        "✔ proxy-versions: 0 connected proxies, all at 0.1.0",
        "all 7 checks passed",
    ] {
        assert!(out.contains(check), "missing {check:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_part_of_an_install_is_named() {
    let install = Install::start().await;
    // A CRD deleted, the caBundle of another CA, anchors that expire in
    // 10 days, and no replica ready.
    install.api.delete(CRDS, "", "trafficpolicies.weft.dev");
    let other = ca("someone else's CA", 3650);
    install.api.apply(WEBHOOKS, webhook_config(&other.pem));
    install
        .api
        .apply(CONFIGMAPS, anchors(&ca("weft mesh CA", 10).pem));
    install.api.apply(DEPLOYMENTS, deployment(0));
    let (ok, out) = install.weft(&["check", "--cluster"]);
    assert!(!ok, "a broken install fails: {out}");
    for named in [
        "✘ crds: not installed: trafficpolicies.weft.dev",
        "✘ control-plane: Deployment weft-system/weft-control: 0 of 1 replicas ready",
        "✘ webhook: weft-injector: webhook namespace.inject.weft.dev: its caBundle does not verify the serving certificate for weft-control.weft-system.svc",
        "✘ trust-anchors: ConfigMap weft-system/weft-trust-anchors: CN=weft mesh CA expires",
        "in 9 days",
        "✔ issuer:",
        "4 of 7 checks failed",
    ] {
        assert!(out.contains(named), "missing {named:?} in:\n{out}");
    }
    assert_eq!(out.matches("    hint: ").count(), 4, "a hint per failure:\n{out}");
    // The right CA again: the webhook passes.
    install
        .api
        .apply(WEBHOOKS, webhook_config(&install.webhook_ca.pem));
    let (_, out) = install.weft(&["check", "--cluster"]);
    assert!(out.contains("✔ webhook:"), "{out}");
    // No control plane at all in the namespace asked for.
    let (ok, out) = install.weft(&["check", "--cluster", "-n", "elsewhere"]);
    assert!(!ok);
    assert!(
        out.contains("✘ control-plane: no weft control-plane Deployment in namespace elsewhere"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_install_checks_name_missing_permissions_and_an_existing_install() {
    let api = FakeApi::start().await;
    let dir = TempDir::new();
    let kubeconfig = common::kubeconfig(&api, &dir);
    let (ok, out) = run_weft(&kubeconfig, &["check", "--pre"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("✔ permissions: may create everything an install creates (7 kinds)"),
        "{out}"
    );
    assert!(out.contains("✔ crds: none installed yet"), "{out}");
    api.deny("clusterroles");
    api.deny("mutatingwebhookconfigurations");
    let (ok, out) = run_weft(&kubeconfig, &["check", "--pre"]);
    assert!(!ok);
    assert!(
        out.contains("✘ permissions: this user may not create clusterroles, mutatingwebhookconfigurations"),
        "{out}"
    );
    let install = Install::start().await;
    let (ok, out) = install.weft(&["check", "--pre"]);
    assert!(!ok);
    assert!(
        out.contains(
            "✘ no-control-plane-yet: weft is already installed here (Deployment weft-system/weft-control)"
        ),
        "{out}"
    );
    // An API server that does not answer.
    let gone = dir.write(
        "gone",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {server: 'http://127.0.0.1:1'}\ncontexts:\n- name: x\n  context: {cluster: x, user: x}\ncurrent-context: x\nusers:\n- name: x\n  user: {}\n",
    );
    let (ok, out) = run_weft(&gone, &["check", "--pre"]);
    assert!(!ok);
    assert!(
        out.contains("✘ kubernetes-api: the API server does not answer"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_and_version_reach_the_proxy_and_the_control_plane() {
    let install = Install::start().await;
    let endpoints = install
        .dir
        .write("endpoints.yaml", "web:\n  - addr: 127.0.0.1:9\n");
    let args: Vec<String> = [
        "proxy",
        "--outbound-listen",
        "127.0.0.1:0",
        "--inbound-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--endpoints-file",
        &endpoints.display().to_string(),
        "--app-port",
        "8080",
        "--namespace",
        "shop",
        "--workload",
        "web",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (_proxy, line) = spawn_weft(&args, "listening");
    install
        .api
        .forward("pods/shop/web-7d4b9-x2x8q:4191", addr_after(&line, "admin"));

    // The kubeconfig's context namespace is `shop`.
    let (ok, out) = install.weft(&["diagnostics", "proxy-metrics", "web-7d4b9-x2x8q"]);
    assert!(ok, "{out}");
    assert!(out.contains("# TYPE weft_"), "the proxy's metrics: {out}");
    let (ok, out) = install.weft(&["diagnostics", "proxy-config", "web-7d4b9-x2x8q", "-n", "shop"]);
    assert!(ok, "{out}");
    let config: Value =
        serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        config.to_string().contains("\"shop\""),
        "the proxy's own config: {config}"
    );
    // A pod nothing answers for: the API server's reason, exit 1.
    let (ok, out) = install.weft(&["diagnostics", "proxy-metrics", "db-0", "-n", "shop"]);
    assert!(!ok);
    assert!(
        out.contains("pod shop/db-0 admin port 4191/metrics: no endpoints available"),
        "{out}"
    );

    let (ok, out) = install.weft(&["version"]);
    assert!(ok, "{out}");
    assert!(out.contains("client: 0.1.0"), "{out}");
    assert!(
        out.contains("control plane: 0.1.0 (weft-system/weft-control)"),
        "{out}"
    );
    assert!(out.contains("proxies: none connected"), "{out}");
    let (ok, out) = run_weft(std::path::Path::new("/nonexistent"), &["version"]);
    assert!(ok, "the client's version prints without a cluster: {out}");
    assert!(
        out.contains("client: 0.1.0") && out.contains("control plane: unavailable"),
        "{out}"
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _weft"),
        ("zsh", "#compdef weft"),
        ("fish", "complete -c weft"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(marker), "{shell}: {text}");
        assert!(text.contains("diagnostics"), "{shell} completes the subcommands");
    }
}
