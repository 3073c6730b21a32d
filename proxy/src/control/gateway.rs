//! `Gateway.Watch`: an edge gateway's listeners and routes, one stream.
//!
//! Each message replaces the whole configuration. A broken stream
//! reconnects after a [`Backoff`] (200 ms → 5 s); meanwhile the last
//! configuration stays in force, and before the first one the gateway
//! serves nothing (it is not ready).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_api::v1 as api;

use super::{Backoff, ControlClient};

/// Watches Gateway `namespace/name`; the receiver holds `None` until the
/// first configuration arrives. Needs a Tokio runtime.
pub fn watch_gateway(
    control: &ControlClient,
    namespace: &str,
    name: &str,
) -> watch::Receiver<Option<Arc<api::GatewayConfig>>> {
    let (tx, rx) = watch::channel(None);
    let request = api::GatewayRequest {
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let mut client = control.gateway();
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match client.watch(request.clone()).await {
                Ok(rsp) => {
                    let mut stream = rsp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(config)) => {
                                backoff.reset();
                                tx.send_replace(Some(Arc::new(config)));
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(gateway = %request.name, %status, "gateway config stream failed");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::debug!(%status, "control plane unreachable"),
            }
            if tx.is_closed() {
                return;
            }
            backoff.wait().await;
        }
    });
    rx
}
