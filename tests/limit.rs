//! Circuit breaking: beyond the in-flight and waiting limits, requests fail fast.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use http_body_util::Empty;
use mesh::{
    core::{Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery, policy::CircuitBreaker},
    tower::client::{ClientError, ErrorKind, MeshClient, shed::Overloaded},
};
use support::{Gate, backend_id, gated_backend, identity};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limits_requests_fail_fast_with_overloaded() {
    let gate = Gate::new();
    let slow = gated_backend("slow", gate.clone()).await;
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(slow.addr()))
            .build()
            .unwrap(),
    );
    let mut breaker = CircuitBreaker::default();
    breaker.max_concurrent = 4;
    breaker.max_pending = 2;
    discovery.update(&name, |spec| spec.policies.circuit_breaker = Some(breaker)).unwrap();

    let client = MeshClient::builder(discovery.clone(), name.clone())
        .identity(identity("/web"))
        .build::<Empty<bytes::Bytes>>()
        .unwrap();
    let service = client.clone();

    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..20 {
        let (service, done) = (service.clone(), done.clone());
        tokio::spawn(async move {
            let _ = done.send(service.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await);
        });
    }
    // With the backend holding every request: four in flight, two waiting, fourteen refused at
    // once. Only the refusals can finish while the gate is closed.
    for _ in 0..14 {
        let error = results.recv().await.unwrap().unwrap_err();
        let error = error.downcast_ref::<ClientError>().expect("a ClientError");
        assert_eq!(error.kind(), ErrorKind::Overloaded, "{error}");
        assert!(error.find::<Overloaded>().is_some(), "{error}");
        assert!(error.to_string().starts_with("service reviews is at its limit"), "{error}");
    }
    gate.wait_arrivals(4).await;
    assert_eq!(client.shed(), 14);
    gate.open();
    for _ in 0..6 {
        assert_eq!(results.recv().await.unwrap().unwrap().status(), 200, "four in flight and two that waited");
    }
    assert_eq!(slow.hits(), 6);
}
