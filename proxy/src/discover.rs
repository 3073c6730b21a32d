//! Where endpoints come from.
//!
//! The data path asks a [`Discover`] for a service's endpoints and knows
//! nothing else about the source. Today the source is a static YAML file
//! ([`StaticEndpoints`]); the control-plane client replaces it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{parse_yaml, ConfigError};

/// One place a service can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where the workload itself listens (pod IP and port).
    pub addr: SocketAddr,
    /// The inbound listener of the Weft proxy in front of it. With one, the
    /// call travels over the mesh (HTTP/2 between proxies); without one, the
    /// endpoint is not meshed and is called directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<SocketAddr>,
}

/// A service's endpoints, shared cheaply.
pub type Endpoints = Arc<[Endpoint]>;

/// Answers "where does this service live?".
pub trait Discover: Send + Sync + 'static {
    /// The endpoints of `host:port`, or `None` when the mesh does not know
    /// the name. A known service may have no endpoints.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Option<Endpoints>> + Send + 'a>>;

    /// A JSON view of what is known, for `/config`.
    fn dump(&self) -> serde_json::Value;
}

/// Endpoints read once from a YAML file:
///
/// ```yaml
/// # service name (as apps write it in Host), or name:port
/// backend:
///   - addr: 127.0.0.1:8081    # the app
///     proxy: 127.0.0.1:4243   # its Weft proxy's inbound listener
/// ```
#[derive(Debug, Default, Clone)]
pub struct StaticEndpoints {
    services: HashMap<String, Endpoints>,
}

impl StaticEndpoints {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&name, "(file)", format!("cannot read: {e}")))?;
        let parsed: HashMap<String, Vec<Endpoint>> = parse_yaml(&text, &name)?;
        let services = parsed
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into()))
            .collect();
        Ok(Self { services })
    }

    pub fn from_map(services: HashMap<String, Vec<Endpoint>>) -> Self {
        Self {
            services: services.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }
    }

    fn lookup(&self, host: &str, port: u16) -> Option<Endpoints> {
        let host = host.to_ascii_lowercase();
        self.services
            .get(&format!("{host}:{port}"))
            .or_else(|| self.services.get(&host))
            .cloned()
    }
}

impl Discover for StaticEndpoints {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Option<Endpoints>> + Send + 'a>> {
        let found = self.lookup(host, port);
        Box::pin(std::future::ready(found))
    }

    fn dump(&self) -> serde_json::Value {
        let sorted: std::collections::BTreeMap<_, _> =
            self.services.iter().map(|(k, v)| (k, &v[..])).collect();
        serde_json::to_value(sorted).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_specific_entry_wins() {
        let a: Endpoint = Endpoint {
            addr: "127.0.0.1:1".parse().unwrap(),
            proxy: None,
        };
        let b: Endpoint = Endpoint {
            addr: "127.0.0.1:2".parse().unwrap(),
            proxy: None,
        };
        let s = StaticEndpoints::from_map(HashMap::from([
            ("web".to_string(), vec![a.clone()]),
            ("web:8080".to_string(), vec![b.clone()]),
        ]));
        assert_eq!(&*s.resolve("web", 80).await.unwrap(), &[a]);
        assert_eq!(&*s.resolve("WEB", 8080).await.unwrap(), &[b]);
        assert!(s.resolve("other", 80).await.is_none());
    }

    #[test]
    fn bad_endpoint_names_the_field() {
        let dir = std::env::temp_dir().join(format!("weft-ep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("endpoints.yaml");
        std::fs::write(&f, "web:\n  - addr: 127.0.0.1:80\n  - addr: nowhere\n").unwrap();
        let e = StaticEndpoints::from_file(&f).unwrap_err();
        assert_eq!(e.field, "web[1].addr");
        assert!(e.source_name.ends_with("endpoints.yaml"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
