//! The response future of layers that usually pass a request straight through: the inner
//! service's own future, unboxed, on the common path, and a boxed future only where the layer
//! does its rare work (a delay, an abort, a wait for a slot). Boxing every call costs an
//! allocation and a move of the whole future chain below, on every request.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use crate::BoxError;

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// See the [module docs](self).
    pub struct PassThrough<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<F, T> {
        // The inner future, with a slot held until it completes (if any).
        Direct { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        // The layer's own work.
        Boxed { inner: Boxed<T> },
    }
}

impl<F, T> PassThrough<F, T> {
    pub(crate) fn direct(inner: F, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { state: State::Direct { inner, permit } }
    }

    pub(crate) fn boxed(inner: impl Future<Output = Result<T, BoxError>> + Send + 'static) -> Self {
        Self { state: State::Boxed { inner: Box::pin(inner) } }
    }
}

impl<F, T, E> Future for PassThrough<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Direct { inner, permit } => {
                let output = ready!(inner.poll(cx)).map_err(Into::into);
                // The slot frees as soon as the response head is back, as before.
                drop(permit.take());
                Poll::Ready(output)
            }
            Proj::Boxed { inner } => inner.as_mut().poll(cx),
        }
    }
}

impl<F, T> std::fmt::Debug for PassThrough<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassThrough").finish_non_exhaustive()
    }
}
