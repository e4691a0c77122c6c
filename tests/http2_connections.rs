//! The client's HTTP/2 connections of its own, over real mTLS on 127.0.0.1: one connection per
//! endpoint for any number of concurrent calls; calls that share a dial that fails each get the
//! dial's own cause; a connection the server closed is replaced by the next call.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::tls::PeerRejected},
    tower::{
        ConnectionInfo, PeerIdentity,
        client::{ClientConfig, ClientError, ConnectError, ErrorKind, MeshClient, Protocol},
        server::{Server, ServerHandle},
    },
};
use support::identity;
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

/// A server that answers every call and records the client port of each call's connection.
async fn server_at(
    listener: tokio::net::TcpListener,
    me: IdentitySource,
) -> (ServerHandle, Arc<Mutex<HashSet<SocketAddr>>>) {
    let peers = Arc::new(Mutex::new(HashSet::new()));
    let seen = peers.clone();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        if let Some(info) = req.extensions().get::<ConnectionInfo>() {
            seen.lock().unwrap().insert(info.remote_addr);
        }
        async move { Ok::<_, Infallible>(http::Response::new("hello".to_owned())) }
    });
    let server = Server::builder().identity(me).build().unwrap();
    (server.spawn(listener, service).unwrap(), peers)
}

fn h2_client(addr: SocketAddr, expected: &str) -> MeshClient<Body> {
    h2_client_with(addr, expected, ClientConfig::default())
}

fn h2_client_with(addr: SocketAddr, expected: &str, mut config: ClientConfig) -> MeshClient<Body> {
    config.protocol = Protocol::Http2;
    let name: ServiceName = "echo".parse().unwrap();
    let discovery = StaticDiscovery::new();
    let snapshot = ServiceSnapshot::builder(name.clone())
        .identity(expected.parse().unwrap())
        .endpoint(Endpoint::new(addr))
        .build()
        .unwrap();
    discovery.set(snapshot);
    MeshClient::builder(discovery, name).identity(identity("/web")).config(config).build().unwrap()
}

async fn call(client: &MeshClient<Body>) -> Result<http::Response<String>, mesh::tower::BoxError> {
    let response = client.clone().oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await?;
    let (parts, body) = response.into_parts();
    Ok(http::Response::from_parts(parts, String::from_utf8(body.collect().await?.to_bytes().to_vec())?))
}

/// `n` calls at once, each in its own task; their outcomes in order.
async fn concurrent(client: &MeshClient<Body>, n: usize) -> Vec<Result<http::Response<String>, mesh::tower::BoxError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { call(&client).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// Bounded: a broken connection layer fails the test instead of hanging it.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future).await.unwrap_or_else(|_| panic!("{what} took over 30 s"))
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_and_see_who_answered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, peers) = server_at(listener, identity("/reviews")).await;
    let client = h2_client(addr, "spiffe://example.org/reviews");
    let responses = bounded("32 calls", concurrent(&client, 32)).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.body(), "hello");
        let peer = response.extensions().get::<PeerIdentity>().expect("the answering peer's identity");
        assert_eq!(peer.id().as_str(), "spiffe://example.org/reviews");
    }
    assert_eq!(peers.lock().unwrap().len(), 1, "one HTTP/2 connection for every concurrent call");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn calls_sharing_a_failing_dial_each_get_its_cause() {
    // The right CA, but the destination must be /reviews and this server is /ratings.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, peers) = server_at(listener, identity("/ratings")).await;
    let client = h2_client(addr, "spiffe://example.org/reviews");
    let outcomes = bounded("16 failing calls", concurrent(&client, 16)).await;
    for outcome in outcomes {
        let error = outcome.unwrap_err();
        let top = error.downcast_ref::<ClientError>().expect("a ClientError");
        let connect = top.find::<ConnectError>().expect("the dial's ConnectError");
        match connect.peer_rejected() {
            Some(PeerRejected::IdentityMismatch { expected, presented }) => {
                assert_eq!(expected.to_string(), "spiffe://example.org/reviews");
                assert_eq!(presented.as_str(), "spiffe://example.org/ratings");
            }
            other => panic!("every waiter gets the mismatch, got {other:?}: {error}"),
        }
        assert!(connect.is_tls(), "{connect}");
        assert_eq!(top.kind(), ErrorKind::IdentityMismatch, "{top}");
        assert!(top.to_string().contains("but spiffe://example.org/reviews was expected"), "{top}");
    }
    assert!(peers.lock().unwrap().is_empty(), "nothing reached the handler");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first, first_peers) = server_at(listener, identity("/reviews")).await;
    let client = h2_client(addr, "spiffe://example.org/reviews");
    assert_eq!(bounded("the first call", call(&client)).await.unwrap().body(), "hello");
    // The server drains (GOAWAY) and goes; another takes its address.
    bounded("the drain", first.shutdown()).await.unwrap();
    let listener = bounded("rebinding", async {
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => return listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let (second, second_peers) = server_at(listener, identity("/reviews")).await;
    assert_eq!(bounded("the call after the drain", call(&client)).await.unwrap().body(), "hello");
    assert_eq!(first_peers.lock().unwrap().len(), 1);
    assert_eq!(second_peers.lock().unwrap().len(), 1, "a fresh connection to the new server");
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, peers) = server_at(listener, identity("/reviews")).await;
    let mut config = ClientConfig::default();
    config.pool_idle_timeout = Duration::from_millis(100);
    let client = h2_client_with(addr, "spiffe://example.org/reviews", config);
    assert_eq!(bounded("the first call", call(&client)).await.unwrap().body(), "hello");
    // Each call after a pause longer than 1.25 idle timeouts finds the connection gone and dials
    // again; a loaded machine may run the idle watch late, so a few pauses are allowed.
    bounded("a second connection", async {
        while peers.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(call(&client).await.unwrap().body(), "hello");
        }
    })
    .await;
    server.shutdown().await.unwrap();
}
