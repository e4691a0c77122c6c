//! mesh's metrics on a Prometheus endpoint: a `frontend` calls `reviews` (v1 and v2 over mTLS,
//! with a route, a 80/20 split, retries and a v2 that fails 20% of the time), an intruder is
//! denied, and every figure is served at `/metrics` in the Prometheus text format through
//! `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --example prometheus -- [--listen 127.0.0.1:9464] [--requests 1000]
//!     [--istio-metrics] [--grpc-metrics] [--fail RATE] [--canary PERCENT] [--live]
//! curl -s http://127.0.0.1:9464/metrics | grep ^mesh_
//! ```
//!
//! After the traffic it prints `metrics on http://ADDR/metrics` (ADDR with the port actually
//! bound, so `--listen 127.0.0.1:0` works) and serves until Ctrl-C.
//!
//! - `--istio-metrics`: Istio's standard metrics beside mesh's (`istio_requests_total`...), for
//!   the workloads `frontend`, `reviews-v1` and `reviews-v2` in namespace `default` (canonical
//!   service `reviews`, revisions `v1` and `v2`), each side labelling the other from the
//!   exchanged peer metadata.
//! - `--grpc-metrics`: gRPC's OpenTelemetry metrics (gRFC A66, with Cloud Service Mesh's labels)
//!   too: the `frontend` also calls a `greeter` (`helloworld.Greeter/SayHello`, over mTLS) once per
//!   HTTP request, both sides record into an OpenTelemetry SDK meter provider, and `/metrics`
//!   serves its points after mesh's, named as OpenTelemetry's Prometheus exporters name them
//!   (`grpc_client_attempt_duration_seconds`, `grpc_server_call_started_total`, ...).
//! - `--fail RATE`: the share of v2's calls that fail with 503 (default 0.2), spread evenly
//!   and the same on every run.
//! - `--canary PERCENT`: v2's share of the split (default 20).
//! - `--live`: serve `/metrics` first (printing `metrics on ...` before the traffic) and send
//!   the traffic in rounds of 100 requests, each after `/metrics` was scraped again, so a
//!   scraper such as Prometheus sees it grow; prints `traffic done` after it.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// The code generated from `examples/proto/helloworld/helloworld.proto` (by `build.rs`).
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}
#[path = "support/otel_metrics.rs"]
mod otel_metrics;

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
        authz::AuthorizationLayer,
        client::MeshClient,
        metrics as names,
        server::Server,
        telemetry::{TelemetryLayer, WorkloadLabels, grpc_otel::GrpcMetrics, istio},
    },
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use otel_metrics::MemoryExporter;
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: prometheus [--listen ADDR] [--requests N] [--istio-metrics] [--grpc-metrics] [--fail RATE] \
                     [--canary PERCENT] [--live]";

/// Requests per round with `--live`.
const ROUND: usize = 100;

struct Args {
    listen: String,
    requests: usize,
    istio: bool,
    grpc: bool,
    fail: f64,
    canary: u32,
    live: bool,
}

/// Request durations in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:9464".to_owned(),
        requests: 1000,
        istio: false,
        grpc: false,
        fail: 0.2,
        canary: 20,
        live: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--listen" => args.listen = value("--listen")?,
            "--requests" => args.requests = value("--requests")?.parse().map_err(|_| "--requests: not a number")?,
            "--istio-metrics" => args.istio = true,
            "--grpc-metrics" => args.grpc = true,
            "--live" => args.live = true,
            "--fail" => {
                args.fail = value("--fail")?.parse().map_err(|_| "--fail: not a number")?;
                if !(0.0..=1.0).contains(&args.fail) {
                    return Err("--fail: a share between 0 and 1".into());
                }
            }
            "--canary" => {
                args.canary = value("--canary")?.parse().map_err(|_| "--canary: not a number")?;
                if args.canary > 100 {
                    return Err("--canary: a percentage between 0 and 100".into());
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("prometheus: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(&args).await {
        eprintln!("prometheus: {error}");
        std::process::exit(1);
    }
}

/// Whether call `n` (from 0) of a backend failing `rate` of its calls fails: the failures are
/// spread evenly (`floor((n + 1) * rate) > floor(n * rate)`), so any run of calls fails `rate`
/// of them to within one call, the same on every run.
fn fails(n: u64, rate: f64) -> bool {
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

/// The Istio labels of a workload of the example.
fn workload(name: &str, canonical: &str, revision: &str) -> WorkloadLabels {
    let principal = format!("spiffe://example.org/{canonical}").parse().unwrap_or_else(|_| unreachable!("a valid id"));
    WorkloadLabels::new(name, "default")
        .canonical(canonical, revision)
        .cluster("Kubernetes")
        .with_mesh_id("cluster.local")
        .with_principal(&principal)
}

/// A `reviews` backend of `version` that fails `fail` of requests with 503 (spread evenly).
async fn backend(
    ca: &DevCa,
    version: &str,
    fail: f64,
    istio: bool,
) -> Result<mesh::tower::server::ServerHandle, Error> {
    let counter = Arc::new(AtomicU64::new(0));
    let app = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut response = http::Response::new(String::from("review"));
            if fails(n, fail) {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let frontend = PrincipalMatch::Exact("spiffe://example.org/frontend".parse()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let identity = IdentitySource::fixed(ca.identity("/reviews")?);
    let mut telemetry = TelemetryLayer::server("reviews".parse()?).version(version.parse()?);
    if istio {
        telemetry = telemetry.istio_metrics(workload(&format!("reviews-{version}"), "reviews", version));
    }
    // Telemetry, authorization, then the caller's deadline: the server's request stack.
    let server = Server::builder().identity(identity).telemetry(telemetry).authorization(AuthorizationLayer::new(
        AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![frontend])]),
    ));
    Ok(server.build()?.spawn(listener, app)?)
}

/// gRPC traffic for `--grpc-metrics`: a `greeter` served by `GrpcServer` and the `frontend`'s
/// channel to it, both recording A66's metrics into `metrics`.
struct Greeter {
    channel: mesh::tonic::MeshChannel,
    _server: mesh::tower::server::ServerHandle,
}

#[derive(Clone)]
struct Hello;

#[tonic::async_trait]
impl pb::greeter_server::Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<pb::HelloRequest>,
    ) -> Result<tonic::Response<pb::HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(pb::HelloReply { message: format!("hello {}", request.get_ref().name) }))
    }
}

async fn greeter(ca: &DevCa, metrics: &GrpcMetrics) -> Result<Greeter, Error> {
    let greeter: ServiceName = "greeter".parse()?;
    let telemetry = TelemetryLayer::server(greeter.clone()).grpc_metrics(
        metrics.clone().register_service("helloworld.Greeter").csm(workload("greeter-v1", "greeter", "v1")),
    );
    let server = Server::builder().identity(IdentitySource::fixed(ca.identity("/greeter")?)).build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let handle = mesh::tonic::GrpcServer::new(server)
        .telemetry(telemetry)
        .spawn(listener, pb::greeter_server::GreeterServer::new(Hello))?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter.clone())
            .identity("spiffe://example.org/greeter".parse()?)
            .endpoint(Endpoint::new(handle.local_addr()))
            .build()?,
    );
    let telemetry = TelemetryLayer::client(greeter.clone())
        .grpc_metrics(metrics.clone().csm(workload("frontend", "frontend", "v1")));
    let channel = mesh::tonic::MeshChannel::builder(discovery, greeter)
        .identity(IdentitySource::fixed(ca.identity("/frontend")?))
        .telemetry(telemetry)
        .build()?;
    Ok(Greeter { channel, _server: handle })
}

fn recorder() -> Result<PrometheusHandle, Error> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(names::REQUEST_DURATION.to_owned()), BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(istio::REQUEST_DURATION.to_owned()), istio::DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(istio::REQUEST_BYTES.to_owned()), istio::BYTES_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(istio::RESPONSE_BYTES.to_owned()), istio::BYTES_BUCKETS)?
        .install_recorder()?)
}

async fn run(args: &Args) -> Result<(), Error> {
    let prometheus = recorder()?;
    let ca = DevCa::new("example.org".parse()?)?;
    let (v1, v2) = (backend(&ca, "v1", 0.0, args.istio).await?, backend(&ca, "v2", args.fail, args.istio).await?);

    let reviews: ServiceName = "reviews".parse()?;
    let discovery = StaticDiscovery::new();
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GatewayError];
    let mut route = Route::new(RouteName::new("reviews-default")?).with_retry(retry);
    if args.canary < 100 {
        route = route.with_target("v1".parse()?, Weight::new(100 - args.canary)?);
    }
    if args.canary > 0 {
        route = route.with_target("v2".parse()?, Weight::new(args.canary)?);
    }
    discovery.set(
        ServiceSnapshot::builder(reviews.clone())
            .identity("spiffe://example.org/reviews".parse()?)
            .endpoint(Endpoint::new(v1.local_addr()).with_label("version", "v1")?)
            .endpoint(Endpoint::new(v2.local_addr()).with_label("version", "v2")?)
            .subset(Subset::version("v1")?)
            .subset(Subset::version("v2")?)
            .route(route)
            .build()?,
    );
    let frontend = IdentitySource::fixed(ca.identity("/frontend")?);
    let mut telemetry = TelemetryLayer::client(reviews.clone());
    if args.istio {
        telemetry = telemetry.istio_metrics(workload("frontend", "frontend", "v1"));
    }
    let client =
        MeshClient::builder(discovery.clone(), reviews.clone()).identity(frontend).telemetry(telemetry).build()?;

    let otel = args.grpc.then(MemoryExporter::default);
    let provider = otel.as_ref().map(MemoryExporter::provider);
    let grpc = match &provider {
        Some(provider) => Some(greeter(&ca, &GrpcMetrics::new(provider)).await?),
        None => None,
    };

    let scrapes = Arc::new(tokio::sync::watch::channel(0_u64).0);
    let otel = otel.zip(provider);
    let server = serve_metrics(&args.listen, prometheus, otel, scrapes.clone()).await?;
    if args.live {
        println!("metrics on http://{}/metrics", server.local_addr());
    }
    let mut seen = scrapes.subscribe();
    for round in (0..args.requests).collect::<Vec<_>>().chunks(ROUND) {
        if args.live {
            // Each round after a new scrape: a scraper sees every round's counts grow.
            tokio::time::timeout(std::time::Duration::from_secs(120), seen.changed())
                .await
                .map_err(|_| "--live: /metrics was not scraped for 120 s")??;
        }
        for _ in round {
            let response = client.clone().oneshot(http::Request::get("/reviews/1").body(Full::default())?).await?;
            response.into_body().collect().await?;
            if let Some(grpc) = &grpc {
                let mut greeter = pb::greeter_client::GreeterClient::new(grpc.channel.clone());
                greeter.say_hello(pb::HelloRequest { name: "frontend".into() }).await?;
            }
        }
    }
    // A caller the policy does not name: denied, and counted.
    let intruder = IdentitySource::fixed(ca.identity("/intruder")?);
    let intruder = MeshClient::builder(discovery, reviews).identity(intruder).build()?;
    let denied = intruder.oneshot(http::Request::get("/reviews/1").body(Full::default())?).await?;
    eprintln!("intruder: {}", denied.status());
    if args.live {
        println!("traffic done");
    } else {
        println!("metrics on http://{}/metrics", server.local_addr());
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown().await?;
    Ok(())
}

/// Serves `/metrics` (mesh's metrics, then the OpenTelemetry ones when there are), counting the
/// scrapes in `scrapes`.
async fn serve_metrics(
    listen: &str,
    prometheus: PrometheusHandle,
    otel: Option<(MemoryExporter, opentelemetry_sdk::metrics::SdkMeterProvider)>,
    scrapes: Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<mesh::tower::server::ServerHandle, Error> {
    let metrics = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (prometheus, otel, scrapes) = (prometheus.clone(), otel.clone(), scrapes.clone());
        async move {
            if req.uri().path() == "/metrics" {
                prometheus.run_upkeep();
                let mut text = prometheus.render();
                if let Some((exporter, provider)) = &otel {
                    // A failed flush keeps the last export's points: serve those.
                    let _ = provider.force_flush();
                    text += &otel_metrics::prometheus_text(&exporter.points());
                }
                scrapes.send_modify(|n| *n += 1);
                http::Response::builder().header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4").body(text)
            } else {
                http::Response::builder().status(http::StatusCode::NOT_FOUND).body(String::new())
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    Ok(Server::builder().plaintext().build()?.spawn(listener, metrics)?)
}
