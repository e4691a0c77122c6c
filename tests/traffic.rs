//! Traffic management over real sockets: weighted splits, live weight changes, blue-green
//! switches, subset overrides, endpoint churn, P2C and consistent hashing.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, HeaderName, Route, RouteMatch, RouteName, ServiceName, ServiceSnapshot, ServiceSpec, StaticDiscovery,
        Subset, Weight, policy::LoadBalancer,
    },
    tower::{
        Upstream,
        client::{ClientConfig, ClientError, ErrorKind, MeshClient, NoRoute, UnknownSubset},
    },
};
use support::{Backend, backend, backend_id, identity, slow_backend};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

fn name() -> ServiceName {
    "reviews".parse().unwrap()
}

fn labelled(b: &Backend, version: &str) -> Endpoint {
    Endpoint::new(b.addr()).with_label("version", version).unwrap()
}

fn route(weights: &[(&str, u32)]) -> Route {
    weights.iter().fold(Route::new(RouteName::new("default").unwrap()), |r, (subset, w)| {
        r.with_target(subset.parse().unwrap(), Weight::new(*w).unwrap())
    })
}

fn set_weights(spec: &mut ServiceSpec, weights: &[(&str, u32)]) {
    spec.routes = vec![route(weights)];
}

/// v1 on two endpoints, v2 on one.
async fn canary(weights: &[(&str, u32)]) -> (StaticDiscovery, Vec<Backend>) {
    let backends = vec![backend("v1-a").await, backend("v1-b").await, backend("v2-a").await];
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name())
            .identity(backend_id())
            .endpoint(labelled(&backends[0], "v1"))
            .endpoint(labelled(&backends[1], "v1"))
            .endpoint(labelled(&backends[2], "v2"))
            .subset(Subset::version("v1").unwrap())
            .subset(Subset::version("v2").unwrap())
            .route(route(weights))
            .build()
            .unwrap(),
    );
    (discovery, backends)
}

fn client(discovery: &StaticDiscovery) -> MeshClient<Body> {
    let mut config = ClientConfig::default();
    config.seed = Some(42);
    MeshClient::builder(discovery.clone(), name()).identity(identity("/frontend")).config(config).build().unwrap()
}

fn get() -> http::Request<Body> {
    http::Request::get("/reviews/1").body(Empty::new()).unwrap()
}

/// Sends `n` requests from `concurrency` callers; returns requests per subset.
async fn send(client: &MeshClient<Body>, n: usize, concurrency: usize) -> HashMap<String, usize> {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let tickets = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, counts, tickets) = (client.clone(), counts.clone(), tickets.clone());
            tokio::spawn(async move {
                while tickets.fetch_add(1, Ordering::Relaxed) < n {
                    let response = client.clone().oneshot(get()).await.unwrap();
                    assert_eq!(response.status(), 200);
                    let subset = response.extensions().get::<Upstream>().unwrap().subset.clone().unwrap();
                    response.into_body().collect().await.unwrap();
                    *counts.lock().unwrap().entry(subset.to_string()).or_insert(0) += 1;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_over_10000_requests_is_within_one_and_a_half_points() {
    let (discovery, backends) = canary(&[("v1", 90), ("v2", 10)]).await;
    let counts = send(&client(&discovery), 10_000, 16).await;
    let v2 = 100.0 * counts["v2"] as f64 / 10_000.0;
    eprintln!("split 90/10 over 10,000 requests: {counts:?} (v2 {v2:.2}%)");
    assert!((v2 - 10.0).abs() < 1.5, "{counts:?}");
    // The subset's endpoints share its traffic.
    assert!(backends[0].hits() > 3000 && backends[1].hits() > 3000, "{} {}", backends[0].hits(), backends[1].hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_live_and_blue_green_switches_atomically() {
    let (discovery, _backends) = canary(&[("v1", 100), ("v2", 0)]).await;
    let client = client(&discovery);
    // `epoch` is raised right after each change is published; a request that reads the new epoch
    // before it is sent must follow the new weights.
    let epoch = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (client, epoch, stop, seen, failed, done_tx) =
                (client.clone(), epoch.clone(), stop.clone(), seen.clone(), failed.clone(), done_tx.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent_in = epoch.load(Ordering::SeqCst);
                    match client.clone().oneshot(get()).await {
                        Ok(response) if response.status() == 200 => {
                            let subset = response.extensions().get::<Upstream>().unwrap().subset.clone().unwrap();
                            response.into_body().collect().await.unwrap();
                            seen.lock().unwrap().push((sent_in, subset.to_string()));
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done_tx.send_modify(|n| *n += 1);
                }
            })
        })
        .collect();
    let wait_for_requests = |n: usize| {
        let mut done = done_rx.clone();
        async move {
            let target = *done.borrow() + n;
            done.wait_for(|d| *d >= target).await.unwrap();
        }
    };
    wait_for_requests(500).await;
    // Canary steps 90/10, 50/50, then the blue-green flip to 0/100.
    for (i, weights) in
        [[("v1", 90), ("v2", 10)], [("v1", 50), ("v2", 50)], [("v1", 0), ("v2", 100)]].iter().enumerate()
    {
        discovery.update(&name(), |spec| set_weights(spec, weights)).unwrap();
        epoch.store(i as u64 + 1, Ordering::SeqCst);
        wait_for_requests(2000).await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let share = |e: u64| {
        let in_epoch: Vec<_> = seen.iter().filter(|(s, _)| *s == e).collect();
        let v2 = in_epoch.iter().filter(|(_, subset)| subset == "v2").count();
        (in_epoch.len(), 100.0 * v2 as f64 / in_epoch.len().max(1) as f64)
    };
    eprintln!(
        "v2 share by step: 100/0 {:?}, 90/10 {:?}, 50/50 {:?}, 0/100 {:?}",
        share(0),
        share(1),
        share(2),
        share(3)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed while weights changed");
    assert_eq!(share(0).1, 0.0, "weight 0 means no traffic");
    assert_eq!(share(3).1, 100.0, "after the flip, no request reached v1");
    assert!((share(2).1 - 50.0).abs() < 5.0, "{:?}", share(2));
}

#[tokio::test]
async fn the_subset_header_pins_a_request_and_a_typo_is_an_error() {
    let (discovery, _backends) = canary(&[("v1", 100), ("v2", 0)]).await;
    let client = client(&discovery);
    for _ in 0..20 {
        let mut request = get();
        request.headers_mut().insert("x-mesh-subset", "v2".parse().unwrap());
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.extensions().get::<Upstream>().unwrap().subset.as_ref().unwrap().as_str(), "v2");
    }
    let mut request = get();
    request.headers_mut().insert("x-mesh-subset", "v3".parse().unwrap());
    let error = client.clone().oneshot(request).await.unwrap_err();
    let error = error.downcast_ref::<ClientError>().expect("a ClientError");
    assert_eq!(error.kind(), ErrorKind::UnknownSubset);
    assert_eq!(error.find::<UnknownSubset>().expect("UnknownSubset").subset(), "v3");
}

#[tokio::test]
async fn a_request_no_route_matches_is_refused_with_no_route() {
    let (discovery, _backends) = canary(&[("v1", 100)]).await;
    discovery
        .update(&name(), |spec| {
            spec.routes[0].matches = RouteMatch::any().path(mesh::core::PathMatch::prefix("/reviews").unwrap());
        })
        .unwrap();
    let client = client(&discovery);
    assert_eq!(client.clone().oneshot(get()).await.unwrap().status(), 200);
    let error = client.oneshot(http::Request::get("/ratings").body(Empty::new()).unwrap()).await.unwrap_err();
    let error = error.downcast_ref::<ClientError>().expect("a ClientError");
    assert_eq!((error.kind(), error.attempts()), (ErrorKind::NoRoute, 0));
    let no_route = error.find::<NoRoute>().expect("NoRoute");
    assert!(no_route.to_string().contains("GET /ratings"), "{no_route}");
    assert_eq!(error.to_string(), "no route of service reviews matches GET /ratings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_every_few_milliseconds_fails_no_request() {
    let mut backends = Vec::new();
    for name in ["e0", "e1", "e2", "e3", "e4", "e5"] {
        backends.push(backend(name).await);
    }
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name())
            .identity(backend_id())
            .endpoints(addrs.iter().map(|a| Endpoint::new(*a)))
            .build()
            .unwrap(),
    );
    let client = client(&discovery);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, sent, failed) = (client.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = match client.clone().oneshot(get()).await {
                        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                        Err(e) => {
                            eprintln!("failed: {e}");
                            false
                        }
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // 300 membership changes, 2 ms apart: a seeded random non-empty subset of the six each time.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mask = (state % 63) + 1;
        discovery
            .update(&name(), |spec| {
                spec.endpoints = addrs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, a)| Endpoint::new(*a))
                    .collect();
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("churn: 300 changes, {sent} requests, {failed} failed");
    assert_eq!(failed, 0);
    assert!(backends.iter().all(|b| b.hits() > 0), "every endpoint served at some point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_markedly_less_to_a_slow_endpoint() {
    let backends = [
        backend("fast-1").await,
        backend("fast-2").await,
        backend("fast-3").await,
        slow_backend("slow", Duration::from_millis(25)).await,
    ];
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name())
            .identity(backend_id())
            .endpoints(backends.iter().map(|b| Endpoint::new(b.addr())))
            .build()
            .unwrap(),
    );
    let client = client(&discovery);
    let tickets = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (client, tickets) = (client.clone(), tickets.clone());
            tokio::spawn(async move {
                while tickets.fetch_add(1, Ordering::Relaxed) < 4000 {
                    let r = client.clone().oneshot(get()).await.unwrap();
                    r.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let hits: Vec<_> = backends.iter().map(|b| (b.name, b.hits())).collect();
    let slow_share = 100.0 * backends[3].hits() as f64 / 4000.0;
    eprintln!(
        "p2c over 4,000 requests, 8 callers, one endpoint 25 ms slower: {hits:?} (slow {slow_share:.1}%, fair 25%)"
    );
    // Fair would be 25%; a correct P2C gives the slow endpoint a few percent (2.1% here).
    assert!(slow_share < 10.0, "the slow endpoint got {slow_share:.1}%: {hits:?}");
}

#[tokio::test]
async fn ring_hash_keeps_a_user_on_one_endpoint() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name())
            .identity(backend_id())
            .endpoints(backends.iter().map(|b| Endpoint::new(b.addr())))
            .load_balancer(LoadBalancer::ring_hash(HeaderName::new("x-user").unwrap()))
            .build()
            .unwrap(),
    );
    let client = client(&discovery);
    let mut owners = HashMap::new();
    for round in 0..3 {
        for user in 0..50 {
            let mut request = get();
            request.headers_mut().insert("x-user", format!("user-{user}").parse().unwrap());
            let response = client.clone().oneshot(request).await.unwrap();
            let address = response.extensions().get::<Upstream>().unwrap().address;
            let owner = owners.entry(user).or_insert(address);
            assert_eq!(*owner, address, "user {user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "50 users spread over the 3 endpoints");
}

/// A shadow backend: records what it receives, then answers 503 or never answers.
async fn shadow(
    hang: bool,
) -> (Backend, tokio::sync::mpsc::UnboundedReceiver<(Option<String>, bytes::Bytes)>, mesh::tower::server::ServerHandle)
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let marker = req.headers().get("x-mesh-mirror").map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let _ = tx.send((marker, body));
            if hang {
                std::future::pending::<()>().await;
            }
            let mut response = http::Response::new(String::from("shadow failure"));
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = mesh::tower::server::Server::builder().identity(identity("/backend")).build().unwrap();
    let handle = server.spawn(listener, service).unwrap();
    let primary = backend("v1-primary").await;
    (primary, rx, handle)
}

async fn mirrored_service(
    primary: &Backend,
    shadow_addr: std::net::SocketAddr,
    config: ClientConfig,
) -> MeshClient<http_body_util::Full<bytes::Bytes>> {
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name())
            .identity(backend_id())
            .endpoint(labelled(primary, "v1"))
            .endpoint(Endpoint::new(shadow_addr).with_label("version", "shadow").unwrap())
            .subset(Subset::version("v1").unwrap())
            .subset(Subset::version("shadow").unwrap())
            .route(
                route(&[("v1", 100)])
                    .with_mirror("shadow".parse().unwrap(), mesh::core::policy::Percentage::new(100.0).unwrap()),
            )
            .build()
            .unwrap(),
    );
    MeshClient::builder(discovery, name()).identity(identity("/frontend")).config(config).build().unwrap()
}

fn post(body: &'static [u8]) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post("/reviews").body(http_body_util::Full::new(bytes::Bytes::from_static(body))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_changes_nothing_for_the_caller_and_gets_marked_copies() {
    let (primary, mut received, shadow_handle) = shadow(false).await;
    let client = mirrored_service(&primary, shadow_handle.local_addr(), ClientConfig::default()).await;
    for _ in 0..20 {
        let response = client.clone().oneshot(post(b"{\"stars\":5}")).await.unwrap();
        assert_eq!(response.status(), 200, "the caller sees the primary's answer only");
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "v1-primary");
    }
    for _ in 0..20 {
        let (marker, body) = received.recv().await.unwrap();
        assert_eq!(marker.as_deref(), Some("1"), "copies are marked");
        assert_eq!(body, "{\"stars\":5}", "copies carry the body");
    }
    assert_eq!(primary.hits(), 20);
    let stats = client.mirror_stats();
    // The shadow's 503s are answers: the copies were sent; none reached the caller.
    eventually(|| stats.sent() == 20).await;
    assert_eq!(stats.skipped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_changes_nothing_and_large_bodies_are_not_copied() {
    let (primary, mut received, shadow_handle) = shadow(true).await;
    let mut config = ClientConfig::default();
    config.mirror_body_limit = 64;
    let client = mirrored_service(&primary, shadow_handle.local_addr(), config).await;
    // Every primary completes although every copy hangs at the shadow.
    let calls: Vec<_> = (0..40).map(|_| tokio::spawn(client.clone().oneshot(post(b"small")))).collect();
    for call in calls {
        let response = tokio::time::timeout(Duration::from_secs(30), call).await.unwrap().unwrap().unwrap();
        assert_eq!(response.status(), 200);
    }
    for _ in 0..40 {
        received.recv().await.unwrap();
    }
    // A body over the limit is sent once, to the primary, and the copy is skipped.
    let big: &'static [u8] = &[b'x'; 1024];
    let response = client.clone().oneshot(post(big)).await.unwrap();
    assert_eq!(response.status(), 200);
    let stats = client.mirror_stats();
    eventually(|| stats.skipped() == 1).await;
    assert_eq!(primary.hits(), 41);
}

/// Mirrors complete in their own tasks, after the caller's response: wait (bounded) for a count.
async fn eventually(condition: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the condition held within 30 s");
}
