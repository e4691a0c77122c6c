//! A request body counted as it goes by: its bytes and gRPC messages, for a client attempt's
//! `sent_total_compressed_message_size`, a server call's `rcvd_...`, and Istio's request bytes and
//! messages on either side.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::telemetry::grpc_frames::GrpcFrames;

/// What a request body carried so far: its bytes, and the gRPC messages among them.
#[derive(Debug, Default)]
pub(crate) struct BodyCounts {
    pub(crate) bytes: AtomicU64,
    pub(crate) messages: AtomicU64,
    /// The messages' payload bytes (compressed, without their prefix).
    pub(crate) message_bytes: AtomicU64,
}

impl BodyCounts {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    pub(crate) fn message_bytes(&self) -> u64 {
        self.message_bytes.load(Ordering::Relaxed)
    }
}

pin_project! {
    /// A request body whose gRPC message bytes are counted for the metrics of its attempt or
    /// call; otherwise the inner body, frame for frame.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        count: Option<(Arc<BodyCounts>, GrpcFrames)>,
    }
}

impl<B> CountedBody<B> {
    /// Counts into `counts`, or (`None`) passes through.
    pub(crate) fn new(inner: B, counts: Option<Arc<BodyCounts>>) -> Self {
        Self { inner, count: counts.map(|c| (c, GrpcFrames::default())) }
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some((counts, frames)), Some(Ok(frame))) = (this.count.as_mut(), &frame)
            && let Some(data) = frame.data_ref()
        {
            let (messages, message_bytes) = (frames.messages(), frames.message_bytes());
            feed(frames, data);
            counts.bytes.fetch_add(data.remaining() as u64, Ordering::Relaxed);
            counts.messages.fetch_add(frames.messages() - messages, Ordering::Relaxed);
            counts.message_bytes.fetch_add(frames.message_bytes() - message_bytes, Ordering::Relaxed);
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

impl<B> std::fmt::Debug for CountedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedBody").finish_non_exhaustive()
    }
}

/// Every chunk of a data frame into the message counter (the `Bytes` of hyper and tonic are one
/// chunk; a buffer of more than 16 is read only as far as its first 16).
pub(crate) fn feed(frames: &mut GrpcFrames, data: &impl Buf) {
    let mut slices = [std::io::IoSlice::new(&[]); 16];
    let filled = data.chunks_vectored(&mut slices);
    for slice in &slices[..filled] {
        frames.feed(slice);
    }
}
