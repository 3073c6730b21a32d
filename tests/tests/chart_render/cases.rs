//! The combinations of values the chart documents.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// One documented combination of values.
#[derive(Clone)]
pub struct Case {
    pub name: &'static str,
    pub release: &'static str,
    pub namespace: &'static str,
    /// `--set`-style flags and values files, as given to helm.
    pub args: Vec<String>,
    /// The text of the values files (`-f`) among them.
    pub files: Vec<String>,
}

fn case(name: &'static str, args: &[&str]) -> Case {
    Case {
        name,
        release: "weft",
        namespace: "weft-system",
        args: args.iter().map(|a| a.to_string()).collect(),
        files: Vec::new(),
    }
}

/// A PEM certificate, as `--set-file identity.trustAnchorsPEM=` reads one.
pub fn pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

/// The combinations the README and values.yaml document, each a way
/// someone runs the chart. `dir` holds the files some of them read.
pub fn cases(dir: &Path) -> Vec<Case> {
    let anchors = dir.join("anchors.pem");
    std::fs::write(&anchors, pem() + &pem()).unwrap();
    let anchors = format!("identity.trustAnchorsPEM={}", anchors.display());
    let ca_bundle = format!("webhook.certificate.caBundle={}", STANDARD.encode(pem()));
    // Production as the README describes it: your own CA and webhook
    // certificate, a hard webhook, three replicas over nodes and zones.
    let production = dir.join("production.yaml");
    std::fs::write(
        &production,
        format!(
            "controlPlane:
  replicas: 3
  antiAffinity: required
  topologySpread: {{enabled: true, whenUnsatisfiable: DoNotSchedule}}
  podDisruptionBudget: {{minAvailable: 2}}
  grpcPort: 8086
identity:
  issuer: {{existingSecret: weft-mesh-ca}}
  certLifetime: 12h
webhook:
  failurePolicy: Fail
  certificate:
    existingSecret: weft-webhook-cm
    caBundle: {}
",
            STANDARD.encode(pem())
        ),
    )
    .unwrap();

    // The gateway with every value of its own set, and a Secret per
    // listener certificate.
    let gateway = dir.join("gateway.yaml");
    std::fs::write(
        &gateway,
        "gateway:
  enabled: true
  name: edge
  replicas: 3
  ports:
    - {name: web, port: 10080}
    - {name: web-tls, port: 10443}
    - {name: grpc-tls, port: 10444}
  service:
    type: ClusterIP
    annotations: {example.com/lb: internal}
  certificateSecrets:
    - shop-tls
    - api.example.com
  resources:
    requests: {cpu: 500m, memory: 256Mi}
    limits: {memory: 1Gi}
  podDisruptionBudget: {minAvailable: 2}
  terminationGracePeriodSeconds: 60
",
    )
    .unwrap();

    let mut out = vec![
        case("defaults", &[]),
        Case {
            release: "mesh",
            namespace: "mesh-system",
            ..case("a release name without weft", &[])
        },
        Case {
            release: "a-release-name-of-fifty-three-characters-the-most-1",
            namespace: "weft",
            ..case("the longest release name", &[])
        },
        case("nameOverride", &["--set", "nameOverride=mesh"]),
        case("fullnameOverride", &["--set", "fullnameOverride=mesh-cp"]),
        case(
            "image",
            &[
                "--set",
                "image.repository=registry.example.com/weft",
                "--set-string",
                "image.tag=1.10",
                "--set",
                "image.pullPolicy=Always",
                "--set-json",
                r#"imagePullSecrets=[{"name":"regcred"}]"#,
            ],
        ),
        case(
            "mesh domains",
            &[
                "--set",
                "mesh.trustDomain=prod.example.org",
                "--set",
                "mesh.clusterDomain=k8s.internal",
                "--set",
                "mesh.requireMtls=true",
            ],
        ),
        case("one replica: no PDB", &["--set", "controlPlane.replicas=1"]),
        case(
            "three replicas, minAvailable 2",
            &[
                "--set",
                "controlPlane.replicas=3",
                "--set",
                "controlPlane.podDisruptionBudget.minAvailable=2",
            ],
        ),
        case(
            "minAvailable as a percentage",
            &[
                "--set-string",
                "controlPlane.podDisruptionBudget.minAvailable=50%",
            ],
        ),
        case(
            "no PDB",
            &["--set", "controlPlane.podDisruptionBudget.enabled=false"],
        ),
        case(
            "log level",
            &["--set-json", r#"controlPlane.logLevel="info,weft_control=debug""#],
        ),
        case(
            "ports",
            &[
                "--set",
                "controlPlane.grpcPort=18086",
                "--set",
                "controlPlane.adminPort=19990",
                "--set",
                "controlPlane.webhookPort=19443",
            ],
        ),
        case(
            "resources",
            &[
                "--set-json",
                r#"controlPlane.resources={"requests":{"cpu":"250m","memory":"256Mi"},"limits":{"cpu":2,"memory":"1Gi"}}"#,
            ],
        ),
        case(
            "required anti-affinity",
            &["--set", "controlPlane.antiAffinity=required"],
        ),
        case("no anti-affinity", &["--set", "controlPlane.antiAffinity=none"]),
        case(
            "affinity override",
            &[
                "--set-json",
                r#"controlPlane.affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"node-role.kubernetes.io/infra","operator":"Exists"}]}]}}}"#,
            ],
        ),
        case(
            "topology spread",
            &[
                "--set",
                "controlPlane.topologySpread.enabled=true",
                "--set",
                "controlPlane.topologySpread.topologyKey=kubernetes.io/hostname",
                "--set",
                "controlPlane.topologySpread.maxSkew=2",
                "--set",
                "controlPlane.topologySpread.whenUnsatisfiable=DoNotSchedule",
            ],
        ),
        case(
            "scheduling",
            &[
                "--set-json",
                r#"controlPlane.nodeSelector={"kubernetes.io/os":"linux"}"#,
                "--set-json",
                r#"controlPlane.tolerations=[{"key":"dedicated","operator":"Equal","value":"infra","effect":"NoSchedule"}]"#,
                "--set",
                "controlPlane.priorityClassName=system-cluster-critical",
            ],
        ),
        case(
            "pod metadata",
            &[
                "--set-json",
                r#"controlPlane.podAnnotations={"example.com/owner":"mesh-team"}"#,
                "--set-json",
                r#"controlPlane.podLabels={"team":"mesh"}"#,
            ],
        ),
        case(
            "extraArgs",
            &[
                "--set-json",
                r#"controlPlane.extraArgs=["--max-connections=20000","--cert-lifetime=12h"]"#,
            ],
        ),
        case(
            "an existing ServiceAccount",
            &[
                "--set",
                "serviceAccount.create=false",
                "--set",
                "serviceAccount.name=weft-cp",
            ],
        ),
        case(
            "ServiceAccount name and annotations",
            &[
                "--set",
                "serviceAccount.name=weft-cp",
                "--set-json",
                r#"serviceAccount.annotations={"example.com/role":"mesh"}"#,
            ],
        ),
        case("no RBAC", &["--set", "rbac.create=false"]),
        case("no TokenReview", &["--set", "identity.tokenReview=false"]),
        case("certificate lifetime", &["--set", "identity.certLifetime=1h 30m"]),
        case(
            "your own CA",
            &["--set", "identity.issuer.existingSecret=weft-mesh-ca"],
        ),
        case(
            "generated CA validity",
            &["--set", "identity.issuer.generatedValidityDays=365"],
        ),
        case("trust anchors (CA rotation)", &["--set-file", &anchors]),
        case("no webhook", &["--set", "webhook.enabled=false"]),
        case(
            "no webhook, your own CA, trust anchors",
            &[
                "--set",
                "webhook.enabled=false",
                "--set",
                "identity.issuer.existingSecret=weft-mesh-ca",
                "--set-file",
                &anchors,
            ],
        ),
        case(
            "webhook Fail, 30 s",
            &[
                "--set",
                "webhook.failurePolicy=Fail",
                "--set",
                "webhook.timeoutSeconds=30",
            ],
        ),
        case("webhook podOptIn all", &["--set", "webhook.podOptIn=all"]),
        case(
            "excluded namespaces",
            &[
                "--set-json",
                r#"webhook.excludeNamespaces=["monitoring","weft-system"]"#,
            ],
        ),
        case(
            "your own webhook certificate",
            &[
                "--set",
                "webhook.certificate.existingSecret=weft-webhook-cm",
                "--set",
                &ca_bundle,
            ],
        ),
        case(
            "generated webhook certificate validity",
            &["--set", "webhook.certificate.generatedValidityDays=90"],
        ),
        case(
            "proxy image",
            &["--set", "proxy.image=registry.example.com/weft:dev"],
        ),
        case(
            "no scrape annotations",
            &["--set", "metrics.podAnnotations=false"],
        ),
        case(
            "Prometheus Operator monitors",
            &[
                "--set",
                "metrics.podMonitor.enabled=true",
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.interval=15s",
                "--set",
                "metrics.monitorLabels.release=kube-prometheus",
            ],
        ),
    ];
    out.extend([
        case(
            "gateway",
            &[
                "--set",
                "gateway.enabled=true",
                "--set-json",
                r#"gateway.certificateSecrets=["shop-tls"]"#,
            ],
        ),
        case(
            "gateway: one replica (no PDB), NodePort, no scrape annotations",
            &[
                "--set",
                "gateway.enabled=true",
                "--set",
                "gateway.replicas=1",
                "--set",
                "gateway.service.type=NodePort",
                "--set",
                "metrics.podAnnotations=false",
            ],
        ),
        Case {
            release: "mesh",
            namespace: "edge",
            ..case(
                "gateway: every value (values file), another release and namespace",
                &["-f", &gateway.display().to_string()],
            )
        },
    ]);
    out.push(case(
        "production (values file)",
        &["-f", &production.display().to_string()],
    ));
    for case in &mut out {
        for w in case.args.windows(2).filter(|w| w[0] == "-f") {
            case.files.push(std::fs::read_to_string(&w[1]).unwrap());
        }
    }
    out
}
