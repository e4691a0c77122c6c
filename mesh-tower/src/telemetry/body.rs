use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::exchange::{End, Exchange};

pin_project! {
    /// A response body that tells telemetry how the exchange ended: the gRPC status in its
    /// trailers, an error, the end of the stream, or being dropped before it. Otherwise it is the
    /// inner body, frame for frame.
    pub struct TelemetryBody<B> {
        #[pin]
        inner: B,
        exchange: Option<Exchange>,
    }
}

impl<B: Body> TelemetryBody<B> {
    pub(crate) fn new(inner: B, mut exchange: Exchange) -> Self {
        if inner.is_end_stream() {
            // Servers and clients may drop an empty body without polling it: it is complete.
            exchange.finish(End::Complete);
            return Self { inner, exchange: None };
        }
        Self { inner, exchange: Some(exchange) }
    }
}

impl<B> TelemetryBody<B> {
    /// `inner` with no exchange to settle (a server without telemetry).
    pub(crate) fn passthrough(inner: B) -> Self {
        Self { inner, exchange: None }
    }

    /// The inner body. The exchange counts as ended now.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for TelemetryBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(exchange) = this.exchange {
            let at_end = !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream();
            if on_frame(exchange, &frame, at_end) {
                *this.exchange = None;
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

impl<B> std::fmt::Debug for TelemetryBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryBody").finish_non_exhaustive()
    }
}

/// A frame of the response body (`at_end` when the body ended with it): what telemetry reads of
/// it, and whether the exchange ended with it (it is finished then).
pub(crate) fn on_frame<D: Buf, E>(exchange: &mut Exchange, frame: &Option<Result<Frame<D>, E>>, at_end: bool) -> bool {
    let end = match frame {
        Some(Ok(frame)) => {
            if exchange.reads_data()
                && let Some(data) = frame.data_ref()
            {
                feed(exchange, data);
            }
            if let Some(trailers) = frame.trailers_ref() {
                exchange.on_trailers(trailers);
            }
            // Readers stop at `is_end_stream` (hyper does, after the last byte of a known
            // length) without polling for the end: that is the end too.
            if !at_end {
                return false;
            }
            End::Complete
        }
        Some(Err(_)) => End::BodyError,
        None => End::Complete,
    };
    exchange.finish(end);
    true
}

/// Every chunk of a data frame (one, for the `Bytes` of hyper and tonic).
fn feed(exchange: &mut Exchange, data: &impl Buf) {
    let mut slices = [std::io::IoSlice::new(&[]); 16];
    let filled = data.chunks_vectored(&mut slices);
    let seen: usize = slices[..filled].iter().map(|s| s.len()).sum();
    for slice in &slices[..filled] {
        exchange.on_data(slice);
    }
    if seen < data.remaining() {
        // More chunks than asked for: count the rest as bytes, skipping message parsing.
        exchange.on_data_uncounted(data.remaining() - seen);
    }
}
