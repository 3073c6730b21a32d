//! The gateway's TLS certificates: each Secret a listener names
//! (`namespace/name`) is read from `<certificates dir>/<namespace>/<name>/`
//! `tls.crt` and `tls.key` — how a `kubernetes.io/tls` Secret volume
//! mounts, so private keys never pass through the control plane.
//!
//! Files are checked once a second and re-read when their modification
//! time or length changes (the kubelet swaps a symlink); a replaced pair
//! is served from the next handshake on, open connections are untouched.
//! A pair that does not load keeps the last good one (with a warning); a
//! Secret never loaded has no certificate, and handshakes for its
//! hostnames fail.
//!
//! The handshake picks a listener by SNI ([`super::Port::listener_for`])
//! and serves that listener's first certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::Snapshot;

/// How often the files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

type Stamp = Option<(SystemTime, u64)>;

#[derive(Default)]
struct Loaded {
    key: Option<Arc<CertifiedKey>>,
    stamps: (Stamp, Stamp),
    /// Whether a load was attempted (a failure is logged once per change).
    tried: bool,
}

/// Every certificate the listeners name, by `namespace/name`.
pub struct CertStore {
    dir: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<HashMap<String, Loaded>>,
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl CertStore {
    pub fn new(dir: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            dir,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            loaded: RwLock::new(HashMap::new()),
        })
    }

    /// The certificate of Secret `name` (`namespace/name`), if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        loaded.get(name).and_then(|l| l.key.clone())
    }

    fn files(&self, name: &str) -> Option<(PathBuf, PathBuf)> {
        let (namespace, secret) = name.split_once('/')?;
        // Names come from validated Gateways (DNS labels), never paths.
        if [namespace, secret]
            .iter()
            .any(|p| p.is_empty() || p.contains(['/', '\\']) || p.starts_with('.'))
        {
            return None;
        }
        let dir = self.dir.as_ref()?.join(namespace).join(secret);
        Some((dir.join("tls.crt"), dir.join("tls.key")))
    }

    fn load(&self, crt: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
            .map_err(|e| format!("{}: {e}", crt.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", crt.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate", crt.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| e.to_string())?;
        Ok(Arc::new(certified))
    }

    /// Loads what changed among the Secrets `names`, and forgets the rest.
    pub fn refresh<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut next = HashMap::new();
        let mut current = std::mem::take(&mut *self.loaded.write().unwrap_or_else(|p| p.into_inner()));
        for name in names {
            if next.contains_key(name) {
                continue;
            }
            let mut entry = current.remove(name).unwrap_or_default();
            match self.files(name) {
                None => {
                    if !entry.tried {
                        tracing::error!(
                            secret = name,
                            "no certificates directory (--certificates) for a TLS listener's Secret"
                        );
                    }
                    entry.tried = true;
                }
                Some((crt, key)) => {
                    let stamps = (stamp(&crt), stamp(&key));
                    if !entry.tried || stamps != entry.stamps {
                        match self.load(&crt, &key) {
                            Ok(k) => {
                                if entry.key.is_some() {
                                    tracing::info!(secret = name, "certificate reloaded");
                                }
                                entry.key = Some(k);
                            }
                            Err(e) => tracing::warn!(
                                secret = name,
                                error = %e,
                                kept = entry.key.is_some(),
                                "cannot load the certificate; the last good one stays in force"
                            ),
                        }
                        entry.stamps = stamps;
                        entry.tried = true;
                    }
                }
            }
            next.insert(name.to_string(), entry);
        }
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Refreshes every [`RELOAD_EVERY`] and on each configuration.
    pub async fn run(self: Arc<Self>, mut config: watch::Receiver<Arc<Snapshot>>) {
        loop {
            let snapshot = config.borrow_and_update().clone();
            self.refresh(snapshot.certificates());
            tokio::select! {
                changed = config.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RELOAD_EVERY) => {}
            }
        }
    }
}

/// Picks the certificate for one handshake on one port.
#[derive(Debug)]
pub struct SniResolver {
    pub port: u16,
    pub store: Arc<CertStore>,
    pub config: watch::Receiver<Arc<Snapshot>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.config.borrow().clone();
        let port = snapshot.ports.get(&self.port)?;
        let listener = port.listener_for(hello.server_name())?;
        listener.certificates.iter().find_map(|c| self.store.get(c))
    }
}
