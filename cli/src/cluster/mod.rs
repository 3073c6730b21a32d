//! Day-2 commands against a cluster: `weft check --cluster` and `--pre`
//! ([`checks`]), `weft diagnostics proxy-metrics|proxy-config POD` and
//! `weft version` ([`diagnostics`]). They reach the cluster as kubectl
//! does: the kubeconfig (`KUBECONFIG`, `~/.kube/config`, or in-cluster
//! credentials), `--context`, and the API server's `services/…/proxy` and
//! `pods/…/proxy` subresources for the control plane's and the proxies'
//! admin ports, so no port-forward is needed.

pub mod checks;
pub mod diagnostics;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

/// Where the cluster is.
#[derive(Debug, Clone, clap::Args)]
pub struct Cluster {
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// Runs a cluster command on a small runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the cluster of `context` (the kubeconfig's current one
/// when `None`; in a pod without a kubeconfig, the in-cluster account).
pub async fn client(context: Option<&str>) -> Result<kube::Client, String> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let mut config = match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => config,
        Err(e) if context.is_none() => {
            kube::Config::incluster().map_err(|_| format!("no usable kubeconfig ({e}) and not in a pod"))?
        }
        Err(e) => return Err(format!("kubeconfig context {}: {e}", context.unwrap_or_default())),
    };
    // A command answers now: kube-rs's default retries of 503s would
    // keep `diagnostics` on a pod nothing answers for busy for minutes.
    config.default_retry = false;
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    kube::Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// The namespace the kubeconfig context names (pods default to it).
pub async fn context_namespace(context: Option<&str>) -> String {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => config.default_namespace,
        Err(_) => "default".into(),
    }
}

/// A GET of `path` on the API server, as text; the API's own message on
/// failure.
pub async fn get_text(client: &kube::Client, path: &str) -> Result<String, String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| format!("{path}: {e}"))?;
    client.request_text(req).await.map_err(|e| api_error(&e))
}

/// A GET of `path` on the API server, decoded from JSON.
pub async fn get_json<T: DeserializeOwned>(client: &kube::Client, path: &str) -> Result<T, String> {
    let text = get_text(client, path).await?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: unexpected answer: {e}"))
}

/// What the API server said, without kube-rs's wrapping.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// A GET of `path` on the control plane's admin port, through the API
/// server's service proxy.
pub async fn control_plane_get(
    client: &kube::Client,
    cp: &ControlPlane,
    path: &str,
) -> Result<String, String> {
    let proxy = format!(
        "/api/v1/namespaces/{}/services/{}:admin/proxy{path}",
        cp.namespace, cp.name
    );
    get_text(client, &proxy).await
}

/// The control plane as installed: its Deployment (labelled
/// `app.kubernetes.io/part-of: weft`, `app.kubernetes.io/component:
/// control-plane`, as the chart labels it); its Service has the same name.
pub struct ControlPlane {
    pub namespace: String,
    pub name: String,
    pub deployment: Deployment,
}

impl ControlPlane {
    pub async fn find(client: &kube::Client, namespace: &str) -> Result<Self, String> {
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let all = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("cannot list Deployments in {namespace}: {}", api_error(&e)))?;
        let ours = all.items.into_iter().find(|d| {
            let labels = d.metadata.labels.as_ref();
            let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
            label("app.kubernetes.io/part-of") == Some("weft")
                && label("app.kubernetes.io/component") == Some("control-plane")
        });
        let deployment =
            ours.ok_or_else(|| format!("no weft control-plane Deployment in namespace {namespace}"))?;
        Ok(ControlPlane {
            namespace: namespace.into(),
            name: deployment.metadata.name.clone().unwrap_or_default(),
            deployment,
        })
    }

    /// The Secret or ConfigMap name behind the pod template's volume
    /// `volume`.
    pub fn volume_source(&self, volume: &str) -> Option<VolumeSource> {
        let spec = self.deployment.spec.as_ref()?.template.spec.as_ref()?;
        let v = spec.volumes.as_ref()?.iter().find(|v| v.name == volume)?;
        if let Some(secret) = &v.secret {
            return secret.secret_name.clone().map(VolumeSource::Secret);
        }
        v.config_map
            .as_ref()
            .map(|c| VolumeSource::ConfigMap(c.name.clone()))
    }
}

impl ControlPlane {
    /// The version the control plane reports at `/version`.
    pub async fn version(&self, client: &kube::Client) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Version {
            version: String,
        }
        let text = control_plane_get(client, self, "/version").await?;
        serde_json::from_str::<Version>(&text)
            .map(|v| v.version)
            .map_err(|e| format!("/version: unexpected answer: {e}"))
    }

    /// The proxies connected to it (`/proxies`).
    pub async fn proxies(&self, client: &kube::Client) -> Result<Vec<Connected>, String> {
        let text = control_plane_get(client, self, "/proxies").await?;
        serde_json::from_str(&text).map_err(|e| format!("/proxies: unexpected answer: {e}"))
    }
}

/// A proxy connected to the control plane, as `/proxies` lists it.
#[derive(serde::Deserialize)]
pub struct Connected {
    pub identity: String,
    /// Empty from proxies older than the field.
    #[serde(default)]
    pub version: String,
}

impl Connected {
    pub fn version(&self) -> &str {
        if self.version.is_empty() {
            "unknown"
        } else {
            &self.version
        }
    }
}

pub enum VolumeSource {
    Secret(String),
    ConfigMap(String),
}
