//! The body the retry layer hands down: the caller's own, unboxed, when the request is sent once;
//! a cheap copy of the buffered bytes on each attempt of a request that may be retried.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Full, combinators::UnsyncBoxBody};
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// A request body below the retry layer: the caller's own, unboxed, when the request is sent
    /// once; a reference-counted copy of the buffered bytes on each attempt of a request that may
    /// be retried.
    pub struct RetryBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        // The caller's body, sent once as it is.
        Original { #[pin] body: B },
        // The buffered body of a replayable request, shared by every attempt.
        Replay { body: Full<Bytes> },
        // What was read of a body that turned out not to be replayable, then the rest of it.
        Partial { body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl<B> RetryBody<B> {
    pub(super) fn original(body: B) -> Self {
        Self { inner: Inner::Original { body } }
    }

    pub(super) fn replay(bytes: Bytes) -> Self {
        Self { inner: Inner::Replay { body: Full::new(bytes) } }
    }

    pub(super) fn partial(body: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self { inner: Inner::Partial { body } }
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Original { body } => Poll::Ready(ready!(body.poll_frame(cx)).map(|f| f.map_err(Into::into))),
            InnerProj::Replay { body } => {
                Poll::Ready(ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(|never| match never {})))
            }
            InnerProj::Partial { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Original { body } => body.is_end_stream(),
            Inner::Replay { body } => body.is_end_stream(),
            Inner::Partial { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Original { body } => body.size_hint(),
            Inner::Replay { body } => body.size_hint(),
            Inner::Partial { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Original { .. } => "Original",
            Inner::Replay { .. } => "Replay",
            Inner::Partial { .. } => "Partial",
        };
        f.debug_tuple("RetryBody").field(&kind).finish()
    }
}
