//! Upstream listeners as configured: a local address bound to one
//! destination (`LISTEN=SERVICE:PORT`), and the checks the config runs on
//! the list. Serving them is `outbound/bound.rs`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A local listener bound to one destination: whatever connects to
/// `listen` goes to `service:port` (HTTP detected and routed as on the
/// outbound listener, anything else carried as TCP), so a client that
/// cannot name a service (a database or broker driver) is meshed without
/// interception. Written `LISTEN=SERVICE:PORT` on the command line, e.g.
/// `127.0.0.1:9191=db.shop:5432`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamListener {
    pub listen: SocketAddr,
    /// As the outbound listener understands names: `name` (in this
    /// proxy's namespace), `name.namespace`, or the full cluster name.
    pub service: String,
    pub port: u16,
}

impl std::str::FromStr for UpstreamListener {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            || format!("expected LISTEN=SERVICE:PORT (e.g. 127.0.0.1:9191=db.shop:5432), got `{s}`");
        let (listen, target) = s.trim().split_once('=').ok_or_else(expected)?;
        let listen = listen.parse().map_err(|_| expected())?;
        let (service, port) = target.rsplit_once(':').ok_or_else(expected)?;
        let port = port.parse().map_err(|_| expected())?;
        Ok(Self {
            listen,
            service: service.to_string(),
            port,
        })
    }
}

/// Every upstream has a port, a service name and an address no other
/// listener (`others`, or an earlier upstream) uses.
pub fn validate(
    upstreams: &[UpstreamListener],
    others: &[SocketAddr],
    source: &str,
) -> Result<(), ConfigError> {
    let err = |field: String, problem: String| Err(ConfigError::new(source, &field, problem));
    let mut listens = others.to_vec();
    for (i, u) in upstreams.iter().enumerate() {
        if u.port == 0 {
            return err(
                format!("upstreams[{i}].port"),
                "expected a port in 1..=65535, got 0".into(),
            );
        }
        let name_ok = !u.service.is_empty()
            && u.service.len() <= 253
            && u.service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !name_ok {
            return err(
                format!("upstreams[{i}].service"),
                format!(
                    "expected a service name (`name`, `name.namespace` or a full cluster name), got `{}`",
                    u.service
                ),
            );
        }
        if u.listen.port() != 0 && listens.contains(&u.listen) {
            return err(
                format!("upstreams[{i}].listen"),
                format!("expected an address no other listener uses, got {}", u.listen),
            );
        }
        listens.push(u.listen);
    }
    Ok(())
}
