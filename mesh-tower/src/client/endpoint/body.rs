use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{future::AttemptRecord, http1::Lease};
use crate::classify::{self, Class, TransportFailure};

pin_project! {
    /// A response body from an endpoint. When the attempt's outcome is in the trailers (a gRPC
    /// response whose status was not in its headers), it records the attempt at the end of the
    /// body; an HTTP/1.1 connection still busy with the body goes back to its endpoint's idle
    /// list when the body ends. Otherwise it is the inner body, frame for frame.
    pub struct EndpointBody<B: Body> {
        #[pin]
        inner: B,
        status: StatusCode,
        record: Option<AttemptRecord>,
        lease: Option<Lease>,
    }

    impl<B: Body> PinnedDrop for EndpointBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Read to its last byte but not asked for the end: the connection is free all the same.
            let this = this.project();
            if this.inner.is_end_stream() && let Some(lease) = this.lease.take() {
                lease.give_back();
            }
        }
    }
}

impl<B: Body> EndpointBody<B> {
    pub(crate) fn new(inner: B, status: StatusCode, record: Option<AttemptRecord>, lease: Option<Lease>) -> Self {
        Self { inner, status, record, lease }
    }
}

impl<B: Body> Body for EndpointBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if this.lease.is_some() {
            match &frame {
                None => this.lease.take().map_or((), Lease::give_back),
                Some(Ok(_)) if this.inner.is_end_stream() => this.lease.take().map_or((), Lease::give_back),
                // The connection broke: hyper closes it.
                Some(Err(_)) => *this.lease = None,
                Some(Ok(_)) => {}
            }
        }
        if let Some(record) = this.record {
            let class = match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => Some(classify::trailers(*this.status, Some(trailers))),
                    None => None,
                },
                Some(Err(_)) => Some(Class::Transport(TransportFailure::Reset)),
                None => Some(classify::trailers(*this.status, None)),
            };
            if let Some(class) = class {
                record.finish(class);
                *this.record = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> std::fmt::Debug for EndpointBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointBody").finish_non_exhaustive()
    }
}
