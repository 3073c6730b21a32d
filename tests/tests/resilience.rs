//! Resilience end to end: misbehaving apps (slow, failing, hanging) behind
//! real proxies, policies from a real control plane's YAML files, and the
//! client proxy's load balancing, circuit breaking, retries, timeouts,
//! bulkhead, fault injection and the server side's rate limits measured
//! from outside: by the status codes clients see and the requests each
//! app counted.
//!
//! The tests run one at a time (they measure latency and shares, which a
//! neighbour test's load would skew).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use weft_tests::apps::*;
use weft_tests::bed::*;
use weft_tests::{eventually, ControlProc, ProxyProc, TempDir};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_avoids_a_slow_endpoint_round_robin_is_even_weights_hold() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    bed.apps[2].set(Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    });
    bed.wait_config("peakEwma").await;
    let before = bed.counts();
    let replies = load(bed.client.addrs.outbound, 600, 4).await;
    assert_eq!(ok_share(&replies), 1.0);
    let slow = bed.share(2, &before) as f64 / 600.0;
    println!(
        "P2C over peak EWMA: the 50 ms slower endpoint got {:.1}%",
        slow * 100.0
    );
    assert!(slow < 0.10, "slow endpoint share {slow}");

    // Round robin: even, slow or not.
    bed.traffic_policy("  loadBalancer: roundRobin\n", "roundRobin")
        .await;
    let before = bed.counts();
    let replies = load(bed.client.addrs.outbound, 300, 1).await;
    assert_eq!(ok_share(&replies), 1.0);
    for i in 0..3 {
        let n = bed.share(i, &before);
        assert!(
            (95..=105).contains(&n),
            "round robin: endpoint {i} got {n} of 300"
        );
    }

    // Weights 1:3 between the two fast endpoints (the slow one at 0
    // share: weight 1 but we only count the first two... so drop it).
    bed.apps[2].set(Behaviour::default());
    bed.publish(&[1, 3, 4]);
    bed.wait_config("\"weight\":3").await;
    let before = bed.counts();
    let replies = load(bed.client.addrs.outbound, 800, 1).await;
    assert_eq!(ok_share(&replies), 1.0);
    let shares: Vec<f64> = (0..3).map(|i| bed.share(i, &before) as f64 / 800.0).collect();
    println!("round robin, weights 1:3:4 → {shares:?}");
    for (share, want) in shares.iter().zip([0.125, 0.375, 0.5]) {
        assert!((share - want).abs() <= 0.05, "weights 1:3:4 gave {shares:?}");
    }

    // With weights, the latency-aware balancer draws in proportion to
    // weight / load: equally fast endpoints get the ratio of their weights
    // (here the two that were always fast; the third's estimate still
    // remembers its 50 ms).
    bed.publish(&[1, 3]);
    bed.traffic_policy("  loadBalancer: peakEwma\n", "peakEwma").await;
    eventually(Duration::from_secs(5), "two endpoints", || async {
        let (_, config) = admin_get(bed.client.addrs.admin, "/config").await;
        (!config.contains(&bed.apps[2].addr.to_string())).then_some(())
    })
    .await;
    let before = bed.counts();
    let replies = load(bed.client.addrs.outbound, 2000, 1).await;
    assert_eq!(ok_share(&replies), 1.0);
    let shares: Vec<f64> = (0..2).map(|i| bed.share(i, &before) as f64 / 2000.0).collect();
    println!("P2C, weights 1:3 → {shares:?}");
    for (share, want) in shares.iter().zip([0.25, 0.75]) {
        assert!((share - want).abs() <= 0.05, "weights 1:3 gave {shares:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_ejects_a_failing_endpoint_probes_it_and_readmits_it() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    // Round robin: the breaker alone keeps traffic off the failing
    // endpoint (peak EWMA would also shun it for failing).
    bed.traffic_policy(
        "  loadBalancer: roundRobin\n  retries: {attempts: 0}\n  circuitBreaker: {consecutiveFailures: 3, baseEjection: 400ms, maxEjection: 800ms}\n",
        "\"consecutiveFailures\":3",
    )
    .await;
    bed.apps[0].set(Behaviour {
        fail_ratio: 1.0,
        ..Behaviour::default()
    });
    let before = bed.counts();
    let start = Instant::now();
    let mut failures = 0;
    let mut client = Conn::open(bed.client.addrs.outbound).await;
    while start.elapsed() < Duration::from_secs(3) {
        let r = client.send("/", &[]).await;
        failures += usize::from(r.status != StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let to_bad = bed.share(0, &before);
    let total: usize = (0..3).map(|i| bed.share(i, &before)).sum();
    // 3 failures eject it; then only probes: at most one per ejection,
    // and ejections last at least 200 ms (400 ms, jittered down to half).
    let max_probes = (elapsed.as_millis() / 200) as usize + 1;
    println!(
        "breaker: {to_bad} of {total} requests reached the failing endpoint in {elapsed:?} ({failures} failed)"
    );
    assert!(to_bad <= 3 + max_probes, "failing endpoint got {to_bad} requests");
    assert_eq!(failures, to_bad, "every request it got failed; no other did");
    assert!(bed.metric("weft_endpoint_ejections_total").await >= 1.0);

    // It recovers: the next probe succeeds and it gets its share again.
    bed.apps[0].set(Behaviour::default());
    eventually(Duration::from_secs(3), "the endpoint is back", || async {
        let before = bed.counts();
        let replies = load(bed.client.addrs.outbound, 60, 1).await;
        println!(
            "recovery: {:?} ok {}",
            (0..3).map(|i| bed.share(i, &before)).collect::<Vec<_>>(),
            ok_share(&replies)
        );
        (ok_share(&replies) == 1.0 && bed.share(0, &before) >= 10).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_ejected_fails_fast_with_circuit_open() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(1).await;
    bed.traffic_policy(
        "  retries: {attempts: 0}\n  circuitBreaker: {consecutiveFailures: 2, baseEjection: 10s}\n",
        "\"consecutiveFailures\":2",
    )
    .await;
    bed.apps[0].set(Behaviour {
        fail_ratio: 1.0,
        ..Behaviour::default()
    });
    let mut client = Conn::open(bed.client.addrs.outbound).await;
    for _ in 0..2 {
        assert_eq!(
            client.send("/", &[]).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let before = bed.counts();
    let r = client.send("/", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error.as_deref(), Some("circuit-open"));
    assert_eq!(bed.share(0, &before), 0, "nothing reached the ejected endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_endpoint_and_the_budget_caps_them() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    bed.traffic_policy(
        "  retries:\n    attempts: 2\n    retryOn: [5xx]\n    budget: {ratio: 0.2, minPerSecond: 10}\n    backoff: {base: 1ms, max: 5ms}\n",
        "\"fiveXx\":true",
    )
    .await;
    bed.apps[1].set(Behaviour {
        fail_ratio: 0.3,
        ..Behaviour::default()
    });
    let replies = load(bed.client.addrs.outbound, 3000, 4).await;
    let ok = ok_share(&replies);
    println!(
        "one of three endpoints failing 30%: {:.3}% success with retries",
        ok * 100.0
    );
    assert!(ok >= 0.999, "success {ok}");
    assert!(bed.metric("weft_retries_total{").await >= 1.0);

    // Every endpoint failing: retries stay within the budget (20% of
    // requests plus 10/s over the 10 s window) instead of tripling load.
    bed.traffic_policy(
        "  retries:\n    attempts: 3\n    retryOn: [5xx]\n    budget: {ratio: 0.2, minPerSecond: 10}\n    backoff: {base: 1ms, max: 5ms}\n  circuitBreaker: {consecutiveFailures: 1000000}\n",
        "\"consecutiveFailures\":1000000",
    )
    .await;
    for app in &bed.apps {
        app.set(Behaviour {
            fail_ratio: 1.0,
            ..Behaviour::default()
        });
    }
    // A fresh window: the budget must not have saved up from before.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = bed.counts();
    let start = Instant::now();
    let n = 1000;
    let replies = load(bed.client.addrs.outbound, n, 4).await;
    let secs = start.elapsed().as_secs_f64().ceil();
    let attempts: usize = (0..3).map(|i| bed.share(i, &before)).sum();
    let extra = attempts - n;
    // The window counts whole one-second slots: up to one more than the
    // seconds elapsed.
    let allowed = 0.2 * n as f64 + 10.0 * (secs + 1.0).min(10.0) + 1.0;
    println!(
        "all failing: {n} requests → {attempts} attempts ({extra} retries, budget {allowed:.0}) in {secs}s"
    );
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
    assert!((extra as f64) <= allowed, "{extra} retries > budget {allowed}");
    assert!(extra >= 150, "the budget was used ({extra})");
    assert!(
        bed.metric("weft_retries_total{destination_service_name=\"echo\",destination_service_namespace=\"demo\",result=\"budget_exhausted\"")
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_request_per_try_and_grpc() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(2).await;
    bed.traffic_policy("  timeouts: {request: 500ms}\n", "\"request\":\"500ms\"")
        .await;
    for app in &bed.apps {
        app.set(Behaviour {
            delay: Duration::from_secs(3),
            ..Behaviour::default()
        });
    }
    let r = call(bed.client.addrs.outbound, "/", &[]).await;
    println!("request timeout 500ms → 504 after {:?}", r.took);
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.error.as_deref(), Some("timeout"));
    assert!(
        r.took >= Duration::from_millis(450) && r.took <= Duration::from_millis(550),
        "{:?}",
        r.took
    );

    // Per-try timeout: the slow endpoint's try is cut short and retried
    // on the fast one.
    bed.apps[1].set(Behaviour::default());
    bed.traffic_policy(
        "  loadBalancer: roundRobin\n  timeouts: {request: 2s, perTry: 100ms}\n  retries: {attempts: 1, retryOn: [5xx]}\n",
        "\"perTry\":\"100ms\"",
    )
    .await;
    let before = bed.counts();
    let mut client = Conn::open(bed.client.addrs.outbound).await;
    for _ in 0..10 {
        let r = client.send("/", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.took < Duration::from_millis(400), "{:?}", r.took);
    }
    assert!(bed.share(0, &before) >= 1, "the slow endpoint was tried");
    assert!(bed.metric("weft_retries_total{").await >= 1.0);

    // gRPC: the deadline is propagated, reduced by the time spent, and
    // enforced with DEADLINE_EXCEEDED.
    bed.apps[0].set(Behaviour::default());
    let mut h2 = h2_client(bed.client.addrs.outbound).await;
    let grpc = |timeout: &str| {
        Request::post("http://echo/test.Echo/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(full(grpc_frame(b"hi")))
            .unwrap()
    };
    let (status, headers, _, _) = collect(h2.send_request(grpc("1500m")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "0");
    let seen = headers["x-seen-grpc-timeout"].to_str().unwrap().to_string();
    let micros: u64 = seen.trim_end_matches('u').parse().unwrap();
    // min(request 2s, grpc 1.5s, per-try 100ms): what the app sees is what
    // is left of the tightest.
    assert!(
        micros <= 100_000 && micros > 50_000,
        "app saw grpc-timeout {seen}"
    );
    bed.traffic_policy("  timeouts: {request: 10s}\n", "\"request\":\"10s\"")
        .await;
    for app in &bed.apps {
        app.set(Behaviour {
            delay: Duration::from_secs(2),
            ..Behaviour::default()
        });
    }
    let start = Instant::now();
    let (status, headers, _, _) = collect(h2.send_request(grpc("200m")).await.unwrap()).await;
    let took = start.elapsed();
    assert_eq!(status, StatusCode::OK, "gRPC errors are gRPC statuses");
    assert_eq!(headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(headers["weft-error"], "timeout");
    assert!(took < Duration::from_millis(400), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_sheds_excess_fast_while_in_flight_requests_finish() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(1).await;
    bed.traffic_policy(
        "  concurrency: {maxInFlight: 2, maxPending: 0}\n",
        "\"maxInFlight\":2",
    )
    .await;
    bed.apps[0].set(Behaviour {
        delay: Duration::from_millis(600),
        ..Behaviour::default()
    });
    let out = bed.client.addrs.outbound;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { call(out, "/", &[]).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut shed_times = Vec::new();
    for _ in 0..5 {
        let r = call(out, "/", &[]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.error.as_deref(), Some("load-shed"));
        shed_times.push(r.took);
    }
    println!("load-shed responses took {shed_times:?}");
    assert!(
        shed_times.iter().all(|t| *t < Duration::from_millis(50)),
        "{shed_times:?}"
    );
    for t in slow {
        assert_eq!(
            t.await.unwrap().status,
            StatusCode::OK,
            "in-flight requests finish"
        );
    }
    assert!(bed.metric("weft_load_shed_total").await >= 5.0);
    // Slots free again.
    bed.apps[0].set(Behaviour::default());
    assert_eq!(call(out, "/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_and_header_match() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(2).await;
    // Two services on the two apps: echo-v1 and echo-v2; `echo` is split.
    let svc = |name: &str, i: usize| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  serviceAccount: echo\n  endpoints:\n    - address: {}\n      proxy: {}\n---\n",
            bed.apps[i].addr, bed.servers[i].addrs.inbound
        )
    };
    bed.dir.write(
        "mesh/route.yaml",
        &format!(
            "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: echo-split, namespace: demo}}\nspec:\n  parentRefs: [{{name: echo, kind: Service}}]\n  rules:\n    - matches: [{{headers: [{{name: x-canary, value: \"yes\"}}]}}]\n      backendRefs: [{{name: echo-v2, port: 80}}]\n    - backendRefs:\n        - {{name: echo-v1, port: 80, weight: 90}}\n        - {{name: echo-v2, port: 80, weight: 10}}\n",
            svc("echo-v1", 0),
            svc("echo-v2", 1)
        ),
    );
    bed.wait_config("echo-split").await;
    let before = bed.counts();
    let replies = load(bed.client.addrs.outbound, 2000, 2).await;
    assert_eq!(ok_share(&replies), 1.0);
    let v2 = bed.share(1, &before) as f64 / 2000.0;
    println!("90/10 split: v2 got {:.1}%", v2 * 100.0);
    assert!((0.07..=0.13).contains(&v2), "v2 share {v2}");
    let v2_addr = bed.apps[1].addr.to_string();
    for _ in 0..20 {
        let r = call(bed.client.addrs.outbound, "/", &[("x-canary", "yes")]).await;
        assert_eq!(r.server.as_deref(), Some(v2_addr.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_delays_and_aborts_the_configured_share() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(1).await;
    bed.traffic_policy(
        "  fault:\n    delay: {fixed: 50ms, percent: 30}\n    abort: {status: 503, percent: 20}\n",
        "\"abortPercent\":20",
    )
    .await;
    let before = bed.counts();
    let replies = load(bed.client.addrs.outbound, 600, 4).await;
    let aborted = replies
        .iter()
        .filter(|r| {
            r.status == StatusCode::SERVICE_UNAVAILABLE && r.error.as_deref() == Some("fault-injected")
        })
        .count() as f64
        / 600.0;
    let delayed = replies
        .iter()
        .filter(|r| r.took >= Duration::from_millis(50))
        .count() as f64
        / 600.0;
    println!(
        "fault: {:.1}% aborted, {:.1}% delayed",
        aborted * 100.0,
        delayed * 100.0
    );
    assert!((0.14..=0.26).contains(&aborted), "aborted {aborted}");
    assert!((0.23..=0.40).contains(&delayed), "delayed {delayed}");
    assert_eq!(
        bed.share(0, &before),
        replies.iter().filter(|r| r.status == StatusCode::OK).count(),
        "aborted requests never reach the app"
    );
    assert!(bed.metric("weft_faults_injected_total").await >= 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_apply_within_a_second_without_failed_requests() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    bed.wait_config("peakEwma").await;
    let out = bed.client.addrs.outbound;
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = running.clone();
    let traffic = tokio::spawn(async move {
        let mut statuses: HashMap<u16, usize> = HashMap::new();
        let mut client = h1_client(out).await;
        while flag.load(std::sync::atomic::Ordering::SeqCst) {
            let req = Request::get("/")
                .header("host", "echo")
                .body(full(Bytes::new()))
                .unwrap();
            if let Err(e) = client.ready().await {
                eprintln!("connection closed: {e:?}");
                client = h1_client(out).await;
            }
            let status = match client.send_request(req).await {
                Ok(rsp) => collect(rsp).await.0.as_u16(),
                Err(e) => {
                    eprintln!("request failed: {e:?}");
                    client = h1_client(out).await;
                    0
                }
            };
            *statuses.entry(status).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        statuses
    });
    let policies = [
        ("  loadBalancer: roundRobin\n", "roundRobin"),
        (
            "  loadBalancer: leastRequest\n  concurrency: {maxInFlight: 50}\n",
            "leastRequest",
        ),
        (
            "  retries: {attempts: 2, retryOn: [5xx]}\n  timeouts: {request: 2s}\n",
            "\"request\":\"2s\"",
        ),
        ("  loadBalancer: peakEwma\n", "peakEwma"),
    ];
    for (spec, marker) in policies {
        let start = Instant::now();
        bed.traffic_policy(spec, marker).await;
        let took = start.elapsed();
        println!("policy `{}` in force after {took:?}", spec.trim());
        assert!(took < Duration::from_secs(1), "{took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let statuses = traffic.await.unwrap();
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}\nclient proxy log:\n{}",
        bed.client.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_admits_the_rate_and_answers_429_with_retry_after() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(1).await;
    bed.rate_limit("{requestsPerSecond: 20, burst: 10}", "\"totalRps\":20")
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a full bucket
    let start = Instant::now();
    let replies = load(bed.client.addrs.outbound, 100, 2).await;
    let secs = start.elapsed().as_secs_f64();
    let admitted = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    println!("rate limit 20/s burst 10: {admitted} of 100 admitted in {secs:.2}s");
    assert_eq!(
        admitted + limited.len(),
        100,
        "{:?}",
        replies
            .iter()
            .map(|r| (r.status, r.error.clone()))
            .collect::<Vec<_>>()
    );
    let most = 10.0 + 20.0 * secs + 1.0;
    assert!(
        admitted >= 10 && admitted as f64 <= most,
        "{admitted} admitted, at most {most}"
    );
    for r in &limited {
        assert_eq!(r.error.as_deref(), Some("rate-limited"));
        let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(after >= 1);
    }
    assert!(metric_sum(bed.servers[0].addrs.admin, "weft_rate_limited_total").await >= limited.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_rate_limits_isolate_callers() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new();
    dir.write(
        "tokens.yaml",
        "- {namespace: demo, serviceAccount: web, token: web-token-0123456789}\n- {namespace: demo, serviceAccount: echo, token: echo-token-0123456789}\n",
    );
    dir.write("web.token", "web-token-0123456789\n");
    dir.write("echo.token", "echo-token-0123456789\n");
    std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let control = ControlProc::start_with(
        &dir.path().join("mesh"),
        "127.0.0.1:0".parse().unwrap(),
        &["--tokens", tokens.to_str().unwrap()],
    );
    let proxy = |workload: &str, token: &str, extra: &str| {
        ProxyProc::start(&format!(
            "{}namespace: demo\nworkload: {workload}\nidentityTokenFile: {}\n{extra}",
            control.client_config(),
            dir.path().join(token).display()
        ))
    };
    let app = FlakyApp::start(Behaviour::default()).await;
    let server = proxy(
        "echo",
        "echo.token",
        &format!("appPorts: [{}]\n", app.addr.port()),
    );
    dir.write(
        "mesh/echo.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  endpoints:\n    - address: {}\n      proxy: {}\n---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  targetRef: {{name: echo}}\n  rules: [{{}}]\n  rateLimit:\n    requestsPerSecond: 1000\n    perIdentity: {{requestsPerSecond: 2, burst: 5}}\n",
            app.addr, server.addrs.inbound
        ),
    );
    let noisy = proxy("web", "web.token", "");
    let quiet = proxy("echo", "echo.token", "");
    for p in [&server, &noisy, &quiet] {
        p.ready().await;
    }
    eventually(Duration::from_secs(5), "the server has the limit", || async {
        let (_, config) = admin_get(server.addrs.admin, "/config").await;
        let compact: String = config.split_whitespace().collect();
        compact.contains("\"perIdentityRps\":2").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let replies = load(noisy.addrs.outbound, 40, 1).await;
    let admitted = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    println!("per-identity 2/s burst 5: the noisy caller got {admitted} of 40 through");
    assert!((5..=8).contains(&admitted), "{admitted}");
    assert!(replies
        .iter()
        .filter(|r| r.status != StatusCode::OK)
        .all(|r| r.status == StatusCode::TOO_MANY_REQUESTS && r.error.as_deref() == Some("rate-limited")));
    // The other caller has its own bucket.
    let replies = load(quiet.addrs.outbound, 5, 1).await;
    assert_eq!(ok_share(&replies), 1.0, "the quiet caller is not starved");
    assert!(
        metric_sum(
            server.addrs.admin,
            "weft_rate_limited_total{destination_service_name=\"echo\",destination_service_namespace=\"demo\",reason=\"identity\"}"
        )
        .await
            >= 30.0
    );
}

/// `grpcCodes: [unavailable]` on a backend that answers UNAVAILABLE to
/// 30% of calls: gRPC calls are POSTs, yet they are retried (their message
/// replayed) and the caller sees every call succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_retried_on_unavailable() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(3).await;
    bed.traffic_policy(
        "  retries:\n    attempts: 2\n    grpcCodes: [unavailable]\n    budget: {ratio: 0.5, minPerSecond: 50}\n    backoff: {base: 1ms, max: 5ms}\n",
        "\"grpcCodes\":[14]",
    )
    .await;
    bed.apps[1].set(Behaviour {
        fail_ratio: 0.3,
        ..Behaviour::default()
    });
    let before = bed.counts();
    let mut client = h2_client(bed.client.addrs.outbound).await;
    let n = 600;
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..n {
        let req = Request::post("http://echo/test.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(grpc_frame(b"hello")))
            .unwrap();
        let (status, headers, _, trailers) = collect(client.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let code = headers
            .get("grpc-status")
            .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        *codes.entry(code).or_insert(0) += 1;
    }
    let attempts: usize = (0..3).map(|i| bed.share(i, &before)).sum();
    println!("gRPC, one of three endpoints failing 30%: {codes:?}, {attempts} attempts for {n} calls");
    let ok = codes.get("0").copied().unwrap_or(0);
    assert!(ok as f64 >= 0.995 * n as f64, "{codes:?}");
    assert!(attempts > n, "some calls were retried: {attempts} attempts");
    assert!(bed.metric("weft_retries_total{").await >= 1.0);
}

/// One replica's app is dead behind its live proxy (nothing listens on its
/// app port, as after a SIGKILL): that proxy answers `502 connect-failed`
/// and says nothing reached the app, so the client proxy sends the request
/// to another replica — GETs and POSTs alike, the POST's body intact — and
/// counts the retries. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_behind_a_live_proxy_costs_no_request() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(2).await;
    // A port nothing listens on: the dead app's.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let orphan = ProxyProc::start(&format!(
        "appPorts: [{}]\nworkload: echo\n{}",
        dead.port(),
        bed.control.proxy_config("demo", "echo")
    ));
    orphan.ready().await;
    bed.traffic_policy("  loadBalancer: roundRobin\n", "\"roundRobin\"")
        .await;
    bed.publish_with(&[1, 1], &[(dead, orphan.addrs.inbound)]);
    bed.wait_config(&dead.to_string()).await;

    let before = bed.counts();
    let mut failed = Vec::new();
    for i in 0..60 {
        let mut c = h1_client(bed.client.addrs.outbound).await;
        let body = format!("order {i}");
        let req = if i % 2 == 0 {
            Request::get("http://echo/").body(full(Bytes::new())).unwrap()
        } else {
            Request::post("http://echo/orders")
                .body(full(body.clone()))
                .unwrap()
        };
        let (status, headers, _, _) = collect(c.send_request(req).await.unwrap()).await;
        if status != StatusCode::OK {
            failed.push((i, status, headers.get("weft-error").cloned()));
        }
        assert!(!headers.contains_key("weft-unsent"), "never passed to the app");
    }
    assert!(failed.is_empty(), "{failed:?}\n{}", orphan.logs());
    let served: usize = (0..2).map(|i| bed.share(i, &before)).sum();
    assert_eq!(served, 60, "each request reached a live app exactly once");
    // Retried until the breaker ejects the dead replica (5 failures in a
    // row by default), and counted.
    let retries = bed.metric("weft_retries_total").await;
    assert!(retries >= 3.0, "retries counted: {retries}");
    assert!(
        orphan.logs().contains("connect-failed") || orphan.logs().contains("could not"),
        "the orphan proxy was asked: {}",
        orphan.logs()
    );
}

/// A TCP stream to a rate-limited port (here a CONNECT tunnel, carried to
/// the server proxy as a WEFT-TCP tunnel over mTLS) takes a token as a
/// request does when it carries opaque bytes: past the burst, new tunnels
/// are closed before reaching the app, and counted. HTTP inside a tunnel
/// is served as HTTP and charged per request, pipelined or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tunnels_are_rate_limited_like_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = SERIAL.lock().await;
    let bed = Bed::start(1).await;
    bed.rate_limit("{requestsPerSecond: 0.001, burst: 3}", "\"totalBurst\":3")
        .await;
    // Opens a CONNECT tunnel through the client proxy, sends `payload`,
    // and returns what came back before the tunnel closed.
    let through_tunnel = |payload: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(bed.client.addrs.outbound)
            .await
            .unwrap();
        s.write_all(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 512];
        let n = s.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        s.write_all(payload).await.unwrap();
        let mut rsp = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rsp)).await;
        String::from_utf8_lossy(&rsp).into_owned()
    };
    // Opaque bytes: one token per tunnel. The echo app answers the
    // garbage with its own 400, which shows the tunnel reached it.
    let mut reached = 0;
    for _ in 0..8 {
        if through_tunnel(b"PING\r\n\r\n").await.starts_with("HTTP/1.1 400") {
            reached += 1;
        }
    }
    assert_eq!(reached, 3, "the burst of opaque tunnels, then closed");

    bed.rate_limit("{requestsPerSecond: 0.001, burst: 4}", "\"totalBurst\":4")
        .await;
    let before = bed.counts();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..8 {
        let rsp = through_tunnel(
            b"GET /a HTTP/1.1\r\nHost: echo\r\n\r\nGET /b HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        )
        .await;
        ok += rsp.matches("HTTP/1.1 200").count();
        limited += rsp.matches("HTTP/1.1 429").count();
    }
    assert_eq!((ok, limited), (4, 12), "each pipelined request took a token");
    assert_eq!(bed.share(0, &before), 4, "only admitted requests reached the app");
    assert!(metric_sum(bed.servers[0].addrs.admin, "weft_rate_limited_total").await >= 17.0);
}
