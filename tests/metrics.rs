//! The counters mesh reports through the `metrics` facade, read back with metrics-util's
//! debugging recorder after known traffic: a retry and a refused retry, a denied call, a refused
//! handshake.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::convert::Infallible;

use http_body_util::{Empty, Full};
use mesh::{
    core::{
        Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch, RetryOn, RetryPolicy},
    },
    tower::{authz::AuthorizationLayer, client::MeshClient, metrics as names, server::Server},
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
    let handler = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let mut response = http::Response::new(String::new());
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        Ok::<_, Infallible>(response)
    });
    let service = tower::ServiceBuilder::new()
        .layer(AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![web])])))
        .service(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap();

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
    let stack = MeshClient::builder(discovery.clone(), name.clone()).identity(identity("/web")).build_stack().unwrap();
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

    let snapshot: Vec<Counter> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                let labels = key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
                Some((key.key().name().to_owned(), labels, n))
            }
            _ => None,
        })
        .collect();
    let retries = counter(&snapshot, names::RETRIES, ("service", "reviews"));
    let refused = counter(&snapshot, names::RETRY_BUDGET_EXHAUSTED, ("service", "reviews"));
    eprintln!("20 failing requests: {retries} retries, {refused} refused by the budget");
    assert!(retries >= 1, "{snapshot:?}");
    assert!(refused >= 1, "{snapshot:?}");
    assert_eq!(counter(&snapshot, names::AUTHZ_DENIALS, ("mode", "enforce")), 1, "{snapshot:?}");
    assert_eq!(counter(&snapshot, names::TLS_HANDSHAKE_FAILURES, ("reason", "not_tls")), 1, "{snapshot:?}");
    server.shutdown().await.unwrap();
}
