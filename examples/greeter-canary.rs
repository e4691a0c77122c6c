//! A gRPC canary release in one process: a `GreeterClient` on a `MeshChannel` calls the
//! `greeter` service, whose `v1` and `v2` servers run on loopback, with a weighted split on the
//! route of `/helloworld.Greeter` (mutual TLS from an in-memory development CA).
//!
//! ```text
//! cargo run --example greeter-canary -- [--requests 10000] [--weights v1=90,v2=10] [--concurrency 16]
//!                                         [--fail v2=0.3] [--fail-code unavailable|internal] [--json]
//! ```
//!
//! `--fail VERSION=RATE` makes that version fail that share of its calls (seeded, so runs repeat)
//! with `--fail-code` (`unavailable`, the default, which the route retries on another endpoint of
//! the same version when there is one, or `internal`, which it does not retry).
//!
//! Each reply names the version that served it; at the end the example prints the calls per
//! version and their share, and the golden signals per version of calls and of attempts (what
//! canary analysis reads). With `--json`, the last line is one JSON object:
//! `{"requests":N,"errors":N,"versions":{"v1":N,"v2":N},
//! "golden":{"v2":{"requests":N,"success_rate":F,"p50_us":N,"p90_us":N,"p99_us":N},...},"golden_attempts":{...}}`.
//! Exits 1 if any call failed, 2 on bad usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh::{
    core::{
        Endpoint, IdentitySource, PathMatch, Route, RouteMatch, ServiceName, ServiceSnapshot, StaticDiscovery, Subset,
        Weight,
        identity::dev::DevCa,
        policy::{RetryOn, RetryPolicy},
    },
    tonic::{GrpcServer, MeshChannel, PeerIdentityExt},
    tower::{
        server::{Server, ServerHandle},
        telemetry::SubsetSignals,
    },
};
use tonic::{Code, Request, Response, Status};

/// The code generated from `examples/proto/helloworld/helloworld.proto` (checked in; see
/// `tests/proto_generated.rs`).
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}

use pb::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: greeter-canary [--requests N] [--weights v1=W,v2=W] [--concurrency N] \
                     [--fail VERSION=RATE] [--fail-code unavailable|internal] [--json]";

struct Args {
    requests: usize,
    weights: Vec<(String, u32)>,
    concurrency: usize,
    fail: Vec<(String, f64)>,
    fail_code: Code,
    json: bool,
}

fn parse_fail(text: &str) -> Result<Vec<(String, f64)>, String> {
    text.split(',')
        .map(|pair| {
            let (version, rate) = pair.split_once('=').ok_or(format!("--fail: {pair:?} is not VERSION=RATE"))?;
            if version != "v1" && version != "v2" {
                return Err(format!("--fail: unknown version {version:?} (this demo has v1 and v2)"));
            }
            let rate: f64 = rate.parse().map_err(|_| format!("--fail: {rate:?} is not a rate"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("--fail: {rate} is not between 0 and 1"));
            }
            Ok((version.to_owned(), rate))
        })
        .collect()
}

fn parse_weights(text: &str) -> Result<Vec<(String, u32)>, String> {
    let weights: Vec<(String, u32)> = text
        .split(',')
        .map(|pair| {
            let (subset, weight) = pair.split_once('=').ok_or(format!("--weights: {pair:?} is not VERSION=WEIGHT"))?;
            if subset != "v1" && subset != "v2" {
                return Err(format!("--weights: unknown version {subset:?} (this demo has v1 and v2)"));
            }
            let weight = weight.parse().map_err(|_| format!("--weights: {weight:?} is not a weight"))?;
            Weight::new(weight).map_err(|e| format!("--weights: {e}"))?;
            Ok((subset.to_owned(), weight))
        })
        .collect::<Result<_, _>>()?;
    if weights.iter().all(|(_, w)| *w == 0) {
        return Err("--weights: at least one weight must be above 0".to_owned());
    }
    Ok(weights)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        requests: 10_000,
        weights: vec![("v1".into(), 90), ("v2".into(), 10)],
        concurrency: 16,
        fail: Vec::new(),
        fail_code: Code::Unavailable,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--requests" => {
                let n = value("--requests")?;
                args.requests = n.parse().map_err(|_| format!("--requests: {n:?} is not a count"))?;
            }
            "--weights" => args.weights = parse_weights(&value("--weights")?)?,
            "--concurrency" => {
                let n = value("--concurrency")?;
                args.concurrency =
                    n.parse().ok().filter(|&n| n > 0).ok_or(format!("--concurrency: {n:?} is not a count above 0"))?;
            }
            "--fail" => args.fail = parse_fail(&value("--fail")?)?,
            "--fail-code" => {
                args.fail_code = match value("--fail-code")?.as_str() {
                    "unavailable" => Code::Unavailable,
                    "internal" => Code::Internal,
                    other => return Err(format!("--fail-code: {other:?} is not unavailable or internal")),
                }
            }
            "--json" => args.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

struct Hello {
    version: &'static str,
    /// The share of calls that fail, and with which code, drawn from a seeded sequence.
    fail: (f64, Code),
    draws: AtomicU64,
}

impl Hello {
    /// A number in [0, 1) from a seeded splitmix64 sequence.
    fn roll(&self) -> f64 {
        let mut z = self.draws.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        if self.roll() < self.fail.0 {
            return Err(Status::new(self.fail.1, format!("{} fails this call on purpose", self.version)));
        }
        let caller = request.peer_identity().map_or_else(|| "?".to_owned(), |p| p.id().to_string());
        let message = format!("hello {} from {}, you are {caller}", request.get_ref().name, self.version);
        Ok(Response::new(HelloReply { message }))
    }
}

async fn serve(identity: IdentitySource, version: &'static str, fail: (f64, Code)) -> Result<ServerHandle, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = GrpcServer::new(Server::builder().identity(identity).build()?);
    let seed = if version == "v1" { 7 } else { 107 };
    Ok(server.spawn(listener, GreeterServer::new(Hello { version, fail, draws: AtomicU64::new(seed) }))?)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("greeter-canary: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(error) => {
            eprintln!("greeter-canary: {error}");
            std::process::exit(1);
        }
    }
}

/// Returns the number of failed calls.
async fn run(args: Args) -> Result<usize, Error> {
    let ca = DevCa::new("example.org".parse()?)?;
    let server_identity = IdentitySource::fixed(ca.identity("/greeter")?);
    let fail = |version: &str| (args.fail.iter().find(|(v, _)| v == version).map_or(0.0, |(_, r)| *r), args.fail_code);
    let v1 = serve(server_identity.clone(), "v1", fail("v1")).await?;
    let v2 = serve(server_identity, "v2", fail("v2")).await?;

    // Every method of helloworld.Greeter, split by weight between the two versions; UNAVAILABLE
    // is retried (inside the version the call was sent to).
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GrpcUnavailable];
    let mut route = Route::new("greeter".parse()?)
        .with_match(RouteMatch::any().path(PathMatch::prefix("/helloworld.Greeter")?))
        .with_retry(retry);
    for (version, weight) in &args.weights {
        route = route.with_target(version.parse()?, Weight::new(*weight)?);
    }
    let service: ServiceName = "greeter".parse()?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(service.clone())
            .identity("spiffe://example.org/greeter".parse()?)
            .endpoint(Endpoint::new(v1.local_addr()).with_label("version", "v1")?)
            .endpoint(Endpoint::new(v2.local_addr()).with_label("version", "v2")?)
            .subset(Subset::version("v1")?)
            .subset(Subset::version("v2")?)
            .route(route)
            .build()?,
    );
    let channel =
        MeshChannel::builder(discovery, service).identity(IdentitySource::fixed(ca.identity("/frontend")?)).build()?;

    let left = Arc::new(AtomicUsize::new(args.requests));
    let (versions, errors) = (Arc::new(Mutex::new(BTreeMap::<String, usize>::new())), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let mut client = GreeterClient::new(channel.clone());
            let (left, versions, errors) = (left.clone(), versions.clone(), errors.clone());
            tokio::spawn(async move {
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                    match client.say_hello(HelloRequest { name: "canary".into() }).await {
                        Ok(reply) => {
                            let message = reply.into_inner().message;
                            let version = if message.contains(" from v2,") { "v2" } else { "v1" };
                            *versions
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(version.to_owned())
                                .or_default() += 1;
                        }
                        Err(status) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first failure: {:?}: {}", status.code(), status.message());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await?;
    }
    v1.shutdown().await?;
    v2.shutdown().await?;
    let telemetry = channel.client().telemetry();
    let (golden, golden_attempts) = (telemetry.golden_signals().snapshot(), telemetry.attempt_signals().snapshot());

    let versions = versions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let errors = errors.load(Ordering::Relaxed);
    for (version, n) in &versions {
        println!("{version}: {n} calls ({:.2}%)", *n as f64 * 100.0 / args.requests.max(1) as f64);
    }
    println!("errors: {errors}");
    for (title, signals) in [("calls", &golden), ("attempts", &golden_attempts)] {
        for s in signals.iter() {
            let version = s.subset.as_ref().map_or("none".to_owned(), |v| v.to_string());
            println!("golden signals of {title}, {version}: {} ({:.2}% ok)", s.requests, s.success_rate() * 100.0);
        }
    }
    if args.json {
        let json = serde_json::json!({
            "requests": args.requests,
            "errors": errors,
            "versions": versions,
            "golden": golden_json(&golden),
            "golden_attempts": golden_json(&golden_attempts),
        });
        println!("{json}");
    }
    Ok(errors)
}

/// Golden signals per version, as `canary --json` writes them.
fn golden_json(golden: &[SubsetSignals]) -> BTreeMap<String, serde_json::Value> {
    golden
        .iter()
        .map(|g| {
            let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
            let name = g.subset.as_ref().map_or("none".to_owned(), |s| s.to_string());
            let figures = serde_json::json!({
                "requests": g.requests,
                "success_rate": g.success_rate(),
                "p50_us": us(g.p50),
                "p90_us": us(g.p90),
                "p99_us": us(g.p99),
            });
            (name, figures)
        })
        .collect()
}
