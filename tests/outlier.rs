//! Outlier detection over real sockets: an endpoint that always fails is ejected, gets no traffic
//! while ejected, comes back when its time is up, and the ejected share never passes the cap.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{convert::Infallible, time::Duration};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{LoadBalancer, OutlierDetection, Percentage},
    },
    tower::{client::MeshClient, server::Server},
};
use support::{Backend, backend, backend_id, identity};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

/// A backend that always answers 500, counting requests.
async fn broken() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            let mut response = http::Response::new(String::from("broken"));
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            Ok::<_, Infallible>(response)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap();
    let addr = handle.local_addr();
    std::mem::forget(handle); // lives until the test process ends
    (addr, hits)
}

fn client(addrs: &[std::net::SocketAddr], ejection: Duration) -> MeshClient<Body> {
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    let mut policy = OutlierDetection::default();
    policy.consecutive_failures = 3;
    policy.base_ejection_time = ejection;
    policy.max_ejection_time = ejection * 10;
    policy.max_ejection_percent = Percentage::new(50.0).unwrap();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoints(addrs.iter().map(|a| Endpoint::new(*a)))
            .load_balancer(LoadBalancer::round_robin())
            .build()
            .unwrap(),
    );
    discovery.update(&name, |spec| spec.policies.outlier_detection = Some(policy)).unwrap();
    MeshClient::builder(discovery, name).identity(identity("/web")).build().unwrap()
}

async fn get(client: &MeshClient<Body>) -> http::StatusCode {
    let response = client.clone().oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_returns_after_its_time() {
    let good: Vec<Backend> = vec![backend("a").await, backend("b").await];
    let (bad, bad_hits) = broken().await;
    let ejection = Duration::from_secs(2);
    let client = client(&[good[0].addr(), good[1].addr(), bad], ejection);
    let stats = client.outlier_stats();

    // Round robin: the broken endpoint fails every third request until its third failure.
    while stats.ejections() == 0 {
        get(&client).await;
    }
    let ejected_at = tokio::time::Instant::now();
    assert_eq!(bad_hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    // While ejected it gets nothing, and every request succeeds.
    for _ in 0..30 {
        assert_eq!(get(&client).await, 200);
    }
    assert!(ejected_at.elapsed() < ejection, "the check ran within the ejection (machine too slow?)");
    assert_eq!(bad_hits.load(std::sync::atomic::Ordering::SeqCst), 3, "no traffic while ejected");

    // When its time is up it is tried again, fails, and is ejected for longer.
    tokio::time::sleep_until(ejected_at + ejection + Duration::from_millis(50)).await;
    while stats.ejections() == 1 {
        get(&client).await;
    }
    assert_eq!(bad_hits.load(std::sync::atomic::Ordering::SeqCst), 6, "back in rotation after the ejection");
    eprintln!("outlier: ejected after 3 failures, 0 requests during the 2 s ejection, back after it, ejected again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_the_max_share_is_ejected() {
    let good = backend("a").await;
    let (bad1, _) = broken().await;
    let (bad2, _) = broken().await;
    let client = client(&[good.addr(), bad1, bad2], Duration::from_secs(30));
    let stats = client.outlier_stats();
    // 50% of three endpoints: one may be out. The other broken one keeps failing, and stays in.
    let mut failures = 0;
    for _ in 0..60 {
        if get(&client).await != 200 {
            failures += 1;
        }
    }
    assert_eq!(stats.ejections(), 1, "only one of three ejected at once");
    assert!(stats.refused() > 0, "the second ejection was refused by the cap");
    assert!(failures > 20, "the broken endpoint left in rotation still gets traffic ({failures})");
}
