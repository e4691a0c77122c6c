use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// What [`ready_prefix`] found.
pub(super) enum Buffered {
    /// The whole body, which ended within the limit: replayable.
    Whole(Bytes),
    /// What was read, followed by the rest of the body as it comes: sent once.
    Partial(UnsyncBoxBody<Bytes, BoxError>),
}

/// Reads the frames `body` has ready now, up to `limit` bytes, without waiting: a body that ends
/// at once (a unary gRPC request, a `Full` body) comes back whole; one that would wait for more (a
/// client stream the application is still writing, a body still arriving) or outgrows `limit`
/// comes back as the bytes read so far chained to the rest, so nothing is lost and nothing waits
/// on data that may depend on the response.
///
/// The body is polled with a waker that does nothing: a body that is not ready registers it, and
/// whoever polls the rest next registers its own (a body keeps the latest waker, as the `Future`
/// contract says), so no wake-up is lost.
pub(super) fn ready_prefix<B>(body: B, limit: u64) -> Result<Buffered, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut read = BytesMut::new();
    let mut trailers = None;
    let mut cx = Context::from_waker(Waker::noop());
    let ended = loop {
        if read.len() as u64 > limit {
            break false;
        }
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Pending => break false,
            Poll::Ready(None) => break true,
            Poll::Ready(Some(Err(error))) => return Err(error.into()),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => read.extend_from_slice(&data),
                Err(frame) => {
                    // Trailers on a request are rare; keep them, in order, and send once.
                    trailers = frame.into_trailers().ok();
                    break false;
                }
            },
        }
    };
    let read = read.freeze();
    if ended {
        return Ok(Buffered::Whole(read));
    }
    let rest = Prefixed { data: Some(read).filter(|d| !d.is_empty()), trailers, rest: body };
    Ok(Buffered::Partial(rest.map_err(Into::into).boxed_unsync()))
}

pin_project! {
    /// Bytes already read from a body, then its trailers if they were read too, then the rest.
    struct Prefixed<B> {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
        #[pin]
        rest: B,
    }
}

impl<B: Body<Data = Bytes>> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(data) = &self.data {
            let len = data.len() as u64;
            hint.set_lower(hint.lower().saturating_add(len));
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(len));
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn a_body_that_ends_at_once_is_whole() {
        let Buffered::Whole(bytes) = ready_prefix(Full::new(Bytes::from_static(b"hello")), 64).unwrap() else {
            panic!("a ready body is replayable");
        };
        assert_eq!(bytes, "hello");
    }

    #[tokio::test]
    async fn a_body_still_waiting_is_sent_once_and_whole() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
        tx.send(Ok(Frame::data(Bytes::from_static(b"one ")))).unwrap();
        let Buffered::Partial(body) = ready_prefix(Channel(rx), 64).unwrap() else {
            panic!("a body waiting for more is not replayable");
        };
        tx.send(Ok(Frame::data(Bytes::from_static(b"two")))).unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "one two");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_sent_once() {
        let body = Full::new(Bytes::from(vec![7u8; 100]));
        let Buffered::Partial(body) = ready_prefix(body, 10).unwrap() else {
            panic!("too large to replay");
        };
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 100);
    }

    /// A body the test writes frame by frame, like a client stream.
    struct Channel(tokio::sync::mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }
}
