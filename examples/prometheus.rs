//! mesh's metrics on a Prometheus endpoint: a `frontend` calls `reviews` (v1 and v2 over mTLS,
//! with a route, a 80/20 split, retries and a v2 that fails 20% of the time), an intruder is
//! denied, and every figure is served at `/metrics` in the Prometheus text format through
//! `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --example prometheus -- [--listen 127.0.0.1:9464] [--requests 1000]
//! curl -s http://127.0.0.1:9464/metrics | grep ^mesh_
//! ```
//!
//! After the traffic it prints `metrics on http://ADDR/metrics` (ADDR with the port actually
//! bound, so `--listen 127.0.0.1:0` works) and serves until Ctrl-C.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use http_body_util::{BodyExt, Full};
use mesh::{
    core::{
        Endpoint, IdentitySource, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery, Subset, Weight,
        identity::dev::DevCa,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch, RetryOn, RetryPolicy},
    },
    tower::{
        authz::AuthorizationLayer, client::MeshClient, metrics as names, server::Server, telemetry::TelemetryLayer,
    },
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: prometheus [--listen ADDR] [--requests N]";

/// Request durations in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn parse_args() -> Result<(String, usize), String> {
    let (mut listen, mut requests) = ("127.0.0.1:9464".to_owned(), 1000);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--listen" => listen = value("--listen")?,
            "--requests" => requests = value("--requests")?.parse().map_err(|_| "--requests: not a number")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok((listen, requests))
}

#[tokio::main]
async fn main() {
    let (listen, requests) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("prometheus: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(&listen, requests).await {
        eprintln!("prometheus: {error}");
        std::process::exit(1);
    }
}

/// A `reviews` backend of `version` that fails `fail_percent` of requests with 503 (in turn).
async fn backend(ca: &DevCa, version: &str, fail_percent: u64) -> Result<mesh::tower::server::ServerHandle, Error> {
    let counter = Arc::new(AtomicU64::new(0));
    let app = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut response = http::Response::new(String::from("review"));
            if n % 100 < fail_percent {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let frontend = PrincipalMatch::Exact("spiffe://example.org/frontend".parse()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let identity = IdentitySource::fixed(ca.identity("/reviews")?);
    // Telemetry, authorization, then the caller's deadline: the server's request stack.
    let server = Server::builder()
        .identity(identity)
        .telemetry(TelemetryLayer::server("reviews".parse()?).version(version.parse()?))
        .authorization(AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![
            frontend,
        ])])));
    Ok(server.build()?.spawn(listener, app)?)
}

fn recorder() -> Result<PrometheusHandle, Error> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(names::REQUEST_DURATION.to_owned()), BUCKETS)?
        .install_recorder()?)
}

async fn run(listen: &str, requests: usize) -> Result<(), Error> {
    let prometheus = recorder()?;
    let ca = DevCa::new("example.org".parse()?)?;
    let (v1, v2) = (backend(&ca, "v1", 0).await?, backend(&ca, "v2", 20).await?);

    let reviews: ServiceName = "reviews".parse()?;
    let discovery = StaticDiscovery::new();
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GatewayError];
    discovery.set(
        ServiceSnapshot::builder(reviews.clone())
            .identity("spiffe://example.org/reviews".parse()?)
            .endpoint(Endpoint::new(v1.local_addr()).with_label("version", "v1")?)
            .endpoint(Endpoint::new(v2.local_addr()).with_label("version", "v2")?)
            .subset(Subset::version("v1")?)
            .subset(Subset::version("v2")?)
            .route(
                Route::new(RouteName::new("reviews-default")?)
                    .with_target("v1".parse()?, Weight::new(80)?)
                    .with_target("v2".parse()?, Weight::new(20)?)
                    .with_retry(retry),
            )
            .build()?,
    );
    let frontend = IdentitySource::fixed(ca.identity("/frontend")?);
    let client = MeshClient::builder(discovery.clone(), reviews.clone()).identity(frontend).build()?;
    for _ in 0..requests {
        let response = client.clone().oneshot(http::Request::get("/reviews/1").body(Full::default())?).await?;
        response.into_body().collect().await?;
    }
    // A caller the policy does not name: denied, and counted.
    let intruder = IdentitySource::fixed(ca.identity("/intruder")?);
    let intruder = MeshClient::builder(discovery, reviews).identity(intruder).build()?;
    let denied = intruder.oneshot(http::Request::get("/reviews/1").body(Full::default())?).await?;
    eprintln!("intruder: {}", denied.status());

    let metrics = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let prometheus = prometheus.clone();
        async move {
            if req.uri().path() == "/metrics" {
                prometheus.run_upkeep();
                http::Response::builder()
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(prometheus.render())
            } else {
                http::Response::builder().status(http::StatusCode::NOT_FOUND).body(String::new())
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    let server = Server::builder().plaintext().build()?.spawn(listener, metrics)?;
    println!("metrics on http://{}/metrics", server.local_addr());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await?;
    Ok(())
}
