//! Tests of `config.rs`.

use super::*;

/// The overrides the flags `args` (after the program name) give.
fn flags(args: &[&str]) -> Overrides {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        o: Overrides,
    }
    <Cli as clap::Parser>::parse_from(std::iter::once("p").chain(args.iter().copied())).o
}

#[test]
fn server_first_and_configured_ports_skip_detection() {
    let config = Config {
        opaque_ports: vec![1883],
        ..Config::default()
    };
    let i = config.interception();
    assert!(i.is_opaque_port(1883) && i.is_opaque_port(5432) && i.is_opaque_port(25));
    assert!(!i.is_opaque_port(8080));
    assert!(!Interception::default().is_opaque_port(1883));
}

#[test]
fn empty_file_is_the_default() {
    let c: Config = parse_yaml("", "x.yaml").unwrap();
    assert_eq!(c, Config::default());
    c.validate("x.yaml").unwrap();
}

#[test]
fn bad_field_names_file_path_and_expectation() {
    let e = parse_yaml::<Config>("appPorts: [8080, nope]\n", "proxy.yaml").unwrap_err();
    assert_eq!(e.source_name, "proxy.yaml");
    assert_eq!(e.field, "appPorts[1]");
    assert!(e.problem.contains("u16") || e.problem.contains("integer"), "{e}");

    let e = parse_yaml::<Config>("detectTimeout: soon\n", "proxy.yaml").unwrap_err();
    assert_eq!(e.field, "detectTimeout");
    assert!(e.problem.contains("expected a duration"), "{e}");

    let e = parse_yaml::<Config>("outboundListen: 127.0.0.1:4140\nbogus: 1\n", "p.yaml").unwrap_err();
    assert!(e.problem.contains("unknown field `bogus`"), "{e}");
}

#[test]
fn validation_rejects_clashes() {
    let c = Config {
        inbound_listen: "127.0.0.1:4140".parse().unwrap(),
        ..Config::default()
    };
    let e = c.validate("p.yaml").unwrap_err();
    assert_eq!(e.field, "inboundListen");
    let c = Config {
        app_ports: vec![80, 80],
        ..Config::default()
    };
    assert_eq!(c.validate("p.yaml").unwrap_err().field, "appPorts[1]");
}

#[test]
fn flags_set_trust_domain_and_opaque_ports() {
    let o = flags(&["--trust-domain", "mesh.example", "--opaque-port", "9000,9001"]);
    let mut c = Config::default();
    c.apply(&o);
    assert_eq!(c.trust_domain, "mesh.example");
    assert_eq!(c.opaque_ports, vec![9000, 9001]);
}

#[test]
fn server_first_ports_are_opaque() {
    let c = Config {
        opaque_ports: vec![9000],
        ..Config::default()
    };
    assert!(c.is_opaque_port(6379) && c.is_opaque_port(5432) && c.is_opaque_port(9000));
    assert!(!c.is_opaque_port(8080));
}

#[test]
fn upstream_listeners_from_flags_and_file_are_checked() {
    let o = flags(&[
        "--upstream",
        "127.0.0.1:9191=db.shop:5432",
        "--upstream",
        "[::1]:1883=mqtt:1883,127.0.0.1:6380=cache.shop.svc.cluster.local:6379",
    ]);
    let mut c = Config::default();
    c.apply(&o);
    let seen: Vec<(String, &str, u16)> = c
        .upstreams
        .iter()
        .map(|u| (u.listen.to_string(), u.service.as_str(), u.port))
        .collect();
    assert_eq!(
        seen,
        [
            ("127.0.0.1:9191".to_string(), "db.shop", 5432),
            ("[::1]:1883".to_string(), "mqtt", 1883),
            ("127.0.0.1:6380".to_string(), "cache.shop.svc.cluster.local", 6379),
        ]
    );
    c.validate("flags").unwrap();
    for bad in [
        "9191=db:5432",
        "127.0.0.1:9191",
        "127.0.0.1:9191=db",
        "127.0.0.1:9191=db:port",
    ] {
        let e = bad.parse::<UpstreamListener>().unwrap_err();
        assert!(e.contains("LISTEN=SERVICE:PORT"), "{bad}: {e}");
    }
    let file: Config = parse_yaml(
        "upstreams:\n  - {listen: '127.0.0.1:9191', service: db.shop, port: 5432}\n  - {listen: '127.0.0.1:9191', service: other, port: 80}\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(
        file.validate("p.yaml").unwrap_err().field,
        "upstreams[1].listen",
        "the same address twice"
    );
    let c = Config {
        upstreams: vec!["127.0.0.1:4140=db:5432".parse().unwrap()],
        ..Config::default()
    };
    assert_eq!(
        c.validate("p.yaml").unwrap_err().field,
        "upstreams[0].listen",
        "the outbound listener's"
    );
    let c = Config {
        upstreams: vec!["127.0.0.1:9000=Bad_Name:5432".parse().unwrap()],
        ..Config::default()
    };
    assert_eq!(c.validate("p.yaml").unwrap_err().field, "upstreams[0].service");
}
