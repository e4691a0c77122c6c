//! Server-side xDS (gRFC A36) and RBAC (gRFC A41) over real sockets: a mesh server configured
//! only by our ADS control plane, with Istio-shaped inbound listeners. The control plane turns
//! mTLS on and plaintext callers are refused from the next connection (while open connections
//! are kept); a server that never got its listener refuses everyone; a bad or missing listener
//! keeps the last good one; RBAC pushed live denies (403 / PERMISSION_DENIED) and allows again
//! when removed; a dry-run policy counts without denying; an untranslatable policy is NACKed and
//! the previous one stays enforced.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod xds_support;

use std::{net::SocketAddr, path::Path, sync::Arc};

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
    core::{
        Endpoint, Identity, IdentitySource, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery, TrustBundle,
        identity::dev::DevCa,
    },
    tonic::{MeshChannel, PeerIdentityExt},
    tower::{
        HandshakeFailure, PeerIdentity,
        authz::{AuthorizationLayer, AuthorizationStats},
        server::{Server, ServerHandle},
    },
    xds::{Bootstrap, InboundListener, InboundStatus, XdsDiscovery},
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::Code;
use xds_support::{
    ControlPlane, LDS, Resources,
    http::{self, Mtls},
    inbound::{self, any_request, inbound_listener, operation, policy, principals, rbac, server_bootstrap},
};

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/greeter";
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const INTRUDER: &str = "spiffe://cluster.local/ns/other/sa/intruder";

fn write_certs(ca: &DevCa, dir: &Path, path: &str) {
    let me = ca.issue(path).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &me.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &me.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
}

fn client_identity(ca: &DevCa, path: &str) -> IdentitySource {
    IdentitySource::fixed(ca.identity(path).unwrap())
}

/// The echo handler and the Greeter on one port, as the `xds-server` example serves them.
#[derive(Clone)]
struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let caller = request.peer_identity().map(|p| p.id().to_string()).unwrap_or_default();
        Ok(tonic::Response::new(HelloReply { message: format!("hello {}, you are {caller}", request.get_ref().name) }))
    }
}

async fn serve(
    request: Request<Incoming>,
    mut greeter: GreeterServer<Hello>,
) -> Result<Response<tonic::body::Body>, std::convert::Infallible> {
    if request.uri().path().starts_with("/helloworld.Greeter/") {
        return tower::Service::call(&mut greeter, request).await;
    }
    let caller = request.extensions().get::<PeerIdentity>().map_or("anonymous".to_owned(), |p| p.id().to_string());
    Ok(Response::new(tonic::body::Body::new(Full::new(Bytes::from(caller)))))
}

/// Waits for `event`; fails (rather than hangs) after a minute.
async fn within<T>(event: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), event).await.expect("the awaited event never happened")
}

/// A mesh server on 127.0.0.1, configured only by the control plane.
struct XdsServer {
    handle: ServerHandle,
    inbound: InboundListener,
    stats: Arc<AuthorizationStats>,
    addr: SocketAddr,
}

impl XdsServer {
    async fn start(bootstrap: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let xds = XdsDiscovery::builder(Bootstrap::from_file(bootstrap).unwrap()).build().unwrap();
        let inbound = xds.inbound(addr).unwrap();
        assert_eq!(inbound.name(), inbound::inbound_name(addr));
        let authorization = AuthorizationLayer::from_watch(inbound.authorization());
        let stats = authorization.stats();
        let server = Server::builder().security_from(inbound.security()).authorization(authorization).build().unwrap();
        let greeter = GreeterServer::new(Hello);
        let service = tower::service_fn(move |request| serve(request, greeter.clone()));
        let handle = server.spawn(listener, service).unwrap();
        Self { handle, inbound, stats, addr }
    }

    /// Waits until `applied` configurations were applied (and returns the status).
    async fn wait_applied(&self, applied: u64) -> InboundStatus {
        self.wait_status(|s| s.applied >= applied).await
    }

    /// Waits until the status satisfies `condition`; fails (rather than hangs) after a minute.
    async fn wait_status(&self, condition: impl Fn(&InboundStatus) -> bool) -> InboundStatus {
        let mut status = self.inbound.status();
        match tokio::time::timeout(std::time::Duration::from_secs(60), status.wait_for(|s| condition(s))).await {
            Ok(Ok(s)) => s.clone(),
            _ => panic!("the server's status never got there: {:?}", self.inbound.status().borrow()),
        }
    }

    /// Waits until the last error mentions `text`.
    async fn wait_error(&self, text: &str) -> InboundStatus {
        self.wait_status(|s| s.last_error.as_deref().is_some_and(|e| e.contains(text))).await
    }
}

/// One request on a new connection, plaintext or as `identity` (expecting the server's ID).
async fn get_once(
    addr: SocketAddr,
    identity: Option<&IdentitySource>,
    http2: bool,
) -> Result<(StatusCode, String), http::BoxError> {
    http::get_once(addr, identity.map(|identity| Mtls { identity, server: SERVER }), http2, "/echo").await
}

async fn connect(addr: SocketAddr, identity: Option<&IdentitySource>, http2: bool) -> http::Connection {
    http::connect(addr, identity.map(|identity| Mtls { identity, server: SERVER }), http2).await.unwrap()
}

/// A gRPC call through mesh's client, which dials with mTLS and expects the server's identity.
async fn say_hello(addr: SocketAddr, caller: &IdentitySource) -> Result<String, tonic::Status> {
    let discovery = StaticDiscovery::new();
    let service: ServiceName = "greeter".parse().unwrap();
    let server_id: SpiffeId = SERVER.parse().unwrap();
    discovery.set(
        ServiceSnapshot::builder(service.clone()).identity(server_id).endpoints([Endpoint::new(addr)]).build().unwrap(),
    );
    let channel = MeshChannel::builder(discovery, service).identity(caller.clone()).build().unwrap();
    let reply = GreeterClient::new(channel).say_hello(HelloRequest { name: "xds".into() }).await?;
    Ok(reply.into_inner().message)
}

struct Setup {
    ca: DevCa,
    _dir: TempDir,
    cp: ControlPlane,
    server: XdsServer,
}

async fn setup(resources: impl FnOnce(&mut Resources, SocketAddr) + Send) -> Setup {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let dir = TempDir::new().unwrap();
    write_certs(&ca, &dir.path().join("server"), "/ns/default/sa/greeter");
    // The listener names the server's address, known once it is bound: start with nothing served.
    let cp = ControlPlane::start(Resources::default()).await;
    let bootstrap = server_bootstrap(dir.path(), cp.addr, &dir.path().join("server"));
    let server = XdsServer::start(&bootstrap).await;
    let addr = server.addr;
    cp.update(|r| resources(r, addr));
    Setup { ca, _dir: dir, cp, server }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_turns_mtls_on_and_plaintext_callers_are_refused_from_the_next_connection() {
    let Setup { ca, cp, server, _dir } = setup(|_, _| {}).await;
    let addr = server.addr;
    let sleep = client_identity(&ca, "/ns/default/sa/sleep");

    // No listener yet: the server does not serve, and never falls back to plaintext.
    let refused = get_once(addr, None, false).await;
    assert!(refused.is_err(), "a server without its listener served: {refused:?}");
    within(server.handle.wait_for_handshakes(|c| c.failed(HandshakeFailure::NotServing) >= 1)).await;
    assert!(!server.inbound.status().borrow().serving);

    // Plaintext (Istio's mTLS DISABLE): served, callers anonymous.
    let v1 = cp.update(|r| r.set(&inbound::inbound_name(addr), &inbound_listener(addr, false, vec![])));
    within(cp.wait_ack(LDS, &v1)).await;
    server.wait_applied(1).await;
    assert_eq!(get_once(addr, None, false).await.unwrap(), (StatusCode::OK, "anonymous".into()));
    let mut open = connect(addr, None, false).await;
    assert_eq!(open.get("/echo").await.unwrap().0, StatusCode::OK);

    // STRICT: from the next connection on, only mTLS; the connection already open stays.
    let v2 = cp.update(|r| r.set(&inbound::inbound_name(addr), &inbound_listener(addr, true, vec![])));
    within(cp.wait_ack(LDS, &v2)).await;
    server.wait_applied(2).await;
    for http2 in [false, true] {
        let before = server.handle.handshake_counts().failed(HandshakeFailure::NotTls);
        let refused = get_once(addr, None, http2).await;
        assert!(refused.is_err(), "plaintext served after mTLS was turned on: {refused:?}");
        within(server.handle.wait_for_handshakes(|c| c.failed(HandshakeFailure::NotTls) > before)).await;
        assert_eq!(get_once(addr, Some(&sleep), http2).await.unwrap(), (StatusCode::OK, SLEEP.into()));
    }
    assert_eq!(
        open.get("/echo").await.unwrap(),
        (StatusCode::OK, "anonymous".into()),
        "the open connection was dropped"
    );
    assert_eq!(say_hello(addr, &sleep).await.unwrap(), format!("hello xds, you are {SLEEP}"));

    // A caller whose certificate another CA signed (it trusts ours) is refused by the server.
    let rogue_ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let rogue_cert = rogue_ca.issue("/ns/default/sa/sleep").unwrap().credentials().unwrap();
    let both = format!("{}{}", ca.cert_pem(), rogue_ca.cert_pem());
    let bundle = TrustBundle::from_pem("cluster.local".parse().unwrap(), both.as_bytes()).unwrap();
    let rogue = IdentitySource::fixed(Identity::new(rogue_cert, bundle).unwrap());
    let before = server.handle.handshake_counts().failed(HandshakeFailure::UntrustedIssuer);
    assert!(get_once(addr, Some(&rogue), false).await.is_err(), "a certificate of another CA was accepted");
    within(server.handle.wait_for_handshakes(|c| c.failed(HandshakeFailure::UntrustedIssuer) > before)).await;

    // A listener for another address (a control plane mix-up) is not applied: mTLS stays.
    let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut other = inbound_listener(elsewhere, false, vec![]);
    other.name = inbound::inbound_name(addr);
    cp.update(|r| r.set(&inbound::inbound_name(addr), &other));
    server.wait_error("127.0.0.1:1").await;
    assert!(get_once(addr, None, false).await.is_err(), "a listener for another address let plaintext in");

    // A listener mesh cannot honour (TLS without client certificates) is NACKed: mTLS stays.
    let mut bad = inbound_listener(addr, true, vec![]);
    let socket = bad.filter_chains[0].transport_socket.as_mut().unwrap();
    socket.config_type = Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        xds_support::resources::any(&inbound::downstream_tls(false)),
    ));
    cp.update(|r| r.set(&inbound::inbound_name(addr), &bad));
    let nack = within(cp.wait_nack(|d| d.contains("require_client_certificate"))).await;
    assert!(nack.contains(&inbound::inbound_name(addr)), "{nack}");
    server.wait_error("require_client_certificate").await;
    assert!(get_once(addr, None, false).await.is_err(), "a NACKed listener let plaintext in");
    assert_eq!(get_once(addr, Some(&sleep), true).await.unwrap(), (StatusCode::OK, SLEEP.into()));

    // The listener removed: the last good configuration stays.
    cp.update(|r| r.remove(LDS, &inbound::inbound_name(addr)));
    server.wait_error("does not exist").await;
    assert!(get_once(addr, None, false).await.is_err());
    assert_eq!(get_once(addr, Some(&sleep), false).await.unwrap(), (StatusCode::OK, SLEEP.into()));
    assert_eq!(server.inbound.status().borrow().applied, 2);
    eprintln!("handshakes: {:?}", server.handle.handshake_counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_pushed_live_denies_and_allows_again_dry_runs_and_untranslatable_policies_are_nacked() {
    let Setup { ca, cp, server, _dir } = setup(|r, addr| {
        r.set(&inbound::inbound_name(addr), &inbound_listener(addr, true, vec![]));
    })
    .await;
    let addr = server.addr;
    let name = inbound::inbound_name(addr);
    let sleep = client_identity(&ca, "/ns/default/sa/sleep");
    let intruder = client_identity(&ca, "/ns/other/sa/intruder");
    server.wait_applied(1).await;

    // No RBAC: every mTLS caller is served, over HTTP/1.1, HTTP/2 and gRPC.
    for who in [&sleep, &intruder] {
        assert_eq!(get_once(addr, Some(who), false).await.unwrap().0, StatusCode::OK);
        assert_eq!(get_once(addr, Some(who), true).await.unwrap().0, StatusCode::OK);
        say_hello(addr, who).await.unwrap();
    }
    // A connection opened before the policy: the policy applies to its next request too.
    let mut open = connect(addr, Some(&sleep), true).await;
    assert_eq!(open.get("/echo").await.unwrap(), (StatusCode::OK, SLEEP.into()));

    // DENY sleep (an Istio AuthorizationPolicy with action DENY and from.source.principals).
    let deny_sleep = rbac(
        Action::Deny,
        vec![("ns[default]-policy[deny-sleep]-rule[0]", policy(vec![any_request()], vec![principals(&[SLEEP])]))],
        false,
    );
    cp.update(|r| r.set(&name, &inbound_listener(addr, true, vec![deny_sleep.clone()])));
    server.wait_applied(2).await;
    assert_eq!(get_once(addr, Some(&sleep), false).await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(get_once(addr, Some(&sleep), true).await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(open.get("/echo").await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(say_hello(addr, &sleep).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(get_once(addr, Some(&intruder), false).await.unwrap().0, StatusCode::OK);
    say_hello(addr, &intruder).await.unwrap();
    let denied = server.stats.denied();
    assert_eq!(denied, 4);

    // Removed: allowed again.
    cp.update(|r| r.set(&name, &inbound_listener(addr, true, vec![])));
    server.wait_applied(3).await;
    assert_eq!(get_once(addr, Some(&sleep), false).await.unwrap(), (StatusCode::OK, SLEEP.into()));
    assert_eq!(say_hello(addr, &sleep).await.unwrap(), format!("hello xds, you are {SLEEP}"));

    // ALLOW only the namespace default, on the Greeter's methods and GET /echo: the intruder is
    // denied, and sleep may not call other paths.
    let allow = rbac(
        Action::Allow,
        vec![(
            "ns[default]-policy[allow-default]-rule[0]",
            policy(
                vec![operation(&["/helloworld.Greeter/*", "/echo"], &["GET", "POST"])],
                vec![principals(&["spiffe://cluster.local/ns/default/*"])],
            ),
        )],
        false,
    );
    cp.update(|r| r.set(&name, &inbound_listener(addr, true, vec![allow.clone()])));
    server.wait_applied(4).await;
    assert_eq!(get_once(addr, Some(&sleep), true).await.unwrap().0, StatusCode::OK);
    say_hello(addr, &sleep).await.unwrap();
    assert_eq!(open.get("/admin").await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(get_once(addr, Some(&intruder), true).await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(say_hello(addr, &intruder).await.unwrap_err().code(), Code::PermissionDenied);

    // An untranslatable policy (a source IP block) is NACKed; the ALLOW policy stays enforced.
    let untranslatable =
        rbac(Action::Deny, vec![("ipblock", policy(vec![any_request()], vec![inbound::source_ip_principal()]))], false);
    cp.update(|r| r.set(&name, &inbound_listener(addr, true, vec![untranslatable])));
    let nack = within(cp.wait_nack(|d| d.contains("remote_ip"))).await;
    eprintln!("NACK: {nack}");
    assert!(nack.contains(&name) && nack.contains("not supported"), "{nack}");
    server.wait_error("remote_ip").await;
    assert_eq!(server.inbound.status().borrow().applied, 4);
    assert_eq!(get_once(addr, Some(&intruder), false).await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(say_hello(addr, &intruder).await.unwrap_err().code(), Code::PermissionDenied);
    say_hello(addr, &sleep).await.unwrap();

    // Dry run (Istio's istio.io/dry-run: shadow rules): the intruder is served, and counted.
    let dry = rbac(
        Action::Allow,
        vec![("dry", policy(vec![any_request()], vec![principals(&["spiffe://cluster.local/ns/default/*"])]))],
        true,
    );
    cp.update(|r| r.set(&name, &inbound_listener(addr, true, vec![dry])));
    server.wait_applied(5).await;
    let would_deny = server.stats.would_deny();
    assert_eq!(get_once(addr, Some(&intruder), false).await.unwrap(), (StatusCode::OK, INTRUDER.into()));
    say_hello(addr, &intruder).await.unwrap();
    assert_eq!(get_once(addr, Some(&sleep), true).await.unwrap().0, StatusCode::OK);
    assert_eq!(server.stats.would_deny(), would_deny + 2, "the intruder's two calls are counted, sleep's not");
    eprintln!(
        "authorization: allowed {}, denied {}, would deny {}",
        server.stats.allowed(),
        server.stats.denied(),
        server.stats.would_deny()
    );
}

/// The watches a server holds keep its ADS stream open: a server built where the discovery handle
/// and the `InboundListener` go out of scope (an `if` branch, a helper function) still gets its
/// listener, pushed after they were dropped; and so does a client's snapshot watch. Once the last
/// watch is dropped too, the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_in_use_keep_the_stream_after_the_discovery_handle_is_dropped() {
    use xds_support::resources as r;
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let dir = TempDir::new().unwrap();
    write_certs(&ca, &dir.path().join("server"), "/ns/default/sa/greeter");
    let cp = ControlPlane::start(Resources::default()).await;
    let bootstrap = server_bootstrap(dir.path(), cp.addr, &dir.path().join("server"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (security, authorization) = {
        let xds = XdsDiscovery::builder(Bootstrap::from_file(&bootstrap).unwrap()).build().unwrap();
        let inbound = xds.inbound(addr).unwrap();
        (inbound.security(), inbound.authorization())
    };
    let server = Server::builder()
        .security_from(security)
        .authorization(AuthorizationLayer::from_watch(authorization))
        .build()
        .unwrap();
    let greeter = GreeterServer::new(Hello);
    let handle = server.spawn(listener, tower::service_fn(move |request| serve(request, greeter.clone()))).unwrap();
    let v = cp.update(|r| r.set(&inbound::inbound_name(addr), &inbound_listener(addr, false, vec![])));
    within(cp.wait_ack(LDS, &v)).await;
    assert_eq!(get_once(addr, None, false).await.unwrap(), (StatusCode::OK, "anonymous".into()));

    // A client's watch, its discovery handle dropped before the resources exist.
    let target = "reviews.default.svc.cluster.local:9080";
    let mut watch = {
        std::fs::create_dir_all(dir.path().join("client")).unwrap();
        let client_bootstrap = xds_support::bootstrap(&dir.path().join("client"), cp.addr, None);
        let xds =
            XdsDiscovery::builder(Bootstrap::from_file(&client_bootstrap).unwrap()).allow_plaintext().build().unwrap();
        mesh::core::Discovery::watch(&xds, &xds.target(target).unwrap())
    };
    let cluster = r::cluster_name("reviews.default.svc.cluster.local", 9080, "v1");
    cp.update(|res| {
        res.set(target, &r::client_listener(target));
        res.set(target, &r::route_config(target, "reviews.default.svc.cluster.local", 9080, &[(&cluster, 1)]));
        res.set(&cluster, &r::cluster(&cluster, None));
        res.set(&cluster, &r::load_assignment(&cluster, &[addr]));
    });
    let snapshot = within(watch.ready()).await.unwrap();
    assert_eq!(snapshot.endpoints().len(), 1, "{snapshot:?}");

    // Every watch dropped: nothing is left to feed, and both streams end.
    assert_eq!(cp.heard().borrow().closed, 0, "a stream ended while its watches were in use");
    drop(watch);
    handle.shutdown().await.unwrap();
    drop(server);
    within(cp.heard().wait_for(|h| h.closed >= 2)).await.unwrap();
    assert_eq!(cp.heard().borrow().streams, 2, "one stream per discovery");
}
