//! gRPC's OpenTelemetry metrics (gRFC A66) of a mesh gRPC client and server over mTLS, exported
//! by `OtlpTelemetry::meter_provider()` over OTLP/gRPC to a MetricsService receiver started here
//! and read back from what it received: names, units, buckets, attributes, the counts of the calls
//! made (three of ten failing with UNAVAILABLE) and the resource. Exports come from the periodic
//! reader, and from `flush` and `shutdown`.
#![allow(clippy::unwrap_used)]

mod grpc_support;
mod otlp_support;
mod support;

use std::{collections::BTreeMap, time::Duration};

use grpc_support::{
    Behaviour, GrpcBackend, Options, attrs, greeter, hello, pb::greeter_client::GreeterClient, request_bytes, serve,
};
use mesh::{
    core::{ServiceSnapshot, StaticDiscovery},
    tonic::MeshChannel,
    tower::telemetry::{
        TelemetryLayer,
        grpc_otel::{self, GrpcMetrics},
        otlp::{OtlpConfig, OtlpTelemetry},
    },
};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{AggregationTemporality, metric::Data, number_data_point},
};
use otlp_support::{start_otlp_collector, value_of};
use support::{backend_id, identity};

const METHOD: (&str, &str) = ("grpc.method", "helloworld.Greeter/SayHello");
const TARGET: (&str, &str) = ("grpc.target", "xds:///greeter");
const OK: (&str, &str) = ("grpc.status", "OK");
const UNAVAILABLE: (&str, &str) = ("grpc.status", "UNAVAILABLE");

/// One data point as the collector received it: a counter's value or a histogram's count.
#[derive(Debug)]
struct Point {
    name: String,
    unit: String,
    attributes: BTreeMap<String, String>,
    /// A counter's value, or a histogram's count.
    count: u64,
    /// A histogram's sum (none for a counter).
    sum: Option<f64>,
    /// A histogram's boundaries (empty for a counter).
    bounds: Vec<f64>,
    /// Cumulative, and for a counter monotonic: what A66's instruments are.
    cumulative: bool,
}

/// The points of one export, every resource's `service.name`, and every scope's name.
fn points(export: &ExportMetricsServiceRequest) -> (Vec<Point>, Vec<Option<String>>, Vec<String>) {
    let (mut points, mut services, mut scopes) = (Vec::new(), Vec::new(), Vec::new());
    let cumulative = AggregationTemporality::Cumulative as i32;
    let attributes = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        kvs.iter().map(|kv| (kv.key.clone(), value_of(kvs, &kv.key).unwrap_or_default())).collect()
    };
    for resource in &export.resource_metrics {
        services.push(resource.resource.as_ref().and_then(|r| value_of(&r.attributes, "service.name")));
        for scope in &resource.scope_metrics {
            scopes.push(scope.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default());
            for metric in &scope.metrics {
                let point = |attributes, count, sum, bounds, cumulative| Point {
                    name: metric.name.clone(),
                    unit: metric.unit.clone(),
                    attributes,
                    count,
                    sum,
                    bounds,
                    cumulative,
                };
                match &metric.data {
                    Some(Data::Sum(sum)) => points.extend(sum.data_points.iter().map(|p| {
                        let value = match p.value {
                            Some(number_data_point::Value::AsInt(v)) => u64::try_from(v).unwrap(),
                            other => panic!("{}: not an integer counter: {other:?}", metric.name),
                        };
                        let cumulative = sum.is_monotonic && sum.aggregation_temporality == cumulative;
                        point(attributes(&p.attributes), value, None, Vec::new(), cumulative)
                    })),
                    Some(Data::Histogram(h)) => points.extend(h.data_points.iter().map(|p| {
                        let cumulative = h.aggregation_temporality == cumulative;
                        point(attributes(&p.attributes), p.count, p.sum, p.explicit_bounds.clone(), cumulative)
                    })),
                    other => panic!("{}: neither a counter nor a histogram: {other:?}", metric.name),
                }
            }
        }
    }
    (points, services, scopes)
}

fn total(points: &[Point], name: &str) -> u64 {
    points.iter().filter(|p| p.name == name).map(|p| p.count).sum()
}

fn one<'a>(points: &'a [Point], name: &str, want: &[(&str, &str)]) -> &'a Point {
    let found: Vec<&Point> = points
        .iter()
        .filter(|p| p.name == name && want.iter().all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "one {name} with {want:?} in {points:#?}");
    found[0]
}

/// A greeter server and a client channel to it, both recording A66 metrics into `otlp`'s meter
/// provider. No retry policy: each call is one attempt.
async fn greeter_pair(otlp: &OtlpTelemetry, behaviour: Behaviour) -> (GrpcBackend, GreeterClient<MeshChannel>) {
    let metrics = GrpcMetrics::new(&otlp.meter_provider());
    let server_telemetry = TelemetryLayer::server(greeter()).grpc_metrics(metrics.clone().register_method(METHOD.1));
    let backend =
        serve(identity("/backend"), Options { behaviour, telemetry: Some(server_telemetry), ..Options::default() })
            .await;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter()).identity(backend_id()).endpoint(backend.endpoint("v1")).build().unwrap(),
    );
    let telemetry = TelemetryLayer::client(greeter()).grpc_metrics(metrics.target(TARGET.1));
    let channel = MeshChannel::builder(discovery, greeter())
        .identity(identity("/frontend"))
        .telemetry(telemetry)
        .build()
        .unwrap();
    (backend, GreeterClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a66_metrics_reach_the_collector_every_interval() {
    const CALLS: u64 = 10;
    const FAILED: u64 = 3;
    let (collector, mut received) = start_otlp_collector().await;
    let otlp = OtlpConfig::new("checkout".parse().unwrap())
        .endpoint(format!("http://{}", collector.local_addr()))
        .version("v2".parse().unwrap())
        .attribute("deployment.environment.name", "test")
        .metrics_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    // The 2nd, 5th and 8th call fail with UNAVAILABLE; nothing retries them.
    let (backend, mut client) = greeter_pair(&otlp, Behaviour::FailThirtyPercent).await;
    let mut failed = 0;
    for _ in 0..CALLS {
        if let Err(status) = client.say_hello(hello("mesh")).await {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            failed += 1;
        }
    }
    assert_eq!(failed, FAILED);

    // Exports are cumulative: wait for the first that holds every call, on each instrument.
    let instruments = [
        (grpc_otel::CLIENT_ATTEMPT_STARTED, "{attempt}"),
        (grpc_otel::CLIENT_ATTEMPT_DURATION, "s"),
        (grpc_otel::CLIENT_ATTEMPT_SENT_SIZE, "By"),
        (grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE, "By"),
        (grpc_otel::CLIENT_CALL_DURATION, "s"),
        (grpc_otel::SERVER_CALL_STARTED, "{call}"),
        (grpc_otel::SERVER_CALL_DURATION, "s"),
        (grpc_otel::SERVER_CALL_SENT_SIZE, "By"),
        (grpc_otel::SERVER_CALL_RCVD_SIZE, "By"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut exports = 0;
    let (points, services, scopes) = loop {
        let export = match tokio::time::timeout_at(deadline, received.metrics.recv()).await {
            Ok(Some(export)) => export,
            _ => panic!("no export with all {CALLS} calls in 30 s ({exports} exports)"),
        };
        exports += 1;
        let (points, services, scopes) = points(&export);
        if instruments.iter().all(|(name, _)| total(&points, name) >= CALLS) {
            break (points, services, scopes);
        }
    };

    assert_eq!(services, [Some("checkout".to_owned())], "one resource, the traces' service.name");
    assert_eq!(scopes, ["mesh"]);
    for (name, unit) in instruments {
        let mine: Vec<&Point> = points.iter().filter(|p| p.name == name).collect();
        assert!(mine.iter().all(|p| p.unit == unit && p.cumulative), "{name} in {unit}, cumulative: {mine:#?}");
        assert_eq!(total(&points, name), CALLS, "{name}: one per call");
    }
    assert_eq!(points.len(), 2 + 7 * 2, "a point per status of each instrument but the started ones: {points:#?}");

    // Client: attempts started by method and target; the rest by status too.
    let started = one(&points, grpc_otel::CLIENT_ATTEMPT_STARTED, &[]);
    assert_eq!((started.attributes.clone(), started.sum), (attrs(&[METHOD, TARGET]), None));
    for (status, count) in [(OK, CALLS - FAILED), (UNAVAILABLE, FAILED)] {
        for name in [grpc_otel::CLIENT_ATTEMPT_DURATION, grpc_otel::CLIENT_CALL_DURATION] {
            let point = one(&points, name, &[status]);
            assert_eq!(point.attributes, attrs(&[METHOD, TARGET, status]), "{name}");
            assert_eq!((point.count, point.bounds.as_slice()), (count, grpc_otel::LATENCY_BOUNDS), "{name}");
            assert!(point.sum.unwrap() > 0.0, "{name} {status:?} took some time");
        }
        let point = one(&points, grpc_otel::SERVER_CALL_DURATION, &[status]);
        assert_eq!((point.attributes.clone(), point.count), (attrs(&[METHOD, status]), count));
    }
    let sent = one(&points, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE, &[OK]);
    assert_eq!(sent.attributes, attrs(&[METHOD, TARGET, OK]));
    assert_eq!(sent.bounds, grpc_otel::SIZE_BOUNDS);
    assert_eq!(sent.sum, Some(((CALLS - FAILED) * request_bytes("mesh")) as f64));
    let failed_rcvd = one(&points, grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE, &[UNAVAILABLE]);
    assert_eq!(failed_rcvd.sum, Some(0.0), "a trailers-only answer has no message");
    let rcvd = one(&points, grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE, &[OK]).sum.unwrap();
    assert!(rcvd > 0.0);

    // Server: the same calls, seen from the other end.
    let server_started = one(&points, grpc_otel::SERVER_CALL_STARTED, &[]);
    assert_eq!(server_started.attributes, attrs(&[METHOD]));
    assert_eq!(one(&points, grpc_otel::SERVER_CALL_RCVD_SIZE, &[OK]).sum, sent.sum, "it received what was sent");
    assert_eq!(one(&points, grpc_otel::SERVER_CALL_SENT_SIZE, &[OK]).sum, Some(rcvd));

    otlp.shutdown().await.unwrap();
    backend.handle.shutdown().await.unwrap();
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_shutdown_export_the_metrics_at_once() {
    let (collector, mut received) = start_otlp_collector().await;
    // An hour between periodic exports: every export here is a flush's or the shutdown's.
    let otlp = OtlpConfig::new("frontend".parse().unwrap())
        .endpoint(format!("http://{}", collector.local_addr()))
        .metrics_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (backend, mut client) = greeter_pair(&otlp, Behaviour::Answer).await;
    let calls_of = |export: &ExportMetricsServiceRequest| {
        let (points, services, _) = points(export);
        let calls = |name| one(&points, name, &[METHOD, OK]).count;
        (calls(grpc_otel::CLIENT_CALL_DURATION), calls(grpc_otel::SERVER_CALL_DURATION), services)
    };
    let frontend = vec![Some("frontend".to_owned())];

    // The server records a call as its trailers go out, so before the client has its answer.
    client.say_hello(hello("one")).await.unwrap();
    client.say_hello(hello("two")).await.unwrap();
    assert!(received.metrics.try_recv().is_err(), "nothing is exported before the flush");
    otlp.flush().await.unwrap();
    let export = received.metrics.try_recv().expect("flush returns once the collector has the export");
    assert_eq!(calls_of(&export), (2, 2, frontend.clone()));

    client.say_hello(hello("three")).await.unwrap();
    otlp.shutdown().await.unwrap();
    let mut last = None;
    while let Ok(export) = received.metrics.try_recv() {
        last = Some(export);
    }
    let export = last.expect("shutdown returns once the collector has the last export");
    assert_eq!(calls_of(&export), (3, 3, frontend), "cumulative: every call since the start");
    backend.handle.shutdown().await.unwrap();
    collector.shutdown().await.unwrap();
}
