//! Retries over real sockets: recovery from a flaky endpoint, the budget under a full outage,
//! non-idempotent methods and large bodies sent once.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use http_body_util::{BodyExt, Full};
use mesh::{
    core::{
        Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{RetryOn, RetryPolicy},
    },
    tower::{
        client::{MeshClient, retry::RetryStats},
        server::{Server, ServerHandle},
    },
};
use support::{backend_id, identity};
use tower::{Service, ServiceExt};

type Client = MeshClient<Full<bytes::Bytes>>;

/// A backend that answers 503 to a seeded `fail_percent` of requests; counts attempts and
/// failures and records the attempt header.
struct Flaky {
    handle: ServerHandle,
    attempts: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    attempt_headers: Arc<Mutex<Vec<String>>>,
}

async fn flaky(fail_percent: u64, seed: u64) -> Flaky {
    let attempts = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let attempt_headers: Arc<Mutex<Vec<String>>> = Arc::default();
    let state = Arc::new(AtomicU64::new(seed));
    let (a, f, h) = (attempts.clone(), failures.clone(), attempt_headers.clone());
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (a, f, h, state) = (a.clone(), f.clone(), h.clone(), state.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            if let Some(v) = req.headers().get("x-mesh-attempt") {
                h.lock().unwrap().push(v.to_str().unwrap().to_owned());
            }
            let _ = req.into_body().collect().await;
            let mut z = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 31;
            let mut response = http::Response::new(String::from("ok"));
            if z % 100 < fail_percent {
                f.fetch_add(1, Ordering::SeqCst);
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap();
    Flaky { handle, attempts, failures, attempt_headers }
}

fn policy() -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    policy.max_attempts = 3;
    policy.retry_on = vec![RetryOn::GatewayError, RetryOn::ConnectFailure];
    policy.backoff.base = std::time::Duration::from_millis(1);
    policy.backoff.max = std::time::Duration::from_millis(5);
    policy
}

fn stack(endpoints: &[&Flaky]) -> (Client, Arc<RetryStats>) {
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoints(endpoints.iter().map(|f| Endpoint::new(f.handle.local_addr())))
            .route(Route::new(RouteName::new("default").unwrap()).with_retry(policy()))
            .build()
            .unwrap(),
    );
    let client = MeshClient::builder(discovery, name).identity(identity("/frontend")).build().unwrap();
    let stats = client.retry_stats();
    (client, stats)
}

async fn run(client: &Client, method: http::Method, body: bytes::Bytes, n: usize) -> (usize, f64) {
    let ok = Arc::new(AtomicUsize::new(0));
    let tickets = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (client, ok, tickets, method, body) =
                (client.clone(), ok.clone(), tickets.clone(), method.clone(), body.clone());
            tokio::spawn(async move {
                while tickets.fetch_add(1, Ordering::Relaxed) < n {
                    let request = http::Request::builder()
                        .method(method.clone())
                        .uri("/reviews/1")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    if let Ok(response) = client.clone().oneshot(request).await {
                        if response.status() == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = response.into_body().collect().await;
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_an_endpoint_failing_30_percent() {
    let endpoints = [flaky(30, 1).await, flaky(0, 2).await, flaky(0, 3).await];
    let (client, stats) = stack(&endpoints.iter().collect::<Vec<_>>());
    let n = 3000;
    let (ok, _) = run(&client, http::Method::GET, bytes::Bytes::new(), n).await;
    let rate = 100.0 * ok as f64 / n as f64;
    eprintln!(
        "one of three endpoints failing 30%: {ok}/{n} succeeded ({rate:.2}%), {} retries, {} budget-refused",
        stats.retries(),
        stats.budget_exhausted()
    );
    // Retries go to an endpoint that has not failed the request (retries carry their number).
    let on_flaky = endpoints[0].attempt_headers.lock().unwrap().clone();
    assert!(on_flaky.is_empty(), "the failing endpoint saw a retry: {on_flaky:?}");
    assert!(rate > 99.5, "{rate:.2}% succeeded");
    let headers = endpoints.iter().flat_map(|e| e.attempt_headers.lock().unwrap().clone()).collect::<Vec<_>>();
    assert!(headers.iter().any(|h| h == "2"), "retries are marked on the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_bounds_attempts_during_a_full_outage() {
    let dead = flaky(100, 4).await;
    let (client, stats) = stack(&[&dead]);
    let n = 1000;
    let (ok, seconds) = run(&client, http::Method::GET, bytes::Bytes::new(), n).await;
    let attempts = dead.attempts.load(Ordering::SeqCst);
    // ratio 0.2 and 10 retries/s: the budget the policy states.
    let bound = n as f64 * 1.2 + 10.0 * seconds;
    eprintln!(
        "outage: {n} requests in {seconds:.2} s -> {attempts} attempts (bound {bound:.0}; 3 attempts each would be {}), {} budget-refused",
        3 * n,
        stats.budget_exhausted()
    );
    assert_eq!(ok, 0);
    assert!((attempts as f64) <= bound, "{attempts} attempts > {bound}");
    assert!(stats.budget_exhausted() > 0);
}

#[tokio::test]
async fn post_is_not_retried_and_a_large_body_is_sent_once() {
    let dead = flaky(100, 5).await;
    let (client, stats) = stack(&[&dead]);
    let (ok, _) = run(&client, http::Method::POST, bytes::Bytes::from_static(b"{}"), 10).await;
    assert_eq!((ok, dead.attempts.load(Ordering::SeqCst)), (0, 10), "POST is sent once");

    let big = bytes::Bytes::from(vec![b'x'; 128 * 1024]);
    let mut client = client;
    let request = http::Request::put("/reviews/1").body(Full::new(big)).unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(dead.attempts.load(Ordering::SeqCst), 11, "an idempotent PUT over the replay cap is sent once");
    assert_eq!(stats.not_replayable(), 1);
}

/// A service that calls `next` through a retrying mesh client and answers with its status.
async fn hop(next: &Flaky, depth: u32, discovery: &StaticDiscovery, name: &str) -> ServerHandle {
    let client = stack_with(next, depth, discovery, name);
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let client = client.clone();
        async move {
            let request = http::Request::get("/").body(Full::new(bytes::Bytes::new())).unwrap();
            let status = match client.oneshot(request).await {
                Ok(response) => response.status(),
                Err(_) => http::StatusCode::BAD_GATEWAY,
            };
            let mut response = http::Response::new(String::new());
            *response.status_mut() = if status == 200 { status } else { http::StatusCode::SERVICE_UNAVAILABLE };
            Ok::<_, Infallible>(response)
        }
    });
    let service = handler;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap()
}

/// A retrying client of service `name` at `next`, with a budget too large to matter.
fn stack_with(next: &Flaky, depth: u32, discovery: &StaticDiscovery, name: &str) -> Client {
    let name: ServiceName = name.parse().unwrap();
    let mut policy = policy();
    policy.max_retry_depth = depth;
    policy.budget.ratio = 100.0;
    policy.budget.min_per_second = 100_000;
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(next.handle.local_addr()))
            .route(Route::new(RouteName::new("default").unwrap()).with_retry(policy))
            .build()
            .unwrap(),
    );
    MeshClient::builder(discovery.clone(), name).identity(identity("/caller")).build().unwrap()
}

async fn chain(depth: u32) -> usize {
    let discovery = StaticDiscovery::new();
    let c = flaky(100, 9).await;
    let b = hop(&c, depth, &discovery, "c").await;
    let b = Flaky { handle: b, attempts: Arc::default(), failures: Arc::default(), attempt_headers: Arc::default() };
    let a = hop(&b, depth, &discovery, "b").await;
    let a = Flaky { handle: a, attempts: Arc::default(), failures: Arc::default(), attempt_headers: Arc::default() };
    let edge = stack_with(&a, depth, &discovery, "a");
    for _ in 0..20 {
        let request = http::Request::get("/").body(Full::new(bytes::Bytes::new())).unwrap();
        let response = edge.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 503);
    }
    c.attempts.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_guard_keeps_a_chain_from_multiplying_retries() {
    let guarded = chain(1).await;
    let unguarded = chain(10).await;
    eprintln!(
        "client -> a -> b -> c (c always 503), 3 attempts per hop, 20 requests: c received {guarded} attempts with the guard (depth 1), {unguarded} without"
    );
    assert_eq!(guarded, 20 * 3, "only the first retrying hop retries");
    assert_eq!(unguarded, 20 * 27, "3 x 3 x 3 without the guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_attempt_is_retried_on_the_other_endpoint() {
    // Two endpoints, one failing 30%, and a budget too large to matter: a retry never goes back to
    // the endpoint that failed it, so every request succeeds, and every 503 was retried exactly
    // once. (With the default budget of 20% the outcome would depend on how P2C splits the load,
    // which the retries themselves skew towards the flaky endpoint.)
    let endpoints = [flaky(30, 11).await, flaky(0, 12).await];
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    let mut policy = policy();
    policy.budget.ratio = 100.0;
    policy.budget.min_per_second = 100_000;
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoints(endpoints.iter().map(|f| Endpoint::new(f.handle.local_addr())))
            .route(Route::new(RouteName::new("default").unwrap()).with_retry(policy))
            .build()
            .unwrap(),
    );
    let client: Client = MeshClient::builder(discovery, name).identity(identity("/frontend")).build().unwrap();
    let stats = client.retry_stats();
    let (ok, _) = run(&client, http::Method::GET, bytes::Bytes::new(), 1000).await;
    let failed = endpoints[0].failures.load(Ordering::SeqCst);
    eprintln!("{ok}/1000 succeeded, {failed} attempts failed, {} retries", stats.retries());
    assert_eq!(ok, 1000);
    assert!(failed > 0, "the flaky endpoint received traffic");
    assert_eq!(stats.retries() as usize, failed, "one retry per failed attempt");
    assert_eq!(endpoints[1].failures.load(Ordering::SeqCst), 0);
    assert!(endpoints[0].attempt_headers.lock().unwrap().is_empty(), "no retry went back to the flaky endpoint");
}
