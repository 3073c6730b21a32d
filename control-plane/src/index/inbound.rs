//! The server (inbound) policy of a workload port: which services select
//! the workload (a pod, by the Services whose selector matches it; a name,
//! by the MeshServices it names or that name it), and their
//! AuthorizationPolicies merged.

use weft_api::v1 as api;

use super::{default_ports, AuthzEntry, Inner, ServiceEntry, WorkloadRef};
use crate::model::MtlsMode;

impl Inner {
    /// The services whose policies apply to `workload`, each with its
    /// service ports that reach the workload's `port`. `None`: a pod the
    /// index does not know (yet).
    fn selected(&self, workload: &WorkloadRef, port: u16) -> Option<Vec<(&ServiceEntry, Vec<u16>)>> {
        let key = |ns: &str, name: &str| (ns.to_string(), name.to_string());
        match workload {
            WorkloadRef::Pod { namespace, name } => {
                let pod = self.workloads.get(&key(namespace, name))?;
                Some(
                    pod.services
                        .iter()
                        .filter_map(|s| {
                            let svc = self.services.get(&key(namespace, &s.name))?;
                            let reaching = s.ports.iter().filter(|(_, t)| *t == port).map(|(p, _)| *p);
                            Some((svc, reaching.collect()))
                        })
                        .collect(),
                )
            }
            WorkloadRef::Named { namespace, name } => Some(
                self.services
                    .iter()
                    .filter(|((ns, n), s)| {
                        ns == namespace
                            && (n == name
                                || s.spec
                                    .endpoints
                                    .iter()
                                    .any(|e| e.workload.as_deref() == Some(name.as_str())))
                    })
                    .map(|(_, svc)| {
                        // A service port reaches `port` when it targets it,
                        // or when one of its endpoints serves on it.
                        let reaching = default_ports(&svc.spec)
                            .iter()
                            .filter(|sp| {
                                sp.target_port == Some(port)
                                    || svc.spec.endpoints.iter().any(|e| e.address.port() == port)
                            })
                            .map(|sp| sp.port)
                            .collect();
                        (svc, reaching)
                    })
                    .collect(),
            ),
        }
    }

    /// The server policy of `workload` on `port`: every AuthorizationPolicy
    /// on a selected service that names no port, `port` itself, or a
    /// service port reaching it, merged. `None`: a pod not known yet.
    pub(super) fn server_policy(&self, workload: &WorkloadRef, port: u16) -> Option<api::ServerPolicy> {
        let selected = self.selected(workload, port)?;
        let protocol = selected
            .iter()
            .find_map(|(svc, reaching)| {
                default_ports(&svc.spec)
                    .into_iter()
                    .find(|p| p.port == port || reaching.contains(&p.port))
            })
            .map_or("http", |p| p.protocol.as_str());
        let mut policy = api::ServerPolicy {
            protocol: protocol.into(),
            default_allow: true,
            mtls: api::MtlsMode::Permissive as i32,
            ..Default::default()
        };
        for (svc, reaching) in &selected {
            let key = (svc.meta.namespace.clone(), svc.meta.name.clone());
            for AuthzEntry { full_name, spec } in self.authz.get(&key).into_iter().flatten() {
                let selects = |p: u16| p == port || reaching.contains(&p);
                if spec
                    .target_ref
                    .as_ref()
                    .and_then(|t| t.port)
                    .is_some_and(|p| !selects(p))
                {
                    continue;
                }
                policy.default_allow = false;
                policy.sources.push(full_name.clone());
                if spec.mtls == MtlsMode::Strict {
                    policy.mtls = api::MtlsMode::Strict as i32;
                }
                for rule in &spec.rules {
                    let from = rule.from.clone().unwrap_or_default();
                    let to = rule.to.clone().unwrap_or_default();
                    policy.rules.push(api::AuthorizationRule {
                        identities: from.identities,
                        namespaces: from.namespaces,
                        path_prefixes: to.paths,
                        methods: to.methods,
                    });
                }
                if let Some(r) = &spec.rate_limit {
                    let limit = api::RateLimit {
                        total_rps: r.requests_per_second,
                        total_burst: r.burst,
                        per_identity_rps: r.per_identity.as_ref().map_or(0.0, |p| p.requests_per_second),
                        per_identity_burst: r.per_identity.as_ref().map_or(0, |p| p.burst),
                    };
                    policy.rate_limit = Some(strictest(policy.rate_limit.take(), limit));
                }
            }
        }
        Some(policy)
    }
}

/// Two services' rate limits on one port: the lower non-zero rate of each
/// kind (0 is unlimited), with its burst.
fn strictest(current: Option<api::RateLimit>, new: api::RateLimit) -> api::RateLimit {
    let Some(cur) = current else { return new };
    let lower = |a: (f64, u32), b: (f64, u32)| match (a.0 > 0.0, b.0 > 0.0) {
        (true, true) if b.0 < a.0 => b,
        (true, _) => a,
        (false, _) => b,
    };
    let (total_rps, total_burst) = lower((cur.total_rps, cur.total_burst), (new.total_rps, new.total_burst));
    let (per_identity_rps, per_identity_burst) = lower(
        (cur.per_identity_rps, cur.per_identity_burst),
        (new.per_identity_rps, new.per_identity_burst),
    );
    api::RateLimit {
        total_rps,
        total_burst,
        per_identity_rps,
        per_identity_burst,
    }
}
