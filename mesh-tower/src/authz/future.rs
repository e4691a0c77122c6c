use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// The response future of [`Authorization`](super::Authorization): the inner service's, or
    /// a ready `403`.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Allowed { #[pin] future: F },
        Denied { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(super) fn allowed(future: F) -> Self {
        Self { kind: Kind::Allowed { future } }
    }

    /// `response` is already marked [`Denied`](super::Denied).
    pub(super) fn denied(response: Response<B>) -> Self {
        Self { kind: Kind::Denied { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Allowed { future } => future.poll(cx),
            KindProj::Denied { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("authorization ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
