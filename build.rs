//! Compiles the examples' and tests' protos (examples/proto) with protox: no protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["examples/proto/helloworld/helloworld.proto", "examples/proto/testing/streaming.proto"];
    let files = protox::compile(protos, ["examples/proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(files)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
