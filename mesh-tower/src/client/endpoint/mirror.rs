//! Traffic mirroring: a copy of a share of a route's requests goes to a shadow subset, fire and
//! forget.
//!
//! The primary request streams as usual; its body passes through a tee that keeps a copy
//! of up to [`ClientConfig::mirror_body_limit`](crate::client::ClientConfig::mirror_body_limit)
//! bytes. When the primary body has been sent in full, the copy goes to the shadow endpoint with
//! the header `x-mesh-mirror: 1`, in its own task, bounded by a timeout and a cap on mirrors in
//! flight. The shadow's response, errors and latency never reach the caller. A body over the
//! limit, a primary body that fails, or a full mirror budget skip the copy; [`MirrorStats`] counts
//! each outcome.

use std::{
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

/// The header that marks a mirrored copy.
pub const MIRROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-mesh-mirror");

pin_project! {
    // A request body that, for mirrored requests, keeps a bounded copy of what it streams.
    #[project = TeeProj]
    pub(crate) enum TeeBody<B> {
        // Not mirrored: a pass-through.
        Plain { #[pin] inner: B },
        // Mirrored: frames are copied until the limit.
        Tee { #[pin] inner: B, copy: Option<BytesMut>, limit: usize, done: Option<oneshot::Sender<Bytes>> },
    }
}

impl<B> TeeBody<B> {
    pub(crate) fn plain(inner: B) -> Self {
        Self::Plain { inner }
    }

    pub(crate) fn tee(inner: B, limit: usize, done: oneshot::Sender<Bytes>) -> Self {
        Self::Tee { inner, copy: Some(BytesMut::new()), limit, done: Some(done) }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            TeeProj::Plain { inner } => inner.poll_frame(cx),
            TeeProj::Tee { mut inner, copy, limit, done } => {
                let polled = inner.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(buffer)) = (frame.data_ref(), copy.as_mut()) {
                            if buffer.len() + data.len() <= *limit {
                                buffer.extend_from_slice(data);
                            } else {
                                // Over the limit: no copy, and the mirror is skipped.
                                *copy = None;
                                *done = None;
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let (Some(buffer), Some(done)) = (copy.take(), done.take()) {
                            let _ = done.send(buffer.freeze());
                        }
                    }
                    Poll::Ready(Some(Err(_))) => *done = None,
                    Poll::Pending => {}
                }
                // hyper stops polling once the body says it has ended, so the last data frame
                // may be the last poll.
                if matches!(polled, Poll::Ready(Some(Ok(_))))
                    && inner.is_end_stream()
                    && let (Some(buffer), Some(done)) = (copy.take(), done.take())
                {
                    let _ = done.send(buffer.freeze());
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Plain { inner } | Self::Tee { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Plain { inner } | Self::Tee { inner, .. } => inner.size_hint(),
        }
    }
}

/// What happened to mirrored copies.
#[derive(Debug, Default)]
pub struct MirrorStats {
    sent: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

impl MirrorStats {
    /// Copies the shadow answered (any status).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Copies that failed or timed out at the shadow.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Copies not sent: body over the limit, primary body failed, or too many mirrors in flight.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub(crate) fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sets up the copy of `request` for `shadow` and returns the primary, whose body keeps the copy.
pub(crate) fn tee<B>(
    shared: &std::sync::Arc<super::Shared>,
    request: http::Request<B>,
    shadow: crate::client::resolution::plan::Target,
) -> http::Request<TeeBody<B>>
where
    B: Body<Data = Bytes>,
{
    use http::{HeaderValue, Request};
    use http_body_util::{BodyExt, Full};

    use crate::BoxError;

    let Ok(slot) = shared.mirror_slots.clone().try_acquire_owned() else {
        shared.mirrors.record_skipped();
        return request.map(TeeBody::plain);
    };
    let (parts, body) = request.into_parts();
    let mut copy = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).body(()).unwrap_or_default();
    *copy.headers_mut() = parts.headers.clone();
    copy.headers_mut().insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    let (done, copied) = tokio::sync::oneshot::channel();
    let body = if body.is_end_stream() {
        let _ = done.send(Bytes::new());
        TeeBody::plain(body)
    } else {
        TeeBody::tee(body, shared.config.mirror_body_limit, done)
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let _slot = slot;
        // Sent only once the primary body went out in full and within the limit.
        let Ok(bytes) = copied.await else {
            shared.mirrors.record_skipped();
            return;
        };
        let copy = copy.map(|()| Full::new(bytes));
        let outcome = match super::rewrite(copy, &shadow, &shared) {
            Ok(copy) => tokio::time::timeout(shared.config.mirror_timeout, async {
                let response = shared.mirror_http.request(copy).await?;
                response.into_body().collect().await.map_err(BoxError::from)?;
                Ok::<_, BoxError>(())
            })
            .await
            .map_err(BoxError::from)
            .and_then(|r| r),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => shared.mirrors.record_sent(),
            Err(error) => {
                tracing::debug!(%error, shadow = %shadow.address, "mirrored copy failed");
                shared.mirrors.record_failed();
            }
        }
    });
    Request::from_parts(parts, body)
}
