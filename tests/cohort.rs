//! Cohort pinning across hops: frontend -> a -> b, where a v2 of `a` reaches v2 of `b` although
//! `b`'s weights send everything to v1. The application code in `a` copies no header.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::convert::Infallible;

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery, Subset, Weight},
    tower::{
        client::{ClientConfig, MeshClient},
        server::{Server, ServerHandle},
    },
};
use support::{backend, backend_id, identity};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

fn snapshot(name: &str, endpoints: &[(std::net::SocketAddr, &str)], weights: &[(&str, u32)]) -> ServiceSnapshot {
    let route = weights.iter().fold(Route::new(RouteName::new("default").unwrap()), |r, (s, w)| {
        r.with_target(s.parse().unwrap(), Weight::new(*w).unwrap())
    });
    ServiceSnapshot::builder(name.parse().unwrap())
        .identity(backend_id())
        .endpoints(endpoints.iter().map(|(a, v)| Endpoint::new(*a).with_label("version", *v).unwrap()))
        .subset(Subset::version("v1").unwrap())
        .subset(Subset::version("v2").unwrap())
        .route(route)
        .build()
        .unwrap()
}

fn client(discovery: &StaticDiscovery, service: &str, cohort: bool) -> MeshClient<Body> {
    let mut config = ClientConfig::default();
    config.seed = Some(3);
    if cohort {
        config.cohort_header = Some(http::HeaderName::from_static("x-mesh-cohort"));
    }
    let name: ServiceName = service.parse().unwrap();
    MeshClient::builder(discovery.clone(), name).identity(identity("/caller")).config(config).build().unwrap()
}

/// Service `a`, version `version`: calls `b` through the mesh and reports both versions.
async fn service_a(version: &'static str, b: MeshClient<Body>) -> ServerHandle {
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let b = b.clone();
        async move {
            // Plain application code: no header is read or copied here.
            let response = b.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.unwrap();
            let from_b = response.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(http::Response::new(format!("a-{version}/{}", String::from_utf8_lossy(&from_b))))
        }
    });
    let service = handler;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap()
}

async fn run(cohort: bool) -> Vec<String> {
    let discovery = StaticDiscovery::new();
    let (b1, b2) = (backend("b-v1").await, backend("b-v2").await);
    discovery.set(snapshot("b", &[(b1.addr(), "v1"), (b2.addr(), "v2")], &[("v1", 100), ("v2", 0)]));
    let a1 = service_a("v1", client(&discovery, "b", cohort)).await;
    let a2 = service_a("v2", client(&discovery, "b", cohort)).await;
    discovery.set(snapshot("a", &[(a1.local_addr(), "v1"), (a2.local_addr(), "v2")], &[("v1", 50), ("v2", 50)]));
    let frontend = client(&discovery, "a", cohort);
    let mut answers = Vec::new();
    for _ in 0..40 {
        let response = frontend.clone().oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.unwrap();
        answers.push(String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_request_reaches_v2_of_the_next_service() {
    let answers = run(true).await;
    assert!(answers.iter().all(|a| a == "a-v1/b-v1" || a == "a-v2/b-v2"), "{answers:?}");
    let v2 = answers.iter().filter(|a| *a == "a-v2/b-v2").count();
    assert!((15..=25).contains(&v2), "a's 50/50 split sent {v2} of 40 to v2: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cohorts_the_next_hop_splits_on_its_own() {
    let answers = run(false).await;
    assert!(answers.iter().all(|a| a.ends_with("/b-v1")), "{answers:?}");
    let v2 = answers.iter().filter(|a| a.starts_with("a-v2")).count();
    assert!((15..=25).contains(&v2), "{answers:?}");
}
