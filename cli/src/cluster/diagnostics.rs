//! `weft diagnostics proxy-metrics|proxy-config POD`: a meshed pod's proxy
//! metrics or effective config, read from its admin port through the API
//! server's pod proxy; `weft version`: this CLI's, the control plane's
//! and the connected proxies' versions.

use std::collections::BTreeMap;

use super::{get_text, ControlPlane};

/// The proxy's admin port as the injector sets it.
pub const ADMIN_PORT: u16 = 4191;

/// The text of `path` on the proxy admin port of `namespace`/`pod`.
pub async fn proxy_admin(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<String, String> {
    let url = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}");
    get_text(client, &url).await.map_err(|e| {
        format!("pod {namespace}/{pod} admin port {port}{path}: {e} (is the pod meshed and running?)")
    })
}

/// `weft version`: lines of `what: version`. Parts that cannot be
/// reached say why instead; the client's version always prints.
pub async fn versions(client: Option<&kube::Client>, namespace: &str) -> Vec<String> {
    let mut out = vec![format!("client: {}", env!("CARGO_PKG_VERSION"))];
    let Some(client) = client else {
        return out;
    };
    let cp = match ControlPlane::find(client, namespace).await {
        Ok(cp) => cp,
        Err(e) => {
            out.push(format!("control plane: unavailable ({e})"));
            return out;
        }
    };
    match cp.version(client).await {
        Ok(v) => out.push(format!("control plane: {v} ({}/{})", cp.namespace, cp.name)),
        Err(e) => out.push(format!("control plane: unavailable ({e})")),
    }
    match cp.proxies(client).await {
        Ok(proxies) if proxies.is_empty() => out.push("proxies: none connected".into()),
        Ok(proxies) => {
            let mut by_version: BTreeMap<&str, usize> = BTreeMap::new();
            for p in &proxies {
                *by_version.entry(p.version()).or_default() += 1;
            }
            let listed: Vec<String> = by_version.iter().map(|(v, n)| format!("{v} ×{n}")).collect();
            out.push(format!("proxies: {}", listed.join(", ")));
        }
        Err(e) => out.push(format!("proxies: unavailable ({e})")),
    }
    out
}
