//! The `weft` command line: run a whole mesh locally (`weft demo`), validate
//! config (`weft check`), inject the sidecar into manifests (`weft inject`),
//! read golden signals (`weft stat`), check an installation and read a
//! proxy's metrics and config in a cluster (`weft check --cluster`,
//! `weft diagnostics`, `weft version`: [`cluster`]), print the CRDs
//! (`weft crds`), shell completions (`weft completions`), the
//! built-in sample app the demo and the benchmarks use (`weft sample-app`),
//! and the proxy and control plane themselves (`weft proxy`, `weft control`:
//! the same code as `weft-proxy` and `weft-control`, so one binary can start
//! every process of the demo).
//!
//! Start at [`main`]; each command is a module.

pub mod check;
pub mod cluster;
pub mod demo;
pub mod inject;
pub mod procs;
pub mod sample_app;
pub mod stat;
pub mod stats;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Weft service mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole mesh on this machine: control plane, sample services
    /// behind their proxies, traffic, and a live per-service table.
    Demo(demo::Args),
    /// Validate config documents; exits non-zero on any error.
    Check(check::Args),
    /// Golden signals per service and route from the proxies' metrics.
    Stat(stat::Args),
    /// Add the proxy sidecar to Kubernetes manifests (multi-document YAML
    /// in, out on stdout), as the admission webhook does.
    Inject(inject::Args),
    /// A small HTTP/1.1 + HTTP/2 app with configurable latency and errors.
    SampleApp(sample_app::Args),
    /// Print the weft.dev CustomResourceDefinitions (YAML) for
    /// `kubectl apply -f -`.
    Crds,
    /// A meshed pod's proxy, through the API server: its metrics or its
    /// effective config.
    Diagnostics {
        #[command(subcommand)]
        what: Diagnostics,
    },
    /// This CLI's version, and the cluster's control plane's and proxies'.
    Version {
        /// Only this CLI's version (no cluster needed).
        #[arg(long)]
        client: bool,
        /// The control plane's namespace.
        #[arg(short = 'n', long, default_value = "weft-system")]
        namespace: String,
        #[command(flatten)]
        target: cluster::Cluster,
    },
    /// Shell completions: `source <(weft completions bash)`.
    Completions { shell: clap_complete::Shell },
    /// Run the control plane (same flags as `weft-control`).
    #[command(disable_help_flag = true)]
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the proxy (same flags as `weft-proxy`).
    #[command(disable_help_flag = true)]
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Diagnostics {
    /// The proxy's Prometheus metrics, as scraped from its admin port.
    ProxyMetrics(PodArgs),
    /// The proxy's effective config and what the control plane sent it.
    ProxyConfig(PodArgs),
}

#[derive(Debug, clap::Args)]
struct PodArgs {
    /// The meshed pod.
    pod: String,
    /// The pod's namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The proxy's admin port.
    #[arg(long, default_value_t = cluster::diagnostics::ADMIN_PORT)]
    admin_port: u16,
    #[command(flatten)]
    target: cluster::Cluster,
}

fn diagnostics(what: Diagnostics) -> ExitCode {
    let (args, path) = match what {
        Diagnostics::ProxyMetrics(a) => (a, "/metrics"),
        Diagnostics::ProxyConfig(a) => (a, "/config"),
    };
    cluster::block_on(async {
        let context = args.target.context.as_deref();
        let namespace = match args.namespace {
            Some(ns) => ns,
            None => cluster::context_namespace(context).await,
        };
        let answer = match cluster::client(context).await {
            Ok(client) => {
                cluster::diagnostics::proxy_admin(&client, &namespace, &args.pod, args.admin_port, path).await
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft diagnostics: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn version(client_only: bool, namespace: &str, target: &cluster::Cluster) -> ExitCode {
    cluster::block_on(async {
        let client = if client_only {
            None
        } else {
            match cluster::client(target.context.as_deref()).await {
                Ok(c) => Some(c),
                Err(e) => {
                    println!("client: {}", env!("CARGO_PKG_VERSION"));
                    println!("control plane: unavailable ({e})");
                    return ExitCode::SUCCESS;
                }
            }
        };
        for line in cluster::diagnostics::versions(client.as_ref(), namespace).await {
            println!("{line}");
        }
        ExitCode::SUCCESS
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Check(args) => check::run(args),
        Command::Crds => {
            print!("{}", weft_control::kubernetes::crds::all_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Stat(args) => stat::run(args),
        Command::Diagnostics { what } => diagnostics(what),
        Command::Version {
            client,
            namespace,
            target,
        } => version(client, &namespace, &target),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Inject(args) => inject::run(args),
        Command::SampleApp(args) => sample_app::run(args),
        Command::Control { args } => {
            weft_control::app::run_cli(std::iter::once("weft-control".to_string()).chain(args))
        }
        Command::Proxy { args } => weft_proxy::run_cli(std::iter::once("weft-proxy".to_string()).chain(args)),
    }
}
