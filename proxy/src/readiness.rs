//! What `/ready` answers: ready while the proxy is listening, knows every
//! app port's policy (with a workload), holds a certificate with more than
//! a tenth of its lifetime left (with an identity), and is not draining.
//!
//! The first two happen once, at start ([`Readiness::started`]); the
//! certificate is checked on every probe, so a proxy whose renewals keep
//! failing turns unready before its certificate expires and ready again
//! once a renewal succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::identity::{CertState, Identity};

pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
    identity: Option<Arc<Identity>>,
}

/// Why the proxy is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("starting")]
    Starting,
    #[error("draining")]
    Draining,
    #[error("{0}")]
    Certificate(CertState),
}

impl Readiness {
    pub fn new(identity: Option<Arc<Identity>>) -> Self {
        Self {
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            identity,
        }
    }

    /// Listening, first certificate in, every policy known.
    pub fn started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Shutting down: unready for good.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn check(&self, now: SystemTime) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Acquire) {
            return Err(NotReady::Draining);
        }
        if !self.started.load(Ordering::Acquire) {
            return Err(NotReady::Starting);
        }
        match self.identity.as_ref().map(|id| id.state(now)) {
            None | Some(CertState::Fresh) => Ok(()),
            Some(state) => Err(NotReady::Certificate(state)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TokenFile;

    #[test]
    fn started_until_draining() {
        let r = Readiness::new(None);
        let now = SystemTime::now();
        assert_eq!(r.check(now), Err(NotReady::Starting));
        r.started();
        assert_eq!(r.check(now), Ok(()));
        r.drain();
        assert_eq!(r.check(now), Err(NotReady::Draining));
    }

    #[test]
    fn an_identity_without_a_certificate_is_not_ready() {
        let path = std::env::temp_dir().join(format!("weft-readiness-token-{}", std::process::id()));
        std::fs::write(&path, "token-0123456789").unwrap();
        let id = Identity::new(
            "spiffe://cluster.local/ns/demo/sa/web".into(),
            TokenFile::open(&path).unwrap(),
        );
        let _ = std::fs::remove_file(&path);
        let r = Readiness::new(Some(id));
        r.started();
        assert_eq!(
            r.check(SystemTime::now()),
            Err(NotReady::Certificate(CertState::Pending))
        );
    }
}
