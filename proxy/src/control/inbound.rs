//! `Inbound.Watch`: the server policy of each app port, one stream per port.
//!
//! Each message replaces the port's policy. A broken stream reconnects
//! after a [`Backoff`] (200 ms → 5 s); meanwhile the last known policy
//! stays in force (or, before the first one, the port stays
//! [`PortPolicy::Pending`], which denies).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;
use weft_api::v1 as api;
use weft_api::v1::inbound_client::InboundClient;

use super::{Backoff, ControlClient};
use crate::policy::{PortPolicy, ServerPolicy};

/// Watches `workload` (`namespace/name`) on each of `ports`, for
/// [`crate::policy::Policies::watched`]. Every port starts pending.
pub fn watch_inbound(
    control: &ControlClient,
    workload: &str,
    ports: &[u16],
) -> HashMap<u16, watch::Receiver<PortPolicy>> {
    ports
        .iter()
        .map(|&port| {
            let (tx, rx) = watch::channel(PortPolicy::Pending);
            let request = api::InboundRequest {
                workload: workload.to_string(),
                port: u32::from(port),
            };
            tokio::spawn(run_watch(control.inbound(), request, tx));
            (port, rx)
        })
        .collect()
}

async fn run_watch(
    mut client: InboundClient<Channel>,
    request: api::InboundRequest,
    tx: watch::Sender<PortPolicy>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match client.watch(request.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(policy)) => {
                            backoff.reset();
                            tx.send_replace(PortPolicy::Known(Arc::new(ServerPolicy::from(policy))));
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(port = request.port, %status, "inbound policy stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(port = request.port, %status, "control plane unreachable");
            }
        }
        backoff.wait().await;
    }
}
