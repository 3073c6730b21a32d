//! `weft-proxy`: see the `weft_proxy` library, starting at `app`.

fn main() -> std::process::ExitCode {
    weft_proxy::run_cli(std::env::args_os())
}
