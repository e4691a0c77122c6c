//! The access log (one `mesh::access` event per request, client and server side, sharing the
//! trace id) and the golden signals per subset, read in process after known traffic.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use http_body_util::{BodyExt, Full};
use mesh::{
    core::{
        Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery, Subset, Weight,
        policy::{RetryOn, RetryPolicy},
    },
    tower::{
        client::MeshClient,
        server::{Server, ServerHandle},
        telemetry::{ACCESS_LOG_TARGET, TelemetryLayer},
    },
};
use support::identity;
use support::{Fields, Visitor};
use tower::ServiceExt;
use tracing_subscriber::{Layer, layer::SubscriberExt};

/// Keeps the fields of every access-log event.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<Fields>>>);

impl<S: tracing::Subscriber> Layer<S> for AccessLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == ACCESS_LOG_TARGET {
            let mut fields = Fields::new();
            event.record(&mut Visitor(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

/// A backend of `version` that answers 503 to every other request when `flaky`.
async fn backend(version: &'static str, flaky: bool) -> ServerHandle {
    let n = Arc::new(AtomicU64::new(0));
    let app = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let failed = flaky && n.fetch_add(1, Ordering::Relaxed).is_multiple_of(2);
        async move {
            let mut response = http::Response::new(version.to_owned());
            if failed {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let telemetry =
        TelemetryLayer::server("reviews".parse().unwrap()).version(version.parse().unwrap()).access_log(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::builder().identity(identity("/backend")).telemetry(telemetry).build().unwrap().spawn(listener, app).unwrap()
}

fn snapshot(v1: &ServerHandle, v2: &ServerHandle, retries: bool) -> ServiceSnapshot {
    let mut route = Route::new(RouteName::new("default").unwrap())
        .with_target("v1".parse().unwrap(), Weight::new(50).unwrap())
        .with_target("v2".parse().unwrap(), Weight::new(50).unwrap());
    if retries {
        let mut policy = RetryPolicy::default();
        policy.retry_on = vec![RetryOn::GatewayError];
        policy.budget.ratio = 1.0;
        policy.backoff.base = std::time::Duration::from_millis(1);
        policy.backoff.max = std::time::Duration::from_millis(1);
        route = route.with_retry(policy);
    }
    ServiceSnapshot::builder("reviews".parse().unwrap())
        .identity(support::backend_id())
        .endpoint(Endpoint::new(v1.local_addr()).with_label("version", "v1").unwrap())
        .endpoint(Endpoint::new(v2.local_addr()).with_label("version", "v2").unwrap())
        .subset(Subset::version("v1").unwrap())
        .subset(Subset::version("v2").unwrap())
        .route(route)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_golden_signals() {
    // Trace ids come from an OpenTelemetry tracer (no exporter needed to have them).
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let log = AccessLog::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "t")))
        .with(log.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (v1, v2) = (backend("v1", false).await, backend("v2", true).await);
    let reviews: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(&v1, &v2, false));
    let telemetry = TelemetryLayer::client(reviews.clone()).access_log(true);
    let (golden, attempts) = (telemetry.golden_signals(), telemetry.attempt_signals());
    let client = MeshClient::builder(discovery.clone(), reviews.clone())
        .identity(identity("/web"))
        .telemetry(telemetry)
        .build()
        .unwrap();

    // One request, read to the end: one outbound and one inbound access-log entry.
    let response =
        client.clone().oneshot(http::Request::get("/reviews/7").body(Full::default()).unwrap()).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    // The inbound entry is written when the server has sent the body; the outbound one is ours.
    let entries = loop {
        let entries = log.0.lock().unwrap().clone();
        if entries.len() >= 2 {
            break entries;
        }
        tokio::task::yield_now().await;
    };
    let by_direction = |d: &str| entries.iter().find(|e| e["direction"] == d).unwrap().clone();
    let (outbound, inbound) = (by_direction("outbound"), by_direction("inbound"));
    for entry in [&outbound, &inbound] {
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["path"], "/reviews/7");
        assert_eq!(entry["status"], status.as_u16().to_string());
        assert_eq!(entry["outcome"], "complete");
        assert!(entry["duration_us"].parse::<u64>().is_ok());
        assert_eq!(entry["trace_id"].len(), 32, "{entry:?}");
    }
    assert_eq!(outbound["trace_id"], inbound["trace_id"], "one trace across the hop");
    assert_eq!(outbound["peer"], "spiffe://example.org/backend");
    assert_eq!(inbound["peer"], "spiffe://example.org/web");
    assert_eq!(outbound["route"], "default");
    assert_eq!(outbound["attempts"], "1");
    assert_eq!(outbound["subset"], inbound["subset"]);
    let upstream = if outbound["subset"] == "v1" { v1.local_addr() } else { v2.local_addr() };
    assert_eq!(outbound["upstream"], upstream.to_string());

    // 400 more requests without retries: v2 fails every other request it gets.
    for _ in 0..400 {
        let response = client.clone().oneshot(http::Request::get("/").body(Full::default()).unwrap()).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let (g1, g2) = (golden.subset(&"v1".parse().unwrap()), golden.subset(&"v2".parse().unwrap()));
    assert_eq!(g1.requests + g2.requests, 401);
    assert_eq!(g1.success_rate(), 1.0);
    assert!((g2.success_rate() - 0.5).abs() <= 1.0 / g2.requests as f64, "{g2:?}");
    assert!(g1.p50.is_some() && g1.p99 >= g1.p50);
    assert_eq!(attempts.subset(&"v2".parse().unwrap()).requests, g2.requests, "no retries: one attempt each");

    // With retries, the request-level view of v2 looks healthy (its failures are retried, and
    // a retry splits again), while the attempt-level view still shows v2 failing half the time.
    discovery.set(snapshot(&v1, &v2, true));
    let before = attempts.subset(&"v2".parse().unwrap());
    for _ in 0..400 {
        let response = client.clone().oneshot(http::Request::get("/").body(Full::default()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200, "retries recover");
        response.into_body().collect().await.unwrap();
    }
    let after = attempts.subset(&"v2".parse().unwrap());
    let (tried, ok) = (after.requests - before.requests, after.successes - before.successes);
    assert!((ok as f64 / tried as f64 - 0.5).abs() <= 1.0 / tried as f64, "{ok}/{tried}");
    v1.shutdown().await.unwrap();
    v2.shutdown().await.unwrap();
}
