//! `weft-control`: see the `weft_control` library, starting at `app`.

fn main() -> std::process::ExitCode {
    weft_control::app::run_cli(std::env::args_os())
}
