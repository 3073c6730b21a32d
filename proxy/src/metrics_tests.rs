//! Tests of `metrics.rs`.

use super::*;

fn labels(service: &str) -> RequestLabels {
    let unknown = || "unknown".to_string();
    RequestLabels {
        direction: Direction::Outbound,
        source_workload: "web".into(),
        source_workload_namespace: "demo".into(),
        source_principal: unknown(),
        destination_workload: unknown(),
        destination_workload_namespace: unknown(),
        destination_principal: unknown(),
        destination_service_name: service.into(),
        destination_service_namespace: "demo".into(),
        route: String::new(),
        response_code: 200,
        grpc_response_status: String::new(),
        request_protocol: RequestProtocol::Http,
        connection_security_policy: SecurityPolicy(false),
        classification: Classification::Success,
        error: "",
    }
}

#[test]
fn idle_series_expire_and_busy_ones_stay() {
    let m = Metrics::default();
    m.request(labels("busy"), Duration::from_millis(1), (0, 2));
    m.request(labels("idle"), Duration::from_millis(1), (0, 2));
    // First sweep records the values; nothing is idle for 0s... yet.
    assert_eq!(m.expire_idle(Duration::from_secs(3600)), 0);
    m.request(labels("busy"), Duration::from_millis(1), (0, 2));
    // "idle" has not moved since the last sweep; with a zero idle time it goes.
    let removed = m.expire_idle(Duration::ZERO);
    assert!(removed >= 2, "the idle request and latency series: {removed}");
    assert!(m.requests.get(&labels("idle")).is_none());
    assert!(
        m.requests.get(&labels("busy")).is_some(),
        "moved since the last sweep"
    );
}

/// A request series is resolved to its handles once; they must stay
/// the exported series', also after the series expired and came back.
#[test]
fn resolved_series_stay_the_exported_ones_across_expiry() {
    let m = Metrics::default();
    let mut r = Registry::default();
    m.register(&mut r);
    let latency_count = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("weft_response_latency_seconds_count{") && l.contains("\"back\""))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    };
    for _ in 0..3 {
        m.request(labels("back"), Duration::from_millis(1), (0, 2));
    }
    assert_eq!(m.requests.get(&labels("back")).map(|c| c.get()), Some(3));
    assert_eq!(latency_count(&render(&r)).as_deref(), Some("3"));
    m.expire_idle(Duration::ZERO);
    m.expire_idle(Duration::ZERO);
    assert!(m.requests.get(&labels("back")).is_none(), "idle: expired");
    assert_eq!(
        latency_count(&render(&r)),
        None,
        "its latency series went with it"
    );
    m.request(labels("back"), Duration::from_millis(1), (0, 2));
    assert_eq!(
        m.requests.get(&labels("back")).map(|c| c.get()),
        Some(1),
        "a new series, counted from one, not the expired handle"
    );
    assert_eq!(latency_count(&render(&r)).as_deref(), Some("1"));
    // Another status is another series with its own counter, sharing
    // the latency series (codes are not latency labels).
    let mut failed = labels("back");
    failed.response_code = 503;
    m.request(failed.clone(), Duration::from_millis(1), (0, 2));
    assert_eq!(m.requests.get(&failed).map(|c| c.get()), Some(1));
    assert_eq!(m.requests.get(&labels("back")).map(|c| c.get()), Some(1));
    assert_eq!(latency_count(&render(&r)).as_deref(), Some("2"));
}

#[test]
fn quiet_open_streams_keep_their_series_closed_ones_expire() {
    let m = Metrics::default();
    let labels = |service: &str| StreamLabels {
        direction: Direction::Inbound,
        source_workload: "unknown".into(),
        source_workload_namespace: "web".into(),
        source_principal: "spiffe://cluster.local/ns/web/sa/web".into(),
        destination_workload: "db".into(),
        destination_workload_namespace: "shop".into(),
        destination_principal: "spiffe://cluster.local/ns/shop/sa/db".into(),
        destination_service_name: service.into(),
        destination_service_namespace: "shop".into(),
        connection_security_policy: SecurityPolicy(true),
    };
    let open = m.stream(labels("long"));
    drop(m.stream(labels("short")));
    assert_eq!(m.streams_closed.get(&labels("short")).map(|c| c.get()), Some(1));
    m.expire_idle(Duration::ZERO);
    m.expire_idle(Duration::ZERO);
    assert!(
        m.streams_opened.get(&labels("short")).is_none(),
        "closed and idle: gone"
    );
    assert!(m.stream_sent_bytes.get(&labels("short")).is_none());
    assert!(
        m.streams_opened.get(&labels("long")).is_some(),
        "open, however quiet"
    );
    drop(open);
    assert_eq!(m.streams_closed.get(&labels("long")).map(|c| c.get()), Some(1));
}

#[test]
fn renders_process_metrics() {
    let mut r = Registry::default();
    Metrics::default().register(&mut r);
    let text = render(&r);
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(text.contains("process_cpu_seconds_total"), "{text}");
    assert!(text.contains("weft_build_info{version="), "{text}");
}

/// A request looked up by its borrowed key lands in the series its owned
/// labels name, and a key that differs in any one label is another series.
#[test]
fn borrowed_keys_find_the_series_of_their_labels() {
    let m = Metrics::default();
    let owned = labels("back");
    m.request(owned.clone(), Duration::from_millis(1), (0, 2));
    m.request_by(owned.key(), Duration::from_millis(1), (0, 2));
    assert_eq!(m.requests.get(&owned).map(|c| c.get()), Some(2));
    assert_eq!(m.request_series.read().unwrap().len(), 1);

    let other_route = RequestKey {
        route: "demo/r/0",
        ..owned.key()
    };
    let grpc_failed = RequestKey {
        grpc_response_status: crate::grpc::code_label(crate::grpc::Code::Unavailable),
        ..owned.key()
    };
    m.request_by(other_route, Duration::from_millis(1), (0, 2));
    m.request_by(grpc_failed, Duration::from_millis(1), (0, 2));
    assert_eq!(m.request_series.read().unwrap().len(), 3);
    assert_eq!(m.requests.get(&other_route.to_labels()).map(|c| c.get()), Some(1));
    let failed = m.requests.get(&grpc_failed.to_labels()).map(|c| c.get());
    assert_eq!(failed, Some(1));
    assert_eq!(grpc_failed.to_labels().grpc_response_status, "14");
}
