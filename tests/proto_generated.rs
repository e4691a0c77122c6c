//! The examples' gRPC code is generated once and checked in (`examples/proto/gen/`), so crates
//! that depend on `mesh` never run a proto compiler. This test regenerates it from the protos and
//! fails if the checked-in copy is stale; `MESH_REGENERATE_PROTOS=1` rewrites it instead.

use std::path::Path;

#[test]
fn checked_in_grpc_code_matches_the_protos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = [
        "examples/proto/helloworld/helloworld.proto",
        "examples/proto/testing/streaming.proto",
        // gRPC's interop protos (grpc.testing); test.proto imports the other two.
        "examples/proto/grpc/testing/test.proto",
    ];
    let files =
        protox::compile(protos.map(|p| root.join(p)), [root.join("examples/proto")]).expect("the protos compile");
    let out = tempfile::tempdir().expect("a temporary directory");
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(out.path())
        .compile_fds(files)
        .expect("code generation succeeds");
    let checked_in = root.join("examples/proto/gen");
    for name in ["helloworld.rs", "mesh.testing.rs", "grpc.testing.rs"] {
        let fresh = std::fs::read_to_string(out.path().join(name)).expect("generated");
        let path = checked_in.join(name);
        if std::env::var_os("MESH_REGENERATE_PROTOS").is_some() {
            std::fs::write(&path, &fresh).expect("written");
            continue;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == fresh,
            "{} is stale: run `MESH_REGENERATE_PROTOS=1 cargo test --test proto_generated` and commit it",
            path.display()
        );
    }
}
