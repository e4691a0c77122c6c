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
pub(crate) struct Waiting(Arc<Shared>);

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
        let admission = match request.extensions().get::<Resolution>() {
            Some(resolution) => self.shared.admit(resolution),
            None => Admission::Unlimited,
        };
        match admission {
            Admission::Unlimited => PassThrough::direct(self.inner.call(request), None),
            // A free slot: the ready inner service takes the request, unboxed, holding the slot.
            Admission::Slot(permit) => PassThrough::direct(self.inner.call(request), Some(permit)),
            Admission::Refused(error) => PassThrough::boxed(async move { Err(error.into()) }),
            admission @ Admission::Wait { .. } => {
                let inner = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, inner);
                PassThrough::boxed(async move {
                    let _permit = admission.slot().await?;
                    service.oneshot(request).await.map_err(Into::into)
                })
            }
        }
    }
}

/// What load shedding does with one request.
pub(crate) enum Admission {
    /// No limit applies.
    Unlimited,
    /// A slot, held until the response head is back.
    Slot(OwnedSemaphorePermit),
    /// Every slot taken, a place in the waiting room.
    Wait { slots: Arc<Semaphore>, waiting: Waiting },
    /// Every slot and every place taken.
    Refused(Overloaded),
}

impl Admission {
    /// The slot: at once, or once one frees; `None` when no limit applies.
    pub(crate) async fn slot(self) -> Result<Option<OwnedSemaphorePermit>, BoxError> {
        match self {
            Self::Unlimited => Ok(None),
            Self::Slot(permit) => Ok(Some(permit)),
            Self::Refused(error) => Err(error.into()),
            Self::Wait { slots, waiting } => {
                let permit = slots.acquire_owned().await;
                // Leaves the waiting room (also when the caller gives up while waiting).
                drop(waiting);
                Ok(Some(permit.map_err(|e| BoxError::from(e.to_string()))?))
            }
        }
    }
}

impl LoadShedLayer {
    /// Admits the next request to the destination `resolution` names, by its circuit breaker.
    pub(crate) fn admit(&self, resolution: &Resolution) -> Admission {
        self.shared.admit(resolution)
    }
}

impl Shared {
    fn admit(self: &Arc<Self>, resolution: &Resolution) -> Admission {
        let Some(policy) = resolution.circuit_breaker() else {
            return Admission::Unlimited;
        };
        let slots = self.slots(policy);
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Admission::Slot(permit);
        }
        // Full: wait only if the waiting room has space.
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        if waiting >= policy.max_pending as usize {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            let destination = resolution.service();
            crate::metrics::per_service(crate::metrics::CIRCUIT_BREAKER_REJECTIONS, destination);
            return Admission::Refused(Overloaded {
                service: destination.clone(),
                max_concurrent: policy.max_concurrent,
                max_pending: policy.max_pending,
            });
        }
        Admission::Wait { slots, waiting: Waiting(self.clone()) }
    }
}
