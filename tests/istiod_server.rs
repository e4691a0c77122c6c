//! mesh against a real istiod: the server side. A mesh server on `XdsDiscovery::inbound` takes
//! its inbound listener from istiod (its node is the WorkloadEntry at its address);
//! `PeerAuthentication` STRICT makes it mTLS-only (plaintext refused); an `AuthorizationPolicy`
//! ALLOW for one principal denies the others (PERMISSION_DENIED), to mesh and grpcio callers
//! alike; a DENY added live applies on connections already open.
//!
//! Needs `MESH_ISTIOD` and `MESH_XDS_PYTHON`; skips without them unless `MESH_INTEROP=1`.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod istiod_support;

use std::{net::SocketAddr, time::Duration};

use istiod_support::{
    Istiod,
    ads::{AdsRecorder, LDS},
    grpcio::{Calls, Outcome},
    pair::{PUSH, Pair},
    workload::{self, NodeSpec, service_entry, spiffe, workload_entry, workload_ip},
};
use mesh::{
    tower::{authz::AuthorizationLayer, server::Server},
    xds::{Bootstrap, XdsDiscovery},
};

const HOST: &str = "ratings.default.svc.cluster.local";

fn strict() -> &'static str {
    "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
"
}

fn destination_rule() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"
    )
}

fn allow_only(principal: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-allow, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [{principal}]}}}}]
"
    )
}

fn deny_again() -> &'static str {
    "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-deny, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/helloworld.Greeter/SayHelloAgain]}}]
"
}

/// The RBAC filters' names in the inbound listener the server ACKed last.
fn rbac_filters(resources: &std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Any>) -> Vec<String> {
    let Some(any) = resources.values().next() else { return vec![] };
    // The filter names are plain strings in the encoded listener; enough to tell which are there.
    let text = String::from_utf8_lossy(&any.value).into_owned();
    ["envoy.filters.http.rbac.DENY", "envoy.filters.http.rbac"]
        .iter()
        .filter(|f| text.contains(&format!("{f}\u{1a}")) || text.contains(*f))
        .map(|f| (*f).to_owned())
        .collect()
}

fn ok(o: &Outcome, calls: usize) -> bool {
    o.version("v1") == calls && o.failed() == 0
}

fn denied(o: &Outcome, calls: usize) -> bool {
    o.errors.get("PERMISSION_DENIED").copied() == Some(calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_server_side() {
    let Some((binary, python)) = istiod_support::peers() else { return };
    let started = std::time::Instant::now();

    // The server's address first: its WorkloadEntry names it, and istiod finds the server's
    // node by that address (INSTANCE_IPS).
    let ip = workload_ip(20);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let se = service_entry("ratings", HOST, addr.port(), "ratings");
    let we = workload_entry("ratings-v1", "ratings", "v1", addr, "ratings");
    let dr = destination_rule();
    let istiod =
        Istiod::start(&binary, &[("ratings-se", &se), ("ratings-we", &we), ("ratings-dr", &dr), ("pa", strict())])
            .await;
    let recorder = AdsRecorder::start(istiod.grpc).await;

    // The server, configured only by istiod.
    let dir = tempfile::tempdir().unwrap();
    let node = NodeSpec::new("ratings-v1", ip, "ratings").label("version", "v1");
    let bootstrap = workload::bootstrap(dir.path(), recorder.addr, &node);
    let xds = XdsDiscovery::builder(Bootstrap::from_file(&bootstrap).unwrap()).build().unwrap();
    let inbound = xds.inbound(addr).unwrap();
    let authorization = AuthorizationLayer::from_watch(inbound.authorization());
    let server = Server::builder().security_from(inbound.security()).build().unwrap();
    let options = grpc_support::Options { version: "v1", authorization: Some(authorization), ..Default::default() };
    let handle = grpc_support::serve_with(server, listener, options).handle;
    let mut status = inbound.status();
    if tokio::time::timeout(PUSH, status.wait_for(|s| s.applied > 0)).await.is_err() {
        panic!("no inbound listener from istiod: {:?}; {}", *inbound.status().borrow(), istiod.log_tail(30));
    }
    let server_record = recorder.client(&node.id());
    assert!(server_record.nacks().is_empty(), "the server NACKed: {:?}", server_record.nacks());
    eprintln!("inbound listener applied: {:?}", *inbound.status().borrow());

    // STRICT: mTLS callers (mesh and grpcio, both as productpage) get through; plaintext does not.
    let target = format!("{HOST}:{}", addr.port());
    let mut callers = Pair::start(&recorder, &python, &target, "productpage");
    let calls = Calls::new(10);
    let (m, g) = callers.round(&calls).await;
    eprintln!("STRICT, no policy: mesh {m:?}, grpcio {g:?}");
    assert!(ok(&m, 10), "mesh: {m:?}");
    assert!(ok(&g, 10), "grpcio: {g:?}");
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(channel) => grpc_support::pb::greeter_client::GreeterClient::new(channel)
            .say_hello(grpc_support::hello("plain"))
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext call was served under STRICT");
    assert!(handle.handshake_counts().total_failed() >= 1, "{:?}", handle.handshake_counts());

    // ALLOW only productpage: an intruder's calls, from mesh and from grpcio, are denied.
    istiod.apply("allow", &allow_only("cluster.local/ns/default/sa/productpage"));
    recorder
        .wait(&node.id(), "the ALLOW policy", PUSH, |c| c.settled() && rbac_filters(&c.acked(LDS)).len() == 1)
        .await;
    let mut intruders = Pair::start_named(&recorder, &python, &target, "intruder", "intruder");
    let (m, g) = intruders.round(&calls).await;
    eprintln!("ALLOW productpage, intruder: mesh {m:?}, grpcio {g:?}");
    assert!(denied(&m, 10), "mesh intruder: {m:?}");
    assert!(denied(&g, 10), "grpcio intruder: {g:?}");
    let (m, g) = callers.round(&calls).await;
    assert!(ok(&m, 10) && ok(&g, 10), "productpage after ALLOW: mesh {m:?}, grpcio {g:?}");

    // A DENY added live applies on the connections already open.
    let opened = handle.handshake_counts().succeeded;
    istiod.apply("deny", deny_again());
    recorder.wait(&node.id(), "the DENY policy", PUSH, |c| c.settled() && rbac_filters(&c.acked(LDS)).len() == 2).await;
    let again = Calls::new(10).method("/helloworld.Greeter/SayHelloAgain");
    let (m, g) = callers.round(&again).await;
    eprintln!("DENY SayHelloAgain: mesh {m:?}, grpcio {g:?}");
    assert!(denied(&m, 10), "mesh SayHelloAgain: {m:?}");
    assert!(denied(&g, 10), "grpcio SayHelloAgain: {g:?}");
    let (m, g) = callers.round(&calls).await;
    assert!(ok(&m, 10) && ok(&g, 10), "SayHello after DENY: mesh {m:?}, grpcio {g:?}");
    assert_eq!(handle.handshake_counts().succeeded, opened, "the DENY was applied on new connections only");
    let server_record = recorder.client(&node.id());
    assert!(server_record.nacks().is_empty(), "the server NACKed: {:?}", server_record.nacks());
    for c in [&callers, &intruders] {
        for n in [&c.mesh_node, &c.grpcio_node] {
            assert!(recorder.client(n).nacks().is_empty(), "{n} NACKed: {:?}", recorder.client(n).nacks());
        }
    }
    drop((callers, intruders));
    handle.shutdown().await.unwrap();
    examples_against_istiod(&istiod, &recorder).await;
    eprintln!("server checks took {:?}", started.elapsed());
    istiod.stop().await;
}

/// The example binaries (`cargo build --features xds --examples`), or why not (a failure under
/// `MESH_INTEROP=1`).
fn example(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    let why = format!("{} is not built (cargo build --features xds --examples)", path.display());
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why}");
    }
    eprintln!("skipping the examples: {why}");
    None
}

/// `examples/xds-server` and `examples/xds-client`, unchanged, against istiod: the server takes
/// its inbound listener (STRICT mTLS) from istiod, the client its routes, clusters and endpoints;
/// every call succeeds and reaches the server as the client's SPIFFE ID.
async fn examples_against_istiod(istiod: &Istiod, recorder: &AdsRecorder) {
    let (Some(server_exe), Some(client_exe)) = (example("xds-server"), example("xds-client")) else { return };
    let host = "details.default.svc.cluster.local";
    let ip = workload_ip(21);
    let port = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap().local_addr().unwrap().port();
    let addr = SocketAddr::new(ip, port);
    istiod.apply("details-se", &service_entry("details", host, port, "details"));
    istiod.apply("details-we", &workload_entry("details-v1", "details", "v1", addr, "details"));
    istiod.apply(
        "details-dr",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: details, namespace: \
             default}}\nspec:\n  host: {host}\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&client_dir).unwrap();
    let server_node = NodeSpec::new("details-v1", ip, "details").label("version", "v1");
    let server_bootstrap = workload::bootstrap(&server_dir, recorder.addr, &server_node);
    let client_node = NodeSpec::new("example-client", [127, 0, 0, 1].into(), "productpage");
    let client_bootstrap = workload::bootstrap(&client_dir, recorder.addr, &client_node);
    let mut server = tokio::process::Command::new(server_exe)
        .arg("--bootstrap")
        .arg(&server_bootstrap)
        .args(["--listen", &addr.to_string(), "--version", "v1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(server.stdout.take().unwrap()));
    let first = tokio::time::timeout(PUSH, lines.next_line()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, format!("listening on {addr}"));
    recorder
        .wait(&server_node.id(), "the example server's inbound listener", PUSH, |c| {
            c.settled() && !c.acked(LDS).is_empty()
        })
        .await;
    let out = tokio::process::Command::new(client_exe)
        .arg("--bootstrap")
        .arg(&client_bootstrap)
        .args(["--target", &format!("{host}:{port}"), "--requests", "20", "--json"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("xds-client hung").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("xds-client against istiod: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "xds-client failed against istiod");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["requests"].as_u64(), last["errors"].as_u64(), last["nacks"].as_u64()),
        (Some(20), Some(0), Some(0)),
        "{last}"
    );
    assert_eq!(last["clusters"][format!("outbound|{port}||{host}")].as_u64(), Some(20), "{last}");
    assert!(recorder.client(&server_node.id()).nacks().is_empty());
    let _ = spiffe("default", "details");
    server.kill().await.unwrap();
}
