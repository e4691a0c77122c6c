//! gRPC's cross-language interop test cases between mesh and grpc-go (v1.85.0's own interop
//! client and server, `google.golang.org/grpc/interop/{client,server}`), both ways: grpc-go's
//! client against mesh's `interop-server` (a `GrpcServer`), and mesh's `interop-client` (a
//! `MeshChannel`) against grpc-go's server. Plaintext, and TLS with SPIFFE certificates made here
//! as far as grpc-go's flags go: its server presents a certificate but asks for none, and its
//! client can present none, so mesh's client checks grpc-go's server's SPIFFE ID over TLS, and
//! grpc-go's client is shown to be refused by mesh's mutual-TLS-only server.
//!
//! Deadlines that pass mid-stream, beyond the shared cases (grpc-go's interop client has none, its
//! `timeout_on_sleeping_server` ends before the first response): a `MeshChannel` in this process
//! calls grpc-go's server with a route timeout on a server stream and a `grpc-timeout` on an open
//! duplex stream; each ends with `DEADLINE_EXCEEDED` after its first responses, and the
//! connection serves the next call.
//!
//! The binaries come from `.ci/peers.sh` (`MESH_GRPC_GO_INTEROP_CLIENT`,
//! `MESH_GRPC_GO_INTEROP_SERVER`). Without them the tests skip with the reason, unless
//! `MESH_INTEROP=1`: then they fail.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

#[path = "../examples/support/interop_service.rs"]
#[allow(dead_code, unreachable_pub)]
mod service;

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use mesh::core::{
    SpiffeId,
    identity::dev::{DevCa, LeafSpec},
};
use support::{ca, example};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};

/// The cases mesh's interop client runs, as its `--help` lists them: gRPC's cross-language cases
/// that grpc-go v1.85.0's interop client and server implement too.
fn cases() -> &'static [String] {
    static CASES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CASES.get_or_init(|| {
        let help = std::process::Command::new(example("interop-client")).arg("--help").output().unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        let list = help.lines().find_map(|l| l.strip_prefix("test cases: ")).expect("--help lists the test cases");
        let cases: Vec<String> = list.split(", ").map(str::to_owned).collect();
        assert!(cases.len() >= 14 && cases.iter().any(|c| c == "ping_pong"), "{cases:?}");
        cases
    })
}

/// How long anything here may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

const SERVER_ID: &str = "spiffe://example.org/interop-server";
const CLIENT_ID: &str = "spiffe://example.org/interop-client";

/// A grpc-go peer binary, or why there is none (a failure under `MESH_INTEROP=1`).
fn grpc_go(var: &str) -> Option<PathBuf> {
    let why = match std::env::var_os(var) {
        Some(path) if PathBuf::from(&path).is_file() => return Some(PathBuf::from(path)),
        Some(path) => format!("{var}={} is not a file", PathBuf::from(path).display()),
        None => format!("{var} is not set"),
    };
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why} (source .ci/peers.sh to build grpc-go's interop binaries)");
    }
    eprintln!("skipping a grpc-go interop test: {why} (source .ci/peers.sh to run it)");
    None
}

/// Certificates on disk: `ca.pem`, and `NAME.pem`/`NAME-key.pem` for each leaf, with `localhost`
/// as a DNS SAN (Go checks the host name as well as the chain).
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new(leaves: &[(&str, &str, &DevCa)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca().cert_pem()).unwrap();
        for (name, id, issuer) in leaves {
            let id: SpiffeId = id.parse().unwrap();
            let cert = issuer.issue_with(&LeafSpec::new(&id).dns("localhost")).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.cert_pem).unwrap();
            std::fs::write(dir.path().join(format!("{name}-key.pem")), cert.key_pem).unwrap();
        }
        Self { dir }
    }

    fn standard() -> Self {
        Self::new(&[("server", SERVER_ID, ca()), ("client", CLIENT_ID, ca())])
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }
}

/// A grpc-go server process, killed when dropped.
struct Peer {
    _process: Child,
    addr: SocketAddr,
}

/// Reads lines from `from` until one yields an address, within [`PATIENCE`], then goes on reading
/// in the background (a Go program that writes to a closed pipe on stderr dies of it).
async fn address_line<R>(from: R, parse: fn(&str) -> Option<SocketAddr>) -> SocketAddr
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        let (mut tx, mut seen) = (Some(tx), Vec::new());
        while let Ok(Some(line)) = lines.next_line().await {
            match (parse(&line), tx.take()) {
                (Some(addr), Some(tx)) => drop(tx.send(Ok(addr))),
                (None, Some(waiting)) => {
                    seen.push(line);
                    tx = Some(waiting);
                }
                (_, None) => {}
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(seen));
        }
    });
    match tokio::time::timeout(PATIENCE, rx).await {
        Ok(Ok(Ok(addr))) => addr,
        Ok(Ok(Err(seen))) => panic!("the server exited without saying where it listens: {seen:?}"),
        Ok(Err(_)) => panic!("the server's output reader stopped"),
        Err(_) => panic!("the server did not say where it listens within {PATIENCE:?}"),
    }
}

/// mesh's `interop-server` on 127.0.0.1; over mutual TLS when `certs` are given.
async fn mesh_server(certs: Option<&Certs>) -> MeshServer {
    let mut command = Command::new(example("interop-server"));
    command.args(["--host", "127.0.0.1", "--port", "0"]);
    if let Some(certs) = certs {
        command.args(["--use_tls", "--ca", &certs.path("ca.pem")]);
        command.args(["--cert", &certs.path("server.pem"), "--key", &certs.path("server-key.pem")]);
    }
    let mut child = command.stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // The first line, as with every mesh server.
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap();
    let first = first.expect("interop-server exited before listening");
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {first:?}")).parse().unwrap();
    // Keep reading stdout so the server never blocks on a full pipe; the last line is its counts.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut last = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            last = line;
        }
        let _ = tx.send(last);
    });
    MeshServer { child, addr, last_line: rx }
}

/// mesh's interop server process, killed when dropped.
struct MeshServer {
    child: Child,
    addr: SocketAddr,
    last_line: tokio::sync::oneshot::Receiver<String>,
}

/// Stops a mesh server with SIGTERM and returns its last line (`handshakes: N succeeded, M failed`).
async fn stop_mesh_server(mut server: MeshServer) -> String {
    let pid = server.child.id().unwrap();
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.unwrap();
    let status = tokio::time::timeout(PATIENCE, server.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "interop-server exited {status}");
    tokio::time::timeout(PATIENCE, server.last_line).await.unwrap().unwrap()
}

/// grpc-go's interop server on a free port; with TLS when `certs` are given (it presents
/// `server.pem` and asks the client for no certificate: it has no flag for one).
async fn grpc_go_server(binary: &PathBuf, certs: Option<&Certs>) -> Peer {
    let mut command = Command::new(binary);
    command.arg("--port=0");
    if let Some(certs) = certs {
        command.args(["--use_tls", "--tls_cert_file", &certs.path("server.pem")]);
        command.args(["--tls_key_file", &certs.path("server-key.pem")]);
    }
    // It says where it listens only in its info log, on stderr.
    command.env("GRPC_GO_LOG_SEVERITY_LEVEL", "info").stderr(Stdio::piped()).stdout(Stdio::null());
    let mut child = command.kill_on_drop(true).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = address_line(stderr, |line| {
        let (_, rest) = line.split_once("interop server listening on ")?;
        let port: u16 = rest.trim().rsplit(':').next()?.parse().ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    })
    .await;
    Peer { _process: child, addr }
}

/// The outcome of one client run: `Ok` or the process's stderr.
async fn run_client(mut command: Command) -> Result<(), String> {
    let output = tokio::time::timeout(PATIENCE, command.stdin(Stdio::null()).output()).await;
    let output = output.map_err(|_| format!("not done within {PATIENCE:?}"))?.unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn go_client(binary: &PathBuf, addr: SocketAddr, case: &str) -> Command {
    let mut command = Command::new(binary);
    command.arg(format!("--server_host={}", addr.ip()));
    command.arg(format!("--server_port={}", addr.port()));
    command.arg(format!("--test_case={case}"));
    command
}

fn mesh_client(addr: SocketAddr, case: &str, tls: Option<(&Certs, &str)>) -> Command {
    let mut command = Command::new(example("interop-client"));
    command.arg(format!("--server_host={}", addr.ip()));
    command.arg(format!("--server_port={}", addr.port()));
    command.arg(format!("--test_case={case}"));
    if let Some((certs, expect)) = tls {
        command.args(["--use_tls", "--use_test_ca", "--ca_file", &certs.path("ca.pem")]);
        command.args(["--server_host_override=localhost"]);
        command.args(["--cert", &certs.path("client.pem"), "--key", &certs.path("client-key.pem")]);
        command.args(["--expect", expect]);
    }
    command
}

/// Runs every case with `client`, and fails naming each case that failed.
async fn all_cases(what: &str, client: impl Fn(&str) -> Command) {
    let mut failed = Vec::new();
    for case in cases() {
        if let Err(why) = run_client(client(case)).await {
            failed.push(format!("{case}: {why}"));
        }
    }
    assert!(failed.is_empty(), "{what}: {} of {} cases failed:\n{}", failed.len(), cases().len(), failed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_client_against_mesh_server_in_plaintext() {
    let Some(client) = grpc_go("MESH_GRPC_GO_INTEROP_CLIENT") else { return };
    let server = mesh_server(None).await;
    all_cases("grpc-go client -> mesh server, plaintext", |case| go_client(&client, server.addr, case)).await;
    stop_mesh_server(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_against_grpc_go_server_in_plaintext() {
    let Some(server) = grpc_go("MESH_GRPC_GO_INTEROP_SERVER") else { return };
    let server = grpc_go_server(&server, None).await;
    all_cases("mesh client -> grpc-go server, plaintext", |case| mesh_client(server.addr, case, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_against_grpc_go_server_over_tls_with_spiffe_certificates() {
    let Some(server) = grpc_go("MESH_GRPC_GO_INTEROP_SERVER") else { return };
    let certs = Certs::standard();
    let server = grpc_go_server(&server, Some(&certs)).await;
    all_cases("mesh client -> grpc-go server, TLS", |case| mesh_client(server.addr, case, Some((&certs, SERVER_ID))))
        .await;

    // The server is not who --expect says it must be: the client refuses it.
    let refused = run_client(mesh_client(server.addr, "empty_unary", Some((&certs, "spiffe://example.org/other"))));
    let refused = refused.await.unwrap_err();
    assert!(refused.contains("but spiffe://example.org/other was expected"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_refuses_a_grpc_go_server_of_another_ca() {
    let Some(server) = grpc_go("MESH_GRPC_GO_INTEROP_SERVER") else { return };
    let stranger = DevCa::new("example.org".parse().unwrap()).unwrap();
    let certs = Certs::new(&[("server", SERVER_ID, &stranger), ("client", CLIENT_ID, ca())]);
    let server = grpc_go_server(&server, Some(&certs)).await;
    let refused = run_client(mesh_client(server.addr, "empty_unary", Some((&certs, SERVER_ID)))).await.unwrap_err();
    assert!(refused.contains("Unavailable"), "{refused}");
}

/// grpc-go's interop client has no flag for a client certificate, so over TLS it cannot prove an
/// identity, and mesh's server (mutual TLS only) refuses it in the handshake: no call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_client_without_a_certificate_is_refused_by_the_mesh_server() {
    let Some(client) = grpc_go("MESH_GRPC_GO_INTEROP_CLIENT") else { return };
    let certs = Certs::standard();
    let server = mesh_server(Some(&certs)).await;
    let mut command = go_client(&client, server.addr, "empty_unary");
    command.args(["--use_tls", "--use_test_ca", "--ca_file", &certs.path("ca.pem")]);
    command.arg("--server_host_override=localhost");
    let refused = run_client(command).await.unwrap_err();
    assert!(refused.contains("certificate required"), "{refused}");
    let counts = stop_mesh_server(server).await;
    assert!(counts.starts_with("handshakes: 0 succeeded, ") && !counts.ends_with(" 0 failed"), "{counts}");
}

/// mesh's client against mesh's server over SPIFFE mutual TLS: the same cases, both sides ours,
/// with the certificates checked both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_against_mesh_server_over_mutual_tls() {
    let certs = Certs::standard();
    let server = mesh_server(Some(&certs)).await;
    all_cases("mesh client -> mesh server, mTLS", |case| mesh_client(server.addr, case, Some((&certs, SERVER_ID))))
        .await;
    // Every case connects anew (a process each). Only timeout_on_sleeping_server may leave a
    // handshake unfinished: its 1 ms deadline can pass while the connection is being secured, and
    // the client then drops it.
    let counts = stop_mesh_server(server).await;
    let failed: u64 = counts.rsplit(", ").next().and_then(|f| f.strip_suffix(" failed")?.parse().ok()).unwrap();
    assert!(counts.starts_with("handshakes: ") && failed <= 1, "{counts}");
}

/// A plaintext `MeshChannel` to `addr`, whose one route has `timeout`.
fn channel_to(addr: SocketAddr, timeout: Option<Duration>) -> mesh::tonic::MeshChannel {
    use mesh::core::{Endpoint, Route, ServiceSnapshot, StaticDiscovery};
    let name: mesh::core::ServiceName = "grpc-go-interop".parse().unwrap();
    let mut route = Route::new("interop".parse().unwrap());
    if let Some(timeout) = timeout {
        route = route.with_timeout(timeout);
    }
    let discovery = StaticDiscovery::new();
    discovery.set(ServiceSnapshot::builder(name.clone()).endpoint(Endpoint::new(addr)).route(route).build().unwrap());
    mesh::tonic::MeshChannel::builder(discovery, name).plaintext().build().unwrap()
}

/// Reads `responses` until the call ends, within [`PATIENCE`]: how many came, and the status.
async fn drain<T>(responses: &mut tonic::Streaming<T>) -> (usize, tonic::Status) {
    let mut received = 0;
    loop {
        match tokio::time::timeout(PATIENCE, responses.message()).await.expect("the call ended in time") {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream finished ({received} responses) despite the deadline"),
            Err(status) => return (received, status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_a_grpc_go_servers_running_streams() {
    use service::pb::{Empty, ResponseParameters, StreamingOutputCallRequest, test_service_client::TestServiceClient};
    let Some(server) = grpc_go("MESH_GRPC_GO_INTEROP_SERVER") else { return };
    let server = grpc_go_server(&server, None).await;
    // 100 responses, 50 ms apart: 5 s, ten times the deadline.
    let slow = || StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters { size: 10, interval_us: 50_000, ..Default::default() }; 100],
        ..Default::default()
    };

    // The route's timeout, on a server stream.
    let mut client = TestServiceClient::new(channel_to(server.addr, Some(Duration::from_millis(500))));
    let mut responses = client.streaming_output_call(slow()).await.unwrap().into_inner();
    let (received, status) = drain(&mut responses).await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(received > 0 && received < 100, "{received} responses");
    // The stream was reset, not the connection: the next call goes through.
    client.empty_call(Empty {}).await.unwrap();

    // The caller's grpc-timeout, on a duplex stream the caller keeps open.
    let mut client = TestServiceClient::new(channel_to(server.addr, None));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let first = StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters { size: 10, ..Default::default() }],
        ..Default::default()
    };
    tx.send(first).await.unwrap();
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(requests);
    request.set_timeout(Duration::from_millis(500));
    let mut responses = client.full_duplex_call(request).await.unwrap().into_inner();
    let (received, status) = drain(&mut responses).await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(received, 1);
    client.empty_call(Empty {}).await.unwrap();
    drop(tx);
}
