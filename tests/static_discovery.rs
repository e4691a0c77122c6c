//! Endpoints changed in code while requests are in flight.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery, policy::LoadBalancer},
    tower::{Upstream, client::MeshClient},
};
use support::{Gate, backend, backend_id, gated_backend, identity};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

fn get() -> http::Request<Body> {
    http::Request::get("/reviews/1").body(Empty::new()).unwrap()
}

#[tokio::test]
async fn removing_an_endpoint_lets_its_in_flight_requests_complete() {
    let gate = Gate::new();
    let old = gated_backend("old", gate.clone()).await;
    let new = backend("new").await;

    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(old.addr()))
            .build()
            .unwrap(),
    );
    let client =
        MeshClient::builder(discovery.clone(), name.clone()).identity(identity("/web")).build::<Body>().unwrap();

    // Eight requests reach `old` and are held there.
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let response = client.oneshot(get()).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, mesh::tower::BoxError>((status, body))
            })
        })
        .collect();
    gate.wait_arrivals(8).await;

    // `old` leaves the endpoint set and starts draining, as a terminating pod would.
    discovery
        .update(&name, |spec| {
            spec.endpoints.retain(|ep| ep.address != old.addr());
            spec.endpoints.push(Endpoint::new(new.addr()));
        })
        .unwrap();
    let old_hits = old.hits();
    let draining = tokio::spawn(old.handle.shutdown());

    // New requests go to the new set at once.
    for _ in 0..20 {
        let response = client.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.extensions().get::<Upstream>().unwrap().address, new.addr());
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "new");
    }
    assert_eq!(new.hits(), 20);
    assert_eq!(old_hits, 0, "the held requests have not been answered yet");
    assert!(!draining.is_finished(), "the old endpoint waits for its in-flight requests");

    // The held requests complete, on the endpoint they started on.
    gate.open();
    for request in in_flight {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), request).await.unwrap().unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "old");
    }
    draining.await.unwrap().unwrap();
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoints(backends.iter().map(|b| Endpoint::new(b.addr())))
            .load_balancer(LoadBalancer::round_robin())
            .build()
            .unwrap(),
    );
    let client = MeshClient::builder(discovery, name).identity(identity("/web")).build::<Body>().unwrap();
    for _ in 0..300 {
        let response = client.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    for b in &backends {
        assert_eq!(b.hits(), 100, "backend {}", b.name);
    }
}
