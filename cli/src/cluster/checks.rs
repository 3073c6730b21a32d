//! `weft check --cluster` (an installation) and `weft check --pre` (a
//! cluster before install): each check prints ✔ or ✘ with what it found
//! and, on ✘, a one-line hint; any ✘ exits non-zero.
//!
//! `--cluster` checks, in order: the API server and its version; the
//! weft.dev CRDs installed and current; the control plane ready; the
//! injector's webhook configured with a caBundle that verifies the serving
//! certificate the control plane mounts; the trust anchors proxies mount
//! and the issuer not expiring within [`EXPIRY_MARGIN`]; the connected
//! proxies' versions matching the control plane's. `--pre`: the API server
//! and its version, the permissions an install needs, no control plane
//! there yet, and no outdated weft.dev CRDs left behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;

use super::{api_error, control_plane_get, get_json, ControlPlane, VolumeSource};

/// Certificates closer than this to expiry fail the check.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60 * 24 * 3600);

/// The oldest Kubernetes the injector's native sidecars run on.
pub const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// One check's result: what was found, or what is wrong and what to do.
#[derive(Debug)]
pub struct Checked {
    pub name: &'static str,
    pub result: Result<String, Problem>,
}

#[derive(Debug)]
pub struct Problem {
    pub what: String,
    pub hint: String,
}

fn problem(what: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        what: what.into(),
        hint: hint.into(),
    }
}

/// Prints each result; true when all passed.
pub fn print(results: &[Checked]) -> bool {
    for c in results {
        match &c.result {
            Ok(found) => println!("✔ {}: {found}", c.name),
            Err(p) => {
                println!("✘ {}: {}", c.name, p.what);
                println!("    hint: {}", p.hint);
            }
        }
    }
    let failed = results.iter().filter(|c| c.result.is_err()).count();
    if failed == 0 {
        println!("all {} checks passed", results.len());
    } else {
        println!("{failed} of {} checks failed", results.len());
    }
    failed == 0
}

fn checked(name: &'static str, result: Result<String, Problem>) -> Checked {
    Checked { name, result }
}

/// Checks an installation whose control plane runs in `namespace`.
pub async fn cluster(client: &kube::Client, namespace: &str) -> Vec<Checked> {
    let api = checked("kubernetes-api", kubernetes_version(client).await);
    if api.result.is_err() {
        return vec![api];
    }
    let mut out = vec![api, checked("crds", crds(client, false).await)];
    let cp = match ControlPlane::find(client, namespace).await {
        Ok(cp) => cp,
        Err(e) => {
            let hint = format!(
                "install it: helm install weft charts/weft -n {namespace} --create-namespace (or pass -n NAMESPACE)"
            );
            out.push(checked("control-plane", Err(problem(e, hint))));
            return out;
        }
    };
    out.extend([
        checked("control-plane", control_plane_ready(client, &cp).await),
        checked("webhook", webhook(client, &cp).await),
        checked("trust-anchors", trust_anchors(client, &cp).await),
        checked("issuer", issuer(client, &cp).await),
        checked("proxy-versions", proxy_versions(client, &cp).await),
    ]);
    out
}

/// Checks a cluster before installing into `namespace`.
pub async fn pre(client: &kube::Client, namespace: &str) -> Vec<Checked> {
    let api = checked("kubernetes-api", kubernetes_version(client).await);
    if api.result.is_err() {
        return vec![api];
    }
    let existing = match ControlPlane::find(client, namespace).await {
        Ok(cp) => Err(problem(
            format!(
                "weft is already installed here (Deployment {}/{})",
                cp.namespace, cp.name
            ),
            "check the installation with weft check --cluster; upgrade with helm upgrade",
        )),
        Err(_) => Ok(format!("no weft control plane in namespace {namespace}")),
    };
    vec![
        api,
        checked("permissions", permissions(client, namespace).await),
        checked("no-control-plane-yet", existing),
        checked("crds", crds(client, true).await),
    ]
}

#[derive(Deserialize)]
struct Version {
    major: String,
    minor: String,
    #[serde(rename = "gitVersion")]
    git_version: String,
}

async fn kubernetes_version(client: &kube::Client) -> Result<String, Problem> {
    let v: Version = get_json(client, "/version").await.map_err(|e| {
        problem(
            format!("the API server does not answer: {e}"),
            "check the kubeconfig and --context (kubectl cluster-info)",
        )
    })?;
    // Managed clusters say "29+".
    let num = |s: &str| s.trim_end_matches('+').parse::<u32>().unwrap_or(0);
    let (major, minor) = (num(&v.major), num(&v.minor));
    if (major, minor) < MIN_KUBERNETES {
        return Err(problem(
            format!(
                "Kubernetes {} is older than {}.{}",
                v.git_version, MIN_KUBERNETES.0, MIN_KUBERNETES.1
            ),
            "the injected proxy is a native sidecar (an init container with restartPolicy: Always); upgrade the cluster",
        ));
    }
    Ok(format!("reachable, {}", v.git_version))
}

/// Every weft.dev CRD installed with our versions and schemas; with
/// `absent_ok`, only that none is outdated.
async fn crds(client: &kube::Client, absent_ok: bool) -> Result<String, Problem> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut outdated = Vec::new();
    let wanted = weft_control::kubernetes::crds::crds();
    for (_, want) in &wanted {
        let name = want.metadata.name.clone().unwrap_or_default();
        let have = api.get_opt(&name).await.map_err(|e| {
            problem(
                format!("cannot read CRD {name}: {}", api_error(&e)),
                "check RBAC: get customresourcedefinitions",
            )
        })?;
        match have {
            None => missing.push(name),
            Some(have) if !same_versions(want, &have) => outdated.push(name),
            Some(_) => {}
        }
    }
    let hint = "install or update them: weft crds | kubectl apply --server-side -f -";
    if !outdated.is_empty() {
        return Err(problem(format!("outdated: {}", outdated.join(", ")), hint));
    }
    if !missing.is_empty() && !absent_ok {
        return Err(problem(format!("not installed: {}", missing.join(", ")), hint));
    }
    if missing.len() == wanted.len() {
        return Ok("none installed yet".into());
    }
    Ok(format!("{} installed and current", wanted.len() - missing.len()))
}

/// Each version we define is served by `have` with the same schema.
fn same_versions(want: &CustomResourceDefinition, have: &CustomResourceDefinition) -> bool {
    want.spec.versions.iter().all(|w| {
        have.spec.versions.iter().any(|h| {
            h.name == w.name
                && h.served == w.served
                && serde_json::to_value(&h.schema).ok() == serde_json::to_value(&w.schema).ok()
        })
    })
}

async fn control_plane_ready(client: &kube::Client, cp: &ControlPlane) -> Result<String, Problem> {
    let status = cp.deployment.status.clone().unwrap_or_default();
    let wanted = cp.deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let logs = format!("kubectl -n {} logs deploy/{}", cp.namespace, cp.name);
    if ready == 0 || ready < wanted {
        return Err(problem(
            format!(
                "Deployment {}/{}: {ready} of {wanted} replicas ready",
                cp.namespace, cp.name
            ),
            format!(
                "see why: kubectl -n {} describe deploy/{}; {logs}",
                cp.namespace, cp.name
            ),
        ));
    }
    match control_plane_get(client, cp, "/ready").await {
        Ok(_) => Ok(format!("{ready} of {wanted} replicas ready, /ready answers")),
        Err(e) => Err(problem(format!("/ready through the Service: {e}"), logs)),
    }
}

/// The injector's MutatingWebhookConfiguration, and that each of its
/// webhooks' caBundle verifies the serving certificate for the name the
/// API server calls (`<service>.<namespace>.svc`).
async fn webhook(client: &kube::Client, cp: &ControlPlane) -> Result<String, Problem> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let all = api.list(&ListParams::default()).await.map_err(|e| {
        problem(
            format!("cannot list MutatingWebhookConfigurations: {}", api_error(&e)),
            "check RBAC: list mutatingwebhookconfigurations",
        )
    })?;
    let config = all
        .items
        .into_iter()
        .find(|c| {
            c.webhooks
                .iter()
                .flatten()
                .any(|w| w.name.ends_with(".inject.weft.dev"))
        })
        .ok_or_else(|| {
            problem(
                "no MutatingWebhookConfiguration with the *.inject.weft.dev webhooks",
                "install with the injector on: helm upgrade weft charts/weft --set webhook.enabled=true",
            )
        })?;
    let config_name = config.metadata.name.clone().unwrap_or_default();
    let secret = match cp.volume_source("webhook-tls") {
        Some(VolumeSource::Secret(name)) => name,
        _ => {
            return Err(problem(
                format!("Deployment {} mounts no webhook-tls Secret", cp.name),
                "reinstall with the chart so the injector has its serving certificate",
            ))
        }
    };
    let cert = secret_cert(client, &cp.namespace, &secret).await?;
    let hint = format!(
        "the caBundle must be the CA of Secret {}/{secret}: delete that Secret and helm upgrade, then kubectl -n {} rollout restart deploy/{}",
        cp.namespace, cp.namespace, cp.name
    );
    let mut checked = 0;
    for w in config.webhooks.iter().flatten() {
        let bundle = w
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        if bundle.is_empty() {
            return Err(problem(
                format!("{config_name}: webhook {} has no caBundle", w.name),
                hint,
            ));
        }
        let Some(service) = &w.client_config.service else {
            return Err(problem(
                format!(
                    "{config_name}: webhook {} calls a URL, not the control plane's Service",
                    w.name
                ),
                hint,
            ));
        };
        let dns = format!("{}.{}.svc", service.name, service.namespace);
        verify_serving(&bundle, &cert, &dns).map_err(|e| {
            problem(
                format!("{config_name}: webhook {}: its caBundle does not verify the serving certificate for {dns}: {e}", w.name),
                hint.clone(),
            )
        })?;
        checked += 1;
    }
    Ok(format!(
        "{config_name}: {checked} webhooks, each caBundle verifies the serving certificate"
    ))
}

/// The trust anchors proxies mount (ConfigMap `weft-trust-anchors`, key
/// `ca.crt`, published by the control plane) all valid beyond the margin.
async fn trust_anchors(client: &kube::Client, cp: &ControlPlane) -> Result<String, Problem> {
    let name = weft_control::kubernetes::trust_anchors::CONFIGMAP;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cp.namespace);
    let cm = api.get_opt(name).await.map_err(|e| {
        problem(
            format!("cannot read ConfigMap {}/{name}: {}", cp.namespace, api_error(&e)),
            "check RBAC: get configmaps",
        )
    })?;
    let pem = cm
        .and_then(|c| c.data)
        .and_then(|d| d.get("ca.crt").cloned())
        .ok_or_else(|| {
            problem(
                format!("ConfigMap {}/{name} with key ca.crt is missing", cp.namespace),
                format!(
                    "the control plane publishes it: kubectl -n {} logs deploy/{}",
                    cp.namespace, cp.name
                ),
            )
        })?;
    let hint = "add the next CA to identity.trustAnchorsPEM next to the current one, helm upgrade, then rotate the issuer (docs/identity.md)";
    let n = not_expiring(
        pem.as_bytes(),
        &format!("ConfigMap {}/{name}", cp.namespace),
        hint,
    )?;
    Ok(format!("{n} anchors, none expiring within 60 days"))
}

/// The issuer (the mesh CA the control plane signs with), valid beyond
/// the margin.
async fn issuer(client: &kube::Client, cp: &ControlPlane) -> Result<String, Problem> {
    let secret = match cp.volume_source("issuer") {
        Some(VolumeSource::Secret(name)) => name,
        _ => {
            return Err(problem(
                format!("Deployment {} mounts no issuer Secret", cp.name),
                "reinstall with the chart (identity.issuer)",
            ))
        }
    };
    let cert = secret_cert(client, &cp.namespace, &secret).await?;
    not_expiring(
        &cert,
        &format!("Secret {}/{secret}", cp.namespace),
        "rotate the issuer: a new CA in identity.issuer.existingSecret, trusted first by identity.trustAnchorsPEM (docs/identity.md)",
    )?;
    Ok(format!("Secret {secret}, not expiring within 60 days"))
}

/// The proxies connected to the control plane run its version.
async fn proxy_versions(client: &kube::Client, cp: &ControlPlane) -> Result<String, Problem> {
    let hint = format!("kubectl -n {} logs deploy/{}", cp.namespace, cp.name);
    let ours = cp
        .version(client)
        .await
        .map_err(|e| problem(format!("the control plane's {e}"), hint.clone()))?;
    let proxies = cp
        .proxies(client)
        .await
        .map_err(|e| problem(format!("the control plane's {e}"), hint))?;
    let mut other: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for p in &proxies {
        if p.version != ours {
            other
                .entry(p.version().to_string())
                .or_default()
                .push(&p.identity);
        }
    }
    if other.is_empty() {
        return Ok(format!("{} connected proxies, all at {ours}", proxies.len()));
    }
    let listed: Vec<String> = other
        .iter()
        .map(|(v, ids)| format!("{} at {v} (e.g. {})", ids.len(), ids[0]))
        .collect();
    Err(problem(
        format!("control plane at {ours}; proxies {}", listed.join(", ")),
        "restart those workloads so the injector gives them the current proxy: kubectl rollout restart deploy/NAME -n NAMESPACE",
    ))
}

/// What an install creates, by (API group, resource, namespaced).
const INSTALL_CREATES: [(&str, &str, bool); 7] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("", "namespaces", false),
    ("apps", "deployments", true),
    ("", "secrets", true),
];

async fn permissions(client: &kube::Client, namespace: &str) -> Result<String, Problem> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for (group, resource, namespaced) in INSTALL_CREATES {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some("create".into()),
                    namespace: namespaced.then(|| namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await.map_err(|e| {
            problem(
                format!(
                    "cannot ask the API server what this user may do: {}",
                    api_error(&e)
                ),
                "check the kubeconfig's credentials",
            )
        })?;
        if !answer.status.is_some_and(|s| s.allowed) {
            denied.push(resource);
        }
    }
    if denied.is_empty() {
        return Ok(format!(
            "may create everything an install creates ({} kinds)",
            INSTALL_CREATES.len()
        ));
    }
    Err(problem(
        format!("this user may not create {}", denied.join(", ")),
        "install as a cluster admin (or ask one to), e.g. kubectl --context ADMIN",
    ))
}

/// The PEM `tls.crt` of Secret `namespace`/`name`.
async fn secret_cert(client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<u8>, Problem> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api.get_opt(name).await.map_err(|e| {
        problem(
            format!("cannot read Secret {namespace}/{name}: {}", api_error(&e)),
            "check RBAC: get secrets",
        )
    })?;
    secret
        .and_then(|s| s.data)
        .and_then(|d| d.get("tls.crt").map(|b| b.0.clone()))
        .ok_or_else(|| {
            problem(
                format!("Secret {namespace}/{name} with tls.crt is missing"),
                "helm upgrade recreates a Secret the chart generated",
            )
        })
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// Whether the chain in `cert_pem` verifies for `dns` against the roots
/// in `bundle`, as the API server verifies the webhook's certificate.
pub fn verify_serving(bundle: &[u8], cert_pem: &[u8], dns: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(bundle).map_err(|e| format!("caBundle: {e}"))? {
        roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let chain = certs(cert_pem).map_err(|e| format!("serving certificate: {e}"))?;
    let name = ServerName::try_from(dns.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every certificate in `pem` valid beyond [`EXPIRY_MARGIN`]: how many.
fn not_expiring(pem: &[u8], what: &str, hint: &str) -> Result<usize, Problem> {
    let list = certs(pem).map_err(|e| problem(format!("{what}: {e}"), hint))?;
    let horizon = SystemTime::now() + EXPIRY_MARGIN;
    for der in &list {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| problem(format!("{what}: unreadable certificate: {e}"), hint))?;
        let not_after = UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        if not_after < horizon {
            let left = not_after.duration_since(SystemTime::now()).unwrap_or_default();
            let subject = cert.subject().to_string();
            return Err(problem(
                format!(
                    "{what}: {subject} expires {} ({})",
                    cert.validity().not_after,
                    if left.is_zero() {
                        "already expired".to_string()
                    } else {
                        format!("in {} days", left.as_secs() / 86_400)
                    }
                ),
                hint,
            ));
        }
    }
    Ok(list.len())
}
