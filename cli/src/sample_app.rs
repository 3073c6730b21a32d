//! `weft sample-app`: an HTTP/1.1 + HTTP/2 (prior knowledge) server with
//! configurable latency and error rate, optionally calling other services
//! through its Weft proxy, as a frontend would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Name reported in responses.
    #[arg(long, default_value = "sample")]
    pub name: String,
    /// Added to every response, e.g. `5ms`.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of requests answered 500, 0.0..=1.0.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Services to call on every request (through `--proxy`), like a
    /// frontend fanning out to backends.
    #[arg(long = "call")]
    pub calls: Vec<String>,
    /// The outbound listener of this app's Weft proxy.
    #[arg(long, default_value = "127.0.0.1:4140")]
    pub proxy: SocketAddr,
}

struct App {
    args: Args,
    client: Client<HttpConnector, Empty<Bytes>>,
}

pub fn run(args: Args) -> ExitCode {
    if !(0.0..=1.0).contains(&args.error_rate) {
        eprintln!("weft sample-app: --error-rate must be within 0.0..=1.0");
        return ExitCode::from(64);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("weft sample-app: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let client = Client::builder(TokioExecutor::new()).build_http();
        let app = Arc::new(App { args, client });
        eprintln!(
            "sample-app {} listening on {}",
            app.args.name,
            listener.local_addr().expect("bound")
        );
        serve(listener, app).await;
        ExitCode::SUCCESS
    })
}

async fn serve(listener: TcpListener, app: Arc<App>) {
    let shutdown = weft_proxy::app::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the request body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    if !app.args.latency.is_zero() {
        tokio::time::sleep(app.args.latency).await;
    }
    let mut failed_calls = Vec::new();
    for service in &app.args.calls {
        if !call(&app, service).await {
            failed_calls.push(service.as_str());
        }
    }
    let (status, body) = if !failed_calls.is_empty() {
        (
            StatusCode::BAD_GATEWAY,
            format!("{}: calling {} failed\n", app.args.name, failed_calls.join(", ")),
        )
    } else if app.args.error_rate > 0.0 && rand::random::<f64>() < app.args.error_rate {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: injected error\n", app.args.name),
        )
    } else {
        (StatusCode::OK, format!("{}: ok\n", app.args.name))
    };
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    Ok(rsp)
}

/// Calls `service` through the proxy's outbound listener, naming it in Host.
async fn call(app: &App, service: &str) -> bool {
    let uri = format!("http://{}/", app.args.proxy);
    let req = Request::get(uri)
        .header("host", service)
        .body(Empty::new())
        .expect("valid request");
    match app.client.request(req).await {
        Ok(rsp) => {
            let ok = rsp.status().is_success();
            let _ = rsp.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}
