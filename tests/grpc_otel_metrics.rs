//! gRPC's OpenTelemetry metrics (gRFC A66) between two mesh workloads over mTLS, read back from
//! the OpenTelemetry SDK: a retried call is two attempts and one call, sizes are the messages'
//! bytes, durations are in seconds with A66's buckets, unregistered methods are `other`, mesh's
//! own failures get the status the caller sees, and with CSM on each side names the other.
#![allow(clippy::unwrap_used)]

mod grpc_support;
#[path = "../examples/support/otel_metrics.rs"]
mod otel_metrics;
mod support;

use std::time::Duration;

use grpc_support::{
    Behaviour, Options, attrs, greeter, hello, pb::greeter_client::GreeterClient, request_bytes, serve,
};
use mesh::{
    core::{PathMatch, Route, RouteMatch, ServiceSnapshot, StaticDiscovery, Subset, Weight, policy::RetryPolicy},
    tonic::MeshChannel,
    tower::telemetry::{
        TelemetryLayer, WorkloadLabels,
        grpc_otel::{self, GrpcMetrics},
    },
};
use otel_metrics::{MemoryExporter, Point};
use support::{backend_id, identity};

const CALLS: u64 = 10;

fn flush(provider: &opentelemetry_sdk::metrics::SdkMeterProvider, exporter: &MemoryExporter) -> Vec<Point> {
    provider.force_flush().unwrap();
    exporter.points()
}

fn find<'a>(points: &'a [Point], name: &str, want: &[(&str, &str)]) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| p.name == name && want.iter().all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v)))
        .collect()
}

fn one<'a>(points: &'a [Point], name: &str, want: &[(&str, &str)]) -> &'a Point {
    let found = find(points, name, want);
    assert_eq!(found.len(), 1, "one {name} with {want:?} in {points:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_calls_and_server_calls_between_two_mesh_workloads() {
    let exporter = MemoryExporter::default();
    let provider = exporter.provider();
    let metrics = GrpcMetrics::new(&provider);

    let server_workload = WorkloadLabels::new("greeter-v1", "default")
        .canonical("greeter", "v1")
        .with_mesh_id("mesh-1")
        .csm_platform(mesh::tower::telemetry::istio::workload::CSM_TYPE_GKE, "zone-a", "project-1")
        .cluster("c1");
    let server_telemetry = TelemetryLayer::server(greeter())
        .grpc_metrics(metrics.clone().register_method("helloworld.Greeter/SayHello").csm(server_workload));
    let backend = serve(
        identity("/backend"),
        Options { behaviour: Behaviour::FailFirstAttempts, telemetry: Some(server_telemetry), ..Options::default() },
    )
    .await;

    let mut retry = RetryPolicy::default();
    retry.budget.ratio = 2.0;
    retry.backoff.base = Duration::from_millis(1);
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoint(backend.endpoint("v1"))
            .subset(Subset::version("v1").unwrap())
            .route(
                Route::new("greeter".parse().unwrap())
                    .with_match(RouteMatch::any().path(PathMatch::prefix("/helloworld.Greeter").unwrap()))
                    .with_target("v1".parse().unwrap(), Weight::new(100).unwrap())
                    .with_retry(retry),
            )
            .build()
            .unwrap(),
    );
    let client_workload = WorkloadLabels::new("frontend", "default").canonical("frontend", "v1").with_mesh_id("mesh-1");
    let client_metrics = metrics
        .clone()
        .target("xds:///greeter")
        .optional_label(grpc_otel::LB_BACKEND_SERVICE)
        .optional_label(grpc_otel::LB_LOCALITY)
        .csm(client_workload);
    let telemetry = TelemetryLayer::client(greeter()).grpc_metrics(client_metrics);
    let channel = MeshChannel::builder(discovery.clone(), greeter())
        .identity(identity("/frontend"))
        .telemetry(telemetry)
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..CALLS {
        client.say_hello(hello("mesh")).await.unwrap();
    }
    // A method the server does not register is `other` there, and keeps its name client side.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<grpc_support::pb::HelloRequest, grpc_support::pb::HelloReply>::default();
    let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHelloAgain");
    grpc.unary(tonic::Request::new(hello("again")), path, codec).await.unwrap();

    let points = flush(&provider, &exporter);
    let method = ("grpc.method", "helloworld.Greeter/SayHello");
    let target = ("grpc.target", "xds:///greeter");

    // Client: every attempt, then one call each.
    let started = one(&points, grpc_otel::CLIENT_ATTEMPT_STARTED, &[method]);
    assert_eq!(started.attributes, attrs(&[method, target]));
    assert_eq!((started.count, started.unit.as_str()), (2 * CALLS, "{attempt}"));
    let failed = one(&points, grpc_otel::CLIENT_ATTEMPT_DURATION, &[method, ("grpc.status", "UNAVAILABLE")]);
    let ok = one(&points, grpc_otel::CLIENT_ATTEMPT_DURATION, &[method, ("grpc.status", "OK")]);
    assert_eq!((failed.count, ok.count), (CALLS, CALLS));
    assert_eq!(ok.unit, "s");
    assert_eq!(ok.bounds, grpc_otel::LATENCY_BOUNDS);
    assert_eq!(
        ok.attributes,
        attrs(&[
            method,
            target,
            ("grpc.status", "OK"),
            ("grpc.lb.backend_service", "v1"),
            ("csm.workload_canonical_service", "frontend"),
            ("csm.mesh_id", "mesh-1"),
            ("csm.service_name", "greeter"),
            ("csm.service_namespace_name", "unknown"),
            ("csm.remote_workload_type", "gcp_kubernetes_engine"),
            ("csm.remote_workload_canonical_service", "greeter"),
            ("csm.remote_workload_name", "greeter-v1"),
            ("csm.remote_workload_namespace_name", "default"),
            ("csm.remote_workload_cluster_name", "c1"),
            ("csm.remote_workload_location", "zone-a"),
            ("csm.remote_workload_project_id", "project-1"),
        ])
    );
    let sent = one(&points, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE, &[method, ("grpc.status", "OK")]);
    assert_eq!((sent.unit.as_str(), sent.bounds.as_slice()), ("By", grpc_otel::SIZE_BOUNDS));
    assert_eq!(sent.sum, (CALLS * request_bytes("mesh")) as f64, "each attempt sends the whole request");
    let failed_sent = one(&points, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE, &[method, ("grpc.status", "UNAVAILABLE")]);
    assert_eq!(failed_sent.sum, (CALLS * request_bytes("mesh")) as f64);
    let failed_rcvd = one(&points, grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE, &[method, ("grpc.status", "UNAVAILABLE")]);
    assert_eq!(failed_rcvd.sum, 0.0, "a trailers-only answer has no message");
    let rcvd = one(&points, grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE, &[method, ("grpc.status", "OK")]);
    assert!(rcvd.sum > 0.0);
    let calls = one(&points, grpc_otel::CLIENT_CALL_DURATION, &[method]);
    assert_eq!(calls.attributes, attrs(&[method, target, ("grpc.status", "OK")]));
    assert_eq!(calls.count, CALLS, "a retried call is one call");
    assert!(calls.sum >= ok.sum + failed.sum - 1e-3, "a call lasts at least its attempts");

    // Server: one call per attempt, with the sizes the client counted the other way round.
    let server_started = one(&points, grpc_otel::SERVER_CALL_STARTED, &[method]);
    assert_eq!((server_started.count, server_started.unit.as_str()), (2 * CALLS, "{call}"));
    assert_eq!(server_started.attributes, attrs(&[method]));
    let served = one(&points, grpc_otel::SERVER_CALL_DURATION, &[method, ("grpc.status", "OK")]);
    assert_eq!(served.count, CALLS);
    assert_eq!(
        served.attributes,
        attrs(&[
            method,
            ("grpc.status", "OK"),
            ("csm.workload_canonical_service", "greeter"),
            ("csm.mesh_id", "mesh-1"),
            ("csm.remote_workload_type", "unknown"),
            ("csm.remote_workload_canonical_service", "frontend"),
        ])
    );
    assert!(served.sum <= ok.sum + 1e-3, "the server's part of a call is inside the client's attempt");
    let served_rcvd = one(&points, grpc_otel::SERVER_CALL_RCVD_SIZE, &[method, ("grpc.status", "OK")]);
    assert_eq!(served_rcvd.sum, sent.sum, "the server received what the client sent");
    let served_sent = one(&points, grpc_otel::SERVER_CALL_SENT_SIZE, &[method, ("grpc.status", "OK")]);
    assert_eq!(served_sent.sum, rcvd.sum, "the client received what the server sent");
    let refused = one(&points, grpc_otel::SERVER_CALL_DURATION, &[method, ("grpc.status", "UNAVAILABLE")]);
    assert_eq!(refused.count, CALLS);

    // The unregistered method: by name at the client, `other` at the server.
    let again = ("grpc.method", "helloworld.Greeter/SayHelloAgain");
    assert_eq!(one(&points, grpc_otel::CLIENT_CALL_DURATION, &[again]).count, 1);
    assert_eq!(one(&points, grpc_otel::SERVER_CALL_STARTED, &[("grpc.method", "other")]).count, 2);
    backend.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_mesh_fails_gets_the_status_the_caller_sees() {
    let exporter = MemoryExporter::default();
    let provider = exporter.provider();
    // Nobody listens on the endpoint: the connection is refused.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter())
            .identity(backend_id())
            .endpoint(mesh::core::Endpoint::new(addr))
            .build()
            .unwrap(),
    );
    let telemetry = TelemetryLayer::client(greeter()).grpc_metrics(GrpcMetrics::new(&provider));
    let channel = MeshChannel::builder(discovery, greeter())
        .identity(identity("/frontend"))
        .telemetry(telemetry)
        .build()
        .unwrap();
    let status = GreeterClient::new(channel).say_hello(hello("nobody")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let points = flush(&provider, &exporter);
    let method = ("grpc.method", "helloworld.Greeter/SayHello");
    let attempt = one(&points, grpc_otel::CLIENT_ATTEMPT_DURATION, &[method]);
    assert_eq!(attempt.attributes["grpc.status"], "UNAVAILABLE");
    assert_eq!(attempt.attributes["grpc.target"], "greeter", "the target defaults to the service");
    assert!(!attempt.attributes.contains_key("csm.mesh_id"), "no CSM labels unless asked");
    let call = one(&points, grpc_otel::CLIENT_CALL_DURATION, &[method]);
    assert_eq!((call.attributes["grpc.status"].as_str(), call.count), ("UNAVAILABLE", 1));
}
