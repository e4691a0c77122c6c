//! Per-request cost of each mesh-tower layer, against a no-op inner service, through public APIs.
//!
//! ```text
//! cargo bench -p mesh-bench --bench layers            # all
//! cargo bench -p mesh-bench --bench layers -- retry   # one group
//! ```
//!
//! Every service benchmark drives one request to completion on a current-thread runtime
//! (`block_on`), request construction included; `baseline/noop` is that harness alone, so a
//! layer's own cost is its figure minus the baseline. The snapshot is the one the `mesh`
//! configuration of `mesh-bench run` uses: two routes (the second matches), a 50/50 split over two
//! subsets of two endpoints, a retry policy with a budget, a 5 s route timeout, a circuit breaker
//! and outlier detection.
#![allow(missing_docs, clippy::unwrap_used)]

use std::{convert::Infallible, hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::{
    Endpoint, HeaderMatch, PathMatch, Route, RouteMatch, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
    Subset, Weight,
    policy::{
        AuthorizationPolicy, AuthorizationRule, Call, CircuitBreaker, NoHeaders, OutlierDetection, PrincipalMatch,
        RetryOn, RetryPolicy, ServicePolicies,
    },
};
use mesh_tower::{
    authz::AuthorizationLayer,
    client::{
        ClientConfig, Resolution, deadline::DeadlineLayer, fault::FaultLayer, retry::RetryLayer, router::RouterLayer,
        shed::LoadShedLayer,
    },
    context::ContextLayer,
    telemetry::TelemetryLayer,
    unstable::{EndpointLoad, InFlight, Rng, WeightedSplit},
};
use tower::{Layer, Service, ServiceExt};

fn name() -> ServiceName {
    "hello".parse().unwrap()
}

/// The `mesh` configuration's snapshot (see `mesh-bench/src/mesh_config.rs`).
fn snapshot() -> ServiceSnapshot {
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GatewayError, RetryOn::ConnectFailure];
    let testers = Route::new(RouteName::new("testers").unwrap())
        .with_match(RouteMatch::any().header(HeaderMatch::exact("x-user".parse().unwrap(), "qa")))
        .with_target("v2".parse().unwrap(), Weight::new(100).unwrap());
    let hello = Route::new(RouteName::new("hello").unwrap())
        .with_match(RouteMatch::any().path(PathMatch::prefix("/hello").unwrap()))
        .with_target("v1".parse().unwrap(), Weight::new(50).unwrap())
        .with_target("v2".parse().unwrap(), Weight::new(50).unwrap())
        .with_retry(retry)
        .with_timeout(Duration::from_secs(5));
    let mut policies = ServicePolicies::default();
    policies.circuit_breaker = Some(CircuitBreaker::default());
    policies.outlier_detection = Some(OutlierDetection::default());
    let mut builder = ServiceSnapshot::builder(name())
        .identity("spiffe://bench.mesh/hello".parse().unwrap())
        .subset(Subset::version("v1").unwrap())
        .subset(Subset::version("v2").unwrap())
        .route(testers)
        .route(hello)
        .policies(policies);
    for (i, port) in [9001u16, 9002, 9003, 9004].into_iter().enumerate() {
        let version = if i < 2 { "v1" } else { "v2" };
        builder =
            builder.endpoint(Endpoint::new(([127, 0, 0, 1], port).into()).with_label("version", version).unwrap());
    }
    builder.build().unwrap()
}

fn discovery() -> StaticDiscovery {
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot());
    discovery
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/hello").body(Full::new(Bytes::new())).unwrap()
}

/// A request as the layers under the router see it: resolved once against `snapshot` (shared by
/// every iteration: the router's own cost is measured by `router/resolve`).
fn resolved(resolution: &Resolution) -> impl Fn() -> Request<Full<Bytes>> + use<> {
    let resolution = resolution.clone();
    move || {
        let mut request = request();
        request.extensions_mut().insert(resolution.clone());
        request
    }
}

fn resolution(snapshot: ServiceSnapshot) -> Resolution {
    Resolution::resolve(std::sync::Arc::new(snapshot), &request()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The no-op inner service: an empty 200 at once.
fn noop<B>()
-> impl Service<Request<B>, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(|_request: Request<B>| async { Ok::<_, Infallible>(Response::new(Empty::new())) })
}

/// One request through `service`, to completion.
fn drive<S, ResBody>(c: &mut Criterion, id: &str, service: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: std::fmt::Debug,
{
    drive_with(c, id, service, request);
}

/// One request made by `make` through `service`, to completion.
fn drive_with<S, ResBody>(c: &mut Criterion, id: &str, mut service: S, make: impl Fn() -> Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: std::fmt::Debug,
{
    let rt = runtime();
    c.bench_function(id, |b| {
        b.iter(|| {
            rt.block_on(async {
                let response = service.ready().await.unwrap().call(make()).await.unwrap();
                black_box(response);
            })
        })
    });
}

fn baseline(c: &mut Criterion) {
    drive(c, "baseline/noop", noop());
    drive_with(c, "baseline/noop_resolved_request", noop(), resolved(&resolution(snapshot())));
}

fn route(c: &mut Criterion) {
    let snapshot = snapshot();
    let request = request();
    c.bench_function("route/select_second_of_two", |b| {
        b.iter(|| black_box(mesh_tower::unstable::select_route(snapshot.routes(), black_box(&request))))
    });
    // The router: the snapshot's plan loaded, the route matched, the subset chosen, the
    // resolution attached. Once per request, whatever the layers below.
    let rt = runtime();
    let _guard = rt.enter();
    let router = RouterLayer::new(mesh_core::Discovery::watch(&discovery(), &name()), &ClientConfig::default());
    drive(c, "router/resolve", router.layer(noop()));
}

fn split(c: &mut Criterion) {
    let split = WeightedSplit::new([Weight::new(50).unwrap(), Weight::new(50).unwrap()]).unwrap();
    c.bench_function("split/pick_50_50", |b| b.iter(|| black_box(split.pick())));
}

fn balance(c: &mut Criterion) {
    let loads: Vec<std::sync::Arc<EndpointLoad>> =
        (0..2).map(|_| std::sync::Arc::new(EndpointLoad::new(Duration::from_millis(5)))).collect();
    let rng = Rng::new(7);
    // What the client's P2C pick does through public parts: two random draws, two cost reads.
    c.bench_function("balance/p2c_pick_of_2", |b| {
        b.iter(|| {
            let a = rng.below(2);
            let other = (a + 1 + rng.below(1)) % 2;
            black_box(if loads[other].cost() < loads[a].cost() { other } else { a })
        })
    });
    // What every request pays after the pick: the in-flight count and the latency estimate.
    c.bench_function("balance/in_flight_start_finish", |b| {
        b.iter(|| {
            let mut in_flight = InFlight::start(loads[0].clone());
            in_flight.finish();
            black_box(in_flight);
        })
    });
}

fn retry(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    // The route's retry policy: budget deposit, body buffered for replay.
    drive_with(c, "retry/route_with_policy", RetryLayer::new().layer(noop()), resolved(&resolution(snapshot())));
    // A destination without routes or policies: the layer's floor.
    let plain = resolution(ServiceSnapshot::builder(name()).build().unwrap());
    drive_with(c, "retry/no_policy", RetryLayer::new().layer(noop()), resolved(&plain));
}

fn fault(c: &mut Criterion) {
    drive_with(c, "fault/route_without_fault", FaultLayer::new().layer(noop()), resolved(&resolution(snapshot())));
}

fn limit(c: &mut Criterion) {
    let make = resolved(&resolution(snapshot()));
    drive_with(c, "shed/circuit_breaker_default", LoadShedLayer::new().layer(noop()), make);
}

fn authz(c: &mut Criterion) {
    let client: mesh_core::SpiffeId = "spiffe://bench.mesh/loadgen".parse().unwrap();
    let policy =
        AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![PrincipalMatch::Exact(client.clone())])]);
    // The allow path's decision (a PeerIdentity cannot be made outside a TLS connection, so the
    // layer's own allow path is measured end to end by `mesh-bench run` only).
    c.bench_function("authz/evaluate_allow", |b| {
        b.iter(|| black_box(policy.evaluate_call(&Call::new(Some(&client), "GET", "/hello", &NoHeaders))))
    });
    // The layer on a request without a peer: the deny path (403, counter, log event).
    drive(c, "authz/layer_deny_no_peer", AuthorizationLayer::new(policy).layer(noop()));
}

fn context(c: &mut Criterion) {
    drive(c, "context/layer_no_headers", ContextLayer::new().layer(noop()));
    let rt = runtime();
    let mut service = ContextLayer::new().layer(noop());
    c.bench_function("context/layer_with_timeout_header", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut request = request();
                request.headers_mut().insert("x-mesh-timeout", http::HeaderValue::from_static("5000"));
                black_box(service.ready().await.unwrap().call(request).await.unwrap());
            })
        })
    });
}

/// The client stack's layers between telemetry and the endpoint (router, deadline, fault, retry,
/// shed), over the no-op service.
fn stack(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let service = tower::ServiceBuilder::new()
        .layer(RouterLayer::new(mesh_core::Discovery::watch(&discovery(), &name()), &ClientConfig::default()))
        .layer(DeadlineLayer::new())
        .layer(FaultLayer::new())
        .layer(RetryLayer::new())
        .layer(LoadShedLayer::new())
        .service(noop());
    drive(c, "stack/router_deadline_fault_retry_shed", service);
}

/// `TelemetryLayer` (span, request metrics, golden signals) over the no-op service, the response
/// body read to its end (where the request is recorded). A Prometheus recorder is installed
/// globally once; spans cost what the subscriber makes them cost, so they are measured three ways.
fn telemetry(c: &mut Criterion) {
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
    let rt = runtime();
    let run = |c: &mut Criterion, id: &str, layer: TelemetryLayer, dispatch: Option<tracing::Dispatch>| {
        let mut service = layer.layer(noop());
        c.bench_function(id, |b| {
            b.iter(|| {
                let once = async {
                    let response = service.ready().await.unwrap().call(request()).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap());
                };
                match &dispatch {
                    Some(dispatch) => tracing::dispatcher::with_default(dispatch, || rt.block_on(once)),
                    None => rt.block_on(once),
                }
            })
        });
    };
    // No subscriber: spans are disabled, metrics and golden signals remain.
    run(c, "telemetry/client_no_subscriber", TelemetryLayer::client(name()), None);
    run(c, "telemetry/server_no_subscriber", TelemetryLayer::server(name()), None);
    // A log layer that keeps request spans out (what `mesh-bench run` installs).
    let filtered = || {
        use tracing_subscriber::{Layer, layer::SubscriberExt};
        let logs = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::EnvFilter::new("info,mesh::trace=off"));
        tracing::Dispatch::new(tracing_subscriber::registry().with(logs))
    };
    run(c, "telemetry/client_log_layer_without_spans", TelemetryLayer::client(name()), Some(filtered()));
    // A plain `fmt` subscriber at INFO: it formats every request span's fields.
    let fmt = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    run(c, "telemetry/client_fmt_subscriber_info", TelemetryLayer::client(name()), Some(fmt));
    // The OpenTelemetry pipeline the `mesh` configuration runs (an OTLP exporter to a port where
    // nothing listens: the batch processor drops what it cannot send, off the request path). At
    // 1% an unsampled request builds no span; at 100% every request builds and ends one.
    let otel = {
        let _entered = rt.enter();
        mesh_tower::telemetry::otlp::OtlpConfig::new(name()).endpoint("http://127.0.0.1:9").sample_ratio(0.01).build()
    };
    let otel = otel.unwrap();
    let dispatch = || {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::Dispatch::new(tracing_subscriber::registry().with(otel.layer()))
    };
    run(c, "telemetry/client_otel_1pct", TelemetryLayer::client(name()).sample_ratio(0.01), Some(dispatch()));
    run(c, "telemetry/server_otel_1pct", TelemetryLayer::server(name()).sample_ratio(0.01), Some(dispatch()));
    run(c, "telemetry/client_otel_every_request", TelemetryLayer::client(name()).sample_ratio(1.0), Some(dispatch()));
    run(c, "telemetry/server_otel_every_request", TelemetryLayer::server(name()).sample_ratio(1.0), Some(dispatch()));
}

/// Keeps the body type honest: the response of a boxed stack is read to its end.
fn body(c: &mut Criterion) {
    let rt = runtime();
    c.bench_function("baseline/collect_empty_body", |b| {
        b.iter(|| rt.block_on(async { black_box(Empty::<Bytes>::new().collect().await.unwrap().to_bytes()) }))
    });
}

criterion_group! {
    name = layers;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = baseline, body, route, split, balance, retry, fault, limit, authz, context, stack, telemetry
}
criterion_main!(layers);
