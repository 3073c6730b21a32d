//! Compiles `proto/weft/v1/*.proto` with protox (pure Rust: no system
//! `protoc` needed on a fresh machine) and generates the tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/weft/v1/destination.proto",
        "proto/weft/v1/inbound.proto",
        "proto/weft/v1/identity.proto",
        "proto/weft/v1/gateway.proto",
        "proto/weft/v1/edge.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
