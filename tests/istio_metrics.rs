//! Istio's standard metrics between two mesh workloads over mTLS, read back with metrics-util's
//! debugging recorder: each side labels the other from the exchanged peer metadata and the
//! SPIFFE ID, a malformed `x-envoy-peer-metadata` is ignored and counted without failing the
//! request, sending can be turned off, and mesh's failures become Envoy's response flags.
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeMap, convert::Infallible};

use http_body_util::{BodyExt, Full};
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::dev::DevCa},
    tower::{
        client::MeshClient,
        server::Server,
        telemetry::{TelemetryLayer, WorkloadLabels, istio},
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::ServiceExt;

type Labels = BTreeMap<String, String>;

/// Every counter, by name. (A snapshot drains the debugging recorder's counters: take one.)
fn snapshot(snapshotter: &Snapshotter) -> Vec<(String, Labels, u64)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let labels = key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            match value {
                DebugValue::Counter(n) => Some((key.key().name().to_owned(), labels, n)),
                _ => None,
            }
        })
        .collect()
}

fn series(all: &[(String, Labels, u64)], name: &str) -> Vec<(Labels, u64)> {
    all.iter().filter(|(n, ..)| n == name).map(|(_, l, v)| (l.clone(), *v)).collect()
}

fn find<'a>(all: &'a [(Labels, u64)], want: &[(&str, &str)]) -> Vec<&'a (Labels, u64)> {
    all.iter().filter(|(l, _)| want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mesh_workloads_label_each_other() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();

    // Echoes whether the caller's metadata arrived, so the test sees what went on the wire.
    let handler = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let sent = req.headers().contains_key(istio::peer_metadata::PEER_METADATA);
        Ok::<_, Infallible>(http::Response::new(if sent { "metadata" } else { "none" }.to_owned()))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_workload = WorkloadLabels::new("reviews-v2", "bookinfo")
        .canonical("reviews", "v2")
        .cluster("east")
        .with_principal(&"spiffe://cluster.local/ns/bookinfo/sa/reviews".parse().unwrap());
    let server = Server::builder()
        .identity(IdentitySource::fixed(ca.identity("/ns/bookinfo/sa/reviews").unwrap()))
        .telemetry(TelemetryLayer::server("reviews".parse().unwrap()).istio_metrics(server_workload))
        .build()
        .unwrap()
        .spawn(listener, handler)
        .unwrap();

    let target: ServiceName = "reviews.bookinfo.svc.cluster.local-9080".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(target.clone())
            .identity("spiffe://cluster.local/ns/bookinfo/sa/reviews".parse().unwrap())
            .endpoint(Endpoint::new(server.local_addr()))
            .build()
            .unwrap(),
    );
    let client = |workload: WorkloadLabels, send: bool| {
        let telemetry = TelemetryLayer::client(target.clone()).istio_metrics(workload).send_peer_metadata(send);
        MeshClient::builder(discovery.clone(), target.clone())
            .identity(IdentitySource::fixed(ca.identity("/ns/web/sa/productpage").unwrap()))
            .telemetry(telemetry)
            .build::<Full<bytes::Bytes>>()
            .unwrap()
    };
    let call = async |client: &MeshClient<Full<bytes::Bytes>>, metadata: Option<&'static str>| {
        let mut request = http::Request::get("/reviews/1").body(Full::default()).unwrap();
        if let Some(value) = metadata {
            request.headers_mut().insert(istio::peer_metadata::PEER_METADATA, value.parse().unwrap());
        }
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };

    let productpage = WorkloadLabels::new("productpage-v1", "web")
        .canonical("productpage", "v1")
        .cluster("west")
        .with_principal(&"spiffe://cluster.local/ns/web/sa/productpage".parse().unwrap());
    let sending = client(productpage.clone(), true);
    for _ in 0..3 {
        assert_eq!(call(&sending, None).await, "metadata");
    }
    // A caller's own malformed header (set before the layer, which keeps it): served, ignored,
    // counted.
    assert_eq!(call(&sending, Some("!!not base64!!")).await, "metadata");
    // Sending off: nothing on the wire, and the server knows the caller only by its SPIFFE ID.
    let silent = client(productpage, false);
    assert_eq!(call(&silent, None).await, "none");

    let counters = snapshot(&snapshotter);
    let requests = series(&counters, istio::REQUESTS);
    // The server's view of the three good calls: the caller's labels from its metadata.
    let destination = find(&requests, &[("reporter", "destination"), ("source_workload", "productpage-v1")]);
    assert_eq!(destination.len(), 1, "{requests:#?}");
    let (labels, count) = destination[0];
    assert_eq!(*count, 3);
    for (key, value) in [
        ("source_workload_namespace", "web"),
        ("source_principal", "spiffe://cluster.local/ns/web/sa/productpage"),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_canonical_service", "productpage"),
        ("source_cluster", "west"),
        ("destination_workload", "reviews-v2"),
        ("destination_workload_namespace", "bookinfo"),
        ("destination_principal", "spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        ("destination_version", "v2"),
        ("destination_service", "reviews"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("request_protocol", "http"),
    ] {
        assert_eq!(labels[key], value, "{key}");
    }
    // The malformed one and the silent one: known only by the SPIFFE ID's namespace.
    let by_id = find(&requests, &[("reporter", "destination"), ("source_workload", "unknown")]);
    assert_eq!(by_id.iter().map(|(_, n)| n).sum::<u64>(), 2, "{requests:#?}");
    assert!(by_id.iter().all(|(l, _)| l["source_workload_namespace"] == "web" && l["source_app"] == "unknown"));
    let rejected = series(&counters, istio::peer_metadata::REJECTED);
    assert_eq!(find(&rejected, &[("reason", "base64")]).iter().map(|(_, n)| n).sum::<u64>(), 1, "{rejected:?}");

    // The client's view: the server's labels from its response's metadata (on every response,
    // also to the silent client), the target's host as the service.
    let source = find(&requests, &[("reporter", "source")]);
    assert_eq!(source.iter().map(|(_, n)| n).sum::<u64>(), 5);
    for (labels, _) in &source {
        assert_eq!(labels["destination_workload"], "reviews-v2");
        assert_eq!(labels["destination_workload_namespace"], "bookinfo");
        assert_eq!(labels["destination_canonical_revision"], "v2");
        assert_eq!(labels["destination_principal"], "spiffe://cluster.local/ns/bookinfo/sa/reviews");
        assert_eq!(labels["destination_service"], "reviews.bookinfo.svc.cluster.local");
        assert_eq!(labels["destination_service_name"], "reviews");
        assert_eq!(labels["destination_service_namespace"], "bookinfo");
        assert_eq!(labels["source_workload"], "productpage-v1");
        assert_eq!(labels["source_principal"], "spiffe://cluster.local/ns/web/sa/productpage", "this side's own");
        assert_eq!(labels["connection_security_policy"], "unknown");
    }

    // No endpoints: mesh fails the call itself, reported with Envoy's `UH`.
    let empty: ServiceName = "ratings".parse().unwrap();
    let nowhere = StaticDiscovery::new();
    nowhere.set(ServiceSnapshot::builder(empty.clone()).build().unwrap());
    let failing = MeshClient::builder(nowhere, empty.clone())
        .identity(IdentitySource::fixed(ca.identity("/ns/web/sa/productpage").unwrap()))
        .telemetry(TelemetryLayer::client(empty).istio_metrics(WorkloadLabels::new("productpage-v1", "web")))
        .build::<Full<bytes::Bytes>>()
        .unwrap();
    assert!(failing.oneshot(http::Request::get("/").body(Full::default()).unwrap()).await.is_err());
    let requests = series(&snapshot(&snapshotter), istio::REQUESTS);
    let failed = find(&requests, &[("reporter", "source"), ("destination_service", "ratings")]);
    assert_eq!(failed.len(), 1, "{requests:#?}");
    assert_eq!(failed[0].0["response_flags"], "UH");
    assert_eq!(failed[0].0["response_code"], "0");
    server.shutdown().await.unwrap();
}
