//! A mesh server and client whose identities come from a real SPIRE agent's Workload API: mTLS
//! checks the SPIFFE IDs both ways, a workload no entry matches gets a clear error (and never a
//! plaintext connection), a federated trust domain is trusted while SPIRE federates with it and
//! not after, and the examples take `--workload-api`.
//!
//! Needs SPIRE (`MESH_SPIRE_SERVER`, `MESH_SPIRE_AGENT`; tests/spire_support says more).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod spire_support;
mod support;

use std::{convert::Infallible, time::Duration};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, Identity, IdentitySource, InvalidIdentity, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery,
        TrustBundle, identity::dev::DevCa, identity::tls::PeerRejected,
    },
    spiffe::{FetchError, WorkloadApi, WorkloadApiError},
    tower::{
        PeerIdentity,
        client::MeshClient,
        server::{Server, ServerHandle},
    },
};
use spire_support::{Spire, TRUST_DOMAIN, WAIT};
use tower::ServiceExt;

fn id(path: &str) -> SpiffeId {
    format!("spiffe://{TRUST_DOMAIN}{path}").parse().unwrap()
}

async fn source(socket: &str, id: &SpiffeId) -> IdentitySource {
    WorkloadApi::new(socket).unwrap().spiffe_id(id.clone()).first_svid_timeout(WAIT).connect().await.unwrap()
}

/// A server answering each request with the caller's SPIFFE ID.
async fn echo_server(identity: IdentitySource) -> ServerHandle {
    let handler = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let caller = req.extensions().get::<PeerIdentity>().map(|p| p.id().to_string()).unwrap_or_default();
        Ok::<_, Infallible>(http::Response::new(caller))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::builder().identity(identity).build().unwrap().spawn(listener, handler).unwrap()
}

/// One request to `addr`, expecting `server`: the body and the server's identity, or the error.
async fn call(
    addr: std::net::SocketAddr,
    identity: IdentitySource,
    server: &SpiffeId,
) -> Result<(String, SpiffeId), mesh::tower::BoxError> {
    let name: ServiceName = "echo".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone()).identity(server.clone()).endpoint(Endpoint::new(addr)).build().unwrap(),
    );
    let client = MeshClient::builder(discovery, name).identity(identity).build::<Empty<bytes::Bytes>>().unwrap();
    let response = client.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await?;
    let peer = response.extensions().get::<PeerIdentity>().unwrap().id().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((String::from_utf8(body.to_vec()).unwrap(), peer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_the_agent_check_spiffe_ids_both_ways() {
    let Some(mut spire) = Spire::start().await else { return };
    let agent = spire.add_agent().await;
    let (server_id, client_id) = (id("/ns/default/sa/server"), id("/ns/default/sa/client"));
    // Both entries select this process by uid: it is given both SVIDs and each source picks its own.
    spire.entry(agent, server_id.as_str(), Duration::from_secs(600), &[]).await;
    spire.entry(agent, client_id.as_str(), Duration::from_secs(600), &[]).await;
    let socket = spire.agent(agent).socket();
    let server = source(&socket, &server_id).await;
    let client = source(&socket, &client_id).await;
    assert_eq!(server.current().credentials().spiffe_id(), &server_id);
    assert_eq!(client.current().credentials().spiffe_id(), &client_id);
    assert!(server.current().bundle().roots(TRUST_DOMAIN).is_some());

    let echo = echo_server(server.clone()).await;
    let addr = echo.local_addr();
    let (body, peer) = call(addr, client.clone(), &server_id).await.unwrap();
    assert_eq!(body, client_id.as_str(), "the server saw the client's SPIFFE ID");
    assert_eq!(peer, server_id, "the client saw the server's");

    // The client refuses a server that is not the one discovery names.
    let error = call(addr, client.clone(), &id("/ns/default/sa/other")).await.unwrap_err();
    let rejected = PeerRejected::find(&*error).unwrap_or_else(|| panic!("{error:?}"));
    assert!(matches!(rejected, PeerRejected::IdentityMismatch { presented, .. } if *presented == server_id));

    // The server refuses a client of the same trust domain whose certificate SPIRE did not issue.
    let forger = DevCa::new(TRUST_DOMAIN.parse().unwrap()).unwrap();
    let forged = IdentitySource::fixed(forger.identity("/ns/default/sa/client").unwrap());
    let refused = echo.handshake_counts().total_failed();
    let error = call(addr, forged, &server_id).await.unwrap_err();
    eprintln!("a client certificate not issued by SPIRE: {error}: {:?}", error.source());
    let counted = tokio::time::timeout(WAIT, echo.wait_for_handshakes(|c| c.total_failed() > refused)).await;
    assert!(counted.is_ok(), "the server did not count a refused handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_no_entry_matches_gets_a_clear_error_and_no_connection() {
    let Some(mut spire) = Spire::start().await else { return };
    let registered = spire.add_agent().await;
    let unregistered = spire.add_agent().await;
    spire.entry(registered, id("/ns/default/sa/server").as_str(), Duration::from_secs(600), &[]).await;

    // An agent with no entry for this process: SPIRE answers "no identity issued".
    let socket = spire.agent(unregistered).socket();
    let api = WorkloadApi::new(&socket).unwrap().first_svid_timeout(Duration::from_secs(3));
    let error = api.connect().await.unwrap_err();
    eprintln!("no entry: {error}");
    assert!(
        matches!(&error, WorkloadApiError::NoSvid { socket: s, last: Some(FetchError::NoIdentityIssued), .. } if *s == socket),
        "{error:?}"
    );
    assert!(error.to_string().contains(&socket) && error.to_string().contains("no identity issued"), "{error}");

    // An entry exists, but not for the SPIFFE ID asked for: says what the agent does give.
    let socket = spire.agent(registered).socket();
    let api = WorkloadApi::new(&socket)
        .unwrap()
        .spiffe_id(id("/ns/default/sa/db"))
        .first_svid_timeout(Duration::from_secs(5));
    let error = api.connect().await.unwrap_err();
    eprintln!("another SPIFFE ID: {error}");
    assert!(
        matches!(&error, WorkloadApiError::NoSvid { last: Some(FetchError::NoMatchingSvid { .. }), .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("spiffe://spire.test/ns/default/sa/server but not"), "{error}");

    // The echo-client example, pointed at a listener that counts connections: it exits 1 naming
    // the socket, and never connects (no plaintext fallback).
    let Some(client) = example("echo-client") else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let unregistered_socket = spire.agent(unregistered).socket();
    let out = tokio::process::Command::new(client)
        .args(["--connect", &addr, "--workload-api", &unregistered_socket, "--expect", id("/x").as_str()])
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("echo-client without an entry: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&unregistered_socket) && stderr.contains("no identity issued"), "{stderr}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the client connected without an identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_trust_domains_are_trusted_while_spire_says_so() {
    let Some(mut spire) = Spire::start().await else { return };
    let agent = spire.add_agent().await;
    // A partner trust domain whose bundle the operator gives SPIRE, and a workload there.
    let partner = DevCa::new("partner.test".parse().unwrap()).unwrap();
    let partner_pem = spire.write_file("partner.pem", partner.cert_pem());
    spire.server_cli(&["bundle", "set", "-id", "spiffe://partner.test", "-path", &partner_pem]).await.unwrap();
    // SPIRE sends a workload the federated bundles of every entry that selects it: one entry
    // here, this process being the only workload.
    let federated_id = id("/ns/default/sa/federated");
    spire
        .entry(agent, federated_id.as_str(), Duration::from_secs(600), &["-federatesWith", "spiffe://partner.test"])
        .await;
    let socket = spire.agent(agent).socket();
    let federated = source(&socket, &federated_id).await;
    assert!(federated.current().bundle().roots("partner.test").is_some(), "{:?}", federated.current().bundle());

    // The partner's server trusts our trust domain (its bundle holds SPIRE's roots too).
    let spire_roots = spire.server_cli(&["bundle", "show", "-format", "pem"]).await.unwrap();
    let bundle = TrustBundle::from_pem(TRUST_DOMAIN.parse().unwrap(), spire_roots.as_bytes())
        .unwrap()
        .with_roots_pem("partner.test".parse().unwrap(), partner.cert_pem().as_bytes())
        .unwrap();
    let partner_cert = partner.issue("/api").unwrap().credentials().unwrap();
    let partner_server = IdentitySource::fixed(Identity::new(partner_cert, bundle).unwrap());
    let partner_echo = echo_server(partner_server).await;
    let addr = partner_echo.local_addr();
    let partner_id: SpiffeId = "spiffe://partner.test/api".parse().unwrap();

    let (body, peer) = call(addr, federated.clone(), &partner_id).await.unwrap();
    assert_eq!((body.as_str(), &peer), (federated_id.as_str(), &partner_id));

    // The operator ends the federation: the agent drops the bundle, and so does mesh.
    spire.server_cli(&["bundle", "delete", "-id", "spiffe://partner.test", "-mode", "dissociate"]).await.unwrap();
    let mut changes = federated.changes();
    let dropped = tokio::time::timeout(WAIT, async {
        while federated.current().bundle().roots("partner.test").is_some() {
            changes.next().await;
        }
    })
    .await;
    assert!(dropped.is_ok(), "the partner's bundle stayed\n{}", spire.logs());
    let error = call(addr, federated.clone(), &partner_id).await.unwrap_err();
    assert!(
        matches!(PeerRejected::find(&*error), Some(PeerRejected::UntrustedTrustDomain(td)) if td == "partner.test"),
        "{error:?}"
    );
    assert!(!matches!(federated.last_error().as_deref(), Some(InvalidIdentity::WorkloadApi { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_take_their_identity_from_the_agent() {
    let (Some(server_bin), Some(client_bin)) = (example("echo-server"), example("echo-client")) else { return };
    let (Some(greeter_server), Some(greeter_client)) = (example("greeter-server"), example("greeter-client")) else {
        return;
    };
    let Some(mut spire) = Spire::start().await else { return };
    let agent = spire.add_agent().await;
    // Registered by binary path (the unix attestor's `unix:path` selector), as separate workloads
    // on one node are.
    let (server_id, client_id) = (id("/ns/default/sa/echo-server"), id("/ns/default/sa/echo-client"));
    for (bin, id) in [
        (&server_bin, &server_id),
        (&greeter_server, &server_id),
        (&client_bin, &client_id),
        (&greeter_client, &client_id),
    ] {
        let selector = format!("unix:path:{}", bin.display());
        spire.entry_selecting(agent, id.as_str(), &selector, Duration::from_secs(600), &[]).await;
    }
    let socket = spire.agent(agent).socket();

    let server = spawn_server(&server_bin, &socket, &client_id).await;
    let out =
        run(&client_bin, &["--connect", &server.addr, "--workload-api", &socket, "--expect", server_id.as_str()]).await;
    assert_eq!(out.trim(), client_id.as_str());
    // The wrong server identity is refused.
    let refused = tokio::process::Command::new(&client_bin)
        .args(["--connect", &server.addr, "--workload-api", &socket, "--expect", id("/ns/default/sa/other").as_str()])
        .output();
    let refused = tokio::time::timeout(WAIT, refused).await.unwrap().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("but spiffe://spire.test/ns/default/sa/other was expected")
    );

    let greeter = spawn_server(&greeter_server, &socket, &client_id).await;
    let args = ["--connect", &greeter.addr, "--workload-api", &socket, "--expect", server_id.as_str(), "--name", "Ada"];
    let out = run(&greeter_client, &args).await;
    assert_eq!(out.trim(), format!("hello Ada from v1, you are {client_id}"));

    // SPIFFE_ENDPOINT_SOCKET stands in for the flag, as the SPIFFE spec says.
    let out = tokio::process::Command::new(&client_bin)
        .args(["--connect", &server.addr, "--expect", server_id.as_str()])
        .env("SPIFFE_ENDPOINT_SOCKET", &socket)
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), client_id.as_str());
}

/// An example binary, or `None` (skipped; a failure under `MESH_INTEROP=1`) when not built.
fn example(name: &str) -> Option<std::path::PathBuf> {
    let path = support::example(name);
    if path.exists() {
        return Some(path);
    }
    let why = format!("{} is not built (cargo build --examples)", path.display());
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why}");
    }
    eprintln!("skipping: {why}");
    None
}

struct Running {
    addr: String,
    _child: tokio::process::Child,
}

/// Starts an example server with `--workload-api`, allowing `caller`; waits for its address.
async fn spawn_server(bin: &std::path::Path, socket: &str, caller: &SpiffeId) -> Running {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--workload-api", socket, "--allow", caller.as_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap_or_default();
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("{} printed {first:?}", bin.display()));
    let addr = addr.to_owned();
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Running { addr, _child: child }
}

async fn run(bin: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin).args(args).output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(out.status.success(), "{} {args:?}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
