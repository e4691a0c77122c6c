//! An axum `Router` served by mesh's HTTP server stack, configured on `Server`'s builder:
//! mTLS, then telemetry, authorization and the caller's deadline, then the router.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::time::Duration;

use axum::{Router, extract::Request, routing::get};
use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tower::{
        PeerIdentity, authz::AuthorizationLayer, client::MeshClient, context, server::Server, telemetry::TelemetryLayer,
    },
};
use support::{backend_id, identity};
use tower::ServiceExt;

fn app() -> Router {
    Router::new()
        .route(
            "/hello",
            get(|request: Request| async move {
                let caller = request.extensions().get::<PeerIdentity>().map(|p| p.id().to_string());
                format!("hello {}", caller.unwrap_or_default())
            }),
        )
        // The handler runs inside the caller's deadline: what it has left, in milliseconds.
        .route("/remaining", get(|| async { context::remaining().map_or(0, |d| d.as_millis()).to_string() }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_gets_telemetry_authorization_and_deadlines_in_one_call() {
    let name: ServiceName = "reviews".parse().unwrap();
    let telemetry = TelemetryLayer::server(name.clone());
    let signals = telemetry.golden_signals();
    let web = PrincipalMatch::Exact("spiffe://example.org/web".parse().unwrap());
    let server = Server::builder()
        .identity(identity("/backend"))
        .telemetry(telemetry)
        .authorization(AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![web])])))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = server.spawn(listener, app()).unwrap();

    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(handle.local_addr()))
            .route(Route::new(RouteName::new("all").unwrap()).with_timeout(Duration::from_millis(1500)))
            .build()
            .unwrap(),
    );
    let get = |client: &MeshClient<Empty<bytes::Bytes>>, path: &'static str| {
        let client = client.clone();
        async move {
            let response = client.oneshot(http::Request::get(path).body(Empty::new()).unwrap()).await.unwrap();
            let status = response.status();
            (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
        }
    };
    let web = MeshClient::builder(discovery.clone(), name.clone()).identity(identity("/web")).build().unwrap();
    assert_eq!(get(&web, "/hello").await, (http::StatusCode::OK, "hello spiffe://example.org/web".to_owned()));
    // The client's route timeout travels with the request; the handler runs inside it.
    let (status, left) = get(&web, "/remaining").await;
    let left: u64 = left.parse().unwrap();
    assert_eq!(status, 200);
    assert!(left > 0 && left <= 1500, "the handler had {left} ms left");

    let batch = MeshClient::builder(discovery, name).identity(identity("/batch")).build().unwrap();
    assert_eq!(get(&batch, "/hello").await.0, http::StatusCode::FORBIDDEN);

    // Telemetry is outermost: the denied request counts too.
    let seen: u64 = signals.snapshot().iter().map(|s| s.requests).sum();
    assert_eq!(seen, 3);
    handle.shutdown().await.unwrap();
}
