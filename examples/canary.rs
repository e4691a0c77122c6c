//! A canary release in one process: a `frontend` client calls the `reviews` service, whose `v1`
//! and `v2` endpoints run on loopback, all through mesh (mutual TLS, route, weighted split, P2C).
//!
//! ```text
//! cargo run --example canary -- [--requests 20000] [--weights v1=90,v2=10] [--shift v1=50,v2=50]
//!                                [--fail v2=0.3] [--hang v2=0.5] [--timeout 200ms] [--retries on|off]
//!                                [--concurrency 16] [--plaintext] [--json] [--otlp http://HOST:4317]
//! ```
//!
//! `--otlp URL` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`) exports a trace per request over
//! OTLP/gRPC, client and server spans, and flushes them before exiting. The run ends with the
//! golden signals per subset (requests, success rate, latency percentiles) as the client's
//! telemetry layer computed them in process.
//!
//! `--fail SUBSET=RATE` makes that subset's backends answer 503 at that rate (seeded);
//! `--hang SUBSET=RATE` makes that share of the subset's requests sleep past the route timeout
//! (2 s, or twice the timeout if that is longer; seeded); `--timeout DURATION` sets the route's
//! timeout (`200ms`, `1s`; none by default). A request that times out is an error, and counts
//! against its subset in both sets of golden signals;
//! `--retries on` (the default) retries 502/503/504 and connect failures up to 3 attempts within
//! the retry budget, on another endpoint when there is one.
//!
//! `--weights` sets the split at start; `--shift` changes it live, halfway through, with no restart.
//! At the end it prints requests per subset and endpoint, errors and latency percentiles; with
//! `--json`, the last line is one JSON object:
//! `{"requests":N,"errors":N,"subsets":{"v1":N,"v2":N},"attempts":N,"retries":N,"budget_exhausted":N,...,
//! "golden":{"v1":{"requests":N,"success_rate":F,"p50_us":N,"p90_us":N,"p99_us":N},...},"golden_attempts":{...}}`
//! (`attempts`: requests the backends received in total).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, IdentitySource, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery, Subset, Weight,
        identity::dev::DevCa,
        policy::{RetryOn, RetryPolicy},
    },
    tower::{
        Upstream,
        client::MeshClient,
        server::{Server, ServerHandle},
        telemetry::{SubsetSignals, TelemetryLayer, otlp},
    },
};
use tokio::sync::watch;
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: canary [--requests N] [--weights v1=W,v2=W] [--shift v1=W,v2=W] [--fail SUBSET=RATE] \
                     [--hang SUBSET=RATE] [--timeout DURATION] [--retries on|off] [--concurrency N] [--plaintext] [--json] [--otlp http://HOST:PORT]";

struct Args {
    requests: usize,
    weights: Vec<(String, u32)>,
    shift: Option<Vec<(String, u32)>>,
    concurrency: usize,
    fail: Vec<(String, f64)>,
    hang: Vec<(String, f64)>,
    timeout: Option<Duration>,
    retries: bool,
    plaintext: bool,
    json: bool,
    otlp: Option<String>,
}

fn parse_rates(flag: &str, text: &str) -> Result<Vec<(String, f64)>, String> {
    text.split(',')
        .map(|pair| {
            let (subset, rate) = pair.split_once('=').ok_or(format!("{flag}: {pair:?} is not SUBSET=RATE"))?;
            if subset != "v1" && subset != "v2" {
                return Err(format!("{flag}: unknown subset {subset:?} (this demo has v1 and v2)"));
            }
            let rate: f64 = rate.parse().map_err(|_| format!("{flag}: {rate:?} is not a rate"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag}: {rate} is not between 0 and 1"));
            }
            Ok((subset.to_owned(), rate))
        })
        .collect()
}

fn parse_weights(flag: &str, text: &str) -> Result<Vec<(String, u32)>, String> {
    let weights: Vec<(String, u32)> = text
        .split(',')
        .map(|pair| {
            let (subset, weight) = pair.split_once('=').ok_or(format!("{flag}: {pair:?} is not SUBSET=WEIGHT"))?;
            if subset != "v1" && subset != "v2" {
                return Err(format!("{flag}: unknown subset {subset:?} (this demo has v1 and v2)"));
            }
            let weight = weight.parse().map_err(|_| format!("{flag}: {weight:?} is not a weight"))?;
            Weight::new(weight).map_err(|e| format!("{flag}: {e}"))?;
            Ok((subset.to_owned(), weight))
        })
        .collect::<Result<_, _>>()?;
    if weights.iter().all(|(_, w)| *w == 0) {
        return Err(format!("{flag}: at least one weight must be above 0"));
    }
    Ok(weights)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        requests: 20_000,
        weights: vec![("v1".into(), 90), ("v2".into(), 10)],
        shift: None,
        concurrency: 16,
        fail: Vec::new(),
        hang: Vec::new(),
        timeout: None,
        retries: true,
        plaintext: false,
        json: false,
        otlp: std::env::var(otlp::ENDPOINT_ENV).ok().filter(|e| !e.is_empty()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--requests" => args.requests = value("--requests")?.parse().map_err(|_| "--requests: not a number")?,
            "--concurrency" => {
                args.concurrency = value("--concurrency")?.parse().map_err(|_| "--concurrency: not a number")?
            }
            "--weights" => args.weights = parse_weights("--weights", &value("--weights")?)?,
            "--shift" => args.shift = Some(parse_weights("--shift", &value("--shift")?)?),
            "--fail" => args.fail = parse_rates("--fail", &value("--fail")?)?,
            "--hang" => args.hang = parse_rates("--hang", &value("--hang")?)?,
            "--timeout" => {
                let text = value("--timeout")?;
                let timeout = humantime::parse_duration(&text).map_err(|e| format!("--timeout: {text:?}: {e}"))?;
                if timeout.is_zero() {
                    return Err("--timeout must be above 0".into());
                }
                args.timeout = Some(timeout);
            }
            "--retries" => {
                args.retries = match value("--retries")?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--retries: {other:?} is not on or off")),
                }
            }
            "--plaintext" => args.plaintext = true,
            "--json" => args.json = true,
            "--otlp" => args.otlp = Some(value("--otlp")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.requests == 0 || args.concurrency == 0 {
        return Err("--requests and --concurrency must be at least 1".into());
    }
    Ok(args)
}

fn route(weights: &[(String, u32)], retries: bool, timeout: Option<Duration>) -> Result<Route, Error> {
    let mut route = Route::new(RouteName::new("reviews-default")?);
    for (subset, weight) in weights {
        route = route.with_target(subset.parse()?, Weight::new(*weight)?);
    }
    if let Some(timeout) = timeout {
        route = route.with_timeout(timeout);
    }
    if retries {
        let mut policy = RetryPolicy::default();
        policy.retry_on = vec![RetryOn::GatewayError, RetryOn::ConnectFailure];
        route = route.with_retry(policy);
    }
    Ok(route)
}

/// How a backend misbehaves: shares of its requests that fail or hang (seeded, so runs repeat).
#[derive(Clone, Copy)]
struct Misbehaviour {
    fail_rate: f64,
    hang_rate: f64,
    hang: Duration,
}

/// A number in [0, 1) from a seeded splitmix64 sequence.
fn roll(state: &AtomicU64) -> f64 {
    let mut z = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A backend that answers with its name, or 503, or late, as `misbehaviour` says.
async fn start_backend(
    version: &str,
    name: String,
    identity: Option<IdentitySource>,
    misbehaviour: Misbehaviour,
    received: Arc<AtomicUsize>,
    seed: u64,
) -> Result<ServerHandle, Error> {
    let (fails, hangs) = (Arc::new(AtomicU64::new(seed)), Arc::new(AtomicU64::new(seed ^ 0x5EED)));
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let (name, fails, hangs) = (name.clone(), fails.clone(), hangs.clone());
        received.fetch_add(1, Ordering::Relaxed);
        async move {
            if roll(&hangs) < misbehaviour.hang_rate {
                tokio::time::sleep(misbehaviour.hang).await;
            }
            let mut response = http::Response::new(name);
            if roll(&fails) < misbehaviour.fail_rate {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = match identity {
        Some(identity) => Server::builder().identity(identity),
        None => Server::builder().plaintext(),
    };
    // Handlers still sleeping when the run ends are cut off rather than waited for.
    let server = server
        .telemetry(TelemetryLayer::server("reviews".parse()?).version(version.parse()?))
        .drain_timeout(Duration::from_millis(100));
    Ok(server.build()?.spawn(listener, service)?)
}

#[derive(Default)]
struct Tally {
    per_subset: BTreeMap<String, usize>,
    per_endpoint: BTreeMap<String, usize>,
    latencies: BTreeMap<String, Vec<Duration>>,
    errors: Vec<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("canary: {message}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(error) => {
            eprintln!("canary: {error}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<usize, Error> {
    // Traces over OTLP when asked: one pipeline for the client and the backends (one process).
    let exporter = match &args.otlp {
        Some(endpoint) => {
            let telemetry = otlp::OtlpConfig::new("frontend".parse()?)
                .endpoint(endpoint.clone())
                .identity(&"spiffe://example.org/ns/prod/sa/frontend".parse()?)
                .build()?;
            telemetry.install()?;
            Some(telemetry)
        }
        None => None,
    };
    let ca = DevCa::new("example.org".parse()?)?;
    let (server_id, client_id) = if args.plaintext {
        (None, None)
    } else {
        (
            Some(IdentitySource::fixed(ca.identity("/ns/prod/sa/reviews")?)),
            Some(IdentitySource::fixed(ca.identity("/ns/prod/sa/frontend")?)),
        )
    };

    // reviews: two v1 endpoints and two v2 endpoints.
    let mut backends = Vec::new();
    let mut endpoints = Vec::new();
    let received = Arc::new(AtomicUsize::new(0));
    for (version, i) in [("v1", 0), ("v1", 1), ("v2", 0), ("v2", 1)] {
        let rate = |rates: &[(String, f64)]| rates.iter().find(|(s, _)| s == version).map_or(0.0, |(_, r)| *r);
        let hang = args.timeout.map_or(Duration::from_secs(2), |t| (t * 2).max(Duration::from_secs(2)));
        let misbehaviour = Misbehaviour { fail_rate: rate(&args.fail), hang_rate: rate(&args.hang), hang };
        let seed = 7 + i as u64 + if version == "v2" { 100 } else { 0 };
        let name = format!("reviews-{version}-{i}");
        let handle = start_backend(version, name, server_id.clone(), misbehaviour, received.clone(), seed).await?;
        endpoints.push(Endpoint::new(handle.local_addr()).with_label("version", version)?);
        backends.push(handle);
    }
    let service: ServiceName = "reviews".parse()?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(service.clone())
            .identity("spiffe://example.org/ns/prod/sa/reviews".parse()?)
            .endpoints(endpoints)
            .subset(Subset::version("v1")?)
            .subset(Subset::version("v2")?)
            .route(route(&args.weights, args.retries, args.timeout)?)
            .build()?,
    );
    // The whole client stack: spans, metrics and the golden signals per subset of requests and
    // of attempts; the route's split, timeout and retries.
    let client = MeshClient::builder(discovery.clone(), service.clone());
    let client = match client_id {
        Some(identity) => client.identity(identity),
        None => client.plaintext(),
    }
    .build::<Empty<bytes::Bytes>>()?;
    let (golden, attempt_golden) = (client.telemetry().golden_signals(), client.telemetry().attempt_signals());
    let retry_stats = client.retry_stats();

    let show = |w: &[(String, u32)]| w.iter().map(|(s, w)| format!("{s}={w}")).collect::<Vec<_>>().join(",");
    if !args.json {
        println!(
            "canary: {} requests from {} callers, frontend -> reviews over {}, split {}{}",
            args.requests,
            args.concurrency,
            if args.plaintext { "plaintext" } else { "mutual TLS" },
            show(&args.weights),
            args.shift.as_ref().map(|s| format!(", shifting to {} halfway", show(s))).unwrap_or_default(),
        );
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let tickets = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, tally, tickets, done_tx) = (client.clone(), tally.clone(), tickets.clone(), done_tx.clone());
        let total = args.requests;
        callers.push(tokio::spawn(async move {
            while tickets.fetch_add(1, Ordering::Relaxed) < total {
                let request =
                    http::Request::get("/reviews/42").body(Empty::<bytes::Bytes>::new()).expect("static request");
                let sent = Instant::now();
                let outcome = match client.clone().oneshot(request).await {
                    Ok(response) if response.status().is_success() => {
                        let upstream = response.extensions().get::<Upstream>().cloned();
                        match response.into_body().collect().await {
                            Ok(body) => Ok((upstream, body.to_bytes())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Ok(response) => Err(format!("status {}", response.status())),
                    Err(error) => Err(error.to_string()),
                };
                let latency = sent.elapsed();
                let mut tally = tally.lock().expect("poisoned");
                match outcome {
                    Ok((upstream, body)) => {
                        let subset = upstream.and_then(|u| u.subset).map_or("none".into(), |s| s.to_string());
                        *tally.per_subset.entry(subset.clone()).or_default() += 1;
                        *tally.per_endpoint.entry(String::from_utf8_lossy(&body).into_owned()).or_default() += 1;
                        tally.latencies.entry(subset).or_default().push(latency);
                    }
                    Err(error) => tally.errors.push(error),
                }
                drop(tally);
                done_tx.send_modify(|n| *n += 1);
            }
        }));
    }

    if let Some(shift) = &args.shift {
        let half = args.requests / 2;
        done_rx.wait_for(|n| *n >= half).await?;
        discovery.update(&service, |spec| {
            if let Ok(route) = route(shift, args.retries, args.timeout) {
                spec.routes = vec![route];
            }
        })?;
    }
    for caller in callers {
        caller.await?;
    }
    let elapsed = started.elapsed();
    for backend in backends {
        backend.shutdown().await?;
    }
    let (golden, attempt_golden) = (golden.snapshot(), attempt_golden.snapshot());
    if let Some(exporter) = exporter {
        let endpoint = exporter.endpoint().to_owned();
        exporter.shutdown().await?;
        if !args.json {
            println!("traces: exported to {endpoint} (OTLP/gRPC)");
        }
    }

    let mut tally =
        Arc::try_unwrap(tally).map_err(|_| "callers still running")?.into_inner().map_err(|_| "poisoned")?;
    for latencies in tally.latencies.values_mut() {
        latencies.sort();
    }
    let errors = tally.errors.len();
    let count = |s: &str| tally.per_subset.get(s).copied().unwrap_or(0);
    if args.json {
        let latency: BTreeMap<_, _> = tally
            .latencies
            .iter()
            .map(|(s, l)| {
                let us = |p| percentile(l, p).as_micros() as u64;
                (s.clone(), serde_json::json!({"p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99)}))
            })
            .collect();
        let json = serde_json::json!({
            "requests": args.requests,
            "errors": errors,
            "subsets": {"v1": count("v1"), "v2": count("v2")},
            "attempts": received.load(Ordering::Relaxed),
            "retries": retry_stats.retries(),
            "budget_exhausted": retry_stats.budget_exhausted(),
            "endpoints": tally.per_endpoint,
            "latency": latency,
            "elapsed_ms": elapsed.as_millis() as u64,
            "golden": golden_json(&golden),
            "golden_attempts": golden_json(&attempt_golden),
        });
        println!("{json}");
    } else {
        println!();
        println!("{:<10} {:>9} {:>8} {:>10} {:>10} {:>10}", "subset", "requests", "share", "p50", "p90", "p99");
        for (subset, latencies) in &tally.latencies {
            let n = latencies.len();
            println!(
                "{:<10} {:>9} {:>7.2}% {:>10?} {:>10?} {:>10?}",
                subset,
                n,
                100.0 * n as f64 / args.requests as f64,
                percentile(latencies, 0.5),
                percentile(latencies, 0.9),
                percentile(latencies, 0.99)
            );
        }
        println!();
        println!("{:<16} {:>9}", "endpoint", "requests");
        for (endpoint, n) in &tally.per_endpoint {
            println!("{endpoint:<16} {n:>9}");
        }
        println!();
        println!(
            "errors: {errors}   attempts at the backends: {}   retries: {}   refused by the budget: {}   elapsed: {elapsed:?}",
            received.load(Ordering::Relaxed),
            retry_stats.retries(),
            retry_stats.budget_exhausted()
        );
        for error in tally.errors.iter().take(5) {
            println!("  {error}");
        }
        print_golden("golden signals per request (after retries)", &golden);
        print_golden("golden signals per attempt (what canary analysis reads)", &attempt_golden);
    }
    Ok(errors)
}

fn print_golden(title: &str, golden: &[SubsetSignals]) {
    println!();
    println!(
        "{title}, client side, last {:?} (percentiles within 9%):",
        golden.first().map_or(Duration::ZERO, |g| g.window)
    );
    println!("{:<10} {:>9} {:>9} {:>10} {:>10} {:>10}", "subset", "requests", "success", "p50", "p90", "p99");
    for g in golden {
        let name = g.subset.as_ref().map_or("none".to_owned(), |s| s.to_string());
        let show = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{d:?}"));
        println!(
            "{:<10} {:>9} {:>8.2}% {:>10} {:>10} {:>10}",
            name,
            g.requests,
            g.success_rate() * 100.0,
            show(g.p50),
            show(g.p90),
            show(g.p99)
        );
    }
}

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
