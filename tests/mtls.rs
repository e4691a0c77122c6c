//! Attacks on mTLS, each over a real TLS handshake on 127.0.0.1: every one fails closed with a
//! typed error, is counted by the server, and the server keeps serving legitimate clients.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{convert::Infallible, sync::Arc, time::SystemTime};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, IdentitySource, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery,
        identity::{
            PeerCertificateError,
            dev::{DevCa, DevCert, LeafSpec},
            tls::PeerRejected,
        },
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tower::{
        HandshakeFailure, PeerIdentity,
        authz::AuthorizationLayer,
        client::{ConnectError, MeshClient},
        server::{Server, ServerHandle},
    },
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use support::{ca, identity};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;
const DAY: std::time::Duration = std::time::Duration::from_secs(86400);

/// An echo server: answers with the caller's SPIFFE ID; counts the calls that reach it.
async fn echo_server(identity: IdentitySource) -> (ServerHandle, Arc<std::sync::atomic::AtomicUsize>) {
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let caller = req.extensions().get::<PeerIdentity>().map(|p| p.id().to_string()).unwrap_or_default();
        async move { Ok::<_, Infallible>(http::Response::new(caller)) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(identity).build().unwrap();
    (server.spawn(listener, service).unwrap(), reached)
}

/// A mesh client of the echo server at `addr`, which must prove `expected`.
fn mesh_client(addr: std::net::SocketAddr, expected: &str, me: IdentitySource) -> MeshClient<Body> {
    let name: ServiceName = "echo".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(expected.parse().unwrap())
            .endpoint(Endpoint::new(addr))
            .build()
            .unwrap(),
    );
    MeshClient::builder(discovery, name).identity(me).build().unwrap()
}

async fn call(client: &MeshClient<Body>) -> Result<(http::StatusCode, String), mesh::tower::BoxError> {
    let response = client.clone().oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await?;
    let status = response.status();
    Ok((status, String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?))
}

/// The legitimate client still gets through.
async fn assert_still_serving(server: &ServerHandle) {
    let client = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/web"));
    assert_eq!(call(&client).await.unwrap(), (http::StatusCode::OK, "spiffe://example.org/web".to_owned()));
}

/// Accepts any server certificate: the attacker's side of the tests is about what the server does.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A raw rustls client presenting `cert` (any certificate at all, even one mesh would refuse to
/// load), or none.
fn raw_client(cert: Option<&DevCert>) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    match cert {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// Handshakes with `config`, sends a request, and returns what came back: the attack must not
/// get an HTTP response.
async fn raw_attempt(addr: std::net::SocketAddr, config: ClientConfig) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut tls) = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await else {
        return Vec::new();
    };
    // With TLS 1.3 the client finishes its side before the server judges its certificate; the
    // server's verdict arrives as an alert on the first read.
    let _ = tls.write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n").await;
    let mut received = Vec::new();
    let _ = tls.read_to_end(&mut received).await;
    received
}

async fn server_refuses(
    server: &ServerHandle,
    reached: &std::sync::atomic::AtomicUsize,
    config: ClientConfig,
    why: HandshakeFailure,
) {
    let before = server.handshake_counts().failed(why);
    let reached_before = reached.load(std::sync::atomic::Ordering::SeqCst);
    let received = raw_attempt(server.local_addr(), config).await;
    assert!(!received.starts_with(b"HTTP/"), "the attacker got a response: {:?}", String::from_utf8_lossy(&received));
    server.wait_for_handshakes(|c| c.failed(why) > before).await;
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), reached_before, "nothing reached the handler");
    assert_still_serving(server).await;
}

fn leaf(ca: &DevCa, spec: &LeafSpec) -> DevCert {
    ca.issue_with(spec).unwrap()
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test]
async fn server_refuses_clients_without_a_proper_identity() {
    let (server, reached) = echo_server(identity("/echo")).await;
    let now = SystemTime::now();
    let web = id("spiffe://example.org/web");

    // No client certificate.
    server_refuses(&server, &reached, raw_client(None), HandshakeFailure::NoClientCertificate).await;
    // A certificate from another CA, with a plausible SPIFFE ID.
    let rogue = DevCa::new("example.org".parse().unwrap()).unwrap();
    let config = raw_client(Some(&leaf(&rogue, &LeafSpec::new(&web))));
    server_refuses(&server, &reached, config, HandshakeFailure::UntrustedIssuer).await;
    // Right CA, DNS SAN only.
    let config = raw_client(Some(&leaf(ca(), &LeafSpec::without_uris().dns("web.example.org"))));
    server_refuses(&server, &reached, config, HandshakeFailure::BadIdentity).await;
    // Right CA, two SPIFFE IDs.
    let config = raw_client(Some(&leaf(ca(), &LeafSpec::new(&web).uri("spiffe://example.org/admin"))));
    server_refuses(&server, &reached, config, HandshakeFailure::BadIdentity).await;
    // Right CA, expired.
    let config = raw_client(Some(&leaf(ca(), &LeafSpec::new(&web).valid(now - 2 * DAY, now - DAY))));
    server_refuses(&server, &reached, config, HandshakeFailure::Expired).await;
    // Right CA, not valid yet.
    let config = raw_client(Some(&leaf(ca(), &LeafSpec::new(&web).valid(now + DAY, now + 2 * DAY))));
    server_refuses(&server, &reached, config, HandshakeFailure::NotYetValid).await;
    // A trust domain outside the bundle.
    let foreign = DevCa::new("evil.org".parse().unwrap()).unwrap();
    let config = raw_client(Some(&leaf(&foreign, &LeafSpec::new(&id("spiffe://evil.org/web")))));
    server_refuses(&server, &reached, config, HandshakeFailure::BadIdentity).await;

    let counts = server.handshake_counts();
    assert_eq!(counts.total_failed(), 7, "{counts:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plaintext_and_garbage_never_reach_the_handler() {
    let (server, reached) = echo_server(identity("/echo")).await;

    // A plaintext HTTP request to the mTLS port.
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n").await.unwrap();
    let mut received = Vec::new();
    let _ = tcp.read_to_end(&mut received).await;
    assert!(!received.starts_with(b"HTTP/"), "plaintext got an HTTP answer");
    server.wait_for_handshakes(|c| c.failed(HandshakeFailure::NotTls) == 1).await;

    // A truncated ClientHello: a TLS record header promising more than is sent, then EOF.
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let _ = tcp.read_to_end(&mut Vec::new()).await;
    server.wait_for_handshakes(|c| c.failed(HandshakeFailure::Io) == 1).await;

    // Garbage.
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(&[0xde; 64]).await.unwrap();
    let _ = tcp.read_to_end(&mut Vec::new()).await;
    server.wait_for_handshakes(|c| c.failed(HandshakeFailure::NotTls) == 2).await;

    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_still_serving(&server).await;
    server.shutdown().await.unwrap();
}

fn connect_error(error: &mesh::tower::BoxError) -> &ConnectError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<ConnectError>() {
            return found;
        }
        source = e.source();
    }
    panic!("no ConnectError in {error}")
}

#[tokio::test]
async fn client_refuses_servers_without_the_expected_identity() {
    // Right CA, but the destination must be /reviews and this server is /ratings.
    let (ratings, reached) = echo_server(identity("/ratings")).await;
    let client = mesh_client(ratings.local_addr(), "spiffe://example.org/reviews", identity("/web"));
    let error = call(&client).await.unwrap_err();
    match connect_error(&error).peer_rejected() {
        Some(PeerRejected::IdentityMismatch { expected, presented }) => {
            assert_eq!(expected.to_string(), "spiffe://example.org/reviews");
            assert_eq!(presented.as_str(), "spiffe://example.org/ratings");
        }
        other => panic!("expected an identity mismatch, got {other:?}: {error}"),
    }
    // The caller reads the cause at the top, not two `source()` levels down.
    let top = error.downcast_ref::<mesh::tower::client::ClientError>().expect("a ClientError");
    assert_eq!(top.kind(), mesh::tower::client::ErrorKind::IdentityMismatch);
    let message = top.to_string();
    assert!(message.starts_with("mTLS handshake with 127.0.0.1:"), "{message}");
    assert!(
        message.contains("spiffe://example.org/ratings")
            && message.contains("but spiffe://example.org/reviews was expected"),
        "{message}"
    );
    // HTTP callers that opt in get a 502 that says why.
    let answering = tower::Layer::layer(&mesh::tower::client::ErrorResponseLayer::new(), client.clone());
    let response = answering.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()[mesh::tower::client::ERROR_HEADER], "identity_mismatch");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("but spiffe://example.org/reviews was expected"));

    // A server whose certificate comes from another CA.
    let rogue = DevCa::new("example.org".parse().unwrap()).unwrap();
    let (impostor, _) = echo_server(IdentitySource::fixed(rogue.identity("/reviews").unwrap())).await;
    let client = mesh_client(impostor.local_addr(), "spiffe://example.org/reviews", identity("/web"));
    let error = call(&client).await.unwrap_err();
    let connect = connect_error(&error);
    assert!(connect.is_tls() && connect.peer_rejected().is_none(), "{error:?}");
    let tls = std::error::Error::source(connect)
        .and_then(|io| io.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    // Same CA name, other key: the signature check is what fails.
    assert!(
        matches!(
            tls,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            ))
        ),
        "{connect:?}"
    );

    // A server with a DNS-only certificate (built without mesh's own checks).
    let dns_only = leaf(ca(), &LeafSpec::without_uris().dns("reviews.example.org"));
    let (dns_server, _) = raw_tls_server(&dns_only).await;
    let client = mesh_client(dns_server, "spiffe://example.org/reviews", identity("/web"));
    let error = call(&client).await.unwrap_err();
    assert!(
        matches!(
            connect_error(&error).peer_rejected(),
            Some(PeerRejected::Certificate(PeerCertificateError::NoSpiffeId))
        ),
        "{error:?}"
    );

    // A plaintext server: no fallback, the TLS handshake just fails.
    let plain = support::plaintext_backend("plain").await;
    let client = mesh_client(plain, "spiffe://example.org/reviews", identity("/web"));
    let error = call(&client).await.unwrap_err();
    assert!(connect_error(&error).is_tls(), "{error:?}");

    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    ratings.shutdown().await.unwrap();
}

/// A destination whose workloads run as several identities (an xDS cluster's
/// `match_subject_alt_names` with several entries, gRFC A29): a server matching any one matcher is
/// reached; a server of the same CA matching none is refused before any request is sent.
#[tokio::test]
async fn several_expected_identities_accept_any_and_refuse_the_rest() {
    use mesh::core::{ExpectedIdentity, SanMatcher};
    let expected = ExpectedIdentity::any_of([
        SanMatcher::exact("spiffe://example.org/reviews-v1"),
        SanMatcher::prefix("spiffe://example.org/canary/"),
        SanMatcher::regex("spiffe://example\\.org/reviews-v[23]").unwrap(),
    ]);
    let client_of = |addr| {
        let name: ServiceName = "reviews".parse().unwrap();
        let discovery = StaticDiscovery::new();
        let endpoint = Endpoint::new(addr).with_expected_identity(expected.clone());
        discovery.set(ServiceSnapshot::builder(name.clone()).endpoint(endpoint).build().unwrap());
        MeshClient::builder(discovery, name).identity(identity("/web")).build::<Body>().unwrap()
    };
    for id in ["/reviews-v1", "/canary/reviews", "/reviews-v3"] {
        let (server, _) = echo_server(identity(id)).await;
        let answer = call(&client_of(server.local_addr())).await.unwrap();
        assert_eq!(answer, (http::StatusCode::OK, "spiffe://example.org/web".to_owned()), "{id}");
        server.shutdown().await.unwrap();
    }
    // The attacks: another workload of the same trust domain, and a near miss of each matcher.
    for id in ["/ratings", "/reviews-v1x", "/canaryx/reviews", "/reviews-v4"] {
        let (server, reached) = echo_server(identity(id)).await;
        let error = call(&client_of(server.local_addr())).await.unwrap_err();
        match connect_error(&error).peer_rejected() {
            Some(PeerRejected::IdentityMismatch { expected: e, presented }) => {
                assert_eq!((e, presented.as_str()), (&expected, format!("spiffe://example.org{id}").as_str()));
            }
            other => panic!("{id}: expected an identity mismatch, got {other:?}: {error}"),
        }
        assert!(error.to_string().contains("but an identity matching one of [exact spiffe://example.org/reviews-v1, prefix spiffe://example.org/canary/, regex"), "{error}");
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "{id} was sent a request");
        server.shutdown().await.unwrap();
    }
}

/// A bare rustls server presenting `cert` with no client auth: a server mesh would never build.
async fn raw_tls_server(cert: &DevCert) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_peer_allowed_by_the_ca_but_denied_by_policy_gets_403() {
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new(String::from("secret"))) }
    });
    let web = PrincipalMatch::Exact(id("spiffe://example.org/web"));
    let layer = AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![web])]));
    let stats = layer.stats();
    let service = tower::ServiceBuilder::new().layer(layer).service(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(identity("/echo")).build().unwrap().spawn(listener, service).unwrap();

    let batch = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/batch"));
    let (status, body) = call(&batch).await.unwrap();
    assert_eq!(status, http::StatusCode::FORBIDDEN);
    assert!(body.is_empty());
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "a denied call never reaches the handler");
    assert_eq!(stats.denied(), 1);

    let web = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/web"));
    assert_eq!(call(&web).await.unwrap(), (http::StatusCode::OK, "secret".to_owned()));
    assert_eq!((stats.allowed(), reached.load(std::sync::atomic::Ordering::SeqCst)), (1, 1));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn dry_run_counts_what_it_would_deny_and_lets_it_through() {
    let handler = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("ok")))
    });
    let web = PrincipalMatch::Exact(id("spiffe://example.org/web"));
    let layer = AuthorizationLayer::new(AuthorizationPolicy::dry_run(vec![AuthorizationRule::allow(vec![web])]));
    let stats = layer.stats();
    let service = tower::ServiceBuilder::new().layer(layer).service(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(identity("/echo")).build().unwrap().spawn(listener, service).unwrap();
    let batch = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/batch"));
    assert_eq!(call(&batch).await.unwrap().0, http::StatusCode::OK);
    assert_eq!((stats.would_deny(), stats.denied()), (1, 0));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_client_sees_who_answered() {
    let (server, _) = echo_server(identity("/echo")).await;
    let client = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/web"));
    let response = client.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.unwrap();
    let peer = response.extensions().get::<PeerIdentity>().expect("the server's identity");
    assert_eq!(peer.id().as_str(), "spiffe://example.org/echo");
    assert!(!peer.serial().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_times_out() {
    // Accepts TCP, then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let name: ServiceName = "echo".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity("spiffe://example.org/echo".parse().unwrap())
            .endpoint(Endpoint::new(addr))
            .build()
            .unwrap(),
    );
    let client = MeshClient::builder(discovery, name)
        .identity(identity("/web"))
        .connect_timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let error = call(&client).await.unwrap_err();
    let connect = connect_error(&error);
    assert!(connect.is_tls() && connect.to_string().contains("did not finish"), "{connect}");
}

#[tokio::test]
async fn authorization_follows_the_services_own_snapshot_live() {
    let name: ServiceName = "echo".parse().unwrap();
    let discovery = StaticDiscovery::new();
    let handler = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("ok")))
    });
    let layer = AuthorizationLayer::from_discovery(&discovery, &name);
    let service = tower::ServiceBuilder::new().layer(layer).service(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(identity("/echo")).build().unwrap().spawn(listener, service).unwrap();
    let web = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/web"));

    // No snapshot yet: fail closed.
    assert_eq!(call(&web).await.unwrap().0, http::StatusCode::FORBIDDEN);
    // A snapshot without a policy: authenticated callers are let through.
    discovery.set(ServiceSnapshot::builder(name.clone()).identity(id("spiffe://example.org/echo")).build().unwrap());
    assert_eq!(call(&web).await.unwrap().0, http::StatusCode::OK);
    // A policy arrives: it applies to the next request, on the same connection.
    let batch_only = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![PrincipalMatch::Exact(id(
        "spiffe://example.org/batch",
    ))])]);
    discovery.update(&name, |spec| spec.policies.authorization = Some(batch_only)).unwrap();
    assert_eq!(call(&web).await.unwrap().0, http::StatusCode::FORBIDDEN);
    let batch = mesh_client(server.local_addr(), "spiffe://example.org/echo", identity("/batch"));
    assert_eq!(call(&batch).await.unwrap().0, http::StatusCode::OK);
    server.shutdown().await.unwrap();
}
