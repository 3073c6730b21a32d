//! A proxy that opens watches and never reads them must not grow the
//! control plane's memory: each stream holds a small bounded queue, and the
//! index keeps only the latest state. When the reader wakes up it is caught
//! up quickly (a fresh snapshot), not replayed every change it missed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use weft_api::v1 as api;
use weft_api::v1::destination_update::Kind;
use weft_control::grpc::DestinationService;
use weft_control::index::{Index, IndexConfig};
use weft_control::metrics::ControlMetrics;
use weft_control::testing::documents;

const ENDPOINTS: usize = 400;
const WATCHERS: usize = 20;
const VERSIONS: usize = 600;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Version `v` moves every endpoint to a new port, so each version differs
/// in all of its endpoints.
fn big_service(v: usize) -> Vec<weft_control::model::Document> {
    let mut yaml = String::from(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshService\nmetadata: {name: big, namespace: demo}\nspec:\n  endpoints:\n",
    );
    for i in 0..ENDPOINTS {
        yaml.push_str(&format!(
            "    - address: 10.{}.{}.{}:{}\n      proxy: 10.{}.{}.{}:4143\n",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            1000 + v,
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    documents(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_stays_bounded_and_is_caught_up() {
    let index = Index::new(IndexConfig::default());
    index.apply("files", big_service(0));
    let metrics = Arc::new(ControlMetrics::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Kept alive: dropping the sender would end every stream.
    let (_closing, closing_rx) = tokio::sync::watch::channel(false);
    let svc = DestinationService {
        index: index.clone(),
        trust_domain: "cluster.local".into(),
        metrics: metrics.clone(),
        proxies: Default::default(),
        closing: closing_rx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            // Plain TCP here (what is measured is the stream, not TLS): each
            // call is stamped as if a mesh certificate had proved it.
            .add_service(api::destination_server::DestinationServer::with_interceptor(
                svc,
                |mut req: tonic::Request<()>| {
                    req.extensions_mut().insert(weft_control::tls::Peer {
                        remote: "127.0.0.1:1".parse().unwrap(),
                        identity: Some("spiffe://cluster.local/ns/demo/sa/default".into()),
                    });
                    Ok(req)
                },
            ))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // One connection per watcher, as every proxy has its own.
    let mut streams = Vec::new();
    for i in 0..WATCHERS {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = api::destination_client::DestinationClient::new(channel);
        let req = api::DestinationRequest {
            target: "big.demo:80".into(),
            namespace: "demo".into(),
            proxy_id: format!("p{i}"),
            admin_address: String::new(),
            proxy_version: String::new(),
        };
        streams.push(client.watch(req).await.unwrap().into_inner());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();

    // Stalled streams fill their bounded buffers within the first versions;
    // after that, more versions must not cost more memory. (Queued, 600
    // versions x 20 watchers x ~50 KB of changes would be ~600 MB.)
    let apply = |from: usize, to: usize| {
        for v in from..=to {
            index.apply("files", big_service(v));
        }
    };
    apply(1, 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_100 = rss_bytes();
    apply(101, VERSIONS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_bytes().saturating_sub(after_100);
    eprintln!(
        "RSS: +{} KiB for the first 100 versions (buffers filling), +{} KiB for the next {}",
        after_100.saturating_sub(before) / 1024,
        grown / 1024,
        VERSIONS - 100
    );
    assert!(
        grown < 16 * 1024 * 1024,
        "memory kept growing with versions: +{} MiB",
        grown / (1024 * 1024)
    );

    // The reader wakes up: what HTTP/2 flow control let through (the client
    // connection's windows, 64 KiB here) and the stream's small queue, then
    // one snapshot of the latest state; never a replay of all 600 changes.
    let stream = &mut streams[0];
    let latest_port = format!(":{}", 1000 + VERSIONS);
    let mut read = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        read += 1;
        if let Some(Kind::Snapshot(s)) = &msg.kind {
            if s.endpoints.len() == ENDPOINTS && s.endpoints.iter().all(|e| e.address.ends_with(&latest_port))
            {
                eprintln!("caught up after {read} messages");
                break;
            }
        }
        assert!(
            read < 200,
            "the reader is replayed change by change ({read} messages)"
        );
    }
}
