//! The file source: files or directories of multi-document YAML, polled for
//! changes (debounced) and fed to the index.
//!
//! Each file is accepted or rejected as a unit: a change that leaves any
//! document of a file invalid is rejected, logged, counted, and the file's
//! last good documents stay in force.
//!
//! AuthorizationPolicies fail closed: one in a rejected version of a file
//! that the file's last good version does not have (a new file, or a new
//! policy in an old one) is not simply left out, which would leave its
//! port allow-all: a [`Spec::DenyAll`] stands in for it until the file is
//! fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::index::Index;
use crate::metrics::ControlMetrics;
use crate::model::{parse_file, DocError, DocRef, Document, InForce, RejectedAuthz, Spec};

/// The name the file source registers its documents under in the index.
pub const SOURCE: &str = "files";

type Fingerprint = Option<(SystemTime, u64)>;

#[derive(Debug, Default)]
struct FileState {
    fingerprint: Fingerprint,
    /// Last good documents.
    docs: Vec<Document>,
    /// Errors of the latest version (empty when it was accepted).
    errors: Vec<DocError>,
    /// Deny-all stand-ins for the AuthorizationPolicies of a rejected
    /// latest version that `docs` does not have.
    denials: Vec<Document>,
}

/// What one reload found.
#[derive(Debug, Default)]
pub struct Report {
    pub changed_files: Vec<PathBuf>,
    pub rejected_files: Vec<PathBuf>,
    pub errors: Vec<DocError>,
}

pub struct FileSource {
    roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
}

/// Every YAML file under `roots` (directories are walked), sorted. Symbolic
/// links are followed, as a mounted ConfigMap needs, but each directory
/// is walked once and each file listed once (by its real path, under the
/// shortest name that reaches it), so a link loop ends the walk instead of
/// overflowing the stack, and a ConfigMap's `..data` links do not list a
/// document three times.
pub fn list_files(roots: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    use std::collections::{HashMap, HashSet};
    fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if !seen.insert(std::fs::canonicalize(dir)?) {
            tracing::debug!(dir = %dir.display(), "already walked (a symbolic link back to it); skipped");
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, seen, out)?;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for root in roots {
        if root.is_dir() {
            walk(root, &mut seen, &mut found)?;
        } else {
            std::fs::metadata(root)?;
            found.push(root.clone());
        }
    }
    let mut by_target: HashMap<PathBuf, PathBuf> = HashMap::new();
    for path in found {
        // A dangling link is listed as itself (reading it reports the error).
        let target = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let shorter = |old: &PathBuf| (path.components().count(), &path) < (old.components().count(), old);
        match by_target.get(&target) {
            Some(old) if !shorter(old) => {}
            _ => {
                by_target.insert(target, path);
            }
        }
    }
    let mut out: Vec<PathBuf> = by_target.into_values().collect();
    out.sort();
    Ok(out)
}

fn fingerprint(path: &Path) -> Fingerprint {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl FileSource {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            files: BTreeMap::new(),
        }
    }

    fn fingerprints(&self) -> BTreeMap<PathBuf, Fingerprint> {
        match list_files(&self.roots) {
            Ok(files) => files.into_iter().map(|f| (f.clone(), fingerprint(&f))).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list config files");
                // Keep what we have rather than dropping every document.
                self.files
                    .iter()
                    .map(|(p, s)| (p.clone(), s.fingerprint))
                    .collect()
            }
        }
    }

    /// Whether any file appeared, disappeared or changed since the last
    /// reload.
    pub fn changed(&self) -> bool {
        let now = self.fingerprints();
        now.len() != self.files.len()
            || now
                .iter()
                .any(|(p, f)| self.files.get(p).is_none_or(|s| s.fingerprint != *f))
    }

    /// Re-reads the files that changed.
    pub fn reload(&mut self) -> Report {
        let now = self.fingerprints();
        let mut report = Report::default();
        self.files.retain(|p, _| {
            let keep = now.contains_key(p);
            if !keep {
                report.changed_files.push(p.clone());
            }
            keep
        });
        // Parse every changed file; accepted ones are checked for names
        // another file already defines before they replace their old docs.
        let mut parsed: Vec<(PathBuf, Vec<Document>)> = Vec::new();
        for (path, fp) in &now {
            let state = self.files.entry(path.clone()).or_default();
            if state.fingerprint == *fp && state.fingerprint.is_some() {
                continue;
            }
            state.fingerprint = *fp;
            report.changed_files.push(path.clone());
            let name = path.display().to_string();
            let (docs, errors) = match std::fs::read_to_string(path) {
                Ok(text) => parse_file(&name, &text),
                Err(e) => (
                    Vec::new(),
                    vec![DocError {
                        doc: DocRef {
                            file: name.clone(),
                            index: 0,
                            name: None,
                        },
                        field: "(file)".into(),
                        problem: format!("cannot read: {e}"),
                        authz: None,
                    }],
                ),
            };
            state.errors = errors;
            parsed.push((path.clone(), docs));
        }
        for (path, docs) in parsed {
            let state = &self.files[&path];
            if !state.errors.is_empty() {
                let denials = denials(&path, &state.docs, &docs, &state.errors);
                self.files
                    .get_mut(&path)
                    .expect("parsed files are tracked")
                    .denials = denials;
                continue;
            }
            let duplicates: Vec<DocError> = docs
                .iter()
                .enumerate()
                .filter_map(|(i, doc)| {
                    let other = self.files.iter().find(|(p, s)| {
                        **p != path
                            && s.docs.iter().any(|d| {
                                d.spec.kind() == doc.spec.kind()
                                    && d.meta.namespace == doc.meta.namespace
                                    && d.meta.name == doc.meta.name
                            })
                    })?;
                    Some(DocError {
                        doc: DocRef {
                            file: path.display().to_string(),
                            index: i,
                            name: Some(format!(
                                "{} {}/{}",
                                doc.spec.kind(),
                                doc.meta.namespace,
                                doc.meta.name
                            )),
                        },
                        field: "metadata.name".into(),
                        problem: format!("expected a unique name; {} already defines it", other.0.display()),
                        authz: None,
                    })
                })
                .collect();
            let state = self.files.get_mut(&path).expect("parsed files are tracked");
            if duplicates.is_empty() {
                state.docs = docs;
                state.denials = Vec::new();
            } else {
                state.denials = denials(&path, &state.docs, &docs, &duplicates);
                state.errors = duplicates;
            }
        }
        for (path, state) in &self.files {
            if !state.errors.is_empty() {
                report.rejected_files.push(path.clone());
                report.errors.extend(state.errors.iter().cloned());
            }
        }
        report
    }

    /// The documents in force: every file's last good set, then the
    /// deny-all stand-ins of rejected files (which never displace a valid
    /// policy of the same name in another file).
    pub fn documents(&self) -> Vec<Document> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let good = self.files.values().flat_map(|s| &s.docs);
        let denials = self.files.values().flat_map(|s| &s.denials);
        for doc in good.chain(denials) {
            if seen.insert((doc.spec.kind(), doc.meta.namespace.clone(), doc.meta.name.clone())) {
                out.push(doc.clone());
            }
        }
        out
    }

    /// Loads (the index counts this source synced after that first
    /// apply), then polls every `interval` until the task is dropped; a
    /// change is applied once the files have been quiet for `debounce`.
    pub async fn run(
        mut self,
        index: Arc<Index>,
        metrics: Arc<ControlMetrics>,
        interval: Duration,
        debounce: Duration,
    ) {
        let mut first = true;
        loop {
            let report = self.reload();
            let docs = self.documents();
            for e in &report.errors {
                let in_force = InForce::of(e, &docs);
                tracing::error!(error = %e, in_force = in_force.as_str(), "config rejected; {}", in_force.explain());
            }
            metrics.invalid_documents(SOURCE, &report.errors, &docs);
            // The first load is applied even when it found no files: that
            // is this source's first view, which the index waits for.
            if first || !report.changed_files.is_empty() {
                first = false;
                metrics.config_reloaded(report.errors.len());
                index.apply(SOURCE, docs);
                metrics.index_stats(index.stats());
                let verdicts = index.all_route_verdicts();
                log_route_verdicts(&verdicts);
                metrics.route_verdicts(&verdicts);
                tracing::info!(
                    files = report.changed_files.len(),
                    rejected = report.rejected_files.len(),
                    "config applied"
                );
            }
            // Wait for a change, then for the writes to settle.
            loop {
                tokio::time::sleep(interval).await;
                if self.changed() {
                    break;
                }
            }
            loop {
                let before = self.fingerprints();
                tokio::time::sleep(debounce).await;
                if self.fingerprints() == before {
                    break;
                }
            }
        }
    }
}

/// The deny-all stand-ins for a rejected version of a file: one for each
/// AuthorizationPolicy in it (`docs`, valid but rejected with their file,
/// or among `errors`) that the file's last good version `good` does not
/// have. An invalid *update* of a policy keeps its last good version
/// instead (the whole last good file stays).
fn denials(file: &Path, good: &[Document], docs: &[Document], errors: &[DocError]) -> Vec<Document> {
    let first = errors.first().map(ToString::to_string).unwrap_or_default();
    let valid = docs.iter().filter_map(|d| {
        let Spec::AuthorizationPolicy(spec) = &d.spec else {
            return None;
        };
        // Valid, but its file was rejected: deny until the file is fixed.
        Some(DocError {
            doc: DocRef {
                file: file.display().to_string(),
                index: 0,
                name: Some(format!(
                    "AuthorizationPolicy {}/{}",
                    d.meta.namespace, d.meta.name
                )),
            },
            field: "(file)".into(),
            problem: format!("its file was rejected: {first}"),
            authz: Some(Box::new(RejectedAuthz {
                namespace: d.meta.namespace.clone(),
                name: d.meta.name.clone(),
                target: spec.target_ref.clone(),
            })),
        })
    });
    let invalid = errors.iter().filter(|e| e.authz.is_some()).cloned();
    valid
        .chain(invalid)
        .filter(|e| {
            let Some(a) = e.authz.as_ref() else {
                return false;
            };
            !good.iter().any(|d| {
                d.spec.kind() == "AuthorizationPolicy"
                    && d.meta.namespace == a.namespace
                    && d.meta.name == a.name
            })
        })
        .filter_map(|e| e.deny_all())
        .collect()
}

/// Says what Kubernetes route status would say, for each HTTPRoute parent
/// that is not accepted or has a backend that does not resolve.
fn log_route_verdicts(verdicts: &[(String, Vec<crate::index::ParentVerdict>)]) {
    for (route, parents) in verdicts {
        for p in parents {
            for (condition, v) in [("Accepted", &p.accepted), ("ResolvedRefs", &p.resolved_refs)] {
                if !v.ok {
                    tracing::warn!(
                        route = %route,
                        parent = p.parent_index,
                        condition,
                        reason = v.reason,
                        "{route} parentRefs[{}]: {condition} False ({}): {}",
                        p.parent_index,
                        v.reason,
                        v.message
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    const SVC: &str = "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: NAME, namespace: demo}\nspec:\n  endpoints: [{address: 127.0.0.1:8080}]\n";

    fn names(src: &FileSource) -> Vec<String> {
        src.documents().into_iter().map(|d| d.meta.name).collect()
    }

    #[test]
    fn symbolic_link_loops_end_and_configmap_links_list_each_file_once() {
        use std::os::unix::fs::symlink;
        let d = TempDir::new();
        let root = d.path().join("mesh");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.yaml"), SVC.replace("NAME", "a")).unwrap();
        // A loop: mesh/sub/back -> mesh.
        symlink(&root, root.join("sub/back")).unwrap();
        // A ConfigMap volume: ..2026_12_02/b.yaml, ..data -> it, b.yaml -> ..data/b.yaml.
        std::fs::create_dir_all(root.join("..2026_12_02")).unwrap();
        std::fs::write(root.join("..2026_12_02/b.yaml"), SVC.replace("NAME", "b")).unwrap();
        symlink(root.join("..2026_12_02"), root.join("..data")).unwrap();
        symlink(root.join("..data/b.yaml"), root.join("b.yaml")).unwrap();
        let files = list_files(std::slice::from_ref(&root)).unwrap();
        assert_eq!(files, [root.join("b.yaml"), root.join("sub/a.yaml")]);
        let mut src = FileSource::new(vec![root]);
        let report = src.reload();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut got = names(&src);
        got.sort();
        assert_eq!(got, ["a", "b"], "each document once, no duplicate-name error");
    }

    #[test]
    fn invalid_change_keeps_the_last_good_file() {
        let d = TempDir::new();
        let f = d.path().join("a.yaml");
        std::fs::write(&f, SVC.replace("NAME", "web")).unwrap();
        let mut src = FileSource::new(vec![d.path().to_path_buf()]);
        let r = src.reload();
        assert!(r.errors.is_empty());
        assert_eq!(names(&src), ["web"]);

        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            &f,
            SVC.replace("NAME", "web2").replace("127.0.0.1:8080", "nowhere"),
        )
        .unwrap();
        assert!(src.changed());
        let r = src.reload();
        assert_eq!(r.rejected_files, std::slice::from_ref(&f));
        assert_eq!(r.errors[0].field, "spec.endpoints[0].address");
        assert!(r.errors[0]
            .to_string()
            .contains("a.yaml: document 0 (MeshService demo/web2)"));
        assert_eq!(names(&src), ["web"], "the last good version stays");

        std::fs::write(&f, SVC.replace("NAME", "web3") + "   \n").unwrap();
        let r = src.reload();
        assert!(r.errors.is_empty());
        assert_eq!(names(&src), ["web3"]);

        std::fs::remove_file(&f).unwrap();
        src.reload();
        assert!(names(&src).is_empty(), "a deleted file's documents go");
    }

    const AUTHZ: &str = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: NAME, namespace: demo}\nspec:\n  targetRef: {name: web, port: 80}\n  rules: [{from: {namespaces: [FROM]}}]\n";

    fn authz(name: &str, from: &str) -> String {
        AUTHZ.replace("NAME", name).replace("FROM", from)
    }

    /// `(name, what)` of the AuthorizationPolicies in force: `deny` for a
    /// stand-in, else the namespaces its first rule admits.
    fn policies(src: &FileSource) -> Vec<(String, String)> {
        src.documents()
            .into_iter()
            .filter_map(|d| match d.spec {
                Spec::AuthorizationPolicy(p) => {
                    Some((d.meta.name, p.rules[0].from.clone()?.namespaces.join(",")))
                }
                Spec::DenyAll(_) => Some((d.meta.name, "deny".into())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_invalid_authorization_policy_keeps_its_last_good_version_or_denies() {
        let d = TempDir::new();
        let f = d.write("a.yaml", &authz("strict", "shop"));
        let mut src = FileSource::new(vec![d.path().to_path_buf()]);
        assert!(src.reload().errors.is_empty());
        assert_eq!(policies(&src), [("strict".into(), "shop".into())]);

        // An invalid update: the last good version stays.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&f, authz("strict", "shop").replace("port: 80", "port: 0")).unwrap();
        let r = src.reload();
        assert_eq!(r.errors[0].field, "spec.targetRef.port");
        assert_eq!(policies(&src), [("strict".into(), "shop".into())]);
        assert_eq!(InForce::of(&r.errors[0], &src.documents()), InForce::LastGood);

        // A new file with only an invalid policy (a name Kubernetes would
        // take): its target is denied, not left open.
        d.write("b.yaml", &authz("payments.strict", "shop"));
        let r = src.reload();
        let e = r.errors.iter().find(|e| e.doc.file.ends_with("b.yaml")).unwrap();
        assert_eq!(e.field, "metadata.name");
        let docs = src.documents();
        assert_eq!(InForce::of(e, &docs), InForce::DenyAll);
        let deny = docs
            .iter()
            .find_map(|d| match &d.spec {
                Spec::DenyAll(deny) if d.meta.name == "payments.strict" => Some(deny.clone()),
                _ => None,
            })
            .expect("a deny-all stand-in");
        assert_eq!((deny.target.name.as_str(), deny.target.port), ("web", Some(80)));
        assert!(deny.reason.contains("metadata.name"), "{}", deny.reason);

        // A new, valid policy in a file rejected for another document:
        // denied too until the file is fixed.
        let c = d.write(
            "c.yaml",
            &format!(
                "{}---\n{}",
                authz("fresh", "web"),
                SVC.replace("NAME", "x").replace("127.0.0.1:8080", "nowhere")
            ),
        );
        src.reload();
        assert!(policies(&src).contains(&("fresh".into(), "deny".into())));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&c, authz("fresh", "web")).unwrap();
        assert!(src
            .reload()
            .errors
            .iter()
            .all(|e| !e.doc.file.ends_with("c.yaml")));
        assert!(
            policies(&src).contains(&("fresh".into(), "web".into())),
            "fixed: in force"
        );

        // Fixing b.yaml replaces the stand-in.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(d.path().join("b.yaml"), authz("payments-strict", "shop")).unwrap();
        src.reload();
        let names: Vec<String> = policies(&src).into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"payments-strict".to_string()) && !names.contains(&"payments.strict".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn a_stand_in_never_displaces_a_valid_policy_of_another_file() {
        let d = TempDir::new();
        // a.yaml sorts first; its duplicate of b's policy is rejected.
        d.write("a.yaml", &authz("p", "other"));
        d.write("b.yaml", &authz("p", "shop"));
        let mut src = FileSource::new(vec![d.path().join("b.yaml")]);
        src.reload();
        src.roots.push(d.path().join("a.yaml"));
        let r = src.reload();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(policies(&src), [("p".into(), "shop".into())]);
    }

    #[test]
    fn duplicate_across_files_rejects_the_later_file() {
        let d = TempDir::new();
        std::fs::write(d.path().join("a.yaml"), SVC.replace("NAME", "web")).unwrap();
        std::fs::write(d.path().join("b.yaml"), SVC.replace("NAME", "web")).unwrap();
        let mut src = FileSource::new(vec![d.path().to_path_buf()]);
        let r = src.reload();
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].doc.file.ends_with("b.yaml"));
        assert!(r.errors[0].problem.contains("a.yaml already defines it"));
        assert_eq!(names(&src), ["web"]);
    }
}
