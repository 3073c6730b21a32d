//! The proxy's client of the control plane: one lazily connected gRPC
//! channel ([`ControlClient`]), shared by every API the proxy uses.
//!
//! - [`destination`]: `Destination.Watch`, one stream per destination in
//!   use, behind [`ControlDiscover`] (with the DNS fallback for names the
//!   mesh does not know).
//! - [`inbound`]: `Inbound.Watch`, one stream per app port, feeding
//!   [`crate::policy::Policies`].
//! - `Identity.Certify`: [`crate::identity::Identity::run`].
//! - [`connect`]: every connection is TLS 1.3 to a server that proves the
//!   control plane's SPIFFE ID; all calls but the first `Certify` present
//!   the proxy's own certificate.
//! - [`proto`]: every translation from `weft_api` messages to the proxy's
//!   own types; the data path never sees an API message (only
//!   `identity.rs` makes and reads its own `Certify` messages).
//!
//! Every stream that breaks, and every failed certificate request, waits a
//! [`Backoff`] before trying again.

pub mod connect;
pub mod destination;
pub mod gateway;
pub mod inbound;
pub mod proto;

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use crate::identity::Identity;
use weft_api::v1::destination_client::DestinationClient;
use weft_api::v1::gateway_client::GatewayClient;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::v1::inbound_client::InboundClient;

pub use connect::ControlTls;
pub use destination::{ControlDiscover, ControlMetrics, ControlSettings, EXTERNAL_SERVICE};
pub use inbound::InboundWatcher;

/// The gRPC channels to the control plane: `mesh` (mutual TLS with the
/// proxy's certificate) for every call but the first certificate request,
/// which goes over `bootstrap` (server-authenticated TLS). Cheap to clone:
/// clones share the channels (one HTTP/2 connection each, reconnected by
/// tonic when it drops).
#[derive(Debug, Clone)]
pub struct ControlClient {
    address: Arc<str>,
    mesh: Channel,
    bootstrap: Channel,
}

impl ControlClient {
    /// Connects lazily: nothing is dialed until the first call. Needs a
    /// runtime. Fails only when `address` (e.g.
    /// `https://weft-control.weft-system.svc:8086`) is not a usable URI.
    pub fn new(
        address: &str,
        tls: ControlTls,
        identity: Arc<Identity>,
    ) -> Result<Self, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(address.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let tls = Arc::new(tls);
        let bootstrap = endpoint.connect_with_connector_lazy(connect::Connector {
            tls: tls.clone(),
            client: None,
        });
        let mesh = endpoint.connect_with_connector_lazy(connect::Connector {
            tls,
            client: Some(identity),
        });
        Ok(Self {
            address: address.into(),
            mesh,
            bootstrap,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn destination(&self) -> DestinationClient<Channel> {
        DestinationClient::new(self.mesh.clone())
    }

    pub fn inbound(&self) -> InboundClient<Channel> {
        InboundClient::new(self.mesh.clone())
    }

    pub fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::new(self.mesh.clone())
    }

    /// Certificate renewals, over mutual TLS.
    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.mesh.clone())
    }

    /// The first certificate request (and one after an expiry).
    pub fn bootstrap_identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.bootstrap.clone())
    }
}

/// Exponential backoff with full jitter: the `n`th wait in a row is drawn
/// uniformly from `[0, min(base·2ⁿ, max)]` (at least 10 ms, so a loop never
/// spins); [`Backoff::reset`] after a success starts over from `base`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

/// No wait is shorter than this.
const MIN_WAIT: Duration = Duration::from_millis(10);

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random_range(0.0..=1.0)).max(MIN_WAIT)
    }

    /// Waits [`Backoff::next_wait`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }

    /// After a success: the next wait is drawn from `[0, base]` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The longest the next wait may be.
    fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    #[test]
    fn backoff_grows_until_capped() {
        let mut b = backoff();
        let ceilings_ms: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                b.next_wait();
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings_ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        for _ in 0..100 {
            assert!(b.next_wait() <= Duration::from_secs(5));
        }
        assert_eq!(
            b.ceiling(),
            Duration::from_secs(5),
            "no overflow after many attempts"
        );
    }

    #[test]
    fn backoff_is_jittered_within_its_ceiling() {
        let mut waits = Vec::new();
        for _ in 0..200 {
            let mut b = backoff();
            for _ in 0..6 {
                b.next_wait();
            }
            waits.push(b.next_wait());
        }
        assert!(waits
            .iter()
            .all(|w| (MIN_WAIT..=Duration::from_secs(5)).contains(w)));
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *max - *min > Duration::from_secs(1),
            "full jitter spreads the waits: {min:?}..{max:?}"
        );
    }

    #[test]
    fn backoff_resets_after_a_success() {
        let mut b = backoff();
        for _ in 0..10 {
            b.next_wait();
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert!(b.next_wait() <= Duration::from_millis(100));
        assert_eq!(b.ceiling(), Duration::from_millis(200));
    }
}
