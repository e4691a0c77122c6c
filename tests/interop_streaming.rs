//! Streaming calls through the mesh's layers, over real sockets with mutual TLS: gRPC's interop
//! `TestService` (the one `interop-server` serves) behind a `GrpcServer`, called through a
//! `MeshChannel` whose route retries, times out, and is measured.
//!
//! - A retry policy never holds a stream back: a body it cannot replay whole (larger than
//!   `max_replay_bytes`, or still being written) goes through once, as it is written, and is
//!   never retried; a small unary call is.
//! - A deadline (the route's timeout, or the caller's `grpc-timeout`) ends a stream that is
//!   still running: the caller gets `DEADLINE_EXCEEDED` and the server's handler is dropped.
//! - Telemetry counts a stream once, when it ends, with the status its trailers carry.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

#[path = "../examples/support/interop_service.rs"]
#[allow(dead_code, unreachable_pub)]
mod service;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream};
use http::Request;
use hyper::body::Incoming;
use mesh::{
    core::{
        Endpoint, PathMatch, Route, RouteMatch, ServiceName, ServiceSnapshot, StaticDiscovery, policy::RetryPolicy,
    },
    tonic::{GrpcServer, MeshChannel},
    tower::{
        metrics as names,
        server::Server,
        telemetry::{TelemetryLayer, WorkloadLabels, istio},
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use service::{
    EchoMetadata, InteropService, StreamEnd,
    pb::{
        EchoStatus, Payload, ResponseParameters, SimpleRequest, StreamingOutputCallRequest,
        test_service_client::TestServiceClient, test_service_server::TestServiceServer,
    },
};
use support::{backend_id, identity};
use tokio::sync::mpsc;
use tonic::Code;
use tower::Service;

/// How long anything may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// The interop service on 127.0.0.1, over mutual TLS as the test backend.
struct Backend {
    addr: SocketAddr,
    /// Calls that reached the service (attempts included).
    calls: Arc<AtomicUsize>,
    /// How each streaming call ended.
    ends: mpsc::UnboundedReceiver<(&'static str, StreamEnd)>,
    _handle: mesh::tower::server::ServerHandle,
}

async fn serve(telemetry: Option<TelemetryLayer>) -> Backend {
    let (tx, ends) = mpsc::unbounded_channel();
    let service = EchoMetadata::new(TestServiceServer::new(InteropService { ends: Some(tx), server_id: "t".into() }));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        tower::service_fn(move |request: Request<Incoming>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut service = service.clone();
            async move { service.call(request).await }
        })
    };
    let mut grpc = GrpcServer::new(Server::builder().identity(identity("/backend")).build().unwrap());
    if let Some(telemetry) = telemetry {
        grpc = grpc.telemetry(telemetry);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = grpc.spawn(listener, counted).unwrap();
    Backend { addr: handle.local_addr(), calls, ends, _handle: handle }
}

fn route() -> Route {
    Route::new("interop".parse().unwrap())
        .with_match(RouteMatch::any().path(PathMatch::prefix("/grpc.testing.TestService").unwrap()))
}

/// A channel to `backend` as service `name`, through `route`.
fn channel(name: &str, backend: &Backend, route: Route) -> MeshChannel {
    channel_with(name, backend, route, None)
}

/// A channel whose telemetry has Istio's metrics on too.
fn istio_channel(name: &str, backend: &Backend, route: Route) -> MeshChannel {
    let workload = WorkloadLabels::new("frontend-v1", "default");
    channel_with(name, backend, route, Some(TelemetryLayer::client(name.parse().unwrap()).istio_metrics(workload)))
}

fn channel_with(name: &str, backend: &Backend, route: Route, telemetry: Option<TelemetryLayer>) -> MeshChannel {
    let service: ServiceName = name.parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(service.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(backend.addr))
            .route(route)
            .build()
            .unwrap(),
    );
    let builder = MeshChannel::builder(discovery, service).identity(identity("/frontend"));
    match telemetry {
        Some(telemetry) => builder.telemetry(telemetry).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

fn retrying() -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    retry.budget.ratio = 2.0; // every call here may retry
    retry.backoff.base = Duration::from_millis(1);
    retry.max_replay_bytes = 64 * 1024;
    retry
}

fn unavailable() -> Option<EchoStatus> {
    Some(EchoStatus { code: Code::Unavailable as i32, message: "try again".into() })
}

fn zeros(size: usize) -> Option<Payload> {
    Some(Payload { r#type: 0, body: vec![0; size] })
}

fn duplex(request: usize, responses: &[(i32, i32)]) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        payload: zeros(request),
        response_parameters: responses
            .iter()
            .map(|&(size, interval_us)| ResponseParameters { size, interval_us, ..ResponseParameters::default() })
            .collect(),
        ..StreamingOutputCallRequest::default()
    }
}

/// A request stream the test writes as it goes.
fn writer() -> (mpsc::Sender<StreamingOutputCallRequest>, impl futures_util::Stream<Item = StreamingOutputCallRequest>)
{
    let (tx, rx) = mpsc::channel(1);
    (tx, stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }))
}

async fn next_end(backend: &mut Backend) -> (&'static str, StreamEnd) {
    tokio::time::timeout(PATIENCE, backend.ends.recv()).await.expect("the server saw the stream end").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_streams_what_it_cannot_replay_and_retries_what_it_can() {
    metrics_totals();
    let mut backend = serve(None).await;
    let channel = channel("interop-retry", &backend, route().with_retry(retrying()));
    let mut client = TestServiceClient::new(channel.clone());

    // A small unary call is buffered and retried: three attempts reach the server.
    let small = SimpleRequest { response_status: unavailable(), payload: zeros(10), ..SimpleRequest::default() };
    assert_eq!(client.unary_call(small).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(backend.calls.swap(0, Ordering::SeqCst), 3);

    // One larger than max_replay_bytes is sent once, not held for replay.
    let large = SimpleRequest { response_status: unavailable(), payload: zeros(1 << 20), ..SimpleRequest::default() };
    assert_eq!(client.unary_call(large).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(backend.calls.swap(0, Ordering::SeqCst), 1);
    assert_eq!(channel.client().retry_stats().not_replayable(), 1);

    // Ping-pong with messages larger than the replay limit: each request must reach the server
    // before its response can come back, so nothing waits for the body to end.
    let (tx, requests) = writer();
    tx.send(duplex(100_000, &[(100_000, 0)])).await.unwrap();
    let mut responses = client.full_duplex_call(requests).await.unwrap().into_inner();
    for round in 0..8 {
        if round > 0 {
            tx.send(duplex(100_000, &[(100_000, 0)])).await.unwrap();
        }
        let reply = tokio::time::timeout(PATIENCE, responses.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply.payload.unwrap().body.len(), 100_000, "round {round}");
    }
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    assert_eq!(next_end(&mut backend).await, ("FullDuplexCall", StreamEnd::Finished));

    // A stream still being written that fails is not retried: its body is not whole.
    let (tx, requests) = writer();
    let mut first = duplex(10, &[]);
    first.response_status = unavailable();
    tx.send(first).await.unwrap();
    let status = match client.full_duplex_call(requests).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1 + 1, "the ping-pong and the failed stream, once each");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_ends_a_running_server_stream() {
    metrics_totals();
    let mut backend = serve(None).await;
    let name = "interop-route-timeout";
    let channel = istio_channel(name, &backend, route().with_timeout(Duration::from_millis(500)));
    let mut client = TestServiceClient::new(channel.clone());
    // 100 responses, 50 ms apart: 5 s, ten times the route's timeout.
    let params = vec![ResponseParameters { size: 10, interval_us: 50_000, ..ResponseParameters::default() }; 100];
    let request = StreamingOutputCallRequest { response_parameters: params, ..StreamingOutputCallRequest::default() };
    let mut responses = client.streaming_output_call(request).await.unwrap().into_inner();
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(PATIENCE, responses.message()).await.unwrap() {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream finished ({received} responses) despite the route's timeout"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(received < 100, "{received}");
    assert_eq!(next_end(&mut backend).await, ("StreamingOutputCall", StreamEnd::Dropped));
    // Counted once, as DEADLINE_EXCEEDED, and by Istio's metrics as an upstream timeout (UT).
    let want = [(("outbound", "DEADLINE_EXCEEDED"), 1), (("istio:source", "4/UT"), 1)];
    metrics_totals().wait_for(name, &want).await;
    let signals = channel.client().telemetry().golden_signals().snapshot();
    let (requests, successes) = signals.iter().fold((0, 0), |(r, s), x| (r + x.requests, s + x.successes));
    assert_eq!((requests, successes), (1, 0), "{signals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_ends_an_open_duplex_stream() {
    metrics_totals();
    let mut backend = serve(None).await;
    let name = "interop-grpc-timeout";
    let mut client = TestServiceClient::new(istio_channel(name, &backend, route()));
    let (tx, requests) = writer();
    tx.send(duplex(10, &[(10, 0)])).await.unwrap();
    let mut request = tonic::Request::new(requests);
    request.set_timeout(Duration::from_millis(500));
    let mut responses = client.full_duplex_call(request).await.unwrap().into_inner();
    let first = tokio::time::timeout(PATIENCE, responses.message()).await.unwrap().unwrap();
    assert!(first.is_some());
    // The caller keeps the stream open and sends nothing more: the deadline ends it.
    let status = tokio::time::timeout(PATIENCE, responses.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(next_end(&mut backend).await, ("FullDuplexCall", StreamEnd::Dropped));
    let want = [(("outbound", "DEADLINE_EXCEEDED"), 1), (("istio:source", "4/UT"), 1)];
    metrics_totals().wait_for(name, &want).await;
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_counts_a_stream_once_with_the_status_of_its_trailers() {
    let totals = metrics_totals();
    let name = "interop-telemetry";
    let mut backend = serve(Some(TelemetryLayer::server(name.parse().unwrap()))).await;
    let channel = channel(name, &backend, route());
    let mut client = TestServiceClient::new(channel.clone());

    // A duplex stream: two responses, then the status INTERNAL in the trailers.
    let (tx, requests) = writer();
    tx.send(duplex(10, &[(10, 0), (10, 0)])).await.unwrap();
    let mut responses = client.full_duplex_call(requests).await.unwrap().into_inner();
    for _ in 0..2 {
        assert!(responses.message().await.unwrap().is_some());
    }
    let mut failing = duplex(0, &[]);
    failing.response_status = Some(EchoStatus { code: Code::Internal as i32, message: "broken".into() });
    tx.send(failing).await.unwrap();
    assert_eq!(responses.message().await.unwrap_err().code(), Code::Internal);
    drop((tx, responses));
    assert_eq!(next_end(&mut backend).await, ("FullDuplexCall", StreamEnd::Finished));

    // A server stream of three responses that ends OK.
    let params = vec![ResponseParameters { size: 10, ..ResponseParameters::default() }; 3];
    let request = StreamingOutputCallRequest { response_parameters: params, ..StreamingOutputCallRequest::default() };
    let responses = client.streaming_output_call(request).await.unwrap().into_inner();
    assert_eq!(responses.count().await, 3);

    let want =
        [(("outbound", "INTERNAL"), 1), (("outbound", "OK"), 1), (("inbound", "INTERNAL"), 1), (("inbound", "OK"), 1)];
    totals.wait_for(name, &want).await;
    let signals = channel.client().telemetry().golden_signals().snapshot();
    let (requests, successes) = signals.iter().fold((0, 0), |(r, s), x| (r + x.requests, s + x.successes));
    assert_eq!((requests, successes), (2, 1), "{signals:?}");

    // One more call, counted after the streams: they were counted once and stay so.
    client.empty_call(service::pb::Empty {}).await.unwrap();
    let want_after =
        [(("outbound", "OK"), 2), (("inbound", "OK"), 2), (("outbound", "INTERNAL"), 1), (("inbound", "INTERNAL"), 1)];
    totals.wait_for(name, &want_after).await;
}

/// `mesh_requests_total` summed over snapshots (each snapshot resets the counters it reads), by
/// service, direction and gRPC code; and `istio_requests_total`, by service, reporter, gRPC status
/// and response flags. Installed once per test binary, before any test counts.
struct Totals {
    snapshotter: Snapshotter,
    sums: Mutex<HashMap<(String, String, String), u64>>,
}

fn metrics_totals() -> &'static Totals {
    static TOTALS: OnceLock<Totals> = OnceLock::new();
    TOTALS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        Totals { snapshotter, sums: Mutex::default() }
    })
}

impl Totals {
    fn read(&self) {
        let mut sums = self.sums.lock().unwrap();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let label = |name: &str| key.key().labels().find(|l| l.key() == name).map(|l| l.value().to_owned());
            let (Some(service), Some(direction), Some(code)) = (match key.key().name() {
                names::REQUESTS => (label("service"), label("direction"), label("grpc_code")),
                // Istio's: by reporter, as `grpc_response_status/response_flags`.
                istio::REQUESTS => (
                    label("destination_service_name"),
                    label("reporter").map(|r| format!("istio:{r}")),
                    label("grpc_response_status").zip(label("response_flags")).map(|(s, f)| format!("{s}/{f}")),
                ),
                _ => continue,
            }) else {
                continue;
            };
            if let DebugValue::Counter(n) = value {
                *sums.entry((service, direction, code)).or_default() += n;
            }
        }
    }

    /// Waits until the counts of `service` are exactly `want` (direction, code -> count).
    async fn wait_for(&self, service: &str, want: &[((&str, &str), u64)]) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.read();
            let got: Vec<_> = {
                let sums = self.sums.lock().unwrap();
                let mut got: Vec<_> = sums
                    .iter()
                    .filter(|((s, _, _), _)| s == service)
                    .map(|((_, d, c), n)| ((d.clone(), c.clone()), *n))
                    .collect();
                got.sort();
                got
            };
            let mut expected: Vec<_> = want.iter().map(|((d, c), n)| ((d.to_string(), c.to_string()), *n)).collect();
            expected.sort();
            if got == expected {
                return;
            }
            let over = got.iter().any(|(k, n)| expected.iter().find(|(e, _)| e == k).is_none_or(|(_, m)| n > m));
            assert!(!over, "counted more than once, or a code that did not happen: {got:?}, want {expected:?}");
            assert!(tokio::time::Instant::now() < deadline, "counts {got:?}, want {expected:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
