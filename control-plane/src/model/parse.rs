//! Reading documents: YAML files (many documents each) and single objects
//! (from the Kubernetes API) into validated [`Document`]s, with errors that
//! name the file or object, the document, the field and the problem.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::validate::validate;
use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDocument {
    api_version: String,
    kind: String,
    metadata: RawMetadata,
    #[serde(default)]
    spec: serde_json::Value,
    /// Written by controllers; ignored here.
    #[serde(default)]
    #[allow(dead_code)]
    status: serde_json::Value,
}

/// Parses every document of one YAML file. Each document is validated on
/// its own: the result holds the good ones and an error for each bad one.
pub fn parse_file(file: &str, text: &str) -> (Vec<Document>, Vec<DocError>) {
    let at = |index, name: Option<String>| DocRef {
        file: file.to_string(),
        index,
        name,
    };
    let values = match yaml_documents(text) {
        Ok(v) => v,
        Err(problem) => {
            let err = DocError {
                doc: at(0, None),
                field: "(yaml)".into(),
                problem,
                authz: None,
            };
            return (Vec::new(), vec![err]);
        }
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let name = document_name(&value);
        let authz = rejected_authz(&value);
        match parse_document(value) {
            Ok(doc) => {
                let key = (doc.spec.kind(), doc.meta.namespace.clone(), doc.meta.name.clone());
                if !seen.insert(key) {
                    errors.push(DocError {
                        doc: at(index, name),
                        field: "metadata.name".into(),
                        problem: "expected a unique name; an earlier document in this file has the same kind, namespace and name".into(),
                        // The earlier one is in force.
                        authz: None,
                    });
                } else {
                    docs.push(doc);
                }
            }
            Err((field, problem)) => errors.push(DocError {
                doc: at(index, name),
                field,
                problem,
                authz,
            }),
        }
    }
    (docs, errors)
}

/// The documents of a YAML stream as Weft reads them, before any typing:
/// what [`parse_file`] goes on to validate. (Tests hold this against a YAML
/// 1.1 reader, which is what kubectl and Helm are.)
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    serde_saphyr::from_multiple(text).map_err(|e| format!("not valid YAML: {e}"))
}

/// Parses and validates one document that is not from a file (an object
/// from the Kubernetes API); errors name `source` and the object.
pub fn parse_object(source: &str, value: serde_json::Value) -> Result<Document, DocError> {
    let name = document_name(&value);
    let authz = rejected_authz(&value);
    parse_document(value).map_err(|(field, problem)| DocError {
        doc: DocRef {
            file: source.to_string(),
            index: 0,
            name,
        },
        field,
        problem,
        authz,
    })
}

/// What can be read of an AuthorizationPolicy without validating it:
/// its name and the service it targets. `None` for other kinds, or
/// without a string `metadata.name`.
fn rejected_authz(v: &serde_json::Value) -> Option<Box<RejectedAuthz>> {
    if v.get("kind")?.as_str()? != "AuthorizationPolicy" {
        return None;
    }
    let meta = v.get("metadata")?;
    let target = v.pointer("/spec/targetRef").and_then(|t| {
        Some(TargetRef {
            kind: "Service".into(),
            name: t.get("name")?.as_str()?.to_string(),
            port: t
                .get("port")
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
        })
    });
    Some(Box::new(RejectedAuthz {
        namespace: meta
            .get("namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string(),
        name: meta.get("name")?.as_str()?.to_string(),
        target,
    }))
}

fn document_name(v: &serde_json::Value) -> Option<String> {
    let kind = v.get("kind")?.as_str().unwrap_or("?");
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(format!("{kind} {ns}/{name}"))
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        (field, e.into_inner().to_string())
    })
}

fn parse_document(value: serde_json::Value) -> Result<Document, FieldError> {
    let raw: RawDocument = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { "(document)".into() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    let expected_api = match raw.kind.as_str() {
        "MeshService" | "TrafficPolicy" | "AuthorizationPolicy" | "GatewayPolicy" => WEFT_API_VERSION,
        "HTTPRoute" | "GRPCRoute" | "Gateway" => GATEWAY_API_VERSION,
        "ReferenceGrant" => GATEWAY_API_BETA_VERSION,
        other => {
            return Err((
                "kind".into(),
                format!(
                "expected one of MeshService, TrafficPolicy, AuthorizationPolicy, GatewayPolicy, HTTPRoute, GRPCRoute, Gateway, ReferenceGrant, got `{other}`"
            ),
            ))
        }
    };
    if raw.api_version != expected_api {
        return Err((
            "apiVersion".into(),
            format!(
                "expected `{expected_api}` for {}, got `{}`",
                raw.kind, raw.api_version
            ),
        ));
    }
    let body = if raw.spec.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        raw.spec
    };
    if raw.kind == "TrafficPolicy" {
        renamed_retry_on(&body)?;
    }
    let spec = match raw.kind.as_str() {
        "MeshService" => Spec::MeshService(typed(body, "spec")?),
        "TrafficPolicy" => Spec::TrafficPolicy(typed(body, "spec")?),
        "AuthorizationPolicy" => Spec::AuthorizationPolicy(typed(body, "spec")?),
        "ReferenceGrant" => Spec::ReferenceGrant(typed(body, "spec")?),
        "GRPCRoute" => Spec::GrpcRoute(typed(body, "spec")?),
        "Gateway" => Spec::Gateway(typed(body, "spec")?),
        "GatewayPolicy" => Spec::GatewayPolicy(typed(body, "spec")?),
        _ => Spec::HttpRoute(typed(body, "spec")?),
    };
    let doc = Document {
        meta: raw.metadata.into(),
        spec,
    };
    validate(&doc)?;
    Ok(doc)
}

/// `retries.on` is now `retryOn`: YAML 1.1 readers (kubectl, Helm) take a
/// plain `on` for the boolean `true` and send `"true": [...]`. Both
/// spellings are refused naming the new field, not as unknown fields.
fn renamed_retry_on(spec: &serde_json::Value) -> Result<(), FieldError> {
    let Some(retries) = spec.get("retries").and_then(|r| r.as_object()) else {
        return Ok(());
    };
    if retries.contains_key("on") {
        return Err((
            "spec.retries.on".into(),
            "expected `retryOn` (the retry conditions), got `on`: the field was renamed, since YAML 1.1 readers such as kubectl and Helm take a plain `on` for the boolean `true`".into(),
        ));
    }
    if retries.contains_key("true") {
        return Err((
            "spec.retries.true".into(),
            "expected `retryOn` (the retry conditions), got `true`: a YAML 1.1 reader such as kubectl or Helm read the field's old name `on` as the boolean `true`".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: MeshService
metadata: {name: backend, namespace: demo}
spec:
  ports: [{port: 80}]
  endpoints:
    - address: 127.0.0.1:8081
      proxy: 127.0.0.1:4243
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: demo}
spec:
  parentRefs: [{name: backend, kind: Service, group: core}]
  rules:
    - backendRefs: [{name: backend-v1, weight: 90}, {name: backend-v2, weight: 10}]
"#;

    #[test]
    fn parses_good_documents() {
        let (docs, errors) = parse_file("mesh.yaml", GOOD);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].meta.namespace, "demo");
        let Spec::HttpRoute(r) = &docs[1].spec else {
            panic!()
        };
        assert_eq!(r.rules[0].backend_refs[1].weight, 10);
    }

    #[test]
    fn rate_limits_outside_what_a_proxy_can_count_are_refused() {
        let doc = |rate: &str, per_identity: &str| {
            format!("apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: a, namespace: demo}}\nspec:\n  targetRef: {{name: api}}\n  rules: [{{}}]\n  rateLimit: {{requestsPerSecond: {rate}, perIdentity: {{requestsPerSecond: {per_identity}}}}}\n")
        };
        for (rate, per, field) in [
            ("1e-20", "1", "spec.rateLimit.requestsPerSecond"),
            ("-1", "1", "spec.rateLimit.requestsPerSecond"),
            ("1e12", "1", "spec.rateLimit.requestsPerSecond"),
            ("10", "1e-20", "spec.rateLimit.perIdentity.requestsPerSecond"),
        ] {
            let (_, errors) = parse_file("p.yaml", &doc(rate, per));
            assert_eq!(errors.len(), 1, "{rate} / {per}");
            assert_eq!(errors[0].field, field);
            assert!(
                errors[0].problem.contains("between 0.001 and 1e9"),
                "{}",
                errors[0]
            );
        }
        for (rate, per) in [("0", "0"), ("0.001", "2.5"), ("1000000", "1")] {
            let (docs, errors) = parse_file("p.yaml", &doc(rate, per));
            assert!(errors.is_empty() && docs.len() == 1, "{rate} / {per}: {errors:?}");
        }
    }

    #[test]
    fn gateway_documents_a_gateway_cannot_serve_are_refused() {
        let gateway = |listeners: &str| {
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  gatewayClassName: weft\n  listeners: {listeners}\n")
        };
        let policy = |url: &str| {
            format!("apiVersion: weft.dev/v1alpha1\nkind: GatewayPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}\n  jwt: {{issuer: i, jwks: {{url: '{url}'}}}}\n")
        };
        let tls = "tls: {certificateRefs: [{name: c}]}";
        for (doc, field) in [
            (
                gateway(&format!(
                    "[{{name: a, port: 80, protocol: HTTP}}, {{name: b, port: 80, protocol: HTTPS, {tls}}}]"
                )),
                "spec.listeners[1].protocol",
            ),
            (policy("http://localhost.evil.example/jwks"), "spec.jwt.jwks.url"),
            (policy("http://idp.example/jwks"), "spec.jwt.jwks.url"),
            (policy("https:///jwks"), "spec.jwt.jwks.url"),
        ] {
            let (_, errors) = parse_file("g.yaml", &doc);
            assert_eq!(errors.len(), 1, "{doc}");
            assert_eq!(errors[0].field, field, "{}", errors[0]);
        }
        for doc in [
            gateway(&format!("[{{name: a, port: 443, protocol: HTTPS, {tls}}}, {{name: b, port: 443, protocol: HTTPS, hostname: b.example, {tls}}}]")),
            policy("https://idp.example/jwks"),
            policy("http://127.0.0.1:8080/jwks"),
            policy("http://[::1]/jwks"),
            policy("http://localhost/jwks"),
        ] {
            let (docs, errors) = parse_file("g.yaml", &doc);
            assert!(errors.is_empty() && docs.len() == 1, "{doc}: {errors:?}");
        }
    }

    #[test]
    fn errors_name_file_document_field_and_expectation() {
        let bad = GOOD.replace("address: 127.0.0.1:8081", "address: localhost");
        let (docs, errors) = parse_file("mesh.yaml", &bad);
        assert_eq!(docs.len(), 1, "the good document still parses");
        let e = &errors[0];
        assert_eq!(e.doc.index, 0);
        assert_eq!(e.doc.name.as_deref(), Some("MeshService demo/backend"));
        assert_eq!(e.field, "spec.endpoints[0].address");
        assert!(
            e.to_string().starts_with(
                "mesh.yaml: document 0 (MeshService demo/backend): field `spec.endpoints[0].address`"
            ),
            "{e}"
        );

        let bad = GOOD.replace("weight: 10}", "weight: ten}");
        let (_, errors) = parse_file("mesh.yaml", &bad);
        assert_eq!(errors[0].doc.index, 1);
        assert_eq!(errors[0].field, "spec.rules[0].backendRefs[1].weight");

        let (_, errors) = parse_file(
            "x.yaml",
            "apiVersion: weft.dev/v1alpha1\nkind: Gadget\nmetadata: {name: a}\n",
        );
        assert_eq!(errors[0].field, "kind");
        let (_, errors) = parse_file(
            "x.yaml",
            "apiVersion: v1\nkind: MeshService\nmetadata: {name: a}\n",
        );
        assert_eq!(errors[0].field, "apiVersion");
        let (_, errors) = parse_file(
            "x.yaml",
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: Bad_Name}\n",
        );
        assert_eq!(errors[0].field, "metadata.name");
        let (docs, errors) = parse_file(
            "x.yaml",
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: a, uid: 1b2c, resourceVersion: \"42\", creationTimestamp: \"2026-01-01T00:00:00Z\"}\n",
        );
        assert!(
            errors.is_empty() && docs.len() == 1,
            "kubectl output loads: {errors:?}"
        );
        let (_, errors) = parse_file(
            "x.yaml",
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: a, namepsace: x}\n",
        );
        assert_eq!(errors[0].field, "metadata.namepsace");
        assert!(
            errors[0].problem.contains("unknown field"),
            "{}",
            errors[0].problem
        );
        let (_, errors) = parse_file("x.yaml", "a: [\n");
        assert_eq!(errors[0].field, "(yaml)");
    }

    #[test]
    fn policy_validation() {
        let doc = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {name: web}\n  retries: {attempts: 3, retryOn: [5xx, teapot]}\n";
        let (_, errors) = parse_file("p.yaml", doc);
        assert_eq!(errors[0].field, "spec.retries.retryOn[1]");
        let doc = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  timeouts: {request: 2s}\n";
        let (_, errors) = parse_file("p.yaml", doc);
        assert_eq!(errors[0].field, "spec.targetRef");
        let doc = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {name: web}\n  timeouts: {request: soon}\n";
        let (_, errors) = parse_file("p.yaml", doc);
        assert_eq!(errors[0].field, "spec.timeouts.request");
        assert!(errors[0].problem.contains("expected a duration"));
    }

    /// `retries.on` was renamed `retryOn`; the old name, and the `true` a
    /// YAML 1.1 reader makes of it, are refused naming the new one.
    #[test]
    fn http_route_matches_and_filters_are_read_and_checked() {
        let route = |rule: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: web, port: 80}}]\n  rules:\n  - {rule}\n"
            )
        };
        let good = [
            "matches: [{path: {type: RegularExpression, value: '/v[0-9]+/.*'}, queryParams: [{name: tier, value: gold}], headers: [{type: RegularExpression, name: x-user, value: 'a.*'}]}]\n    backendRefs: [{name: web}]",
            "name: moved\n    matches: [{path: {type: PathPrefix, value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]",
            "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}], add: [{name: x-b, value: '2'}], remove: [x-c]}}, {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-d, value: '3'}]}}, {type: RequestMirror, requestMirror: {backendRef: {name: audit, port: 80}, fraction: {numerator: 1, denominator: 10}}}, {type: URLRewrite, urlRewrite: {hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]\n    backendRefs: [{name: web, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-e, value: '4'}]}}]}]\n    timeouts: {request: 2s, backendRequest: 500ms}",
        ];
        for rule in good {
            let (docs, errors) = parse_file("r.yaml", &route(rule));
            assert!(errors.is_empty() && docs.len() == 1, "{rule}: {errors:?}");
        }
        let bad = [
            ("matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]", "spec.rules[0].matches[0].path.value"),
            ("matches: [{headers: [{name: 'bad header', value: x}]}]", "spec.rules[0].matches[0].headers[0].name"),
            ("matches: [{method: FETCH}]", "spec.rules[0].matches[0].method"),
            ("matches: [{queryParams: [{type: Glob, name: a, value: b}]}]", "spec.rules[0].matches[0].queryParams[0].type"),
            ("filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]", "spec.rules[0].filters[0].type"),
            ("filters: [{type: RequestRedirect}]", "spec.rules[0].filters[0].requestRedirect"),
            ("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]", "spec.rules[0].filters[0].requestRedirect.statusCode"),
            ("matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]", "spec.rules[0].filters[0].urlRewrite.path.type"),
            ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}, percent: 101}}]", "spec.rules[0].filters[0].requestMirror.percent"),
            ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}, fraction: {numerator: 3, denominator: 0}}}]", "spec.rules[0].filters[0].requestMirror.fraction"),
            ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: \"a\\nb\"}]}}]", "spec.rules[0].filters[0].requestHeaderModifier.set[0].value"),
            ("backendRefs: [{name: web, filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]}]", "spec.rules[0].backendRefs[0].filters[0].type"),
            ("filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]", "spec.rules[0].filters"),
        ];
        for (rule, field) in bad {
            let (docs, errors) = parse_file("r.yaml", &route(rule));
            assert!(docs.is_empty(), "{rule}: accepted");
            assert_eq!(errors[0].field, field, "{rule}: {}", errors[0]);
        }
        // A parent's sectionName would narrow the route; refused, not
        // ignored.
        let section = route("backendRefs: [{name: web}]").replace("port: 80}", "sectionName: http}");
        let (_, errors) = parse_file("r.yaml", &section);
        assert_eq!(errors[0].field, "spec.parentRefs[0].sectionName", "{}", errors[0]);
    }

    #[test]
    fn grpc_routes_are_read_and_checked() {
        let route = |rule: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: cart, port: 7070}}]\n  rules:\n  - {rule}\n"
            )
        };
        let good = "matches: [{method: {service: shop.Cart, method: Add}, headers: [{name: x-tenant, value: a}]}, {method: {type: RegularExpression, service: 'shop\\..*'}}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}]}}]\n    backendRefs: [{name: cart, port: 7070}]";
        let (docs, errors) = parse_file("g.yaml", &route(good));
        assert!(errors.is_empty() && docs.len() == 1, "{errors:?}");
        let Spec::GrpcRoute(g) = &docs[0].spec else {
            panic!("not a GRPCRoute: {:?}", docs[0].spec)
        };
        let http = g.as_http();
        let paths: Vec<_> = http.rules[0]
            .matches
            .iter()
            .map(|m| m.path.as_ref().map(|p| (p.kind.as_str(), p.value.as_str())))
            .collect();
        assert_eq!(
            paths,
            [
                Some(("Exact", "/shop.Cart/Add")),
                Some(("RegularExpression", "/shop\\..*/[^/]+"))
            ]
        );
        let bad = [
            ("matches: [{method: {}}]", "spec.rules[0].matches[0].method"),
            (
                "matches: [{method: {service: a/b}}]",
                "spec.rules[0].matches[0].method.service",
            ),
            (
                "matches: [{method: {type: RegularExpression, method: '('}}]",
                "spec.rules[0].matches[0].method.method",
            ),
            (
                "filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]",
                "spec.rules[0].filters[0].type",
            ),
        ];
        for (rule, field) in bad {
            let (docs, errors) = parse_file("g.yaml", &route(rule));
            assert!(docs.is_empty(), "{rule}: accepted");
            assert_eq!(errors[0].field, field, "{rule}: {}", errors[0]);
        }
    }

    #[test]
    fn retry_on_renamed() {
        let doc = |retries: &str| {
            format!("apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  targetRef: {{name: web}}\n  retries:\n    attempts: 2\n    {retries}\n")
        };
        let (docs, errors) = parse_file("p.yaml", &doc("retryOn: [5xx, \"429\"]"));
        assert!(errors.is_empty(), "{errors:?}");
        let Spec::TrafficPolicy(p) = &docs[0].spec else {
            panic!()
        };
        assert_eq!(p.retries.as_ref().unwrap().on, ["5xx", "429"]);

        for (old, field) in [
            ("on: [5xx]", "spec.retries.on"),
            ("\"on\": [5xx]", "spec.retries.on"),
            // What kubectl sends for a plain `on:`.
            ("\"true\": [5xx]", "spec.retries.true"),
            ("true: [5xx]", "spec.retries.true"),
        ] {
            let (docs, errors) = parse_file("p.yaml", &doc(old));
            assert!(docs.is_empty(), "{old}");
            let e = errors[0].to_string();
            assert_eq!(errors[0].field, field, "{old}: {e}");
            assert!(
                e.starts_with(&format!(
                    "p.yaml: document 0 (TrafficPolicy shop/p): field `{field}`: expected `retryOn`"
                )),
                "{old}: {e}"
            );
            assert!(e.contains("YAML 1.1"), "{e}");
        }

        // From the Kubernetes API (an object created without strict field
        // validation): the same error.
        let object = serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"targetRef": {"name": "web"}, "retries": {"true": ["5xx"]}},
        });
        let e = parse_object("kubernetes", object).unwrap_err();
        assert_eq!(e.field, "spec.retries.true");
    }

    #[test]
    fn the_real_files_parse() {
        for file in props::FILES {
            let (docs, errors) = parse_file("mesh.yaml", file);
            assert!(errors.is_empty() && !docs.is_empty(), "{errors:?}");
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        /// Real documents: the examples and the demo mesh.
        pub(super) const FILES: &[&str] = &[
            include_str!("../../../config/examples/mesh-service.yaml"),
            include_str!("../../../config/examples/traffic-policy.yaml"),
            include_str!("../../../config/examples/authorization-policy.yaml"),
            include_str!("../../../config/examples/http-route.yaml"),
            include_str!("../../../config/demo/services.yaml"),
            include_str!("../../../config/demo/routes.yaml"),
        ];

        /// Scalars to put where a value was.
        const ODD: &[&str] = &[
            "-1",
            "0",
            "1e999",
            "-0.0",
            ".nan",
            ".inf",
            "null",
            "~",
            "''",
            "[]",
            "{}",
            "[",
            "{a: [}",
            "*x",
            "&x a",
            "!!binary aGk=",
            "0x10",
            "99999999999999999999",
            "yes",
            "\"\\u0000\"",
            "é",
            "a: b: c",
            "- x",
            "@",
        ];

        /// A real file, with lines dropped, repeated, re-indented, and
        /// values replaced by odd scalars.
        fn documents() -> impl Strategy<Value = String> {
            let edit = (0..4u8, any::<prop::sample::Index>(), prop::sample::select(ODD));
            (prop::sample::select(FILES), prop::collection::vec(edit, 0..5)).prop_map(|(file, edits)| {
                let mut lines: Vec<String> = file.lines().map(str::to_string).collect();
                for (op, at, odd) in edits {
                    if lines.is_empty() {
                        break;
                    }
                    let i = at.index(lines.len());
                    match op {
                        0 => drop(lines.remove(i)),
                        1 => lines.insert(i, lines[i].clone()),
                        2 => lines[i] = format!(" {}", lines[i]),
                        _ => {
                            if let Some((key, _)) = lines[i].split_once(": ") {
                                lines[i] = format!("{key}: {odd}");
                            }
                        }
                    }
                }
                lines.join("\n")
            })
        }

        proptest! {
            #[test]
            fn every_document_is_read_or_refused_with_file_document_and_field(
                text in prop_oneof![4 => documents(), 1 => "[ -~\n]{0,80}"],
            ) {
                let (docs, errors) = parse_file("mesh.yaml", &text);
                let Ok(values) = yaml_documents(&text) else {
                    prop_assert!(docs.is_empty() && errors.len() == 1 && errors[0].field == "(yaml)", "{:?}", errors);
                    prop_assert!(errors[0].to_string().starts_with("mesh.yaml: document 0"), "{}", errors[0]);
                    return Ok(());
                };
                let present = values.iter().filter(|v| !v.is_null()).count();
                prop_assert_eq!(docs.len() + errors.len(), present, "each document is read or refused, once");
                for e in &errors {
                    prop_assert!(e.doc.index < values.len(), "{}", e);
                    prop_assert!(!e.field.is_empty() && !e.problem.is_empty(), "{}", e);
                    let head = format!("mesh.yaml: document {}", e.doc.index);
                    let shown = e.to_string();
                    prop_assert!(shown.starts_with(&head) && shown.contains(&e.field), "{}", shown);
                }
            }
        }
    }
}
