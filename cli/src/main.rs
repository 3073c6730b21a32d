//! `weft`: the Weft command line. See the `weft` library docs for where each
//! command lives.

fn main() -> std::process::ExitCode {
    weft::main()
}
