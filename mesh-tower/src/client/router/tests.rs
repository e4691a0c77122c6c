use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use mesh_core::{
    Discovery, Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
    policy::{RetryOn, RetryPolicy},
};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

use super::{Resolution, RouterLayer};
use crate::client::{
    ClientConfig,
    deadline::{CancelOnDeadline, DeadlineLayer},
    retry::{RetryBody, RetryLayer},
};

fn name() -> ServiceName {
    "reviews".parse().unwrap()
}

fn snapshot(max_attempts: u32, timeout: Duration) -> ServiceSnapshot {
    let mut retry = RetryPolicy::default();
    retry.max_attempts = max_attempts;
    retry.retry_on = vec![RetryOn::GatewayError];
    retry.budget.ratio = 10.0;
    retry.backoff.base = Duration::from_millis(1);
    retry.backoff.max = Duration::from_millis(1);
    ServiceSnapshot::builder(name())
        .endpoint(Endpoint::new("127.0.0.1:1".parse().unwrap()))
        .route(Route::new(RouteName::new("default").unwrap()).with_retry(retry).with_timeout(timeout))
        .build()
        .unwrap()
}

/// A new snapshot published while a request is in flight: every attempt of that request keeps
/// the version (policies, timeout, subset) it was resolved with; the next request takes the new.
#[tokio::test]
async fn a_snapshot_change_mid_request_does_not_mix_versions() {
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(3, Duration::from_secs(5)));
    // Per attempt: the snapshot version, the retry policy's attempts, the route timeout.
    type Seen = Vec<(u64, u32, Option<Duration>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let probe = {
        let (seen, arrived, release) = (seen.clone(), arrived.clone(), release.clone());
        // Only the first attempt of the first request waits for the new snapshot.
        let gated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tower::service_fn(move |request: Request<RetryBody<CancelOnDeadline<http_body_util::Empty<bytes::Bytes>>>>| {
            let (seen, arrived, release, gated) = (seen.clone(), arrived.clone(), release.clone(), gated.clone());
            async move {
                let resolution = request.extensions().get::<Resolution>().cloned().unwrap();
                let policy = resolution.retry_policy().unwrap().max_attempts;
                seen.lock().unwrap().push((resolution.version(), policy, resolution.timeout()));
                if !gated.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    arrived.notify_one();
                    release.notified().await;
                }
                let mut response = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, Infallible>(response)
            }
        })
    };
    let router = RouterLayer::new(discovery.watch(&name()), &ClientConfig::default());
    let stack = router.layer(DeadlineLayer::new().layer(RetryLayer::new().layer(probe)));

    let first = tokio::spawn(
        stack.clone().oneshot(Request::get("/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()),
    );
    arrived.notified().await;
    discovery.set(snapshot(5, Duration::from_secs(9)));
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 503);
    let first_request: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(first_request, vec![(1, 3, Some(Duration::from_secs(5))); 3], "three attempts, all of version 1");

    let response = stack.oneshot(Request::get("/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()).await;
    assert_eq!(response.unwrap().status(), 503);
    let second_request: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(second_request, vec![(2, 5, Some(Duration::from_secs(9))); 5], "the next request takes version 2");
}

/// gRFC A28: a route that does not forward (here a redirect) keeps its place: the requests it
/// matches fail at once, typed and 503 as an HTTP answer, and are not taken by the next route;
/// every other request is routed as usual.
#[tokio::test]
async fn a_route_that_does_not_forward_fails_only_its_requests() {
    use mesh_core::{HeaderMatch, RouteAction, RouteMatch};

    use crate::client::{ClientError, ErrorKind, ErrorResponseLayer, UnsupportedRoute};
    let discovery = StaticDiscovery::new();
    let jason = RouteMatch::any().header(HeaderMatch::exact("end-user".parse().unwrap(), "jason"));
    discovery.set(
        ServiceSnapshot::builder(name())
            .endpoint(Endpoint::new("127.0.0.1:1".parse().unwrap()))
            .route(Route::new(RouteName::new("moved").unwrap()).with_match(jason).with_action(RouteAction::Redirect))
            .route(Route::new(RouteName::new("default").unwrap()))
            .build()
            .unwrap(),
    );
    let watch = discovery.watch(&name());
    let router = RouterLayer::new(watch, &ClientConfig::default());
    let upstream = tower::service_fn(|r: Request<()>| async move {
        let route = r.extensions().get::<Resolution>().and_then(|r| r.route().cloned());
        Ok::<_, Infallible>(Response::new(route.map(|r| r.to_string())))
    });
    let service = router.layer(upstream);
    let request = |user: &str| Request::get("/").header("end-user", user).body(()).unwrap();
    let answered = service.clone().oneshot(request("ada")).await.unwrap();
    assert_eq!(answered.into_body().as_deref(), Some("default"));
    let error = service.clone().oneshot(request("jason")).await.unwrap_err();
    let client = error.downcast_ref::<ClientError>().unwrap();
    assert_eq!(client.kind(), ErrorKind::UnsupportedRoute);
    let refused = client.find::<UnsupportedRoute>().unwrap();
    assert_eq!((refused.route().as_str(), refused.action()), ("moved", RouteAction::Redirect));
    assert!(client.to_string().contains("does not have a supported route action type"), "{client}");
    let answer = ErrorResponseLayer::new().layer(service).oneshot(request("jason")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers()[crate::client::ERROR_HEADER], "unsupported_route");
}
