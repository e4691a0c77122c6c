//! The client stack's behaviour at its edges: HTTP/2, no snapshot yet, no endpoints, dead endpoints.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{DiscoveryError, Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery},
    tower::client::{ClientError, ConnectError, ErrorKind, MeshClient, NoEndpoints, Protocol, Unresolved},
};
use support::{backend, backend_id, identity};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

fn get() -> http::Request<Body> {
    http::Request::get("/").body(Empty::new()).unwrap()
}

fn name() -> ServiceName {
    "reviews".parse().unwrap()
}

#[tokio::test]
async fn http2_multiplexes_through_the_client() {
    let b = backend("h2").await;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name()).identity(backend_id()).endpoint(Endpoint::new(b.addr())).build().unwrap(),
    );
    let client = MeshClient::builder(discovery, name())
        .identity(identity("/web"))
        .protocol(Protocol::Http2)
        .build::<Body>()
        .unwrap();
    let calls: Vec<_> = (0..32).map(|_| tokio::spawn(client.clone().oneshot(get()))).collect();
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "h2");
    }
    assert_eq!(b.hits(), 32);
}

#[tokio::test]
async fn a_request_before_the_first_snapshot_waits_for_it() {
    let b = backend("late").await;
    let discovery = StaticDiscovery::new();
    let client = MeshClient::builder(discovery.clone(), name()).identity(identity("/web")).build::<Body>().unwrap();
    let call = tokio::spawn(client.oneshot(get()));
    tokio::task::yield_now().await;
    discovery.set(
        ServiceSnapshot::builder(name()).identity(backend_id()).endpoint(Endpoint::new(b.addr())).build().unwrap(),
    );
    let response = tokio::time::timeout(Duration::from_secs(30), call).await.unwrap().unwrap().unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_service_fails_with_unresolved_after_the_resolve_timeout() {
    let client = MeshClient::builder(StaticDiscovery::new(), name())
        .identity(identity("/web"))
        .resolve_timeout(Duration::from_secs(2))
        .build::<Body>()
        .unwrap();
    let error = client.oneshot(get()).await.unwrap_err();
    let error = error.downcast_ref::<ClientError>().expect("a ClientError");
    assert_eq!(error.kind(), ErrorKind::Unresolved);
    let unresolved = error.find::<Unresolved>().expect("an Unresolved error");
    assert_eq!(unresolved.service(), &name());
    assert!(matches!(unresolved.cause(), Some(DiscoveryError::UnknownService(_))), "{unresolved}");
    assert!(error.to_string().contains("not known"), "{error}");
}

#[tokio::test]
async fn an_empty_endpoint_set_fails_fast_with_no_endpoints() {
    let discovery = StaticDiscovery::new();
    discovery.set(ServiceSnapshot::builder(name()).identity(backend_id()).build().unwrap());
    let client = MeshClient::builder(discovery, name()).identity(identity("/web")).build::<Body>().unwrap();
    let error = client.oneshot(get()).await.unwrap_err();
    let error = error.downcast_ref::<ClientError>().expect("a ClientError");
    assert_eq!((error.kind(), error.attempts()), (ErrorKind::NoEndpoints, 0));
    assert_eq!(error.find::<NoEndpoints>().expect("NoEndpoints").service(), &name());
    assert!(error.to_string().starts_with("service reviews has no endpoint"), "{error}");
}

#[tokio::test]
async fn a_dead_endpoint_is_a_connect_error() {
    // Bind then drop: the port is (almost certainly) closed.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let discovery = StaticDiscovery::new();
    discovery
        .set(ServiceSnapshot::builder(name()).identity(backend_id()).endpoint(Endpoint::new(addr)).build().unwrap());
    let client = MeshClient::builder(discovery, name()).identity(identity("/web")).build::<Body>().unwrap();
    let error = client.oneshot(get()).await.unwrap_err();
    let error = error.downcast_ref::<ClientError>().expect("a ClientError");
    assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    assert_eq!((error.endpoint(), error.attempts()), (Some(addr), 1));
    let connect = error.find::<ConnectError>().expect("the dial's ConnectError");
    assert_eq!(connect.endpoint(), addr.to_string());
    assert!(!connect.is_tls() && connect.peer_rejected().is_none(), "refused at TCP, before TLS: {error}");
    // The cause comes first, in words, not hyper's "client error (Connect)".
    assert!(error.to_string().starts_with(&format!("cannot connect to {addr}")), "{error}");
}
