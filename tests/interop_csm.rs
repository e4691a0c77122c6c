//! The peer-metadata exchange against gRPC's own CSM observability: PyPI's
//! `grpcio-csm-observability` (gRPC C-core's metadata exchange, read back from an in-memory
//! OpenTelemetry reader) serves a greeter, and a `MeshChannel` with Istio's metrics on calls it.
//! Each side's metrics carry the other's workload labels: grpcio's `csm.remote_workload_*`
//! attributes name mesh's workload, and mesh's `destination_canonical_service` names grpcio's.
//!
//! The python with the plugin comes from `MESH_CSM_PYTHON` (`.ci/run` builds a venv under
//! `target/`). Without it the test skips with the reason, unless `MESH_INTEROP=1`: then it fails.
#![allow(clippy::unwrap_used)]

mod grpc_support;
mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use grpc_support::{greeter, hello, pb::greeter_client::GreeterClient};
use mesh::{
    core::{Endpoint, ServiceSnapshot, StaticDiscovery},
    tonic::MeshChannel,
    tower::telemetry::{TelemetryLayer, WorkloadLabels, istio, istio::workload::CSM_TYPE_GKE},
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_csm_and_mesh_label_each_other() {
    let Some(python) = csm_python() else { return };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/csm_greeter_server.py");
    let mut server = tokio::process::Command::new(&python)
        .arg(script)
        .env("CSM_CANONICAL_SERVICE_NAME", "pyserver")
        .env("CSM_WORKLOAD_NAME", "pyserver-wl")
        .env("CSM_MESH_ID", "mesh-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("the grpcio server exited before listening");
    let addr: std::net::SocketAddr = first.strip_prefix("listening on ").unwrap().parse().unwrap();

    let discovery = StaticDiscovery::new();
    discovery.set(ServiceSnapshot::builder(greeter()).endpoint(Endpoint::new(addr)).build().unwrap());
    let workload = WorkloadLabels::new("frontend", "default")
        .canonical("frontend", "v1")
        .cluster("cluster-a")
        .with_mesh_id("mesh-1")
        .csm_platform(CSM_TYPE_GKE, "us-central1-a", "project-7");
    let telemetry = TelemetryLayer::client(greeter()).istio_metrics(workload);
    let channel = MeshChannel::builder(discovery, greeter()).plaintext().telemetry(telemetry).build().unwrap();
    for _ in 0..CALLS {
        let reply = GreeterClient::new(channel.clone()).say_hello(hello("mesh")).await.unwrap();
        assert_eq!(reply.into_inner().message, "hello mesh from grpcio");
    }

    // grpcio's side: its server metrics name mesh's workload, from mesh's x-envoy-peer-metadata.
    // grpcio's observability hands its measurements to OpenTelemetry from a background thread:
    // ask until the calls are there (bounded).
    let mut ask = async || {
        stdin.write_all(b"metrics\n").await.unwrap();
        let json = lines.next_line().await.unwrap().expect("the grpcio server exited");
        let points: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        points.into_iter().find(|p| p["name"] == "grpc.server.call.duration" && p["count"] == CALLS)
    };
    let duration = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            if let Some(point) = ask().await {
                return point;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("grpcio recorded no grpc.server.call.duration of the calls within 60 s");
    let attributes = &duration["attributes"];
    eprintln!("grpcio's grpc.server.call.duration attributes: {attributes}");
    assert_eq!(duration["count"], CALLS, "{duration}");
    assert_eq!(duration["unit"], "s");
    for (key, value) in [
        // A66: a method of a generic (unregistered) handler is recorded as `other`.
        ("grpc.method", "other"),
        ("grpc.status", "OK"),
        ("csm.workload_canonical_service", "pyserver"),
        ("csm.mesh_id", "mesh-1"),
        ("csm.remote_workload_type", CSM_TYPE_GKE),
        ("csm.remote_workload_canonical_service", "frontend"),
        ("csm.remote_workload_name", "frontend"),
        ("csm.remote_workload_namespace_name", "default"),
        ("csm.remote_workload_cluster_name", "cluster-a"),
        ("csm.remote_workload_location", "us-central1-a"),
        ("csm.remote_workload_project_id", "project-7"),
    ] {
        assert_eq!(attributes[key], value, "{key} in {attributes}");
    }

    // mesh's side: Istio's metrics name grpcio's workload, from its response's metadata.
    let snapshot = snapshotter.snapshot().into_vec();
    let requests: Vec<_> = snapshot.iter().filter(|(key, ..)| key.key().name() == istio::REQUESTS).collect();
    assert_eq!(requests.len(), 1, "one label set: {requests:?}");
    let (key, _, _, value) = requests[0];
    assert_eq!(*value, DebugValue::Counter(CALLS));
    let label = |name: &str| key.key().labels().find(|l| l.key() == name).map(|l| l.value().to_owned());
    eprintln!("mesh's istio_requests_total labels: {:?}", key.key().labels().collect::<Vec<_>>());
    for (name, value) in [
        ("reporter", "source"),
        ("source_workload", "frontend"),
        ("source_canonical_service", "frontend"),
        ("destination_canonical_service", "pyserver"),
        ("destination_app", "pyserver"),
        ("destination_service", "greeter"),
        ("request_protocol", "grpc"),
        ("response_code", "200"),
        ("grpc_response_status", "0"),
        ("response_flags", "-"),
    ] {
        assert_eq!(label(name).as_deref(), Some(value), "{name}");
    }
    // Off GCP grpcio sends its type as unknown, and CSM then sends no workload name: mesh says
    // unknown, as Istio would.
    assert_eq!(label("destination_workload").as_deref(), Some("unknown"));
    let messages = snapshot.iter().find(|(key, ..)| key.key().name() == istio::RESPONSE_MESSAGES).unwrap();
    assert_eq!(messages.3, DebugValue::Counter(CALLS), "one response message per unary call");
    let rejected = snapshot.iter().filter(|(key, ..)| key.key().name() == istio::peer_metadata::REJECTED).count();
    assert_eq!(rejected, 0, "grpcio's metadata was read, not refused");

    drop(stdin);
    assert!(server.wait().await.unwrap().success());
}
