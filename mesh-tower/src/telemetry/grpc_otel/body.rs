//! A body whose gRPC messages are counted as it goes by: the request of a client attempt
//! (`sent_total_compressed_message_size`) and of a server call (`rcvd_...`).

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

pin_project! {
    /// A request body whose gRPC message bytes are counted for the metrics of its attempt or
    /// call; otherwise the inner body, frame for frame.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        count: Option<(Arc<AtomicU64>, GrpcFrames)>,
    }
}

impl<B> CountedBody<B> {
    /// Counts into `bytes`, or (`None`) passes through.
    pub(crate) fn new(inner: B, bytes: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, count: bytes.map(|b| (b, GrpcFrames::default())) }
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
        if let (Some((bytes, frames)), Some(Ok(frame))) = (this.count.as_mut(), &frame)
            && let Some(data) = frame.data_ref()
        {
            let before = frames.message_bytes();
            feed(frames, data);
            bytes.fetch_add(frames.message_bytes() - before, Ordering::Relaxed);
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
