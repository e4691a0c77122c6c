//! Interop with a gRPC stack that is not ours: Python's grpcio (gRPC C-core, its own TLS) as a
//! client of the mesh's gRPC server, and as a server behind a `MeshChannel`, over mutual TLS with
//! SPIFFE identities. The right identity gets through; a wrong one does not.
//!
//! The scripts are in `tests/interop/` and need only grpcio (`.ci/grpc-interop-setup.sh` installs
//! it and exports `MESH_PYTHON`). Without grpcio the tests skip with the reason, unless
//! `MESH_INTEROP=1` is set: then they fail.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use grpc_support::{Options, greeter, hello, pb::greeter_client::GreeterClient, serve};
use mesh::{
    core::{
        Endpoint, IdentityFiles, IdentitySource, ServiceSnapshot, SpiffeId, StaticDiscovery,
        identity::dev::{DevCa, LeafSpec},
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tonic::MeshChannel,
    tower::authz::AuthorizationLayer,
};
use support::ca;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

/// The python with grpcio, or why there is none (a failure under `MESH_INTEROP=1`).
fn grpcio_python() -> Option<PathBuf> {
    let python = std::env::var_os("MESH_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let check = std::process::Command::new(&python).args(["-c", "import grpc"]).output();
    let why = match check {
        Ok(output) if output.status.success() => return Some(python),
        Ok(output) => {
            format!("{} cannot import grpc: {}", python.display(), String::from_utf8_lossy(&output.stderr).trim())
        }
        Err(error) => format!("cannot run {}: {error}", python.display()),
    };
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why} (source .ci/grpc-interop-setup.sh, or set MESH_PYTHON)");
    }
    eprintln!("skipping the grpcio interop test: {why} (source .ci/grpc-interop-setup.sh to run it)");
    None
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(name)
}

/// Certificates on disk for the python side: `NAME.pem`/`NAME-key.pem` for each leaf, with
/// `localhost` as a DNS SAN (grpcio checks the host name as well as the chain), and `ca.pem`.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new(leaves: &[(&str, &DevCa)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca().cert_pem()).unwrap();
        for (name, issuer) in leaves {
            let id: SpiffeId = format!("spiffe://example.org/{name}").parse().unwrap();
            let cert = issuer.issue_with(&LeafSpec::new(&id).dns("localhost")).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.cert_pem).unwrap();
            std::fs::write(dir.path().join(format!("{name}-key.pem")), cert.key_pem).unwrap();
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }

    fn identity(&self, name: &str) -> IdentitySource {
        let files = IdentityFiles::new(
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}-key.pem")),
            self.path("ca.pem"),
            "example.org".parse().unwrap(),
        );
        IdentitySource::from_files(files).unwrap()
    }
}

/// Runs the grpcio client as `caller`: its reply on success, else its `CODE: DETAILS`.
async fn grpcio_call(python: &Path, certs: &Certs, addr: std::net::SocketAddr, caller: &str) -> Result<String, String> {
    let output = tokio::process::Command::new(python)
        .arg(script("greeter_client.py"))
        .args([addr.to_string(), certs.path("ca.pem"), certs.path(&format!("{caller}.pem"))])
        .args([certs.path(&format!("{caller}-key.pem")), "py".to_owned()])
        .output()
        .await
        .unwrap();
    // gRPC C-core logs above the script's own last line.
    let last = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().lines().last().unwrap_or_default().to_owned();
    if output.status.success() { Ok(last(&output.stdout)) } else { Err(last(&output.stderr)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_calls_the_mesh_server_over_mtls() {
    let Some(python) = grpcio_python() else { return };
    let foreign = DevCa::new("example.org".parse().unwrap()).unwrap();
    let certs = Certs::new(&[("backend", ca()), ("python", ca()), ("intruder", ca()), ("stranger", &foreign)]);
    let python_id = PrincipalMatch::Exact("spiffe://example.org/python".parse().unwrap());
    let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![python_id])]);
    let options = Options { authorization: Some(AuthorizationLayer::new(policy)), ..Options::default() };
    let backend = serve(certs.identity("backend"), options).await;
    let addr = backend.handle.local_addr();

    let reply = grpcio_call(&python, &certs, addr, "python").await;
    assert_eq!(reply.as_deref(), Ok("hello py from v1, you are spiffe://example.org/python"));

    // Same CA, but not a caller the policy allows.
    let denied = grpcio_call(&python, &certs, addr, "intruder").await.unwrap_err();
    assert_eq!(
        denied,
        "PERMISSION_DENIED: spiffe://example.org/intruder may not call /helloworld.Greeter/SayHello: no rule allows it"
    );

    // A certificate of another CA: the handshake itself is refused.
    let refused = grpcio_call(&python, &certs, addr, "stranger").await.unwrap_err();
    assert!(refused.starts_with("UNAVAILABLE"), "{refused}");
    backend.handle.wait_for_handshakes(|c| c.total_failed() >= 1).await;
    assert_eq!(backend.seen.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "only the allowed call got through");
    backend.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_channel_calls_a_grpcio_server_over_mtls() {
    let Some(python) = grpcio_python() else { return };
    let certs = Certs::new(&[("pyserver", ca()), ("frontend", ca())]);
    let mut server = tokio::process::Command::new(&python)
        .arg(script("greeter_server.py"))
        .args([certs.path("ca.pem"), certs.path("pyserver.pem"), certs.path("pyserver-key.pem")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("the grpcio server exited before listening");
    let addr: std::net::SocketAddr = first.strip_prefix("listening on ").unwrap().parse().unwrap();

    let channel = |expected: &str| {
        let discovery = StaticDiscovery::new();
        discovery.set(
            ServiceSnapshot::builder(greeter())
                .identity(expected.parse().unwrap())
                .endpoint(Endpoint::new(addr))
                .build()
                .unwrap(),
        );
        MeshChannel::builder(discovery, greeter()).identity(certs.identity("frontend")).build().unwrap()
    };

    let reply = GreeterClient::new(channel("spiffe://example.org/pyserver")).say_hello(hello("mesh")).await.unwrap();
    assert_eq!(reply.into_inner().message, "hello mesh from grpcio, you are spiffe://example.org/frontend");

    // The server is not who discovery says it must be: the channel refuses it.
    let status =
        GreeterClient::new(channel("spiffe://example.org/payments")).say_hello(hello("mesh")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("but spiffe://example.org/payments was expected"), "{status:?}");

    // Closing its stdin stops the server.
    drop(server.stdin.take());
    assert!(server.wait().await.unwrap().success());
}
