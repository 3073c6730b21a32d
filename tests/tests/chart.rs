//! The Helm chart (`charts/weft`), checked by reading it, without `helm`
//! (which `chart_render/` runs: lint, the rendered objects against the
//! Kubernetes schemas, weft-control's flags). What is checked here:
//!
//! - `Chart.yaml`, `values.yaml` and `crds/*.yaml` parse; Chart.yaml's
//!   appVersion is the workspace version (the image tag);
//! - every template has balanced `{{ }}` actions and `end`s;
//! - every `.Values.a.b` path a template reads exists in values.yaml, and
//!   every value in values.yaml is read by some template and documented by
//!   a comment;
//! - every `include` names a `define`d helper;
//! - the image's user (Dockerfile) and the control plane's and the
//!   gateway's uid are the proxy uid `weft-proxy init` exempts in the
//!   tests.
//!
//! Paths are resolved conservatively. `.Values` at the top of a template or
//! in a helper (helpers are always included with the root context) and
//! `$.Values` anywhere are the chart's values; `$x.a` where
//! `$x := .Values.p` resolves to `p.a`. A relative `.Values` inside
//! `with`/`range` cannot be resolved (the dot has moved) and is an error:
//! write `$.Values` there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/weft")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

/// Every file under templates/, by name.
fn templates() -> BTreeMap<String, String> {
    let dir = chart().join("templates");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, read(&path));
    }
    assert!(out.contains_key("_helpers.tpl") && out.len() > 5, "{out:?}");
    out
}

/// One `{{ … }}` action: its text without delimiters and trim markers.
#[derive(Debug)]
struct Action {
    text: String,
    line: usize,
}

/// The actions of a template, comments left out; an error for a `{{`
/// without `}}`, a `}}` without `{{`, or a `{{` inside an action.
fn actions(src: &str) -> Result<Vec<Action>, String> {
    let line_at = |i: usize| src[..i].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let open = src[i..].find("{{").map(|o| i + o);
        let close = src[i..].find("}}").map(|c| i + c);
        match (open, close) {
            (None, None) => return Ok(out),
            (_, Some(c)) if open.is_none_or(|o| c < o) => {
                return Err(format!("line {}: `}}}}` without `{{{{`", line_at(c)))
            }
            (Some(o), _) => {
                let body = o + 2;
                let inner = src[body..].trim_start_matches('-').trim_start();
                if inner.starts_with("/*") {
                    let start = src.len() - inner.len();
                    let end = src[start..]
                        .find("*/")
                        .ok_or_else(|| format!("line {}: unterminated comment", line_at(o)))?;
                    let after = src[start + end + 2..].trim_start_matches([' ', '-']);
                    if !after.starts_with("}}") {
                        return Err(format!("line {}: a comment must end with `*/}}}}`", line_at(o)));
                    }
                    i = src.len() - after.len() + 2;
                    continue;
                }
                let Some(c) = src[body..].find("}}").map(|c| body + c) else {
                    return Err(format!("line {}: `{{{{` without `}}}}`", line_at(o)));
                };
                if src[body..c].contains("{{") {
                    return Err(format!("line {}: `{{{{` inside an action", line_at(o)));
                }
                let text = src[body..c].trim_start_matches('-').trim_end_matches('-').trim();
                out.push(Action {
                    text: text.to_string(),
                    line: line_at(o),
                });
                i = c + 2;
            }
            (None, Some(_)) => unreachable!(),
        }
    }
}

/// `.Values` paths read by one template (or a problem), with the names it
/// `define`s and `include`s.
#[derive(Default, Debug)]
struct Reads {
    paths: Vec<(Vec<String>, usize)>,
    problems: Vec<String>,
    defines: Vec<String>,
    includes: Vec<String>,
}

fn ident(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// `a.b.c` at the start of `s` (after `.Values.`).
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let n = ident(rest);
        if n == 0 {
            return out;
        }
        out.push(rest[..n].to_string());
        rest = &rest[n..];
        match rest.strip_prefix('.') {
            Some(r) if r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => rest = r,
            _ => return out,
        }
    }
}

/// The quoted name after `keyword` in an action, e.g. `include "weft.name" .`.
fn quoted_after(text: &str, keyword: &str) -> Vec<String> {
    text.match_indices(keyword)
        .filter_map(|(i, _)| {
            let rest = text[i + keyword.len()..].trim_start().strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

fn reads(name: &str, src: &str) -> Reads {
    let mut r = Reads::default();
    let acts = match actions(src) {
        Ok(a) => a,
        Err(e) => {
            r.problems.push(format!("{name}: {e}"));
            return r;
        }
    };
    // Open blocks: true when the block moves the dot (with, range).
    let mut blocks: Vec<bool> = Vec::new();
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in acts {
        let t = a.text.as_str();
        let word = &t[..t.find(char::is_whitespace).unwrap_or(t.len())];
        let rebound = blocks.iter().any(|&b| b);
        r.defines.extend(quoted_after(t, "define"));
        r.includes.extend(quoted_after(t, "include"));
        r.includes.extend(quoted_after(t, "template"));

        // `$x := .Values.p` (the whole right-hand side one path): an alias.
        if let Some((lhs, rhs)) = t.split_once(":=").or_else(|| t.split_once(" = ")) {
            let var = lhs.trim();
            let rhs = rhs.trim();
            let root = rhs
                .strip_prefix("$.Values.")
                .or_else(|| rhs.strip_prefix(".Values."));
            if let (Some(var), Some(p)) = (var.strip_prefix('$'), root) {
                let path = segments(p);
                if !path.is_empty()
                    && path.iter().map(String::len).sum::<usize>() + path.len() - 1 == p.len()
                    && (rhs.starts_with('$') || !rebound)
                {
                    // Not a read by itself: what is read through it counts.
                    aliases.insert(var.to_string(), path);
                    continue;
                }
            }
        }

        for (i, _) in t.match_indices(".Values") {
            let before = t[..i].chars().last();
            let after = &t[i + ".Values".len()..];
            let Some(rest) = after.strip_prefix('.') else {
                if after.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                    continue; // .ValuesX: not ours
                }
                r.problems
                    .push(format!("{name}:{}: `.Values` used whole", a.line));
                continue;
            };
            let relative = match before {
                Some('$') => false,
                Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == ')' => continue,
                _ => true,
            };
            if relative && rebound {
                r.problems.push(format!(
                    "{name}:{}: `.Values` inside with/range cannot be resolved (the dot has moved): use `$.Values`",
                    a.line
                ));
                continue;
            }
            r.paths.push((segments(rest), a.line));
        }
        for (var, base) in &aliases {
            let pat = format!("${var}.");
            for (i, _) in t.match_indices(&pat) {
                if t[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let mut path = base.clone();
                path.extend(segments(&t[i + pat.len()..]));
                r.paths.push((path, a.line));
            }
        }

        match word {
            "if" | "define" | "block" => blocks.push(false),
            "with" | "range" => blocks.push(true),
            "end" if blocks.pop().is_none() => {
                r.problems
                    .push(format!("{name}:{}: `end` without a block", a.line));
            }
            _ => {}
        }
    }
    if !blocks.is_empty() {
        r.problems
            .push(format!("{name}: {} block(s) not closed with `end`", blocks.len()));
    }
    r
}

fn lookup<'v>(values: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(values, |v, k| v.as_object()?.get(k))
}

/// Every path to a key in the values tree (maps only).
fn value_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            prefix.push(k.clone());
            out.push(prefix.clone());
            value_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

#[test]
fn chart_yaml_values_and_crds_parse() {
    let chart_yaml = yaml(&chart().join("Chart.yaml"));
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "weft");
    assert!(chart_yaml["version"].is_string(), "{chart_yaml}");
    assert!(
        chart_yaml["kubeVersion"]
            .as_str()
            .unwrap_or("")
            .starts_with(">=1.29"),
        "native sidecars need 1.29: {chart_yaml}"
    );
    let cargo = read(&repo().join("Cargo.toml"));
    let workspace_version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"'))
        .expect("[workspace.package] version");
    assert_eq!(
        chart_yaml["appVersion"], workspace_version,
        "appVersion is the image tag: the workspace version"
    );

    let values = yaml(&chart().join("values.yaml"));
    assert!(values.is_object(), "{values}");

    let crds = chart().join("crds");
    if crds.is_dir() {
        for entry in std::fs::read_dir(&crds).unwrap() {
            let path = entry.unwrap().path();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&read(&path))
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            assert!(!docs.is_empty(), "{}", path.display());
            for doc in docs {
                assert_eq!(doc["kind"], "CustomResourceDefinition", "{}", path.display());
            }
        }
    }
}

#[test]
fn template_actions_balance() {
    let mut problems = Vec::new();
    for (name, src) in templates() {
        problems.extend(reads(&name, &src).problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_values_path_in_the_templates_exists_and_every_value_is_used() {
    let values = yaml(&chart().join("values.yaml"));
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (name, src) in templates() {
        for (path, line) in reads(&name, &src).paths {
            if lookup(&values, &path).is_none() {
                missing.push(format!("{name}:{line}: .Values.{}", path.join(".")));
            }
            used.insert(path);
        }
    }
    assert!(missing.is_empty(), "not in values.yaml: {missing:#?}");
    assert!(used.len() > 30, "the scan finds the chart's reads: {used:?}");

    // A value is used when a template reads it, something inside it, or a
    // map it is part of (toYaml of a whole block).
    let mut all = Vec::new();
    value_paths(&values, &mut Vec::new(), &mut all);
    let unused: Vec<String> = all
        .iter()
        .filter(|p| !used.iter().any(|u| u.starts_with(p) || p.starts_with(u)))
        .map(|p| p.join("."))
        .collect();
    assert!(unused.is_empty(), "values no template reads: {unused:#?}");
}

#[test]
fn every_value_is_documented() {
    let text = read(&chart().join("values.yaml"));
    let mut previous = "";
    let mut undocumented = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        let is_key = ident(t) > 0 && t[ident(t)..].starts_with(':');
        if is_key && !previous.starts_with('#') {
            undocumented.push(format!("values.yaml:{}: {t}", n + 1));
        }
        if !t.is_empty() {
            previous = t;
        }
    }
    assert!(undocumented.is_empty(), "no comment above: {undocumented:#?}");
}

#[test]
fn every_include_names_a_defined_helper() {
    let mut defined = BTreeSet::new();
    let mut included = BTreeSet::new();
    for (name, src) in templates() {
        let r = reads(&name, &src);
        defined.extend(r.defines);
        included.extend(r.includes);
    }
    let undefined: Vec<_> = included.difference(&defined).collect();
    assert!(undefined.is_empty(), "included but not defined: {undefined:?}");
}

#[test]
fn the_image_the_control_plane_and_the_gateway_run_as_the_proxy_uid() {
    let uid = weft_tests::netns::PROXY_UID;
    let dockerfile = read(&repo().join("Dockerfile"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("USER {uid}:{uid}")),
        "the image's default user is the proxy uid"
    );
    for bin in ["weft", "weft-proxy", "weft-control"] {
        assert!(
            dockerfile.contains(&format!("target/dist/{bin} ")),
            "the image holds {bin}"
        );
    }
    for template in ["deployment.yaml", "gateway.yaml"] {
        let deployment = read(&chart().join("templates").join(template));
        assert!(deployment.contains(&format!("runAsUser: {uid}")), "{template}");
        assert!(deployment.contains(&format!("runAsGroup: {uid}")), "{template}");
    }
}

#[test]
fn the_scanner_catches_what_it_should() {
    let r = reads(
        "t",
        "{{ .Values.a.b }}{{ $.Values.c }}{{ $x := .Values.d }}{{ $x.e.f }}",
    );
    let paths: Vec<String> = r.paths.iter().map(|(p, _)| p.join(".")).collect();
    assert_eq!(paths, ["a.b", "c", "d.e.f"]);
    assert!(r.problems.is_empty(), "{:?}", r.problems);

    let r = reads(
        "t",
        "{{- with .Values.a }}{{ .Values.b }}{{ $.Values.c }}{{ end }}",
    );
    let paths: Vec<String> = r.paths.iter().map(|(p, _)| p.join(".")).collect();
    assert_eq!(paths, ["a", "c"]);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);

    assert!(
        !reads("t", "{{ if .Values.a }}").problems.is_empty(),
        "unclosed block"
    );
    assert!(!reads("t", "{{ .Values.a }").problems.is_empty(), "unbalanced");
    assert!(!reads("t", "x }} y").problems.is_empty(), "stray }}");
    assert!(
        reads("t", "{{- /* {{ .Values.z }} */}}").paths.is_empty(),
        "comments skipped"
    );
}
