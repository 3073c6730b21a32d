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

/// Watches the inbound policy of one workload, port by port.
#[derive(Clone)]
pub struct InboundWatcher {
    control: ControlClient,
    workload: String,
    pod: String,
}

impl InboundWatcher {
    /// `workload` is `namespace/name`; `pod`, in Kubernetes, the pod this
    /// proxy runs in.
    pub fn new(control: &ControlClient, workload: String, pod: Option<String>) -> Self {
        Self {
            control: control.clone(),
            workload,
            pod: pod.unwrap_or_default(),
        }
    }

    /// Starts watching `port`; the receiver is [`PortPolicy::Pending`]
    /// until the first policy arrives. Needs a Tokio runtime.
    pub fn watch(&self, port: u16) -> watch::Receiver<PortPolicy> {
        let (tx, rx) = watch::channel(PortPolicy::Pending);
        let request = api::InboundRequest {
            workload: self.workload.clone(),
            port: u32::from(port),
            pod: self.pod.clone(),
        };
        tokio::spawn(run_watch(self.control.inbound(), request, tx));
        rx
    }

    /// Watches each of `ports`, for [`crate::policy::Policies::watched`].
    pub fn watch_all(&self, ports: &[u16]) -> HashMap<u16, watch::Receiver<PortPolicy>> {
        ports.iter().map(|&port| (port, self.watch(port))).collect()
    }
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
