//! YAML as Kubernetes reads it. Weft reads YAML 1.2 (serde-saphyr);
//! kubectl and Helm read YAML 1.1 (go-yaml v2), where a plain `on` is
//! `true`, `0644` is octal and `1:30` is 90. Every YAML document Weft
//! ships must mean the same to both, and every weft.dev custom resource
//! among them must be one the API server accepts.
//!
//! Read: every `*.yaml`, `*.yml` and `*.yaml.example` file under
//! `config/`, `charts/weft/crds/` and `cli/tests/inject/` (what `weft
//! inject` reads and writes for kubectl), the chart's `Chart.yaml` and
//! `values.yaml`, and every ```` ```yaml ```` block in `README.md`,
//! `docs/*.md` and the other READMEs. For each:
//!
//! - a YAML 1.1 reader and Weft's [`yaml_documents`] (what `weft check`
//!   and `weft-control` parse with; `weft-proxy` reads its files with the
//!   same serde-saphyr defaults) give the same JSON. The
//!   YAML 1.1 reader is PyYAML's safe loader (`python3`, one run for
//!   everything, bounded in time), adjusted where go-yaml v2 differs:
//!   `y`/`n` are booleans too, and timestamps stay strings;
//! - a mesh document (weft.dev, Gateway API) passes Weft's validation;
//! - a weft.dev custom resource (TrafficPolicy, AuthorizationPolicy;
//!   MeshService has no CRD) validates against the generated CRD
//!   schema with unknown fields rejected, as the API server does under
//!   kubectl's default strict field validation.
//!
//! A docs block that is deliberately partial or invalid is marked by
//! `<!-- not a document: why -->` on the line before its fence: it must
//! still read the same to both parsers, but is not validated.
//!
//! Without python3 and PyYAML the test is skipped with a reason; under
//! `CI=true` it fails (`.ci/run` installs PyYAML).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_control::kubernetes::crds::crds;
use weft_control::model::{parse_object, yaml_documents};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One YAML text to check.
struct Source {
    /// `path` or `path:line` (of a docs block's fence).
    name: String,
    text: String,
    /// Set for a docs block marked as not a document.
    partial: bool,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if [".yaml", ".yml", ".yaml.example"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            out.push(path);
        }
    }
}

/// The ```` ```yaml ```` blocks of a Markdown file: (fence line, text,
/// marked partial).
fn yaml_blocks(markdown: &str) -> Vec<(usize, String, bool)> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if fence == "```yaml" || fence == "```yml" {
            let partial = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_start().starts_with("<!-- not a document"));
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && !lines[end].trim_start().starts_with("```") {
                end += 1;
            }
            assert!(end < lines.len(), "line {}: unterminated ```yaml block", i + 1);
            out.push((i + 1, lines[start..end].join("\n") + "\n", partial));
            i = end;
        }
        i += 1;
    }
    out
}

fn sources() -> (Vec<Source>, usize, usize) {
    let root = repo();
    let rel = |p: &Path| p.strip_prefix(&root).unwrap().display().to_string();
    let mut files = Vec::new();
    for dir in ["config", "charts/weft/crds", "cli/tests/inject"] {
        yaml_files(&root.join(dir), &mut files);
    }
    files.push(root.join("charts/weft/Chart.yaml"));
    files.push(root.join("charts/weft/values.yaml"));
    let mut out: Vec<Source> = files
        .iter()
        .map(|p| Source {
            name: rel(p),
            text: std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            partial: false,
        })
        .collect();
    let file_count = out.len();

    let mut markdown = vec![
        root.join("README.md"),
        root.join("charts/weft/README.md"),
        root.join("bench/README.md"),
    ];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    markdown.extend(docs);
    for md in &markdown {
        let text = std::fs::read_to_string(md).unwrap_or_else(|e| panic!("{}: {e}", md.display()));
        for (line, block, partial) in yaml_blocks(&text) {
            out.push(Source {
                name: format!("{}:{line}", rel(md)),
                text: block,
                partial,
            });
        }
    }
    let block_count = out.len() - file_count;
    (out, file_count, block_count)
}

/// PyYAML's safe loader, read as go-yaml v2 (kubectl, Helm) reads: `y`,
/// `Y`, `n`, `N` are booleans as well, and timestamps stay the strings
/// they are written as. Reads a JSON list of YAML texts on stdin, writes
/// a JSON list of `{"docs": [...]}` or `{"error": "..."}`.
const YAML_1_1: &str = r#"
import json, re, sys, yaml

class Kube(yaml.SafeLoader):
    pass

Kube.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
Kube.bool_values = dict(yaml.SafeLoader.bool_values, y=True, n=False)
Kube.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))

out = []
for text in json.load(sys.stdin):
    try:
        docs = list(yaml.load_all(text, Loader=Kube))
        out.append({"docs": json.loads(json.dumps(docs, default=lambda o: {"(not JSON)": repr(o)}))})
    except Exception as e:
        out.append({"error": str(e)})
json.dump(out, sys.stdout)
"#;

/// Runs `python3 -c script` with `input` on stdin, killed after `limit`.
fn python(script: &str, input: &str, limit: Duration) -> Result<String, String> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let errors = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let mut stdin = child.stdin.take().unwrap();
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("python3 did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = reader.join().unwrap().map_err(|e| e.to_string())?;
    let err = errors.join().unwrap();
    if !status.success() {
        return Err(format!("python3 exited with {status}: {err}"));
    }
    written.map_err(|e| format!("writing to python3: {e}"))?;
    Ok(out)
}

/// Whether python3 with PyYAML is here. Missing: skipped with a reason,
/// or under `CI=true` a failure.
fn require_pyyaml() -> bool {
    match python("import yaml", "", Duration::from_secs(30)) {
        Ok(_) => true,
        Err(e) if weft_tests::in_ci() => {
            panic!("CI=true but python3 with PyYAML is not usable ({e}); .ci/run must `pip install pyyaml`")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: python3 with PyYAML is not usable ({e}); CI installs it (`pip install pyyaml`)"
            );
            false
        }
    }
}

/// Where `a` and `b` first differ, as `path: a vs b`.
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = difference(v, w, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{path}: key `{k}` only in the first")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}: key `{k}` only in the second"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| difference(v, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

/// Empty documents, which every reader skips, left out.
fn documents(docs: Vec<Value>) -> Vec<Value> {
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Checks `value` at `path` against a structural schema as the API server
/// does with `fieldValidation=Strict`: types, required fields, enums,
/// bounds, and no field the schema does not name. A keyword this checker
/// does not know fails the test, so a new schema feature is not ignored.
fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    const KNOWN: &[&str] = &[
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "nullable",
        "minimum",
        "maximum",
        "additionalProperties",
        "x-kubernetes-preserve-unknown-fields",
        "description",
        "default",
        "title",
        "format",
    ];
    let schema = schema.as_object().expect("a schema is an object");
    if let Some(k) = schema.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        panic!("{path}: the schema uses `{k}`, which this checker does not know: teach it");
    }
    if value.is_null() {
        // Nullable, or pruned by the API server: never an error.
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!(
                "{path}: {value} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "" => true,
        other => panic!("{path}: schema type `{other}` unknown to this checker"),
    };
    if !type_ok {
        errors.push(format!("{path}: expected {ty}, got {value}"));
        return;
    }
    if let Some(n) = value.as_f64() {
        if bound("minimum").is_some_and(|m| n < m) || bound("maximum").is_some_and(|m| n > m) {
            errors.push(format!("{path}: {value} is out of range"));
        }
    }
    if let Value::Array(items) = value {
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                check_schema(item, v, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Value::Object(fields) = value {
        let empty = serde_json::Map::new();
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap();
            if !fields.contains_key(name) {
                errors.push(format!("{path}: required field `{name}` is missing"));
            }
        }
        for (k, v) in fields {
            let at = format!("{path}.{k}");
            match (props.get(k), schema.get("additionalProperties")) {
                (Some(sub), _) => check_schema(sub, v, &at, errors),
                (None, Some(Value::Object(_))) => {
                    check_schema(&schema["additionalProperties"], v, &at, errors)
                }
                (None, Some(Value::Bool(true))) => {}
                _ if preserve => {}
                _ => errors.push(format!(
                    "{at}: unknown field (strict field validation rejects it)"
                )),
            }
        }
    }
}

/// The fields of `metadata` an API server knows (ObjectMeta).
const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// A weft.dev object against the generated CRD of its kind.
fn check_custom_resource(doc: &Value) -> Vec<String> {
    let kind = doc["kind"].as_str().unwrap_or("");
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let Some((_, crd)) = crds().into_iter().find(|(_, c)| c.spec.names.kind == kind) else {
        return vec![format!("no weft.dev CRD defines kind `{kind}`")];
    };
    let Some(version) = crd
        .spec
        .versions
        .iter()
        .find(|v| v.served && api_version == format!("{}/{}", crd.spec.group, v.name))
    else {
        return vec![format!(
            "apiVersion `{api_version}` is not served by {}",
            crd.metadata.name.unwrap()
        )];
    };
    let schema = serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
    let mut errors = Vec::new();
    let mut rest = doc.clone();
    let object = rest.as_object_mut().unwrap();
    object.remove("apiVersion");
    object.remove("kind");
    match object.remove("metadata") {
        Some(Value::Object(meta)) => {
            if !meta.get("name").is_some_and(Value::is_string) {
                errors.push("metadata.name: required".into());
            }
            for k in meta.keys().filter(|k| !OBJECT_META.contains(&k.as_str())) {
                errors.push(format!(
                    "metadata.{k}: unknown field (strict field validation rejects it)"
                ));
            }
        }
        other => errors.push(format!("metadata: expected an object, got {other:?}")),
    }
    check_schema(&schema, &rest, "", &mut errors);
    errors
        .iter_mut()
        .for_each(|e| *e = e.trim_start_matches('.').to_string());
    errors
}

#[test]
fn shipped_yaml_reads_the_same_to_kubectl_and_is_valid() {
    let (sources, files, blocks) = sources();
    // Not vacuous: the examples, the chart and the docs are all there.
    assert!(files >= 20 && blocks >= 10, "{files} files, {blocks} blocks");
    assert!(sources
        .iter()
        .any(|s| s.name == "config/examples/traffic-policy.yaml"));
    assert!(sources.iter().any(|s| s.name.starts_with("docs/kubernetes.md:")));
    if !require_pyyaml() {
        return;
    }
    let texts: Vec<&str> = sources.iter().map(|s| s.text.as_str()).collect();
    let out = python(
        YAML_1_1,
        &serde_json::to_string(&texts).unwrap(),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("the YAML 1.1 reader failed: {e}"));
    let theirs: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(theirs.len(), sources.len());

    let mut problems = Vec::new();
    let (mut documents_read, mut mesh, mut custom) = (0, 0, 0);
    for (source, theirs) in sources.iter().zip(theirs) {
        let name = &source.name;
        let ours = yaml_documents(&source.text);
        let theirs = match (&theirs["docs"], &theirs["error"]) {
            (Value::Array(d), _) => Ok(d.clone()),
            (_, e) => Err(e.as_str().unwrap_or("?").to_string()),
        };
        let (ours, theirs) = match (ours, theirs) {
            (Ok(o), Ok(t)) => (documents(o), documents(t)),
            (Err(_), Err(_)) if source.partial => continue,
            (o, t) => {
                problems.push(format!(
                    "{name}: YAML 1.1 (kubectl): {}; Weft: {}",
                    t.map_or_else(|e| e, |_| "reads it".into()),
                    o.map_or_else(|e| e, |_| "reads it".into()),
                ));
                continue;
            }
        };
        if ours.len() != theirs.len() {
            problems.push(format!(
                "{name}: YAML 1.1 (kubectl) reads {} documents, Weft {}",
                theirs.len(),
                ours.len()
            ));
            continue;
        }
        for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
            documents_read += 1;
            if let Some(d) = difference(t, o, "") {
                problems.push(format!(
                    "{name}: document {i}: YAML 1.1 (kubectl, Helm) and Weft read it differently at {} (kubectl's first, Weft's second)",
                    d.trim_start_matches('.')
                ));
                continue;
            }
            let api = o["apiVersion"].as_str().unwrap_or("");
            let is_mesh = api.starts_with("weft.dev/") || api.starts_with("gateway.networking.k8s.io/");
            if source.partial || !is_mesh {
                continue;
            }
            mesh += 1;
            if let Err(e) = parse_object(name, o.clone()) {
                problems.push(format!("{name}: document {i}: Weft rejects it: {e}"));
            }
            let kind = o["kind"].as_str().unwrap_or("");
            if api.starts_with("weft.dev/") && kind != "MeshService" {
                custom += 1;
                for e in check_custom_resource(o) {
                    problems.push(format!(
                        "{name}: document {i} ({kind}): the CRD schema rejects it: {e}"
                    ));
                }
            }
        }
    }
    println!(
        "{files} files and {blocks} docs blocks: {documents_read} documents read alike, \
         {mesh} mesh documents valid, {custom} custom resources checked against their CRD"
    );
    assert!(
        custom >= 4,
        "only {custom} TrafficPolicy/AuthorizationPolicy documents found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks see what they are meant to: `on:` keys, octal-looking
/// numbers, `no`, times; unknown fields and wrong types in a custom
/// resource.
#[test]
fn the_checks_catch_what_they_are_for() {
    // The schema checker.
    let tp = |spec: Value| {
        serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "p", "namespace": "shop"}, "spec": spec,
        })
    };
    let ok =
        tp(serde_json::json!({"targetRef": {"name": "web", "port": 80}, "retries": {"retryOn": ["5xx"]}}));
    assert_eq!(check_custom_resource(&ok), Vec::<String>::new());
    let errors = check_custom_resource(&tp(
        serde_json::json!({"targetRef": {"name": "web"}, "retries": {"true": ["5xx"]}}),
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("spec.retries.true: unknown field")),
        "{errors:?}"
    );
    let errors = check_custom_resource(&tp(
        serde_json::json!({"targetRef": {"port": 70000}, "loadBalancer": "random"}),
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("targetRef: required field `name`"))
            && errors
                .iter()
                .any(|e| e.contains("targetRef.port: 70000 is out of range"))
            && errors
                .iter()
                .any(|e| e.starts_with("spec.loadBalancer: \"random\" is not one of")),
        "{errors:?}"
    );
    let mut bad_meta = ok.clone();
    bad_meta["metadata"]["namepsace"] = "x".into();
    assert!(check_custom_resource(&bad_meta)[0].starts_with("metadata.namepsace: unknown field"));

    // The markdown reader.
    let md = "x\n```yaml\na: 1\n```\n\n<!-- not a document: a fragment -->\n\n```yaml\nb: 2\n```\n```console\n$ c\n```\n";
    assert_eq!(
        yaml_blocks(md),
        [(2, "a: 1\n".to_string(), false), (8, "b: 2\n".to_string(), true)]
    );

    if !require_pyyaml() {
        return;
    }
    let texts = [
        "retries: {on: [5xx]}\n",
        "mode: 0644\n",
        "country: no\n",
        "enabled: y\n",
        "at: 1:30\n",
        "when: 2026-01-01\n",
        "fine: [\"on\", \"0644\", \"no\", 1.5, true, x]\n",
    ];
    let out = python(
        YAML_1_1,
        &serde_json::to_string(&texts).unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    let theirs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let found: Vec<Option<String>> = texts
        .iter()
        .zip(&theirs)
        .map(|(text, t)| difference(&t["docs"][0], &yaml_documents(text).unwrap()[0], ""))
        .collect();
    assert_eq!(
        found,
        [
            Some(".retries: key `true` only in the first".to_string()),
            Some(".mode: 420 vs 644.0".into()),
            None, // Weft, too, reads a plain `no` as false.
            None, // and `y` as true.
            Some(".at: 90 vs \"1:30\"".into()),
            None, // go-yaml v2 keeps timestamps as strings.
            None,
        ]
    );
}
