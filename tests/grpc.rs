//! gRPC through the mesh over real sockets and real mTLS: unary and server-streaming calls through
//! `MeshChannel`, the caller's identity in the handler, per-method authorization answered with
//! PERMISSION_DENIED, errors mapped to the right codes, graceful drain of a streaming call.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod support;

use std::sync::Arc;

use grpc_support::{GrpcBackend, Options, greeter, hello, pb::greeter_client::GreeterClient, serve, testing};
use mesh::{
    core::{
        PathMatch, ServiceSnapshot, StaticDiscovery,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tonic::MeshChannel,
    tower::authz::AuthorizationLayer,
};
use support::{backend_id, identity};
use testing::{CountRequest, counter_client::CounterClient};
use tokio::sync::Semaphore;
use tonic::Code;

fn discovery_of(backends: &[&GrpcBackend]) -> StaticDiscovery {
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoints(backends.iter().map(|b| b.endpoint("v1")))
            .build()
            .unwrap(),
    );
    discovery
}

fn channel(discovery: &StaticDiscovery, caller: &str) -> MeshChannel {
    MeshChannel::builder(discovery.clone(), greeter()).identity(identity(caller)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_over_mtls() {
    let backends =
        [serve(identity("/backend"), Options::default()).await, serve(identity("/backend"), Options::default()).await];
    let discovery = discovery_of(&[&backends[0], &backends[1]]);
    let channel = channel(&discovery, "/frontend");

    let mut greeter = GreeterClient::new(channel.clone());
    for _ in 0..20 {
        let reply = greeter.say_hello(hello("mesh")).await.unwrap().into_inner();
        assert_eq!(reply.message, "hello mesh from v1, you are spiffe://example.org/frontend");
    }
    let calls: Vec<usize> = backends.iter().map(|b| b.seen.calls.load(std::sync::atomic::Ordering::SeqCst)).collect();
    assert_eq!(calls.iter().sum::<usize>(), 20, "one attempt per call: {calls:?}");
    assert!(calls.iter().all(|&n| n > 0), "both endpoints serve: {calls:?}");

    let mut counter = CounterClient::new(channel);
    let mut stream = counter.count(CountRequest { count: 50 }).await.unwrap().into_inner();
    let mut numbers = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.message, format!("{} from v1 to spiffe://example.org/frontend", reply.number));
        numbers.push(reply.number);
    }
    assert_eq!(numbers, (1..=50).collect::<Vec<_>>());
    for backend in backends {
        backend.handle.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_denied_method_gets_permission_denied_and_an_allowed_one_goes_through() {
    // The batch job may stream counts but not say hello; the frontend may do both.
    let frontend = PrincipalMatch::Exact("spiffe://example.org/frontend".parse().unwrap());
    let batch = PrincipalMatch::Exact("spiffe://example.org/batch".parse().unwrap());
    let mut counts_only = AuthorizationRule::allow(vec![batch]);
    counts_only.paths = vec![PathMatch::exact("/mesh.testing.Counter/Count").unwrap()];
    let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![frontend]), counts_only]);
    let layer = AuthorizationLayer::new(policy);
    let stats = layer.stats();
    let options = Options { authorization: Some(layer), ..Options::default() };
    let backend = serve(identity("/backend"), options).await;
    let discovery = discovery_of(&[&backend]);

    let status = GreeterClient::new(channel(&discovery, "/batch")).say_hello(hello("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "spiffe://example.org/batch may not call /helloworld.Greeter/SayHello: no rule allows it"
    );
    assert_eq!(
        backend.seen.calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a denied call never reaches the service"
    );

    let mut stream =
        CounterClient::new(channel(&discovery, "/batch")).count(CountRequest { count: 3 }).await.unwrap().into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let reply = GreeterClient::new(channel(&discovery, "/frontend")).say_hello(hello("x")).await.unwrap();
    assert!(reply.into_inner().message.ends_with("you are spiffe://example.org/frontend"));
    assert_eq!((stats.allowed(), stats.denied()), (2, 1));
    backend.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn mesh_failures_come_back_as_statuses_that_say_what_happened() {
    let backend = serve(identity("/backend"), Options::default()).await;

    // The endpoint proves to be spiffe://example.org/backend, not what discovery expects.
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity("spiffe://example.org/impostor-check".parse().unwrap())
            .endpoint(backend.endpoint("v1"))
            .build()
            .unwrap(),
    );
    let status = GreeterClient::new(channel(&discovery, "/frontend")).say_hello(hello("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("spiffe://example.org/impostor-check"), "{status:?}");
    assert_eq!(backend.seen.calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    // No endpoints at all.
    let empty = StaticDiscovery::new();
    empty.set(ServiceSnapshot::builder(greeter()).identity(backend_id()).build().unwrap());
    let status = GreeterClient::new(channel(&empty, "/frontend")).say_hello(hello("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("service greeter has no endpoint"), "{status:?}");

    // Routes that cover only the Counter: the Greeter's method has no route.
    let counter_only = StaticDiscovery::new();
    counter_only.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoint(backend.endpoint("v1"))
            .route(
                mesh::core::Route::new("counter".parse().unwrap()).with_match(
                    mesh::core::RouteMatch::any().path(PathMatch::prefix("/mesh.testing.Counter").unwrap()),
                ),
            )
            .build()
            .unwrap(),
    );
    let status = GreeterClient::new(channel(&counter_only, "/frontend")).say_hello(hello("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(status.message(), "no route of service greeter matches POST /helloworld.Greeter/SayHello");
    backend.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_streaming_call_in_flight() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = serve(identity("/backend"), Options { gate: Some(gate.clone()), ..Options::default() }).await;
    let discovery = discovery_of(&[&backend]);
    let mut counter = CounterClient::new(channel(&discovery, "/frontend"));
    let mut stream = counter.count(CountRequest { count: 5 }).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().number, 1);

    // Shut down while the call is open: GOAWAY, and the call runs to its end.
    let addr = backend.handle.local_addr();
    let shutdown = tokio::spawn(backend.handle.shutdown());
    // The listener closes first; once it refuses connections, the server is draining.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(!shutdown.is_finished(), "the drain waits for the call in flight");
    gate.add_permits(4);
    let mut rest = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        rest.push(reply.number);
    }
    assert_eq!(rest, vec![2, 3, 4, 5]);
    shutdown.await.unwrap().unwrap();
}

/// Concurrent calls that share one failing handshake (HTTP/2: the calls to an endpoint wait for
/// one connection) each get the connection's own error, the SPIFFE ID mismatch, not the pool's
/// "request was canceled" its waiters used to get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_sharing_a_failing_handshake_each_get_its_cause() {
    let backend = serve(identity("/backend"), Options::default()).await;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity("spiffe://example.org/impostor-check".parse().unwrap())
            .endpoint(backend.endpoint("v1"))
            .build()
            .unwrap(),
    );
    let client = GreeterClient::new(channel(&discovery, "/frontend"));
    for round in 0..3 {
        let calls = (0..16).map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.say_hello(hello("x")).await.unwrap_err() })
        });
        for status in futures_util::future::join_all(calls).await {
            let status = status.unwrap();
            assert_eq!(status.code(), Code::Unavailable, "round {round}: {status:?}");
            assert!(
                status.message().contains("but spiffe://example.org/impostor-check was expected"),
                "round {round}: a waiter lost the handshake's cause: {status:?}"
            );
        }
    }
    assert_eq!(backend.seen.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    backend.handle.shutdown().await.unwrap();
}
