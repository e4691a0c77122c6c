//! The client path resolves each request once and accounts for every attempt: a hanging canary
//! shows as failing everywhere, a connect failure sends the retry to another endpoint of the same
//! subset, a split holds under retries, and a snapshot change mid-request cannot mix versions.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery, Subset, Weight,
        policy::{LoadBalancer, OutlierDetection, Percentage, RetryOn, RetryPolicy},
    },
    tower::{
        Upstream,
        client::{ClientConfig, ClientError, ErrorKind, MeshClient},
        metrics as names,
        server::{Server, ServerHandle},
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{backend_id, identity};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

fn name() -> ServiceName {
    "reviews".parse().unwrap()
}

/// A backend that answers with its address; `fail` of its requests (seeded) get a 503, and
/// `hang` makes every request sleep far past any route timeout.
async fn backend(fail: f64, hang: bool, seed: u64) -> (ServerHandle, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (counter, state) = (hits.clone(), Arc::new(AtomicU64::new(seed)));
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut z = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
        let failed = ((z >> 11) as f64 / (1u64 << 53) as f64) < fail;
        async move {
            if hang {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            let mut response = http::Response::new(String::from("ok"));
            if failed {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(identity("/backend")).drain_timeout(Duration::from_millis(50));
    (server.build().unwrap().spawn(listener, service).unwrap(), hits)
}

fn split(v1: u32, v2: u32) -> Route {
    Route::new(RouteName::new("default").unwrap())
        .with_target("v1".parse().unwrap(), Weight::new(v1).unwrap())
        .with_target("v2".parse().unwrap(), Weight::new(v2).unwrap())
}

fn snapshot(v1: &[SocketAddr], v2: &[SocketAddr], route: Route) -> ServiceSnapshot {
    let endpoint = |addr: &SocketAddr, version| Endpoint::new(*addr).with_label("version", version).unwrap();
    ServiceSnapshot::builder(name())
        .identity(backend_id())
        .endpoints(v1.iter().map(|a| endpoint(a, "v1")))
        .endpoints(v2.iter().map(|a| endpoint(a, "v2")))
        .subset(Subset::version("v1").unwrap())
        .subset(Subset::version("v2").unwrap())
        .route(route)
        .build()
        .unwrap()
}

fn client(discovery: &StaticDiscovery, seed: u64) -> MeshClient<Body> {
    let mut config = ClientConfig::default();
    config.seed = Some(seed);
    MeshClient::builder(discovery.clone(), name()).identity(identity("/web")).config(config).build().unwrap()
}

/// Sends `n` GETs from `callers` tasks; returns each outcome: the final `Upstream`, or the error.
async fn send(client: &MeshClient<Body>, n: usize, callers: usize) -> Vec<Result<Upstream, ClientError>> {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let tickets = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, outcomes, tickets) = (client.clone(), outcomes.clone(), tickets.clone());
            tokio::spawn(async move {
                while tickets.fetch_add(1, Ordering::Relaxed) < n {
                    let request = http::Request::get("/reviews/1").body(Body::new()).unwrap();
                    let outcome = match client.clone().oneshot(request).await {
                        Ok(response) => {
                            let upstream = response.extensions().get::<Upstream>().cloned().unwrap();
                            let status = response.status();
                            response.into_body().collect().await.unwrap();
                            assert_eq!(status, 200, "{upstream:?}");
                            Ok(upstream)
                        }
                        Err(error) => match error.downcast::<ClientError>() {
                            Ok(error) => Err(*error),
                            Err(other) => panic!("not a ClientError: {other}"),
                        },
                    };
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(outcomes).unwrap().into_inner().unwrap()
}

/// The scenario: v2 sleeps far past a 200 ms route timeout. Before the redesign its
/// attempts were missing from the attempt signals, its timeouts were filed under no subset, and
/// it was never ejected: a canary that hangs looked healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_canary_fails_in_every_signal_and_is_ejected() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let (v1, _) = backend(0.0, false, 1).await;
    let (v2, v2_hits) = backend(0.0, true, 2).await;
    let discovery = StaticDiscovery::new();
    let route = split(50, 50).with_timeout(Duration::from_millis(200));
    discovery.set(snapshot(&[v1.local_addr()], &[v2.local_addr()], route));
    let mut outlier = OutlierDetection::default();
    outlier.consecutive_failures = 3;
    outlier.max_ejection_percent = Percentage::new(50.0).unwrap();
    discovery.update(&name(), |spec| spec.policies.outlier_detection = Some(outlier)).unwrap();
    let client = client(&discovery, 7);

    let outcomes = send(&client, 40, 8).await;
    let timeouts: Vec<&ClientError> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let v2_requests = timeouts.len() as u64;
    let v1_requests = 40 - v2_requests;
    assert!((15..=25).contains(&v2_requests), "the 50/50 split sends about half to the hanging v2: {v2_requests}");
    assert!(outcomes.iter().filter_map(|o| o.as_ref().ok()).all(|u| u.subset.as_ref().unwrap().as_str() == "v1"));
    for error in &timeouts {
        assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
        assert_eq!(error.subset().map(|s| s.as_str()), Some("v2"), "{error}");
        assert_eq!(error.route().map(|r| r.as_str()), Some("default"), "{error}");
        assert_eq!(error.endpoint(), Some(v2.local_addr()), "{error}");
    }
    assert!(v2_hits.load(Ordering::SeqCst) >= 1);

    let signals = |set: mesh::tower::telemetry::GoldenSignals| -> HashMap<String, (u64, f64)> {
        set.snapshot()
            .into_iter()
            .map(|s| (s.subset.as_ref().map_or("none".into(), |n| n.to_string()), (s.requests, s.success_rate())))
            .collect()
    };
    let attempts = signals(client.telemetry().attempt_signals());
    let requests = signals(client.telemetry().golden_signals());
    eprintln!("attempt signals {attempts:?}; request signals {requests:?}");
    for set in [&attempts, &requests] {
        assert_eq!(set["v2"], (v2_requests, 0.0), "v2: every request timed out: {set:?}");
        assert_eq!(set["v1"], (v1_requests, 1.0), "{set:?}");
        assert!(!set.contains_key("none"), "nothing is filed under no subset: {set:?}");
    }
    assert!(client.outlier_stats().ejections() >= 1, "the hanging endpoint is ejected");

    let timed_out_v2: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| key.key().name() == names::REQUESTS)
        .filter(|(key, _, _, _)| {
            let labels: HashMap<_, _> =
                key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            labels.get("subset").map(String::as_str) == Some("v2")
                && labels.get("route").map(String::as_str) == Some("default")
                && labels.get("status_class").map(String::as_str) == Some("error")
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(timed_out_v2, v2_requests, "mesh_requests_total{{subset=\"v2\",status_class=\"error\"}}");
}

/// v1 has a dead endpoint and a live one, v2 one live endpoint: every request the split sends to
/// v1 that first meets the dead endpoint is retried on v1's live one, never on v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_sends_the_retry_to_another_endpoint_of_the_same_subset() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (live_v1, _) = backend(0.0, false, 3).await;
    let (live_v2, v2_hits) = backend(0.0, false, 4).await;
    let mut policy = RetryPolicy::default();
    policy.retry_on = vec![RetryOn::ConnectFailure];
    policy.backoff.base = Duration::from_millis(1);
    policy.backoff.max = Duration::from_millis(1);
    policy.budget.min_per_second = 100_000;
    policy.budget.ratio = 10.0;
    let discovery = StaticDiscovery::new();
    let route = split(50, 50).with_retry(policy);
    discovery.set(snapshot(&[dead, live_v1.local_addr()], &[live_v2.local_addr()], route));
    discovery.update(&name(), |spec| spec.policies.load_balancer = LoadBalancer::round_robin()).unwrap();
    let client = client(&discovery, 11);

    let outcomes = send(&client, 200, 4).await;
    let upstreams: Vec<&Upstream> = outcomes.iter().map(|o| o.as_ref().expect("every request succeeds")).collect();
    let retried: Vec<&&Upstream> = upstreams.iter().filter(|u| u.attempt > 1).collect();
    assert!(!retried.is_empty(), "round robin sends some first attempts to the dead endpoint");
    for upstream in &retried {
        assert_eq!(upstream.subset.as_ref().unwrap().as_str(), "v1", "{upstream:?}");
        assert_eq!(upstream.address, live_v1.local_addr(), "{upstream:?}");
        assert_eq!(upstream.attempt, 2, "the retry avoids the endpoint that failed: {upstream:?}");
    }
    let on_v2 = upstreams.iter().filter(|u| u.subset.as_ref().unwrap().as_str() == "v2").count();
    assert_eq!(on_v2, 100, "the split is decided once per request");
    assert_eq!(v2_hits.load(Ordering::SeqCst), 100, "no retry went to v2");
}

/// One of v2's endpoints fails half its requests and retries (to v2's other endpoint) hide it from
/// the caller; the split still holds per request (it was 909/91 when retries re-picked the
/// subset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_per_request_under_retries() {
    let (a, _) = backend(0.0, false, 5).await;
    let (b, _) = backend(0.0, false, 6).await;
    let (c, _) = backend(0.5, false, 7).await;
    let (d, _) = backend(0.0, false, 8).await;
    let mut policy = RetryPolicy::default();
    policy.retry_on = vec![RetryOn::GatewayError];
    policy.backoff.base = Duration::from_millis(1);
    policy.backoff.max = Duration::from_millis(1);
    policy.budget.min_per_second = 100_000;
    policy.budget.ratio = 10.0;
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(
        &[a.local_addr(), b.local_addr()],
        &[c.local_addr(), d.local_addr()],
        split(90, 10).with_retry(policy),
    ));
    let client = client(&discovery, 13);

    let n = 2000;
    let outcomes = send(&client, n, 8).await;
    let upstreams: Vec<&Upstream> = outcomes.iter().map(|o| o.as_ref().expect("retries recover v2")).collect();
    let v2 = upstreams.iter().filter(|u| u.subset.as_ref().unwrap().as_str() == "v2").count();
    let share = 100.0 * v2 as f64 / n as f64;
    let retried_v2 = upstreams.iter().filter(|u| u.attempt > 1).count();
    eprintln!("v2 served {v2}/{n} requests ({share:.2}%); {retried_v2} needed a retry");
    assert!(retried_v2 > 0);
    assert!((share - 10.0).abs() <= 0.5, "v2's share {share:.2}% is not within 0.5 points of 10%");
    assert!(upstreams.iter().filter(|u| u.attempt > 1).all(|u| u.subset.as_ref().unwrap().as_str() == "v2"));
}
