//! The one call path against the public layers stacked by hand over the same endpoints: every
//! outcome, counter and signal the same.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::{
    Endpoint, PathMatch, Route, RouteMatch, RouteName, ServiceSnapshot, StaticDiscovery,
    policy::{Fault, Percentage, RetryOn, RetryPolicy},
};
use tower::{Service, ServiceExt, util::BoxCloneSyncService};

use crate::{
    BoxError, Upstream,
    client::{
        ClientError, MeshClient,
        deadline::{DeadlineLayer, RouteTimeout},
    },
    golden::GoldenSignals,
    telemetry::grpc_otel::CountRequestBodyLayer,
};

type Body = Full<Bytes>;

/// A response body that gives one chunk and then never ends.
struct Stall(bool);

impl http_body::Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match std::mem::replace(&mut self.0, true) {
            false => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"partial"))))),
            true => std::task::Poll::Pending,
        }
    }
}

/// An HTTP/1.1 server on loopback: `/flaky` answers 503 to a first attempt and 200 to a retry
/// (which carries `x-mesh-attempt`), a path ending in `/hang` is never answered, one ending in
/// `/stall` is answered with a body that never ends, any other path 200 with the path.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                let path = request.uri().path().to_owned();
                if path.ends_with("/hang") {
                    std::future::pending::<()>().await;
                }
                let first = !request.headers().contains_key(crate::client::endpoint::ATTEMPT_HEADER);
                let status = if path == "/flaky" && first { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
                let body = match path.ends_with("/stall") {
                    true => http_body_util::Either::Right(Stall(false)),
                    false => http_body_util::Either::Left(Full::new(Bytes::from(path))),
                };
                let mut response = Response::new(body);
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    addr
}

/// Four routes: `/fault` aborted, `/hang` with a 200 ms timeout, `/try` retried twice on a 100 ms
/// per-try timeout, the rest retried on 503.
fn snapshot(addr: SocketAddr) -> ServiceSnapshot {
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GatewayError];
    retry.budget.ratio = 10.0;
    retry.backoff.base = Duration::from_millis(1);
    retry.backoff.max = Duration::from_millis(1);
    let mut per_try = retry.clone();
    per_try.retry_on = vec![RetryOn::PerTryTimeout];
    per_try.max_attempts = 3;
    per_try.per_try_timeout = Some(Duration::from_millis(100));
    let route = |name: &str, prefix: &str| {
        Route::new(RouteName::new(name).unwrap()).with_match(RouteMatch::any().path(PathMatch::prefix(prefix).unwrap()))
    };
    ServiceSnapshot::builder("reviews".parse().unwrap())
        .endpoint(Endpoint::new(addr))
        .route(route("fault", "/fault").with_fault(Fault::abort(503, Percentage::new(100.0).unwrap())))
        .route(route("hang", "/hang").with_timeout(Duration::from_millis(200)))
        .route(route("try", "/try").with_retry(per_try).with_timeout(Duration::from_secs(5)))
        .route(route("rest", "/").with_retry(retry))
        .build()
        .unwrap()
}

/// How a call ended, as a caller sees it.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The body, or how it failed (after the bytes it gave, dropped).
    Answered {
        status: StatusCode,
        body: Result<Bytes, String>,
        route: Option<String>,
        attempt: u32,
    },
    Failed {
        kind: crate::client::ErrorKind,
        message: String,
    },
}

async fn outcome<S, RB>(client: &mut S, method: Method, path: &str) -> Outcome
where
    S: Service<Request<Body>, Response = Response<RB>, Error = BoxError>,
    RB: http_body::Body<Data = Bytes>,
    RB::Error: std::fmt::Display,
{
    let request = Request::builder().method(method).uri(path).body(Body::default()).unwrap();
    match client.ready().await.unwrap().call(request).await {
        Ok(response) => {
            let upstream = response.extensions().get::<Upstream>().cloned().unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string());
            Outcome::Answered { status, body, route: upstream.route.map(|r| r.to_string()), attempt: upstream.attempt }
        }
        Err(error) => {
            let error = error.downcast::<ClientError>().unwrap();
            Outcome::Failed { kind: error.kind(), message: error.to_string() }
        }
    }
}

/// What a client counted: retry layer (requests, retries), faults, and the golden signals per
/// request and per attempt (requests, successes).
fn counters(retries: &crate::client::retry::RetryStats, faults: u64, golden: [&GoldenSignals; 2]) -> Vec<u64> {
    let mut counts = vec![retries.requests(), retries.retries(), faults];
    for signals in golden {
        counts.extend(signals.snapshot().iter().flat_map(|s| [s.requests, s.successes]));
    }
    counts
}

#[tokio::test]
async fn the_call_path_does_what_the_layers_do() {
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(upstream().await));
    let builder = MeshClient::builder(discovery, "reviews".parse().unwrap()).plaintext();
    let mut fused = builder.clone().build::<Body>().unwrap();
    let path = builder.path::<Body>().unwrap();
    let (retries, faults, telemetry) = (path.retries.stats(), path.faults.clone(), path.telemetry.clone());
    let stack = tower::ServiceBuilder::new()
        .layer(path.telemetry)
        .layer(CountRequestBodyLayer)
        .layer(path.router)
        .layer(DeadlineLayer::new())
        .layer(path.faults)
        .layer(path.retries)
        .layer(path.attempts)
        .layer(path.shed)
        .service(path.endpoints);
    let mut layered = BoxCloneSyncService::new(stack);

    let calls = [
        (Method::GET, "/ok"),
        (Method::GET, "/flaky"),
        // Not idempotent: sent once, its 503 returned.
        (Method::POST, "/flaky"),
        (Method::GET, "/fault"),
        (Method::GET, "/hang"),
        // The head in time, the body cut off by the route's deadline.
        (Method::GET, "/hang/stall"),
        (Method::GET, "/try/hang"),
    ];
    for (method, path) in calls.clone() {
        let by_path = outcome(&mut fused, method.clone(), path).await;
        let by_layers = outcome(&mut layered, method.clone(), path).await;
        assert_eq!(by_path, by_layers, "{method} {path}");
    }
    // The outcomes are the ones the routes ask for, not merely equal.
    let answered = |status, route: &str, attempt| (status, Some(route.to_owned()), attempt);
    let mut seen = Vec::new();
    for (method, path) in calls.clone() {
        seen.push(match outcome(&mut fused, method, path).await {
            Outcome::Answered { status, route, attempt, body } => match body {
                Ok(_) => format!("{:?}", (status, route, attempt)),
                Err(error) => format!("{:?} cut off: {error}", (status, route, attempt)),
            },
            Outcome::Failed { kind, .. } => format!("{kind:?}"),
        });
    }
    let expected = [
        format!("{:?}", answered(StatusCode::OK, "rest", 1)),
        format!("{:?}", answered(StatusCode::OK, "rest", 2)),
        format!("{:?}", answered(StatusCode::SERVICE_UNAVAILABLE, "rest", 1)),
        format!("{:?}", crate::client::ErrorKind::InjectedFault),
        format!("{:?}", crate::client::ErrorKind::Timeout),
        format!("{:?} cut off: {}", answered(StatusCode::OK, "hang", 1), RouteTimeout(Duration::from_millis(200))),
        format!("{:?}", crate::client::ErrorKind::Timeout),
    ];
    assert_eq!(seen, expected);

    // The layered stack made each call once, the call path twice: every count doubles.
    let by_path = counters(
        &fused.retry_stats(),
        fused.faults_injected(),
        [&fused.telemetry().golden_signals(), &fused.telemetry().attempt_signals()],
    );
    let by_layers = counters(&retries, faults.injected(), [&telemetry.golden_signals(), &telemetry.attempt_signals()]);
    assert_eq!(by_path, by_layers.iter().map(|n| n * 2).collect::<Vec<_>>());
    assert_eq!(by_layers[..3], [6, 3, 1], "requests that reached the retry layer, retries, faults");
}
