//! Load shedding (Envoy's circuit breaker): a cap on requests in flight to a destination, and on
//! requests waiting for a slot. Beyond both, a request fails at once with [`Overloaded`] instead
//! of queueing without bound, so a slow destination costs its callers a bounded amount of memory
//! and time.
//!
//! Unlike tower's `ConcurrencyLimit`, which makes callers wait in `poll_ready` (backpressure),
//! [`LoadShedLayer`] refuses what is over the limit. It reads the destination's
//! `policies.circuit_breaker` from each request's [`Resolution`], so a new
//! limit applies to the next request; without one, requests pass untouched.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use http::Request;
use mesh_core::policy::CircuitBreaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

use super::resolution::Resolution;
use crate::{BoxError, future::PassThrough};

pub use crate::failure::Overloaded;

/// Sheds requests over one destination's limits. Cheap to clone; the slots are shared by every
/// clone, so use one layer per destination.
#[derive(Clone, Debug, Default)]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    slots: Mutex<Option<(CircuitBreaker, Arc<Semaphore>)>>,
    pending: AtomicUsize,
    shed: AtomicU64,
}

impl LoadShedLayer {
    /// The layer; the limits come from each request's resolution.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests refused so far.
    pub fn shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, shared: self.shared.clone() }
    }
}

/// The service [`LoadShedLayer`] makes.
#[derive(Clone, Debug)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    fn slots(&self, policy: &CircuitBreaker) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slots {
            Some((current, semaphore)) if current == policy => semaphore.clone(),
            // A new limit starts a new pool of slots; requests holding old slots finish normally.
            _ => {
                let semaphore = Arc::new(Semaphore::new(policy.max_concurrent as usize));
                *slots = Some((policy.clone(), semaphore.clone()));
                semaphore
            }
        }
    }
}

/// A place in the waiting room, given back on drop.
struct Waiting(Arc<Shared>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B> Service<Request<B>> for LoadShed<S>
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
        let Some((policy, destination)) = resolution.and_then(|r| Some((r.circuit_breaker()?.clone(), r.service())))
        else {
            return PassThrough::direct(self.inner.call(request), None);
        };
        let destination = destination.clone();
        let slots = self.shared.slots(&policy);
        let permit: Result<OwnedSemaphorePermit, _> = slots.clone().try_acquire_owned();
        match permit {
            // A free slot: the ready inner service takes the request, unboxed, holding the slot.
            Ok(permit) => PassThrough::direct(self.inner.call(request), Some(permit)),
            Err(_) => {
                let inner = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, inner);
                let shared = self.shared.clone();
                // Full: wait only if the waiting room has space.
                let waiting = shared.pending.fetch_add(1, Ordering::AcqRel);
                if waiting >= policy.max_pending as usize {
                    shared.pending.fetch_sub(1, Ordering::AcqRel);
                    shared.shed.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::per_service(crate::metrics::CIRCUIT_BREAKER_REJECTIONS, &destination);
                    let error = Overloaded {
                        service: destination,
                        max_concurrent: policy.max_concurrent,
                        max_pending: policy.max_pending,
                    };
                    return PassThrough::boxed(async move { Err(error.into()) });
                }
                let waiting = Waiting(shared);
                PassThrough::boxed(async move {
                    let permit = slots.acquire_owned().await;
                    // Leaves the waiting room (also when the caller gives up while waiting).
                    drop(waiting);
                    let _permit = permit.map_err(|e| BoxError::from(e.to_string()))?;
                    service.oneshot(request).await.map_err(Into::into)
                })
            }
        }
    }
}
