//! The client's HTTP/1.1 connections of its own, over real mTLS on 127.0.0.1, counted by a TCP
//! relay in front of the server: a connection is reused for call after call, given back as soon
//! as its response body ends (a streamed body included), closed when a body is dropped unread, by
//! the idle timeout, past `pool_max_idle_per_endpoint`, and when its endpoint leaves discovery.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use mesh::{
    core::{Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery},
    tower::{
        PeerIdentity,
        client::{ClientConfig, MeshClient},
        server::{Server, ServerHandle},
    },
};
use support::identity;
use tokio::sync::watch;
use tower::ServiceExt;

type Body = Empty<Bytes>;

/// How many bytes `/big` answers with, in 16 KiB chunks: far more than one read of the socket, so
/// the connection is still busy with the body when the head arrives.
const BIG: usize = 4 << 20;

/// An mTLS server (`spiffe://example.org/reviews`): `/` answers `hello`, `/big` streams [`BIG`]
/// bytes.
async fn server() -> ServerHandle {
    let service = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let body = if req.uri().path() == "/big" {
            let chunks =
                (0..BIG / 16384).map(|_| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![7u8; 16384]))));
            StreamBody::new(futures_util::stream::iter(chunks)).boxed()
        } else {
            http_body_util::Full::new(Bytes::from_static(b"hello")).map_err(|never| match never {}).boxed()
        };
        Ok::<_, Infallible>(http::Response::new(body))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::builder().identity(identity("/reviews")).build().unwrap().spawn(listener, service).unwrap()
}

/// A TCP relay in front of `upstream` that counts the connections through it: opened in all, and
/// open now (watchable, so a test waits for a close as an event).
struct Relay {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    open: watch::Receiver<usize>,
}

async fn relay(upstream: SocketAddr) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let (tell, open) = watch::channel(0usize);
    let counted = opened.clone();
    tokio::spawn(async move {
        let tell = Arc::new(tell);
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tell.send_modify(|n| *n += 1);
            let tell = tell.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                tell.send_modify(|n| *n -= 1);
            });
        }
    });
    Relay { addr, opened, open }
}

impl Relay {
    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections are open through the relay.
    async fn until_open(&mut self, n: usize) {
        let waited = tokio::time::timeout(Duration::from_secs(30), self.open.wait_for(|open| *open == n)).await.is_ok();
        assert!(waited, "{} connections open after 30 s, not {n}", *self.open.borrow());
    }
}

fn snapshot(addr: SocketAddr) -> ServiceSnapshot {
    ServiceSnapshot::builder("reviews".parse::<ServiceName>().unwrap())
        .identity("spiffe://example.org/reviews".parse().unwrap())
        .endpoint(Endpoint::new(addr))
        .build()
        .unwrap()
}

fn client(discovery: &StaticDiscovery, config: ClientConfig) -> MeshClient<Body> {
    let name: ServiceName = "reviews".parse().unwrap();
    MeshClient::builder(discovery.clone(), name).identity(identity("/web")).config(config).build().unwrap()
}

/// Calls `path` and reads the whole body; its length and who answered.
async fn call(client: &MeshClient<Body>, path: &str) -> (usize, Option<PeerIdentity>) {
    let request = http::Request::get(path).body(Empty::new()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.clone().oneshot(request))
        .await
        .expect("a call within 30 s")
        .unwrap();
    assert_eq!(response.status(), 200);
    let peer = response.extensions().get::<PeerIdentity>().cloned();
    (response.into_body().collect().await.unwrap().to_bytes().len(), peer)
}

async fn setup(config: ClientConfig) -> (ServerHandle, Relay, StaticDiscovery, MeshClient<Body>) {
    let server = server().await;
    let relay = relay(server.local_addr()).await;
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(relay.addr));
    let client = client(&discovery, config);
    (server, relay, discovery, client)
}

#[tokio::test]
async fn one_connection_serves_call_after_call_and_carries_who_answered() {
    let (server, relay, _discovery, client) = setup(ClientConfig::default()).await;
    for _ in 0..50 {
        let (len, peer) = call(&client, "/").await;
        assert_eq!(len, 5);
        assert_eq!(peer.expect("the answering peer's identity").id().as_str(), "spiffe://example.org/reviews");
    }
    assert_eq!(relay.opened(), 1, "50 calls one after another on one connection");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_streamed_body_gives_its_connection_back_when_it_ends() {
    let (server, relay, _discovery, client) = setup(ClientConfig::default()).await;
    for _ in 0..5 {
        assert_eq!(call(&client, "/big").await.0, BIG);
        assert_eq!(call(&client, "/").await.0, 5);
    }
    assert_eq!(relay.opened(), 1, "each call after a streamed body found its connection idle");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_dropped_unread_closes_its_connection_and_the_next_call_dials() {
    let (server, mut relay, _discovery, client) = setup(ClientConfig::default()).await;
    let request = http::Request::get("/big").body(Empty::new()).unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    let mut body = response.into_body();
    // One frame read, the rest left on the connection.
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    relay.until_open(0).await;
    assert_eq!(call(&client, "/").await.0, 5);
    assert_eq!(relay.opened(), 2, "the half-read connection was not reused");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_open_connections_that_later_calls_reuse_up_to_the_idle_cap() {
    let mut config = ClientConfig::default();
    config.pool_max_idle_per_endpoint = 2;
    let (server, mut relay, _discovery, client) = setup(config).await;
    // 8 streamed bodies at once, each held open until all 8 have begun: 8 connections.
    let responses: Vec<_> =
        (0..8).map(|_| client.clone().oneshot(http::Request::get("/big").body(Empty::new()).unwrap())).collect();
    let responses = futures_util::future::try_join_all(responses).await.unwrap();
    assert_eq!(relay.opened(), 8);
    for response in responses {
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes().len(), BIG);
    }
    // Two wait idle; the other six were closed as they came back.
    relay.until_open(2).await;
    for _ in 0..20 {
        assert_eq!(call(&client, "/").await.0, 5);
    }
    assert_eq!(relay.opened(), 8, "later calls reused the idle connections");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_closes_after_the_idle_timeout() {
    let mut config = ClientConfig::default();
    config.pool_idle_timeout = Duration::from_millis(200);
    let (server, mut relay, _discovery, client) = setup(config).await;
    assert_eq!(call(&client, "/").await.0, 5);
    relay.until_open(1).await;
    relay.until_open(0).await;
    assert_eq!(call(&client, "/").await.0, 5);
    assert_eq!(relay.opened(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_leaves_discovery_has_its_idle_connections_closed() {
    let (server, mut relay, discovery, client) = setup(ClientConfig::default()).await;
    assert_eq!(call(&client, "/").await.0, 5);
    relay.until_open(1).await;
    // The same service, now at another address (the server directly): the relay's endpoint is gone.
    discovery.set(snapshot(server.local_addr()));
    assert_eq!(call(&client, "/").await.0, 5);
    relay.until_open(0).await;
    assert_eq!(relay.opened(), 1);
    server.shutdown().await.unwrap();
}
