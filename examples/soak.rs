//! A soak run: steady mixed traffic through mesh for a number of minutes while everything a real
//! deployment does to it happens on schedule, then a report of requests, errors and the process's
//! resources at the start and the end, to show nothing leaks.
//!
//! ```text
//! cargo run --release --example soak -- [--minutes 2] [--concurrency 8] [--json]
//! ```
//!
//! In one process, over mutual TLS on loopback:
//!
//! - `reviews` (HTTP/1.1 and HTTP/2 clients on the same endpoints): subsets `v1` and `v2`, a
//!   route whose split shifts every 10 s (90/10, 50/50, 10/90, 50/50, ...), retries of
//!   502/503/504, connect failures and resets; every 10 s (5 s after each shift) one endpoint
//!   leaves discovery and is drained, and a new one joins;
//! - `greeter` (gRPC `helloworld.Greeter` on a `MeshChannel`): two endpoints, `UNAVAILABLE`
//!   retried;
//! - every minute, the servers' and then the clients' certificates are rotated (new leaf
//!   certificates from the same CA, pushed to the identity sources as a SPIRE agent would).
//!
//! Resources are sampled after a warm-up (the first quarter of the run, at least 30 s and at most
//! 120 s: pools, TLS sessions and allocator arenas fill) and at the end: resident memory (`VmRSS`),
//! open file descriptors, threads and tokio tasks, all of this one process (client and servers).
//! With `--json` the last line is one JSON object with the keys `requests`, `errors`,
//! `rss_start_kib`, `rss_end_kib`, `fds_start`, `fds_end`, and also `tasks_start`, `tasks_end`,
//! `threads_start`, `threads_end`, `per_kind` (requests and errors of `http1`, `http2`, `grpc`),
//! `retries`, `rotations`, `shifts`, `endpoint_changes`, `seconds`. Exits 1 when any request
//! failed.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, IdentitySource, Route, ServiceName, ServiceSnapshot, StaticDiscovery, Subset, Weight,
        identity::{Identity, IdentityUpdater, dev::DevCa},
        policy::{RetryOn, RetryPolicy},
    },
    tonic::{GrpcServer, MeshChannel},
    tower::{
        client::{ClientConfig, MeshClient, Protocol},
        server::{Server, ServerHandle},
    },
};
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// The code generated from `examples/proto/helloworld/helloworld.proto`.
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

const USAGE: &str = "usage: soak [--minutes M] [--concurrency N] [--json]";
/// How often the split shifts; endpoints change halfway between two shifts.
const SHIFT_EVERY: Duration = Duration::from_secs(10);
/// How often certificates are rotated.
const ROTATE_EVERY: Duration = Duration::from_secs(60);
/// The splits the `reviews` route cycles through (v1 weight, v2 weight).
const SPLITS: [(u32, u32); 4] = [(90, 10), (50, 50), (10, 90), (50, 50)];

struct Args {
    minutes: f64,
    concurrency: usize,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { minutes: 2.0, concurrency: 8, json: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--minutes" => {
                let text = value("--minutes")?;
                args.minutes = text.parse().map_err(|_| format!("--minutes: {text:?} is not a number"))?;
                if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
                    return Err("--minutes must be above 0 and at most a day".into());
                }
            }
            "--concurrency" => {
                let text = value("--concurrency")?;
                args.concurrency = text.parse().map_err(|_| format!("--concurrency: {text:?} is not a number"))?;
                if args.concurrency == 0 {
                    return Err("--concurrency must be at least 1".into());
                }
            }
            "--json" => args.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// What the process holds at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Resources {
    rss_kib: u64,
    fds: usize,
    threads: u64,
    tasks: usize,
}

impl Resources {
    fn sample() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field("VmRSS:"),
            fds: std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
            threads: field("Threads:"),
            tasks: tokio::runtime::Handle::current().metrics().num_alive_tasks(),
        }
    }
}

/// Requests and errors of one kind of traffic.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn record(&self, outcome: Result<(), String>, kind: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = outcome {
            // The first few failures are shown: the rest only counted.
            if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("soak: {kind} request failed: {error}");
            }
        }
    }
}

/// The identities of one side, and how to renew them.
struct Side {
    source: IdentitySource,
    updater: IdentityUpdater,
    path: &'static str,
}

impl Side {
    fn new(ca: &DevCa, path: &'static str) -> Result<Self, Error> {
        let (source, updater) = IdentitySource::updatable(ca.identity(path)?);
        Ok(Self { source, updater, path })
    }

    fn rotate(&self, ca: &DevCa) -> Result<(), Error> {
        let identity: Identity = ca.identity(self.path)?;
        self.updater.update(identity);
        Ok(())
    }
}

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply { message: format!("hello {}", request.get_ref().name) }))
    }
}

/// A `reviews` endpoint: answers with its version, over HTTP/1.1 or HTTP/2.
async fn reviews_backend(identity: IdentitySource, version: &'static str) -> Result<ServerHandle, Error> {
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(http::Response::new(version.to_owned()))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = Server::builder().identity(identity).drain_timeout(Duration::from_secs(5)).build()?;
    Ok(server.spawn(listener, service)?)
}

async fn greeter_backend(identity: IdentitySource) -> Result<ServerHandle, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = GrpcServer::new(Server::builder().identity(identity).drain_timeout(Duration::from_secs(5)).build()?);
    Ok(server.spawn(listener, GreeterServer::new(Hello))?)
}

fn reviews_route(split: (u32, u32)) -> Result<Route, Error> {
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GatewayError, RetryOn::ConnectFailure, RetryOn::Reset];
    Ok(Route::new("reviews".parse()?)
        .with_target("v1".parse()?, Weight::new(split.0)?)
        .with_target("v2".parse()?, Weight::new(split.1)?)
        .with_timeout(Duration::from_secs(10))
        .with_retry(retry))
}

/// The running `reviews` endpoints, in the order they joined.
type Fleet = Arc<Mutex<Vec<(ServerHandle, &'static str)>>>;

fn reviews_endpoints(fleet: &Fleet) -> Result<Vec<Endpoint>, Error> {
    let fleet = fleet.lock().map_err(|_| "poisoned")?;
    fleet.iter().map(|(h, v)| Ok(Endpoint::new(h.local_addr()).with_label("version", *v)?)).collect()
}

/// One caller: HTTP/1.1, HTTP/2 and gRPC requests in turn until `stop`.
async fn caller(
    h1: MeshClient<Empty<bytes::Bytes>>,
    h2: MeshClient<Empty<bytes::Bytes>>,
    mut grpc: GreeterClient<MeshChannel>,
    counts: Arc<BTreeMap<&'static str, Counts>>,
    stop: Arc<AtomicBool>,
) {
    let http = async |client: &MeshClient<Empty<bytes::Bytes>>| -> Result<(), String> {
        let request = http::Request::get("/reviews/1").body(Empty::new()).map_err(|e| e.to_string())?;
        let response = client.clone().oneshot(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        match (status.is_success(), &body[..]) {
            (true, b"v1" | b"v2") => Ok(()),
            _ => Err(format!("status {status}, body {body:?}")),
        }
    };
    while !stop.load(Ordering::Relaxed) {
        counts["http1"].record(http(&h1).await, "HTTP/1.1");
        counts["http2"].record(http(&h2).await, "HTTP/2");
        let reply = grpc.say_hello(HelloRequest { name: "soak".into() }).await;
        let outcome = match reply {
            Ok(reply) if reply.get_ref().message == "hello soak" => Ok(()),
            Ok(reply) => Err(format!("unexpected reply {:?}", reply.get_ref().message)),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        };
        counts["grpc"].record(outcome, "gRPC");
    }
}

/// What the schedule did.
#[derive(Default)]
struct Events {
    rotations: u64,
    shifts: u64,
    endpoint_changes: u64,
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("soak: {message}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(error) => {
            eprintln!("soak: {error}");
            std::process::exit(1);
        }
    }
}

/// Runs the soak; returns the number of failed requests.
async fn run(args: Args) -> Result<u64, Error> {
    let ca = DevCa::new("example.org".parse()?)?;
    let (servers, clients) = (Side::new(&ca, "/reviews")?, Side::new(&ca, "/frontend")?);

    // reviews: two endpoints per version to start with.
    let fleet: Fleet = Arc::default();
    for version in ["v1", "v1", "v2", "v2"] {
        let handle = reviews_backend(servers.source.clone(), version).await?;
        fleet.lock().map_err(|_| "poisoned")?.push((handle, version));
    }
    let reviews: ServiceName = "reviews".parse()?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(reviews.clone())
            .identity("spiffe://example.org/reviews".parse()?)
            .endpoints(reviews_endpoints(&fleet)?)
            .subset(Subset::version("v1")?)
            .subset(Subset::version("v2")?)
            .route(reviews_route(SPLITS[0])?)
            .build()?,
    );
    let greeters = [greeter_backend(servers.source.clone()).await?, greeter_backend(servers.source.clone()).await?];
    let greeter: ServiceName = "greeter".parse()?;
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GrpcUnavailable];
    discovery.set(
        ServiceSnapshot::builder(greeter.clone())
            .identity("spiffe://example.org/reviews".parse()?)
            .endpoints(greeters.iter().map(|g| Endpoint::new(g.local_addr())))
            .route(Route::new("greeter".parse()?).with_retry(retry))
            .build()?,
    );

    let client = |protocol| {
        let mut config = ClientConfig::default();
        config.protocol = protocol;
        MeshClient::builder(discovery.clone(), reviews.clone()).identity(clients.source.clone()).config(config).build()
    };
    let (h1, h2) = (client(Protocol::Http1)?, client(Protocol::Http2)?);
    let channel = MeshChannel::builder(discovery.clone(), greeter).identity(clients.source.clone()).build()?;

    let counts: Arc<BTreeMap<&'static str, Counts>> =
        Arc::new(["http1", "http2", "grpc"].into_iter().map(|k| (k, Counts::default())).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let grpc = GreeterClient::new(channel.clone());
            tokio::spawn(caller(h1.clone(), h2.clone(), grpc, counts.clone(), stop.clone()))
        })
        .collect();

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let warm_up = (total / 4).clamp(Duration::from_secs(30), Duration::from_secs(120)).min(total / 2);
    let started = tokio::time::Instant::now();
    let schedule = Schedule { ca: &ca, servers: &servers, clients: &clients, discovery: &discovery, fleet: &fleet };
    let (events, start) = schedule.run(&reviews, started, warm_up, total).await?;

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    let end = Resources::sample();
    let elapsed = started.elapsed();
    let (requests, errors) = counts
        .values()
        .fold((0, 0), |(r, e), c| (r + c.requests.load(Ordering::Relaxed), e + c.errors.load(Ordering::Relaxed)));
    let retries = h1.retry_stats().retries() + h2.retry_stats().retries() + channel.client().retry_stats().retries();
    report(&args, &counts, (requests, errors, retries), &events, (start, end), elapsed);
    let leaving = std::mem::take(&mut *fleet.lock().map_err(|_| "poisoned")?);
    for (handle, _) in leaving {
        handle.shutdown().await?;
    }
    for handle in greeters {
        handle.shutdown().await?;
    }
    Ok(errors)
}

/// The timed events of the run: split shifts, endpoint churn, certificate rotation.
struct Schedule<'a> {
    ca: &'a DevCa,
    servers: &'a Side,
    clients: &'a Side,
    discovery: &'a StaticDiscovery,
    fleet: &'a Fleet,
}

impl Schedule<'_> {
    /// Runs the events until `total` has passed since `started`; returns what happened and the
    /// resources sampled at the end of the warm-up.
    async fn run(
        &self,
        service: &ServiceName,
        started: tokio::time::Instant,
        warm_up: Duration,
        total: Duration,
    ) -> Result<(Events, Resources), Error> {
        let mut events = Events::default();
        let mut start = None;
        let tick = SHIFT_EVERY / 2;
        let mut ticks = 0u64;
        loop {
            ticks += 1;
            let at = started + tick * ticks as u32;
            if start.is_none() && at > started + warm_up {
                tokio::time::sleep_until(started + warm_up).await;
                start = Some(Resources::sample());
            }
            if at >= started + total {
                tokio::time::sleep_until(started + total).await;
                break;
            }
            tokio::time::sleep_until(at).await;
            if ticks.is_multiple_of(2) {
                let split = SPLITS[(ticks / 2) as usize % SPLITS.len()];
                self.discovery.update(service, |spec| {
                    if let Ok(route) = reviews_route(split) {
                        spec.routes = vec![route];
                    }
                })?;
                events.shifts += 1;
            } else {
                self.churn(service).await?;
                events.endpoint_changes += 2;
            }
            if (tick * ticks as u32).as_millis().is_multiple_of(ROTATE_EVERY.as_millis()) {
                self.servers.rotate(self.ca)?;
                self.clients.rotate(self.ca)?;
                events.rotations += 1;
            }
        }
        Ok((events, start.unwrap_or_else(Resources::sample)))
    }

    /// The oldest endpoint leaves (out of discovery, then drained), and a new one of the same
    /// version joins.
    async fn churn(&self, service: &ServiceName) -> Result<(), Error> {
        let (leaving, version) = self.fleet.lock().map_err(|_| "poisoned")?.remove(0);
        let joining = reviews_backend(self.servers.source.clone(), version).await?;
        self.fleet.lock().map_err(|_| "poisoned")?.push((joining, version));
        let endpoints = reviews_endpoints(self.fleet)?;
        self.discovery.update(service, |spec| spec.endpoints = endpoints)?;
        // In-flight requests on the leaving endpoint finish; its connections then close.
        leaving.shutdown().await?;
        Ok(())
    }
}

fn report(
    args: &Args,
    counts: &BTreeMap<&'static str, Counts>,
    (requests, errors, retries): (u64, u64, u64),
    events: &Events,
    (start, end): (Resources, Resources),
    elapsed: Duration,
) {
    let per_kind: BTreeMap<_, _> = counts
        .iter()
        .map(|(k, c)| {
            let (r, e) = (c.requests.load(Ordering::Relaxed), c.errors.load(Ordering::Relaxed));
            (*k, serde_json::json!({"requests": r, "errors": e}))
        })
        .collect();
    if args.json {
        let json = serde_json::json!({
            "requests": requests,
            "errors": errors,
            "rss_start_kib": start.rss_kib,
            "rss_end_kib": end.rss_kib,
            "fds_start": start.fds,
            "fds_end": end.fds,
            "tasks_start": start.tasks,
            "tasks_end": end.tasks,
            "threads_start": start.threads,
            "threads_end": end.threads,
            "per_kind": per_kind,
            "retries": retries,
            "rotations": events.rotations,
            "shifts": events.shifts,
            "endpoint_changes": events.endpoint_changes,
            "seconds": elapsed.as_secs(),
        });
        println!("{json}");
        return;
    }
    println!("soak: {:.1} minutes, {} callers", elapsed.as_secs_f64() / 60.0, args.concurrency);
    for (kind, c) in counts {
        println!(
            "  {kind:<6} {:>10} requests {:>6} errors",
            c.requests.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed)
        );
    }
    println!("  total  {requests:>10} requests {errors:>6} errors, {retries} retries");
    println!(
        "  events: {} split shifts, {} endpoint joins and leaves, {} certificate rotations",
        events.shifts, events.endpoint_changes, events.rotations
    );
    println!("  {:<10} {:>12} {:>12}", "", "after warm-up", "end");
    println!("  {:<10} {:>10} KiB {:>8} KiB", "RSS", start.rss_kib, end.rss_kib);
    println!("  {:<10} {:>12} {:>12}", "fds", start.fds, end.fds);
    println!("  {:<10} {:>12} {:>12}", "threads", start.threads, end.threads);
    println!("  {:<10} {:>12} {:>12}", "tasks", start.tasks, end.tasks);
}
