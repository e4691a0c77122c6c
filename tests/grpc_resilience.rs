//! gRPC traffic management and resilience through `MeshChannel`, over real sockets and mTLS: a
//! weighted canary split, retries on UNAVAILABLE (with `grpc-previous-rpc-attempts`, and no
//! retry when the server's pushback says so), and
//! deadlines that end as DEADLINE_EXCEEDED on both sides.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use grpc_support::{Behaviour, Options, greeter, hello, pb::greeter_client::GreeterClient, serve};
use mesh::{
    core::{PathMatch, Route, RouteMatch, ServiceSnapshot, StaticDiscovery, Subset, Weight, policy::RetryPolicy},
    tonic::MeshChannel,
    tower::client::ClientConfig,
};
use support::{backend_id, identity};
use tokio::sync::mpsc;
use tonic::Code;

/// The Greeter's route: every method of `helloworld.Greeter`.
fn greeter_route() -> Route {
    Route::new("greeter".parse().unwrap())
        .with_match(RouteMatch::any().path(PathMatch::prefix("/helloworld.Greeter").unwrap()))
}

fn channel(discovery: &StaticDiscovery) -> MeshChannel {
    let mut config = ClientConfig::default();
    config.seed = Some(7);
    MeshChannel::builder(discovery.clone(), greeter()).identity(identity("/frontend")).config(config).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_split_over_10000_rpcs_is_within_a_point_and_a_half() {
    let v1 = serve(identity("/backend"), Options { version: "v1", ..Options::default() }).await;
    let v2 = serve(identity("/backend"), Options { version: "v2", ..Options::default() }).await;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoint(v1.endpoint("v1"))
            .endpoint(v2.endpoint("v2"))
            .subset(Subset::version("v1").unwrap())
            .subset(Subset::version("v2").unwrap())
            .route(
                greeter_route()
                    .with_target("v1".parse().unwrap(), Weight::new(90).unwrap())
                    .with_target("v2".parse().unwrap(), Weight::new(10).unwrap()),
            )
            .build()
            .unwrap(),
    );
    let channel = channel(&discovery);

    const RPCS: usize = 10_000;
    let (left, to_v2) = (Arc::new(AtomicUsize::new(RPCS)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (mut client, left, to_v2) = (GreeterClient::new(channel.clone()), left.clone(), to_v2.clone());
            tokio::spawn(async move {
                while left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    let reply = client.say_hello(hello("canary")).await.unwrap().into_inner();
                    if reply.message.contains("from v2") {
                        to_v2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let share = to_v2.load(Ordering::SeqCst) as f64 * 100.0 / RPCS as f64;
    eprintln!("v2 share over {RPCS} RPCs: {share:.2}%");
    assert!((share - 10.0).abs() <= 1.5, "v2 got {share:.2}% of {RPCS} RPCs, 10% asked");
    let served = v1.seen.calls.load(Ordering::SeqCst) + v2.seen.calls.load(Ordering::SeqCst);
    assert_eq!(served, RPCS);
    v1.handle.shutdown().await.unwrap();
    v2.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn unavailable_is_retried_and_the_retry_says_how_many_came_before() {
    let backend =
        serve(identity("/backend"), Options { behaviour: Behaviour::FailFirstAttempts, ..Options::default() }).await;
    let snapshot = |route: Option<Route>| {
        let builder = ServiceSnapshot::builder(greeter()).identity(backend_id()).endpoint(backend.endpoint("v1"));
        match route {
            Some(route) => builder.route(route),
            None => builder,
        }
        .build()
        .unwrap()
    };

    // Without a retry policy, the UNAVAILABLE comes back as the server said it.
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(None));
    let status = GreeterClient::new(channel(&discovery)).say_hello(hello("once")).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unavailable, "first attempts fail in this test"));

    // With one on the Greeter's route (the default retries UNAVAILABLE), every call recovers.
    let mut retry = RetryPolicy::default();
    retry.budget.ratio = 2.0; // every call here needs its retry, even the first ones
    retry.backoff.base = Duration::from_millis(1);
    discovery.set(snapshot(Some(greeter_route().with_retry(retry))));
    let mut client = GreeterClient::new(channel(&discovery));
    for i in 0..10 {
        let reply = client.say_hello(hello(&format!("call {i}"))).await.unwrap().into_inner();
        assert!(reply.message.starts_with(&format!("hello call {i} from v1")), "{reply:?}");
    }
    assert_eq!(backend.seen.calls.load(Ordering::SeqCst), 1 + 2 * 10, "two attempts per call");
    assert_eq!(*backend.seen.previous_attempts.lock().unwrap(), vec!["1"; 10]);
    backend.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_pushback_that_is_not_a_delay_stops_the_retries() {
    let backend =
        serve(identity("/backend"), Options { behaviour: Behaviour::RefuseRetries, ..Options::default() }).await;
    let mut retry = RetryPolicy::default();
    retry.budget.ratio = 2.0;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoint(backend.endpoint("v1"))
            .route(greeter_route().with_retry(retry))
            .build()
            .unwrap(),
    );
    let status = GreeterClient::new(channel(&discovery)).say_hello(hello("x")).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unavailable, "overloaded; do not retry"));
    assert_eq!(backend.seen.calls.load(Ordering::SeqCst), 1, "the server asked for no retry");
    backend.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_as_deadline_exceeded_on_both_sides() {
    let (dropped, mut handler_dropped) = mpsc::unbounded_channel();
    let backend =
        serve(identity("/backend"), Options { behaviour: Behaviour::Hang(dropped), ..Options::default() }).await;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter()).identity(backend_id()).endpoint(backend.endpoint("v1")).build().unwrap(),
    );

    // The client side: the channel stops waiting at the call's deadline (tonic's grpc-timeout).
    let mut request = tonic::Request::new(hello("slow"));
    request.set_timeout(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let status = GreeterClient::new(channel(&discovery)).say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(handler_dropped.recv().await, Some("the handler was dropped"), "the server stops working too");

    // The server side: a hand-wired client (rustls and hyper, no deadline of its own) hears the
    // server's DEADLINE_EXCEEDED, and the handler is dropped.
    let bare = hand_wired_h2(backend.handle.local_addr()).await;
    let mut request = tonic::Request::new(hello("slow"));
    request.set_timeout(Duration::from_millis(200));
    let status = GreeterClient::new(bare).say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "the caller's deadline passed; the server cancelled the call");
    assert_eq!(handler_dropped.recv().await, Some("the handler was dropped"));
    backend.handle.shutdown().await.unwrap();
}

/// An HTTP/2 connection over mTLS to `addr`, wired by hand with rustls and hyper: a client that
/// enforces no deadline itself.
async fn hand_wired_h2(
    addr: std::net::SocketAddr,
) -> impl tower::Service<
    http::Request<tonic::body::Body>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper::Error,
    Future: Send,
> + Clone {
    let mut options = mesh::core::identity::tls::TlsOptions::default();
    options.alpn = vec![b"h2".to_vec()];
    let config = mesh::core::identity::tls::client_config(&identity("/frontend"), backend_id(), &options).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    tower::service_fn(move |mut request: http::Request<tonic::body::Body>| {
        let mut sender = sender.clone();
        // tonic leaves the authority to the channel; hyper's HTTP/2 client needs one.
        *request.uri_mut() = format!("http://greeter{}", request.uri().path()).parse().unwrap();
        async move { sender.send_request(request).await }
    })
}

/// A canary answering gRPC `INTERNAL` is a failure wherever failure is counted: the attempt and
/// call golden signals, outlier detection, and the status the caller gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_from_a_canary_counts_as_failure_everywhere() {
    let v1 = serve(identity("/backend"), Options { version: "v1", ..Options::default() }).await;
    let v2 =
        serve(identity("/backend"), Options { version: "v2", behaviour: Behaviour::Internal, ..Options::default() })
            .await;
    let discovery = StaticDiscovery::new();
    let mut outlier = mesh::core::policy::OutlierDetection::default();
    outlier.consecutive_failures = 3;
    outlier.max_ejection_percent = mesh::core::policy::Percentage::new(50.0).unwrap();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoint(v1.endpoint("v1"))
            .endpoint(v2.endpoint("v2"))
            .subset(Subset::version("v1").unwrap())
            .subset(Subset::version("v2").unwrap())
            .route(
                greeter_route()
                    .with_target("v1".parse().unwrap(), Weight::new(50).unwrap())
                    .with_target("v2".parse().unwrap(), Weight::new(50).unwrap()),
            )
            .build()
            .unwrap(),
    );
    discovery.update(&greeter(), |spec| spec.policies.outlier_detection = Some(outlier)).unwrap();
    let channel = channel(&discovery);
    let mut internal = 0;
    for _ in 0..40 {
        match GreeterClient::new(channel.clone()).say_hello(hello("x")).await {
            Ok(reply) => assert!(reply.get_ref().message.contains("from v1"), "{reply:?}"),
            Err(status) => {
                assert_eq!(status.code(), Code::Internal, "{status:?}");
                internal += 1;
            }
        }
    }
    assert_eq!(internal, v2.seen.calls.load(Ordering::SeqCst), "every v2 call failed, none was hidden");
    let telemetry = channel.client().telemetry();
    for signals in [telemetry.attempt_signals(), telemetry.golden_signals()] {
        let v2_signals = signals.snapshot().into_iter().find(|s| s.subset.as_ref().is_some_and(|n| n.as_str() == "v2"));
        let v2_signals = v2_signals.expect("v2 has signals");
        assert_eq!((v2_signals.requests, v2_signals.success_rate()), (internal as u64, 0.0));
    }
    assert!(channel.client().outlier_stats().ejections() >= 1, "the failing canary is ejected");
}
