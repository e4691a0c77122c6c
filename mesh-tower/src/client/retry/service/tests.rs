use std::sync::Mutex;

use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use mesh_core::{Endpoint, PathMatch, Route, RouteMatch, RouteName, ServiceSnapshot, Subset, Weight, policy::RetryOn};

use super::*;

/// What the fake upstream saw of each attempt: method, body, `grpc-previous-rpc-attempts`.
type Seen = Arc<Mutex<Vec<(Method, Bytes, Option<HeaderValue>)>>>;

fn snapshot(per_try: Option<Duration>) -> Arc<ServiceSnapshot> {
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::GatewayError, RetryOn::GrpcUnavailable];
    retry.per_try_timeout = per_try;
    retry.backoff.base = Duration::from_millis(1);
    retry.backoff.max = Duration::from_millis(1);
    // Up front, the budget allows `ratio` retries per request (its per-second floor accrues).
    retry.budget.ratio = 10.0;
    let route = Route::new(RouteName::new("all").unwrap())
        .with_match(RouteMatch::any().path(PathMatch::prefix("/").unwrap()))
        .with_target("v1".parse().unwrap(), Weight::new(1).unwrap())
        .with_retry(retry);
    let snapshot = ServiceSnapshot::builder("svc".parse().unwrap())
        .identity("spiffe://example.org/svc".parse().unwrap())
        .endpoint(Endpoint::new(([127, 0, 0, 1], 1).into()).with_label("version", "v1").unwrap())
        .subset(Subset::version("v1").unwrap())
        .route(route)
        .build()
        .unwrap();
    Arc::new(snapshot)
}

/// An upstream that answers `statuses` in turn (then 200), recording what each attempt
/// carried; gRPC failures answer `grpc-status: 14` in the headers.
#[derive(Clone)]
struct Upstream {
    statuses: &'static [u16],
    seen: Seen,
    attempts: Arc<AtomicU64>,
}

impl Service<Request<RetryBody<UnsyncBody>>> for Upstream {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RetryBody<UnsyncBody>>) -> Self::Future {
        let this = self.clone();
        let (parts, body) = request.into_parts();
        // Every body here is whole at once (a replayed copy, or a `Full` sent once).
        let bytes = match ready_prefix(body, u64::MAX) {
            Ok(Buffered::Whole(bytes)) => bytes,
            _ => Bytes::from_static(b"(not whole)"),
        };
        Box::pin(async move {
            let previous = parts.headers.get(grpc::PREVIOUS_ATTEMPTS).cloned();
            this.seen.lock().unwrap().push((parts.method, bytes, previous));
            let n = this.attempts.fetch_add(1, Ordering::Relaxed) as usize;
            let status = this.statuses.get(n).copied().unwrap_or(200);
            let mut response = Response::new(());
            if grpc::is_grpc(&parts.headers) && status != 200 {
                response.headers_mut().insert("grpc-status", HeaderValue::from_static("14"));
            } else {
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
            }
            Ok(response)
        })
    }
}

/// A retry layer over an [`Upstream`] answering `statuses`.
fn stack(statuses: &'static [u16]) -> (Retry<Upstream>, Seen, RetryLayer) {
    let seen = Seen::default();
    let layer = RetryLayer::new();
    (layer.layer(Upstream { statuses, seen: seen.clone(), attempts: Arc::default() }), seen, layer)
}

type UnsyncBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn request(method: Method, body: UnsyncBody, grpc: bool, per_try: Option<Duration>) -> Request<UnsyncBody> {
    let mut request = Request::builder().method(method).uri("/items").body(body).unwrap();
    if grpc {
        request.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    }
    let resolution = Resolution::resolve(snapshot(per_try), &request).unwrap();
    request.extensions_mut().insert(resolution);
    request
}

fn full(bytes: &'static [u8]) -> UnsyncBody {
    Full::new(Bytes::from_static(bytes)).map_err(|e| match e {}).boxed_unsync()
}

#[tokio::test]
async fn a_first_attempt_that_succeeds_is_sent_once() {
    let (mut service, seen, layer) = stack(&[]);
    let response = service.ready().await.unwrap().call(request(Method::GET, full(b""), false, None)).await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!((layer.stats().requests(), layer.stats().retries()), (1, 0));
}

#[tokio::test]
async fn a_failed_first_attempt_is_retried_with_the_same_body() {
    let (mut service, seen, layer) = stack(&[503, 502]);
    let response = service.ready().await.unwrap().call(request(Method::PUT, full(b"payload"), false, None)).await;
    assert_eq!(response.unwrap().status(), 200, "the third attempt succeeds");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(method, body, _)| method == Method::PUT && body == "payload"), "{seen:?}");
    assert_eq!(layer.stats().retries(), 2);
}

#[tokio::test]
async fn a_post_is_sent_once_and_its_failure_returned() {
    let (mut service, seen, layer) = stack(&[503]);
    let response = service.ready().await.unwrap().call(request(Method::POST, full(b"order"), false, None)).await;
    assert_eq!(response.unwrap().status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(layer.stats().retries(), 0);
}

#[tokio::test]
async fn a_grpc_call_is_retried_and_counts_its_previous_attempts() {
    let (mut service, seen, _) = stack(&[503]);
    let response = service.ready().await.unwrap().call(request(Method::POST, full(b"\0msg"), true, None)).await;
    assert_eq!(response.unwrap().status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().map(|s| s.2.clone()).collect::<Vec<_>>(), [None, Some(HeaderValue::from_static("1"))]);
    assert!(seen.iter().all(|s| s.1 == "\0msg"), "the message is replayed: {seen:?}");
}

#[tokio::test]
async fn a_body_of_known_size_still_arriving_is_buffered_then_replayed() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<http_body::Frame<Bytes>, BoxError>>();
    // A body that says it has 6 bytes but sends them later, like an upload still in flight.
    let body = Sized6(rx).boxed_unsync();
    let (mut service, seen, _) = stack(&[503]);
    let call = service.ready().await.unwrap().call(request(Method::PUT, body, false, None));
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"abc")))).unwrap();
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"def")))).unwrap();
    drop(tx);
    assert_eq!(call.await.unwrap().status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().map(|s| s.1.clone()).collect::<Vec<_>>(), ["abcdef", "abcdef"]);
}

#[tokio::test]
async fn attempts_with_a_per_try_timeout_are_retried_too() {
    let (mut service, seen, _) = stack(&[502]);
    let call =
        service.ready().await.unwrap().call(request(Method::GET, full(b""), false, Some(Duration::from_secs(5))));
    assert_eq!(call.await.unwrap().status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// A body that announces exactly 6 bytes and sends the frames written to its channel.
struct Sized6(tokio::sync::mpsc::UnboundedReceiver<Result<http_body::Frame<Bytes>, BoxError>>);

impl Body for Sized6 {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(6)
    }
}
