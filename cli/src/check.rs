//! `weft check PATH…`: validates config documents the way the control plane
//! does, prints ✔/✘ per document, exits non-zero on any error. With
//! `--cluster` or `--pre` it checks an installation or a cluster instead
//! ([`crate::cluster::checks`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use weft_control::files::list_files;
use weft_control::model::parse_file;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Files or directories of YAML documents.
    #[arg(required_unless_present_any = ["cluster", "pre"], conflicts_with_all = ["cluster", "pre"])]
    pub paths: Vec<PathBuf>,
    /// Check the installation in the cluster instead: CRDs, control plane,
    /// webhook, certificates, proxy versions.
    #[arg(long, conflicts_with = "pre")]
    pub cluster: bool,
    /// Check the cluster before installing: version, permissions.
    #[arg(long)]
    pub pre: bool,
    /// The control plane's namespace (with --cluster or --pre).
    #[arg(short = 'n', long, default_value = "weft-system")]
    pub namespace: String,
    #[command(flatten)]
    pub target: crate::cluster::Cluster,
}

pub fn run(args: Args) -> ExitCode {
    if args.cluster || args.pre {
        return crate::cluster::block_on(async {
            let client = match crate::cluster::client(args.target.context.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    println!("✘ kubernetes-api: {e}");
                    println!("    hint: set KUBECONFIG or --context");
                    return ExitCode::FAILURE;
                }
            };
            let results = if args.pre {
                crate::cluster::checks::pre(&client, &args.namespace).await
            } else {
                crate::cluster::checks::cluster(&client, &args.namespace).await
            };
            if crate::cluster::checks::print(&results) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        });
    }
    let files = match list_files(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "✘ cannot read {}: {e}",
                args.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::FAILURE;
        }
    };
    let mut ok = 0usize;
    let mut bad = 0usize;
    let mut defined: BTreeMap<(&'static str, String, String), String> = BTreeMap::new();
    let mut applied = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("✘ {name}: cannot read: {e}");
                bad += 1;
                continue;
            }
        };
        let (docs, errors) = parse_file(&name, &text);
        // The control plane accepts or rejects a file as a unit.
        let not_applied = if errors.is_empty() {
            ""
        } else {
            " (valid, but not applied: this file has errors)"
        };
        for doc in &docs {
            let key = (doc.spec.kind(), doc.meta.namespace.clone(), doc.meta.name.clone());
            let what = format!("{} {}/{}", key.0, key.1, key.2);
            match defined.get(&key) {
                Some(first) if *first != name => {
                    println!("✘ {name}: {what}: field `metadata.name`: expected a unique name; {first} already defines it");
                    bad += 1;
                }
                _ => {
                    println!("✔ {name}: {what}{not_applied}");
                    defined.insert(key, name.clone());
                    ok += 1;
                }
            }
        }
        for e in &errors {
            println!("✘ {e}");
            bad += 1;
        }
        if errors.is_empty() {
            applied.extend(docs);
        }
    }
    let warnings = route_verdicts(applied);
    println!(
        "{ok} valid, {bad} invalid ({} files){}",
        files.len(),
        if warnings > 0 {
            format!(", {warnings} route warnings")
        } else {
            String::new()
        }
    );
    if bad == 0 && !files.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the control plane (and Kubernetes route status) would say of the
/// HTTPRoutes the files define, together: a parent Service that is not
/// there, a backend that does not resolve. Valid config, so warnings (the
/// route's requests get 500, or it applies to nothing); returns how many.
fn route_verdicts(docs: Vec<weft_control::model::Document>) -> usize {
    let index = weft_control::index::Index::new(weft_control::index::IndexConfig::default());
    index.apply("files", docs);
    let mut warnings = 0;
    for (route, parents) in index.all_route_verdicts() {
        for p in parents {
            for (condition, v) in [("Accepted", &p.accepted), ("ResolvedRefs", &p.resolved_refs)] {
                if !v.ok {
                    println!(
                        "! {route}: parentRefs[{}]: {condition} False ({}): {}",
                        p.parent_index, v.reason, v.message
                    );
                    warnings += 1;
                }
            }
        }
    }
    warnings
}
