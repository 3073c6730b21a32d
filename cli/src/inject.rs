//! `weft inject -f FILE|-`: the admission webhook's mutation
//! ([`weft_control::inject`]) applied offline to multi-document YAML.
//! Pods and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs (also inside a `List`) are injected; other
//! documents pass through. The result goes to stdout, one line per
//! workload to stderr. A document that cannot be injected (a bad
//! `weft.dev/` annotation) fails the whole command, naming it.

use std::io::Read;
use std::process::ExitCode;

use serde_json::Value;
use weft_control::inject::{self, InjectConfig, Outcome, Skip};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    /// Image of the injected `weft-proxy` (as the webhook's
    /// `--inject-proxy-image`).
    #[arg(long, env = "WEFT_INJECT_PROXY_IMAGE", default_value = inject::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The control plane's gRPC URL as the proxies reach it (as the
    /// webhook's `--inject-control-plane`; the chart's Service).
    #[arg(long, env = "WEFT_INJECT_CONTROL_PLANE", default_value = inject::DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,
    /// The SPIFFE ID the control plane's certificate must name. Default:
    /// `spiffe://<trust domain>/ns/weft-system/sa/weft-control`, the
    /// chart's.
    #[arg(long, env = "WEFT_INJECT_CONTROL_PLANE_IDENTITY", value_name = "SPIFFE_ID")]
    pub control_plane_identity: Option<String>,
    /// The ConfigMap (in each pod's namespace) holding the trust anchors
    /// (`ca.crt`) the proxy verifies the control plane with: what
    /// weft-control publishes in every namespace.
    #[arg(
        long,
        env = "WEFT_INJECT_TRUST_ANCHORS_CONFIGMAP",
        default_value = inject::DEFAULT_TRUST_ANCHORS_CONFIGMAP
    )]
    pub trust_anchors_configmap: String,
    /// SPIFFE trust domain (the control plane's `--trust-domain`).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

pub fn run(args: Args) -> ExitCode {
    let text = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(&args.file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("weft inject: {}: {e}", args.file);
            return ExitCode::from(66);
        }
    };
    let control_plane_identity = args.control_plane_identity.unwrap_or_else(|| {
        inject::ControlPlane {
            trust_domain: args.trust_domain.clone(),
            ..inject::ControlPlane::default()
        }
        .identity()
    });
    let cfg = InjectConfig {
        proxy_image: args.proxy_image,
        control_plane: args.control_plane,
        control_plane_identity,
        trust_anchors_configmap: args.trust_anchors_configmap,
        trust_domain: args.trust_domain,
        ..InjectConfig::default()
    };
    match inject_yaml(&text, &cfg) {
        Ok((yaml, report)) => {
            print!("{yaml}");
            for line in report {
                eprintln!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft inject: {}: {e}", args.file);
            ExitCode::FAILURE
        }
    }
}

/// Injects every workload in `text` (multi-document YAML). Returns the
/// documents as YAML and one line per workload saying what was done.
pub fn inject_yaml(text: &str, cfg: &InjectConfig) -> Result<(String, Vec<String>), String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let mut report = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        let what = format!("document {}", i + 1);
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            let items = doc.get_mut("items").and_then(Value::as_array_mut);
            for (j, item) in items.into_iter().flatten().enumerate() {
                inject_one(cfg, item, &format!("{what}, items[{j}]"), &mut report)?;
            }
        } else {
            inject_one(cfg, doc, &what, &mut report)?;
        }
    }
    let yaml = serde_saphyr::to_string_multiple(&docs).map_err(|e| format!("cannot write YAML: {e}"))?;
    Ok((yaml, report))
}

fn inject_one(
    cfg: &InjectConfig,
    doc: &mut Value,
    what: &str,
    report: &mut Vec<String>,
) -> Result<(), String> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_lowercase();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let label = format!("{kind}/{name}");
    match inject::inject_manifest(cfg, doc) {
        Ok(Outcome::Injected) => report.push(format!("{label} injected")),
        Ok(Outcome::Skipped(Skip::NotAWorkload)) => {}
        Ok(Outcome::Skipped(why)) => report.push(format!("{label} skipped: {}", why.reason())),
        Err(e) => return Err(format!("{what} ({label}): {e}")),
    }
    Ok(())
}
