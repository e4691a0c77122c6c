//! gRPC's OpenTelemetry metrics and the peer-metadata exchange against gRPC's own CSM
//! observability, both ways: PyPI's `grpcio-csm-observability` (gRPC C-core's A66 metrics and
//! metadata exchange, read back from an in-memory OpenTelemetry reader) serves a greeter that a
//! `MeshChannel` calls, and calls a mesh `GrpcServer`; mesh's metrics go to an OpenTelemetry SDK
//! meter provider. For the same calls the two stacks report the same metric names, units, bucket
//! boundaries and attribute sets, the same method, status and message sizes, durations that nest
//! (the server's inside the client's), and each side's CSM labels name the other's workload. Mesh's
//! Istio metrics, on the mesh client, name grpcio's workload too.
//!
//! The python with the plugin comes from `MESH_CSM_PYTHON` (`.ci/run` builds a venv under
//! `target/`). Without it the test skips with the reason, unless `MESH_INTEROP=1`: then it fails.
#![allow(clippy::unwrap_used)]

mod grpc_support;
#[path = "../examples/support/otel_metrics.rs"]
mod otel_metrics;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use grpc_support::{Options, greeter, hello, pb::greeter_client::GreeterClient, serve_with};
use mesh::{
    core::{Endpoint, ServiceSnapshot, StaticDiscovery},
    tonic::MeshChannel,
    tower::{
        server::Server,
        telemetry::{
            TelemetryLayer, WorkloadLabels,
            grpc_otel::{self, GrpcMetrics},
            istio,
            istio::workload::CSM_TYPE_GKE,
        },
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use otel_metrics::{MemoryExporter, Point};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};

/// The python with grpcio-csm-observability, or why there is none.
fn csm_python() -> Option<PathBuf> {
    let python = std::env::var_os("MESH_CSM_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let check = std::process::Command::new(&python)
        .args(["-c", "import grpc_csm_observability, opentelemetry.sdk.metrics"])
        .output();
    let why = match check {
        Ok(output) if output.status.success() => return Some(python),
        Ok(output) => format!(
            "{} cannot import grpc_csm_observability: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("cannot run {}: {error}", python.display()),
    };
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why} (set MESH_CSM_PYTHON to a python with grpcio-csm-observability)");
    }
    eprintln!("skipping the CSM interop test: {why}");
    None
}

const CALLS: u64 = 5;
const METHOD: &str = "helloworld.Greeter/SayHello";
/// What a GKE peer adds to the two remote labels every CSM peer has.
const GKE_PEER_LABELS: [&str; 5] = [
    "csm.remote_workload_name",
    "csm.remote_workload_namespace_name",
    "csm.remote_workload_cluster_name",
    "csm.remote_workload_location",
    "csm.remote_workload_project_id",
];

/// A data point grpcio's reader printed.
fn point_of(value: &serde_json::Value) -> Point {
    let attributes: BTreeMap<String, String> = value["attributes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    let bounds: Vec<f64> =
        value["bounds"].as_array().map_or_else(Vec::new, |b| b.iter().map(|x| x.as_f64().unwrap()).collect());
    let count = value["count"].as_u64().or_else(|| value["value"].as_u64()).unwrap();
    let sum = value["sum"].as_f64().unwrap_or(count as f64);
    Point {
        name: value["name"].as_str().unwrap().to_owned(),
        unit: value["unit"].as_str().unwrap().to_owned(),
        attributes,
        count,
        sum,
        bounds,
        buckets: vec![],
    }
}

/// The one point of `name` for the test's method.
fn point<'a>(points: &'a [Point], name: &str) -> &'a Point {
    let found: Vec<_> = points
        .iter()
        .filter(|p| p.name == name && p.attributes.get("grpc.method").map(String::as_str) == Some(METHOD))
        .collect();
    assert_eq!(found.len(), 1, "one {name} of {METHOD} in {points:#?}");
    found[0]
}

fn keys(point: &Point) -> BTreeSet<&str> {
    point.attributes.keys().map(String::as_str).collect()
}

struct Peer {
    stdin: tokio::process::ChildStdin,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Peer {
    async fn ask(&mut self, command: &str) -> String {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        self.lines.next_line().await.unwrap().expect("the grpcio peer exited")
    }

    /// grpcio's points once its reader has all the calls (its observability hands measurements to
    /// OpenTelemetry from a background thread: ask until they are there, bounded).
    async fn points(&mut self) -> Vec<Point> {
        let complete = |points: &[Point]| {
            [grpc_otel::SERVER_CALL_DURATION, grpc_otel::CLIENT_ATTEMPT_DURATION]
                .iter()
                .all(|name| points.iter().any(|p| p.name == *name && p.count == CALLS))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let json = self.ask("metrics").await;
            let values: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
            let points: Vec<Point> = values.iter().map(point_of).collect();
            if complete(&points) {
                return points;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "grpcio did not record the calls of both directions within 60 s: {points:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_csm_and_mesh_measure_the_same_calls_alike_both_ways() {
    let Some(python) = csm_python() else { return };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let exporter = MemoryExporter::default();
    let provider = exporter.provider();
    let metrics = GrpcMetrics::new(&provider);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/csm_peer.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .env("CSM_CANONICAL_SERVICE_NAME", "pyserver")
        .env("CSM_WORKLOAD_NAME", "pyserver-wl")
        .env("CSM_MESH_ID", "mesh-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut peer =
        Peer { stdin: child.stdin.take().unwrap(), lines: BufReader::new(child.stdout.take().unwrap()).lines() };
    let first = peer.lines.next_line().await.unwrap().expect("the grpcio peer exited before listening");
    let grpcio: std::net::SocketAddr = first.strip_prefix("listening on ").unwrap().parse().unwrap();

    // grpcio client -> mesh server (plaintext: grpcio's channel here is insecure).
    let server_workload =
        WorkloadLabels::new("greeter-v1", "default").canonical("greeter", "v1").with_mesh_id("mesh-1");
    let server_telemetry = TelemetryLayer::server(greeter())
        .istio_metrics(server_workload.clone())
        .grpc_metrics(metrics.clone().register_service("helloworld.Greeter").csm(server_workload));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = serve_with(
        Server::builder().plaintext().build().unwrap(),
        listener,
        Options { telemetry: Some(server_telemetry), ..Options::default() },
    );
    let called = peer.ask(&format!("call {} {CALLS}", backend.handle.local_addr())).await;
    assert_eq!(called, format!("called {CALLS}"));

    // mesh client -> grpcio server.
    let discovery = StaticDiscovery::new();
    discovery.set(ServiceSnapshot::builder(greeter()).endpoint(Endpoint::new(grpcio)).build().unwrap());
    let workload = WorkloadLabels::new("frontend", "default")
        .canonical("frontend", "v1")
        .cluster("cluster-a")
        .with_mesh_id("mesh-1")
        .csm_platform(CSM_TYPE_GKE, "us-central1-a", "project-7");
    let telemetry = TelemetryLayer::client(greeter())
        .istio_metrics(workload.clone())
        .grpc_metrics(metrics.clone().target(format!("dns:///{grpcio}")).csm(workload));
    let channel = MeshChannel::builder(discovery, greeter()).plaintext().telemetry(telemetry).build().unwrap();
    for _ in 0..CALLS {
        let reply = GreeterClient::new(channel.clone()).say_hello(hello("mesh")).await.unwrap();
        assert_eq!(reply.into_inner().message, "hello mesh from grpcio");
    }

    let theirs = peer.points().await;
    provider.force_flush().unwrap();
    let ours = exporter.points();
    for (name, p) in [("grpcio", &theirs), ("mesh", &ours)] {
        for point in p.iter() {
            eprintln!(
                "{name}: {} [{}] count {} sum {} {:?}",
                point.name, point.unit, point.count, point.sum, point.attributes
            );
        }
    }

    // The same instruments, units, boundaries and attribute sets, side by side.
    let names = [
        grpc_otel::CLIENT_ATTEMPT_STARTED,
        grpc_otel::CLIENT_ATTEMPT_DURATION,
        grpc_otel::CLIENT_ATTEMPT_SENT_SIZE,
        grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE,
        grpc_otel::CLIENT_CALL_DURATION,
        grpc_otel::SERVER_CALL_STARTED,
        grpc_otel::SERVER_CALL_DURATION,
        grpc_otel::SERVER_CALL_SENT_SIZE,
        grpc_otel::SERVER_CALL_RCVD_SIZE,
    ];
    let mut table = String::from("\n| instrument | unit | attributes (both) | count |\n|---|---|---|---|\n");
    for name in names {
        let mine = point(&ours, name);
        if name == grpc_otel::CLIENT_CALL_DURATION && !theirs.iter().any(|p| p.name == name) {
            // grpcio's Python channel records no call duration for a plain unary call; its
            // attempts are compared above and below.
            table += &format!(
                "| {name} | {} | {} | {} (grpcio: none) |\n",
                mine.unit,
                keys(mine).into_iter().collect::<Vec<_>>().join(", "),
                mine.count
            );
            assert_eq!(keys(mine), BTreeSet::from(["grpc.method", "grpc.target", "grpc.status"]));
            continue;
        }
        let other = point(&theirs, name);
        assert_eq!(mine.unit, other.unit, "{name}'s unit");
        // Servers name their client: grpcio's client is off GCP (type `unknown`: two labels),
        // mesh's says it is on GKE, which adds five.
        let mut expected = keys(mine);
        if name.starts_with("grpc.server.") && name != grpc_otel::SERVER_CALL_STARTED {
            expected.extend(GKE_PEER_LABELS);
        }
        assert_eq!(
            expected,
            keys(other),
            "{name}'s attributes: mesh {:?}, grpcio {:?}",
            mine.attributes,
            other.attributes
        );
        if !other.bounds.is_empty() {
            // A66's boundaries; grpcio's Python plugin leaves them to the SDK (its default
            // boundaries, unless the application adds a View), so compare with A66's lists.
            let a66 = if mine.unit == "s" { grpc_otel::LATENCY_BOUNDS } else { grpc_otel::SIZE_BOUNDS };
            assert_eq!(mine.bounds, a66, "{name}'s bucket boundaries (grpcio's: {:?})", other.bounds);
        }
        for key in ["grpc.method", "grpc.status", "csm.mesh_id"] {
            assert_eq!(mine.attributes.get(key), other.attributes.get(key), "{name}'s {key}");
        }
        assert_eq!((mine.count, other.count), (CALLS, CALLS), "{name}'s count");
        table += &format!(
            "| {name} | {} | {} | {} |\n",
            mine.unit,
            keys(mine).into_iter().collect::<Vec<_>>().join(", "),
            mine.count
        );
    }
    eprintln!("{table}");

    // What one side sent, the other received; each server's time lies inside its client's.
    let sum = |points: &[Point], name: &str| point(points, name).sum;
    assert_eq!(sum(&ours, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE), sum(&theirs, grpc_otel::SERVER_CALL_RCVD_SIZE));
    assert_eq!(sum(&ours, grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE), sum(&theirs, grpc_otel::SERVER_CALL_SENT_SIZE));
    assert_eq!(sum(&theirs, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE), sum(&ours, grpc_otel::SERVER_CALL_RCVD_SIZE));
    assert_eq!(sum(&theirs, grpc_otel::CLIENT_ATTEMPT_RCVD_SIZE), sum(&ours, grpc_otel::SERVER_CALL_SENT_SIZE));
    assert!(sum(&ours, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE) > 0.0);
    let within = |server: f64, client: f64, what: &str| {
        // 1 ms in all for clock reads taken at slightly different points of each stack.
        assert!(server <= client + 1e-3, "{what}: the server's {server} s exceed the client's {client} s");
        assert!(server > 0.0, "{what}");
    };
    within(
        sum(&theirs, grpc_otel::SERVER_CALL_DURATION),
        sum(&ours, grpc_otel::CLIENT_ATTEMPT_DURATION),
        "mesh -> grpcio",
    );
    within(
        sum(&ours, grpc_otel::SERVER_CALL_DURATION),
        sum(&theirs, grpc_otel::CLIENT_ATTEMPT_DURATION),
        "grpcio -> mesh",
    );
    assert!(sum(&ours, grpc_otel::CLIENT_CALL_DURATION) >= sum(&ours, grpc_otel::CLIENT_ATTEMPT_DURATION) - 1e-3);

    // Each side names the other.
    let label = |points: &[Point], name: &str, key: &str| point(points, name).attributes.get(key).cloned();
    for (key, value) in [
        ("csm.workload_canonical_service", "pyserver"),
        ("csm.remote_workload_type", CSM_TYPE_GKE),
        ("csm.remote_workload_canonical_service", "frontend"),
        ("csm.remote_workload_name", "frontend"),
        ("csm.remote_workload_namespace_name", "default"),
        ("csm.remote_workload_cluster_name", "cluster-a"),
        ("csm.remote_workload_location", "us-central1-a"),
        ("csm.remote_workload_project_id", "project-7"),
    ] {
        assert_eq!(
            label(&theirs, grpc_otel::SERVER_CALL_DURATION, key).as_deref(),
            Some(value),
            "grpcio server's {key}"
        );
    }
    assert_eq!(
        label(&theirs, grpc_otel::CLIENT_ATTEMPT_DURATION, "csm.remote_workload_canonical_service").as_deref(),
        Some("greeter")
    );
    assert_eq!(
        label(&ours, grpc_otel::CLIENT_ATTEMPT_DURATION, "csm.remote_workload_canonical_service").as_deref(),
        Some("pyserver")
    );
    assert_eq!(
        label(&ours, grpc_otel::SERVER_CALL_DURATION, "csm.remote_workload_canonical_service").as_deref(),
        Some("pyserver")
    );
    assert_eq!(
        label(&ours, grpc_otel::CLIENT_ATTEMPT_DURATION, "csm.workload_canonical_service").as_deref(),
        Some("frontend")
    );

    // mesh's Istio metrics name grpcio's workload, from its response's metadata (the client) and
    // its request's (the server), and count the gRPC messages both ways.
    let snapshot = snapshotter.snapshot().into_vec();
    let reporter = |key: &metrics_util::CompositeKey, reporter: &str| {
        key.key().labels().any(|l| l.key() == "reporter" && l.value() == reporter)
    };
    let series = |name: &str, side: &str| -> Vec<&DebugValue> {
        snapshot.iter().filter(|(key, ..)| key.key().name() == name && reporter(key, side)).map(|s| &s.3).collect()
    };
    for side in ["source", "destination"] {
        assert_eq!(
            series(istio::REQUEST_MESSAGES, side),
            [&DebugValue::Counter(CALLS)],
            "{side}: one message per call"
        );
        assert_eq!(series(istio::RESPONSE_MESSAGES, side), [&DebugValue::Counter(CALLS)], "{side}");
    }
    // Request bytes are the body's: the messages and their 5-byte prefixes (unary gRPC declares no
    // length), the same as what each client's A66 metrics count, prefixes aside.
    let body_bytes = |side: &str| match &series(istio::REQUEST_BYTES, side)[..] {
        [DebugValue::Histogram(values)] => values.iter().map(|v| v.into_inner()).sum::<f64>(),
        other => panic!("one {side} request-bytes histogram: {other:?}"),
    };
    assert_eq!(body_bytes("source"), sum(&ours, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE) + 5.0 * CALLS as f64);
    assert_eq!(body_bytes("destination"), sum(&theirs, grpc_otel::CLIENT_ATTEMPT_SENT_SIZE) + 5.0 * CALLS as f64);
    let destination: Vec<_> = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == istio::REQUESTS && reporter(key, "destination"))
        .collect();
    assert_eq!(destination.len(), 1, "{destination:?}");
    let server_label =
        |name: &str| destination[0].0.key().labels().find(|l| l.key() == name).map(|l| l.value().to_owned());
    assert_eq!(server_label("source_canonical_service").as_deref(), Some("pyserver"), "from grpcio's request");
    assert_eq!(server_label("destination_workload").as_deref(), Some("greeter-v1"));
    let requests: Vec<_> =
        snapshot.iter().filter(|(key, ..)| key.key().name() == istio::REQUESTS && reporter(key, "source")).collect();
    assert_eq!(requests.len(), 1, "one label set: {requests:?}");
    let (key, _, _, value) = requests[0];
    assert_eq!(*value, DebugValue::Counter(CALLS));
    let istio_label = |name: &str| key.key().labels().find(|l| l.key() == name).map(|l| l.value().to_owned());
    for (name, value) in [
        ("reporter", "source"),
        ("source_workload", "frontend"),
        ("destination_canonical_service", "pyserver"),
        ("destination_service", "greeter"),
        ("request_protocol", "grpc"),
        ("grpc_response_status", "0"),
        ("response_flags", "-"),
    ] {
        assert_eq!(istio_label(name).as_deref(), Some(value), "{name}");
    }
    let rejected = snapshot.iter().filter(|(key, ..)| key.key().name() == istio::peer_metadata::REJECTED).count();
    assert_eq!(rejected, 0, "grpcio's metadata was read, not refused");

    drop(peer);
    assert!(child.wait().await.unwrap().success());
    backend.handle.shutdown().await.unwrap();
}
