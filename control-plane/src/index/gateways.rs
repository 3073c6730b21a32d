//! An edge gateway's configuration: the listeners of a Gateway of Weft's
//! class, each with the rules of the routes attached to it, and the
//! GatewayPolicies that apply.
//!
//! A listener's rules are flattened one per hostname and match. They are
//! ordered first by hostname, as the Gateway API's precedence says (the
//! longest exact hostname, then the longest wildcard, then rules for any
//! host), then as mesh routes are ([`super::routes`]), so the gateway
//! takes the first rule whose hostname and match both fit.

use std::cmp::Reverse;
use std::sync::Arc;

use tokio::sync::watch;
use weft_api::v1 as api;

use super::{ms, Index, IndexConfig, Inner, RouteEntry, Verdict};
use crate::model::{hostname_intersection, GatewayListener, GatewayPolicySpec, ParentRef, GATEWAY_CLASS};

impl Index {
    /// Subscribes to Gateway `namespace/name`; the receiver holds its
    /// current configuration (`found: false` while there is no such
    /// Gateway of Weft's class).
    pub fn watch_gateway(&self, namespace: &str, name: &str) -> watch::Receiver<Arc<api::GatewayConfig>> {
        let mut inner = self.inner.lock().expect("index lock poisoned");
        let key = (namespace.to_string(), name.to_string());
        if let Some(sender) = inner.gateway_watches.get(&key) {
            return sender.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(inner.gateway_view(namespace, name, &self.config)));
        inner.gateway_watches.insert(key, tx);
        rx
    }
}

impl Index {
    /// Per listener of Gateway `namespace/name`, what its status says.
    /// `None` when the index holds no such Gateway of Weft's class.
    pub fn gateway_listener_status(&self, namespace: &str, name: &str) -> Option<Vec<ListenerStatus>> {
        let inner = self.inner.lock().expect("index lock poisoned");
        let key = (namespace.to_string(), name.to_string());
        let gateway = inner.gateways.get(&key)?;
        let routes: Vec<&RouteEntry> = inner.gateway_routes.get(&key).into_iter().flatten().collect();
        Some(
            gateway
                .listeners
                .iter()
                .map(|l| {
                    let attached: std::collections::BTreeSet<(&str, &str)> = routes
                        .iter()
                        .filter(|r| attaches(r, r.section.as_deref(), r.parent_port, namespace, l))
                        .filter(|r| !hosts(l, &r.spec.hostnames).is_empty())
                        .map(|r| (r.kind, r.full_name.as_str()))
                        .collect();
                    ListenerStatus {
                        name: l.name.clone(),
                        attached_routes: attached.len(),
                        refused_certificates: inner.certificates(namespace, l).1,
                    }
                })
                .collect(),
        )
    }
}

/// One Gateway listener's status (`status.listeners[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    /// Routes attached (`attachedRoutes`).
    pub attached_routes: usize,
    /// certificateRefs to another namespace's Secret that no
    /// ReferenceGrant permits (`ResolvedRefs: False`, `RefNotPermitted`).
    pub refused_certificates: Vec<String>,
}

/// Where a hostname stands: an exact name before a wildcard, the longer
/// first; any host last.
fn host_rank(host: Option<&str>) -> (u8, Reverse<usize>) {
    match host {
        None => (2, Reverse(0)),
        Some(h) if h.starts_with('*') => (1, Reverse(h.len())),
        Some(h) => (0, Reverse(h.len())),
    }
}

impl Inner {
    pub(super) fn gateway_view(
        &self,
        namespace: &str,
        name: &str,
        config: &IndexConfig,
    ) -> api::GatewayConfig {
        let Some(gateway) = self.gateways.get(&(namespace.to_string(), name.to_string())) else {
            return api::GatewayConfig::default();
        };
        api::GatewayConfig {
            found: true,
            listeners: gateway
                .listeners
                .iter()
                .map(|l| self.listener_view(namespace, name, l, config))
                .collect(),
        }
    }

    fn listener_view(
        &self,
        namespace: &str,
        name: &str,
        listener: &GatewayListener,
        config: &IndexConfig,
    ) -> api::GatewayListener {
        let mut flat = Vec::new();
        let routes = self
            .gateway_routes
            .get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten();
        for route in routes {
            if !attaches(
                route,
                route.section.as_deref(),
                route.parent_port,
                namespace,
                listener,
            ) {
                continue;
            }
            let hosts = hosts(listener, &route.spec.hostnames);
            if hosts.is_empty() {
                continue;
            }
            let edge = self.route_edge_policy(route);
            let rules = self.flatten_route(route, ("", ""), 0, config);
            for host in &hosts {
                for (precedence, rule) in &rules {
                    let mut rule = rule.clone();
                    rule.hostname = host.clone().unwrap_or_default();
                    rule.edge = edge.clone();
                    flat.push(((host_rank(host.as_deref()), precedence.clone()), rule));
                }
            }
        }
        flat.sort_by(|a, b| a.0.cmp(&b.0));
        api::GatewayListener {
            name: listener.name.clone(),
            port: u32::from(listener.port),
            protocol: listener.protocol.clone(),
            hostname: listener.hostname.clone().unwrap_or_default(),
            // A Secret in another namespace only with a ReferenceGrant
            // there; without one the listener has no certificate and its
            // handshakes fail (status: ResolvedRefs False).
            certificates: self.certificates(namespace, listener).0,
            routes: flat.into_iter().map(|(_, r)| r).collect(),
            policy: self.listener_edge_policy(namespace, name, &listener.name),
        }
    }

    /// A listener's TLS Secrets (`namespace/name`): those it may use, and
    /// those in another namespace that no ReferenceGrant lets it use.
    fn certificates(&self, namespace: &str, listener: &GatewayListener) -> (Vec<String>, Vec<String>) {
        listener.certificates(namespace).into_iter().partition(|c| {
            let (ns, name) = c.split_once('/').unwrap_or((namespace, c));
            self.secret_permitted(namespace, ns, name)
        })
    }

    /// The policy on a listener: one naming it by `sectionName` before one
    /// on the whole Gateway; between equals, the first by name.
    fn listener_edge_policy(
        &self,
        namespace: &str,
        gateway: &str,
        listener: &str,
    ) -> Option<api::EdgePolicy> {
        self.edge_policies
            .iter()
            .filter(|(ns, _, p)| {
                let t = &p.target_ref;
                ns == namespace
                    && t.kind == "Gateway"
                    && t.name == gateway
                    && t.section_name.as_deref().is_none_or(|s| s == listener)
            })
            .min_by_key(|(_, full_name, p)| (p.target_ref.section_name.is_none(), full_name.clone()))
            .map(|(_, full_name, p)| edge_policy(full_name, p))
    }

    /// The policy on a route (in the route's namespace), the first by name.
    fn route_edge_policy(&self, route: &RouteEntry) -> Option<api::EdgePolicy> {
        let name = route.full_name.rsplit('/').next().unwrap_or_default();
        self.edge_policies
            .iter()
            .filter(|(ns, _, p)| {
                *ns == route.namespace && p.target_ref.kind == route.kind && p.target_ref.name == name
            })
            .min_by_key(|(_, full_name, _)| full_name.clone())
            .map(|(_, full_name, p)| edge_policy(full_name, p))
    }

    /// `Accepted` for a route's Gateway parent: the Gateway exists (of
    /// Weft's class), and one of the listeners the parentRef selects lets
    /// the route attach and shares a hostname with it.
    pub(super) fn gateway_acceptance(
        &self,
        route: &RouteEntry,
        namespace: &str,
        parent: &ParentRef,
    ) -> Verdict {
        let Some(gateway) = self.gateways.get(&(namespace.to_string(), parent.name.clone())) else {
            return Verdict::failed(
                "NoMatchingParent",
                format!("no Gateway {namespace}/{} of class {GATEWAY_CLASS}", parent.name),
            );
        };
        let selected: Vec<&GatewayListener> = gateway
            .listeners
            .iter()
            .filter(|l| parent.section_name.as_deref().is_none_or(|s| s == l.name))
            .filter(|l| parent.port.is_none_or(|p| p == l.port))
            .collect();
        if selected.is_empty() {
            return Verdict::failed(
                "NoMatchingParent",
                format!(
                    "Gateway {namespace}/{} has no listener named by sectionName/port",
                    parent.name
                ),
            );
        }
        let allowed: Vec<&&GatewayListener> = selected
            .iter()
            .filter(|l| l.allows(route.kind, &route.namespace, namespace))
            .collect();
        if allowed.is_empty() {
            return Verdict::failed(
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {namespace}/{} allows {}s from namespace {}",
                    parent.name, route.kind, route.namespace
                ),
            );
        }
        if allowed.iter().all(|l| hosts(l, &route.spec.hostnames).is_empty()) {
            return Verdict::failed(
                "NoMatchingListenerHostname",
                "no hostname of the route is served by a listener it attaches to".into(),
            );
        }
        Verdict::ok("Accepted", "attached to the Gateway")
    }
}

/// Whether a route attached to the Gateway by a parentRef with
/// `section`/`port` applies to `listener`.
fn attaches(
    route: &RouteEntry,
    section: Option<&str>,
    port: Option<u16>,
    gateway_namespace: &str,
    listener: &GatewayListener,
) -> bool {
    section.is_none_or(|s| s == listener.name)
        && port.is_none_or(|p| p == listener.port)
        && listener.allows(route.kind, &route.namespace, gateway_namespace)
}

/// The hostnames a route serves on a listener: each of the route's that
/// the listener's covers (or that covers it), narrowed; a route without
/// hostnames takes the listener's. `None`: any host. Empty: the two share
/// none, and the route does not attach.
fn hosts(listener: &GatewayListener, route_hostnames: &[String]) -> Vec<Option<String>> {
    if route_hostnames.is_empty() {
        return vec![listener.hostname.clone()];
    }
    let mut out: Vec<Option<String>> = route_hostnames
        .iter()
        .filter_map(|h| hostname_intersection(listener.hostname.as_deref(), h))
        .map(|h| Some(h.to_string()))
        .collect();
    out.dedup();
    out
}

fn edge_policy(full_name: &str, p: &GatewayPolicySpec) -> api::EdgePolicy {
    api::EdgePolicy {
        source: full_name.to_string(),
        jwt: p.jwt.as_ref().map(|j| api::Jwt {
            issuer: j.issuer.clone(),
            audiences: j.audiences.clone(),
            jwks_file: j.jwks.file.clone().unwrap_or_default(),
            jwks_url: j.jwks.url.clone().unwrap_or_default(),
            clock_skew_ms: ms(Some(j.clock_skew.unwrap_or(std::time::Duration::from_secs(30)))),
            forward_claims: j
                .forward_claims
                .iter()
                .map(|c| api::ClaimHeader {
                    claim: c.claim.clone(),
                    header: c.header.to_ascii_lowercase(),
                })
                .collect(),
        }),
        rate_limit: p.rate_limit.as_ref().map(|r| api::EdgeRateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst,
            claim: r.per_claim.clone().unwrap_or_default(),
        }),
    }
}
