//! The `weft` command line: run a whole mesh locally (`weft demo`), validate
//! config (`weft check`), inject the sidecar into manifests (`weft inject`),
//! read golden signals (`weft stat`), print the CRDs (`weft crds`), the
//! built-in sample app the demo and the benchmarks use (`weft sample-app`),
//! and the proxy and control plane themselves (`weft proxy`, `weft control`:
//! the same code as `weft-proxy` and `weft-control`, so one binary can start
//! every process of the demo).
//!
//! Start at [`main`]; each command is a module.

pub mod check;
pub mod demo;
pub mod inject;
pub mod procs;
pub mod sample_app;
pub mod stat;
pub mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        Command::Inject(args) => inject::run(args),
        Command::SampleApp(args) => sample_app::run(args),
        Command::Control { args } => {
            weft_control::app::run_cli(std::iter::once("weft-control".to_string()).chain(args))
        }
        Command::Proxy { args } => weft_proxy::run_cli(std::iter::once("weft-proxy".to_string()).chain(args)),
    }
}
