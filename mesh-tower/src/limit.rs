//! Circuit breaking: a cap on requests in flight to a destination, and on requests waiting for a
//! slot. Beyond both, a request fails at once with [`Overloaded`] (load shedding) instead of
//! queueing without bound, so a slow destination costs its callers a bounded amount of memory and
//! time.
//!
//! [`ConcurrencyLimitLayer::from_discovery`] follows the destination's
//! `policies.circuit_breaker` live; without one, requests pass untouched.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use mesh_core::{Discovery, ServiceName, SnapshotWatch, policy::CircuitBreaker};

use crate::future::PassThrough;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

use crate::BoxError;

/// A request refused because the destination already has `max_concurrent` requests in flight and
/// `max_pending` waiting.
#[derive(Debug, Clone, thiserror::Error)]
#[error("service {service} is at its limit ({max_concurrent} in flight, {max_pending} waiting): request shed")]
pub struct Overloaded {
    service: ServiceName,
    max_concurrent: u32,
    max_pending: u32,
}

/// Limits requests to one destination. Cheap to clone; the limits are shared.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    watch: SnapshotWatch,
    slots: Mutex<Option<(CircuitBreaker, Arc<Semaphore>)>>,
    pending: AtomicUsize,
    shed: AtomicU64,
}

impl ConcurrencyLimitLayer {
    /// Applies `service`'s circuit-breaker policy, as discovery has it now and later.
    pub fn from_discovery(discovery: &impl Discovery, service: &ServiceName) -> Self {
        Self {
            shared: Arc::new(Shared {
                watch: discovery.watch(service),
                slots: Mutex::new(None),
                pending: AtomicUsize::new(0),
                shed: AtomicU64::new(0),
            }),
        }
    }

    /// Requests refused so far.
    pub fn shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit { inner, shared: self.shared.clone() }
    }
}

/// The service [`ConcurrencyLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
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

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PassThrough<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let policy = self.shared.watch.current().and_then(|s| s.policies().circuit_breaker.clone());
        let Some(policy) = policy else {
            return PassThrough::direct(self.inner.call(request), None);
        };
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
                    crate::metrics::per_service(crate::metrics::CIRCUIT_BREAKER_REJECTIONS, shared.watch.service());
                    let error = Overloaded {
                        service: shared.watch.service().clone(),
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
