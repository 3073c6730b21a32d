//! The `weft` command line: run a whole mesh locally (`weft demo`), the
//! built-in sample app the demo and the benchmarks use (`weft sample-app`),
//! and the proxy itself (`weft proxy`, the same code as `weft-proxy`, so one
//! binary can start every process of the demo).
//!
//! Start at [`main`]; each command is a module.

pub mod sample_app;

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
    /// A small HTTP/1.1 + HTTP/2 app with configurable latency and errors.
    SampleApp(sample_app::Args),
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
        Command::SampleApp(args) => sample_app::run(args),
        Command::Proxy { args } => weft_proxy::run_cli(std::iter::once("weft-proxy".to_string()).chain(args)),
    }
}
