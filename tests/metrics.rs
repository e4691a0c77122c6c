//! The counters mesh reports through the `metrics` facade, read back with metrics-util's
//! debugging recorder after known traffic: a retry and a refused retry, a denied call, a refused
//! handshake; request counts and durations by direction, route, status class and peer.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::convert::Infallible;

use http_body_util::{Empty, Full};
use mesh::{
    core::{
        Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch, RetryOn, RetryPolicy},
    },
    tower::{
        authz::AuthorizationLayer, client::MeshClient, metrics as names, server::Server, telemetry::TelemetryLayer,
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{backend_id, identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// A counter's name, labels and value.
type Counter = (String, Vec<(String, String)>, u64);

fn counter(snapshot: &[Counter], name: &str, label: (&str, &str)) -> u64 {
    snapshot
        .iter()
        .filter(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1))
        .map(|(_, _, v)| *v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_after_known_traffic() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // A server that answers 503 to everyone but denies `batch` first.
    let web = PrincipalMatch::Exact("spiffe://example.org/web".parse().unwrap());
    let handler = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let mut response = http::Response::new(String::new());
        if req.uri().path() != "/ok" {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        Ok::<_, Infallible>(response)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder()
        .identity(identity("/backend"))
        .telemetry(TelemetryLayer::server("reviews".parse().unwrap()))
        .authorization(AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![web])])))
        .build()
        .unwrap()
        .spawn(listener, handler)
        .unwrap();

    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    let mut policy = RetryPolicy::default();
    policy.retry_on = vec![RetryOn::GatewayError];
    policy.backoff.base = std::time::Duration::from_millis(1);
    policy.backoff.max = std::time::Duration::from_millis(1);
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(server.local_addr()))
            .route(Route::new(RouteName::new("default").unwrap()).with_retry(policy))
            .build()
            .unwrap(),
    );

    // 20 requests that fail with 503: some retried, the rest refused by the budget.
    let stack = MeshClient::builder(discovery.clone(), name.clone()).identity(identity("/web")).build().unwrap();
    for _ in 0..20 {
        let response =
            stack.clone().oneshot(http::Request::get("/").body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(response.status(), 503);
    }
    // One denied call.
    let batch = MeshClient::builder(discovery.clone(), name.clone())
        .identity(identity("/batch"))
        .build::<Empty<bytes::Bytes>>()
        .unwrap();
    let response = batch.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 403);
    // One plaintext request to the mTLS port.
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let _ = tcp.read_to_end(&mut Vec::new()).await;
    server.wait_for_handshakes(|c| c.failed(mesh::tower::HandshakeFailure::NotTls) == 1).await;

    // One call that works, on a path the server answers 200 to.
    let response =
        stack.clone().oneshot(http::Request::get("/ok").body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);

    let (mut snapshot, mut histograms): (Vec<Counter>, Vec<Counter>) = (Vec::new(), Vec::new());
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<_> = key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        match value {
            DebugValue::Counter(n) => snapshot.push((key.key().name().to_owned(), labels, n)),
            DebugValue::Histogram(samples) => {
                histograms.push((key.key().name().to_owned(), labels, samples.len() as u64))
            }
            DebugValue::Gauge(g) => snapshot.push((key.key().name().to_owned(), labels, g.into_inner() as u64)),
        }
    }
    let retries = counter(&snapshot, names::RETRIES, ("service", "reviews"));
    let refused = counter(&snapshot, names::RETRY_BUDGET_EXHAUSTED, ("service", "reviews"));
    eprintln!("20 failing requests: {retries} retries, {refused} refused by the budget");
    assert!(retries >= 1, "{snapshot:?}");
    assert!(refused >= 1, "{snapshot:?}");
    assert_eq!(counter(&snapshot, names::AUTHZ_DENIALS, ("mode", "enforce")), 1, "{snapshot:?}");
    assert_eq!(counter(&snapshot, names::TLS_HANDSHAKE_FAILURES, ("reason", "not_tls")), 1, "{snapshot:?}");

    // Requests as the application saw them (client side, after retries) and as the server did
    // (every attempt, and the denied call).
    let requests = |snapshot: &[Counter], labels: &[(&str, &str)]| -> u64 {
        snapshot
            .iter()
            .filter(|(n, l, _)| {
                n == names::REQUESTS && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    };
    let outbound_5xx =
        [("direction", "outbound"), ("service", "reviews"), ("route", "default"), ("status_class", "5xx")];
    assert_eq!(requests(&snapshot, &outbound_5xx), 20, "{snapshot:?}");
    assert_eq!(
        requests(
            &snapshot,
            &[("direction", "outbound"), ("status_class", "2xx"), ("peer", "spiffe://example.org/backend")]
        ),
        1
    );
    let inbound_5xx = [("direction", "inbound"), ("status_class", "5xx"), ("peer", "spiffe://example.org/web")];
    assert_eq!(requests(&snapshot, &inbound_5xx), 20 + retries, "every attempt reached the server: {snapshot:?}");
    let denied = [("direction", "inbound"), ("status_class", "4xx"), ("peer", "spiffe://example.org/batch")];
    assert_eq!(requests(&snapshot, &denied), 1, "{snapshot:?}");
    // Durations: one sample per request, under the same labels.
    assert_eq!(
        requests(
            &histograms.iter().map(|(_, l, n)| (names::REQUESTS.to_owned(), l.clone(), *n)).collect::<Vec<_>>(),
            &outbound_5xx
        ),
        20
    );
    assert!(histograms.iter().all(|(n, _, _)| n == names::REQUEST_DURATION), "{histograms:?}");
    // No label carries a raw path.
    assert!(snapshot.iter().all(|(_, labels, _)| labels.iter().all(|(_, v)| !v.contains("/ok"))));
    // Discovery: the snapshot published above, with its one endpoint.
    assert!(counter(&snapshot, names::DISCOVERY_UPDATES, ("service", "reviews")) >= 1, "{snapshot:?}");
    assert_eq!(counter(&snapshot, names::DISCOVERY_ENDPOINTS, ("service", "reviews")), 1, "{snapshot:?}");
    server.shutdown().await.unwrap();
}
