//! Fault injection, per route, for chaos testing in staging: a share of requests delayed, a share
//! aborted with a status, before they leave the client.
//!
//! [`FaultLayer`] reads the matched route's `fault` from the request's
//! [`Resolution`]; a request without one passes untouched. Shares are exact
//! (the low-discrepancy sequence of the weighted split), so "5%" means 5 of every 100. An abort is
//! the typed error [`InjectedFault`] carrying the status, an HTTP status or a gRPC status code
//! (gRFC A33's `grpc_status`, which a gRPC caller sees as is); it sits above retries in the client
//! stack, so injected aborts are not retried (as in Istio).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use http::Request;
use tower::{Layer, Service, ServiceExt};

use super::resolution::{Resolution, split::in_share};
use crate::{BoxError, future::PassThrough};

pub use crate::failure::InjectedFault;

/// Injects the faults the requests' routes ask for. Cheap to clone: the counters that make shares
/// exact are shared by every clone.
#[derive(Clone, Debug, Default)]
pub struct FaultLayer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    delays: AtomicU64,
    aborts: AtomicU64,
    injected: AtomicU64,
}

impl FaultLayer {
    /// The layer; each request's fault policy comes from its resolution.
    pub fn new() -> Self {
        Self::default()
    }

    /// Faults injected so far (delays and aborts).
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Faults<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Faults { inner, shared: self.shared.clone() }
    }
}

/// The service [`FaultLayer`] makes.
#[derive(Clone, Debug)]
pub struct Faults<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for Faults<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PassThrough<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let resolution = request.extensions().get::<Resolution>();
        let injection = resolution.map_or(Injection::None, |r| self.shared.decide(r));
        if let Injection::None = injection {
            // No fault for this request: the ready inner service takes it, unboxed.
            return PassThrough::direct(self.inner.call(request), None);
        }
        let inner = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, inner);
        PassThrough::boxed(async move {
            injection.apply().await?;
            service.oneshot(request).await.map_err(Into::into)
        })
    }
}

/// What fault injection does to one request.
pub(crate) enum Injection {
    /// Nothing: the route has no fault, or this request is outside its shares.
    None,
    /// Fails it with this status before it leaves.
    Abort(InjectedFault),
    /// Holds it this long before it leaves.
    Delay(std::time::Duration),
}

impl Injection {
    /// Waits out a delay, or fails with an abort.
    pub(crate) async fn apply(self) -> Result<(), BoxError> {
        match self {
            Self::None => Ok(()),
            Self::Abort(fault) => Err(fault.into()),
            Self::Delay(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

impl FaultLayer {
    /// What the route `resolution` matched does to the next request (counted in the exact shares).
    pub(crate) fn decide(&self, resolution: &Resolution) -> Injection {
        self.shared.decide(resolution)
    }
}

impl Shared {
    fn decide(&self, resolution: &Resolution) -> Injection {
        let Some(fault) = resolution.fault() else { return Injection::None };
        if let Some(abort) = &fault.abort
            && in_share(self.aborts.fetch_add(1, Ordering::Relaxed), abort.percent.get())
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Injection::Abort(InjectedFault { status: abort.status });
        }
        match &fault.delay {
            Some(delay) if in_share(self.delays.fetch_add(1, Ordering::Relaxed), delay.percent.get()) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Injection::Delay(delay.duration)
            }
            _ => Injection::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use http::StatusCode;
    use mesh_core::{
        Route, RouteName, ServiceSnapshot,
        policy::{Fault, Percentage},
    };

    use super::*;

    /// A request resolved against a snapshot whose one route has `fault`: no discovery involved.
    fn request(fault: &Fault) -> Request<()> {
        let snapshot = ServiceSnapshot::builder("reviews".parse().unwrap())
            .route(Route::new(RouteName::new("default").unwrap()).with_fault(fault.clone()))
            .build()
            .unwrap();
        let mut request = Request::new(());
        let resolution = Resolution::resolve(std::sync::Arc::new(snapshot), &request).unwrap();
        request.extensions_mut().insert(resolution);
        request
    }

    #[tokio::test]
    async fn aborts_an_exact_share() {
        let fault = Fault::abort(503, Percentage::new(5.0).unwrap());
        let service = FaultLayer::new().layer(tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>("ok") }));
        let mut aborted = 0;
        for _ in 0..1000 {
            if let Err(e) = service.clone().oneshot(request(&fault)).await {
                assert_eq!(e.downcast_ref::<InjectedFault>().unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
                aborted += 1;
            }
        }
        assert_eq!(aborted, 50);
    }

    #[tokio::test]
    async fn aborts_with_a_grpc_status() {
        let fault = Fault::abort_grpc(8, Percentage::new(100.0).unwrap());
        let service = FaultLayer::new().layer(tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>("ok") }));
        let error = service.oneshot(request(&fault)).await.unwrap_err();
        let fault = error.downcast_ref::<InjectedFault>().unwrap();
        assert_eq!((fault.grpc_status(), fault.status()), (Some(8), StatusCode::OK));
        assert!(fault.to_string().contains("gRPC status 8 (RESOURCE_EXHAUSTED)"), "{fault}");

        // As an HTTP answer: trailers-only, as a gRPC server fails a call before any message.
        let service = FaultLayer::new().layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        }));
        let answer = crate::client::ErrorResponseLayer::new()
            .layer(service)
            .oneshot(request(&Fault::abort_grpc(8, Percentage::new(100.0).unwrap())))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(crate::grpc::status(answer.headers()), Some(8));
        assert!(crate::grpc::is_grpc(answer.headers()));
        let body = http_body_util::BodyExt::collect(answer.into_body()).await.unwrap();
        assert!(body.trailers().is_none() && body.to_bytes().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_before_the_request_leaves() {
        let fault = Fault::delay(Duration::from_millis(300), Percentage::new(100.0).unwrap());
        let service = FaultLayer::new().layer(tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>("ok") }));
        let started = tokio::time::Instant::now();
        service.clone().oneshot(request(&fault)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // A request that was never resolved has no route, so no fault.
        let started = tokio::time::Instant::now();
        service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
