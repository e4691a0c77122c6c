//! The part of a deadline that outlives the response head, for the client's
//! [deadline](crate::client::deadline) and the server's [context](crate::context) alike: a
//! deadline covers the whole call, as gRPC's does, not only the wait for the response head.
//!
//! - [`DeadlineBody`] is a response body that ends the call when its deadline passes: it drops
//!   the body it wraps (so a server's handler stops producing, and a client's HTTP/2 stream is
//!   reset with `CANCEL`) and ends with `grpc-status: 4` (`DEADLINE_EXCEEDED`) in trailers on a
//!   gRPC call, or with an error on any other (hyper then resets the stream, or closes an
//!   HTTP/1.1 connection, so a cut-off response never reads as complete).
//! - [`CancelOnDeadline`] is a client's request body that fails when the deadline passes, with
//!   HTTP/2's `CANCEL` as its reason: hyper resets the stream with `RST_STREAM(CANCEL)`, as
//!   grpc-go's client does, even while the caller still holds a request stream open.
//!
//! The timer is polled only while the body it guards has nothing to give, so a body that is
//! already complete never arms it.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::{
    sync::oneshot,
    time::{Instant, Sleep},
};

use crate::{BoxError, failure::RouteTimeout, grpc};

/// In a request's extensions below [`DeadlineLayer`](crate::client::deadline::DeadlineLayer) (and
/// in the extensions of the response that came back): when its caller stops waiting. On an
/// attempt, the earlier of that and the attempt's per-try timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Self { at }
    }

    /// When it passes.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The time left (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it passed.
    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Whether it passed at the next hop, which may be up to the rounding of the `grpc-timeout`
    /// (or `x-mesh-timeout`) it was told early: a `DEADLINE_EXCEEDED` or a reset from it then
    /// is this deadline's doing.
    pub(crate) fn has_passed_at_peer(&self) -> bool {
        Instant::now() + crate::headers::rounding_slack(Duration::MAX) >= self.at
    }
}

/// Which side of the call a deadline ends: what the caller is told differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The caller's own deadline: the route's timeout, `grpc-timeout`, or the handler's time left.
    Client,
    /// A server answering a caller whose `grpc-timeout` (or `x-mesh-timeout`) passed.
    Server,
}

/// A call's deadline, armed: what ends the call when it passes.
pub(crate) struct Expiry {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
    limit: Duration,
    grpc: bool,
    side: Side,
    /// Fails the request body (client side), so its stream is reset too.
    cancel: Option<oneshot::Sender<()>>,
}

impl Expiry {
    /// A deadline `limit` from the start of the call, at `at`. `cancel` is told when it passes.
    pub(crate) fn new(
        at: Instant,
        limit: Duration,
        grpc: bool,
        side: Side,
        cancel: Option<oneshot::Sender<()>>,
    ) -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(at)), at, limit, grpc, side, cancel }
    }

    /// When the call's deadline passes.
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline::at(self.at)
    }

    /// Whether the call is gRPC.
    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// How long the call was given.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Ready once the deadline passed.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }

    /// Client side: whether the deadline passed, or is so close that the server's (told through
    /// `grpc-timeout`, rounded down) may have passed first. A server that ends the call at its
    /// deadline resets the stream (grpc-go's does), which then reads as the deadline, as grpc-go's
    /// client reads it.
    fn is_due_at_peer(&self) -> bool {
        self.side == Side::Client && Instant::now() + crate::headers::rounding_slack(self.limit) >= self.at
    }

    /// The deadline passed: cancels the request body, and says how the response ends.
    fn expire<D>(mut self) -> Result<Frame<D>, BoxError> {
        self.cancel_request();
        match (self.side, self.grpc) {
            (Side::Client, true) => Ok(Frame::trailers(grpc::status_trailers(
                grpc::code::DEADLINE_EXCEEDED,
                &RouteTimeout(self.limit).to_string(),
            ))),
            (Side::Server, true) => {
                tracing::debug!("the caller's deadline passed mid-stream; the gRPC handler was cancelled");
                Ok(Frame::trailers(grpc::status_trailers(grpc::code::DEADLINE_EXCEEDED, SERVER_MESSAGE)))
            }
            (Side::Client, false) => Err(RouteTimeout(self.limit).into()),
            (Side::Server, false) => {
                tracing::debug!("the caller's deadline passed mid-response; the handler was cancelled");
                Err(DeadlinePassed { what: "the caller's deadline passed; the server cut the response off" }.into())
            }
        }
    }

    /// Fails the request body of the call, if it is still being sent.
    pub(crate) fn cancel_request(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
    }
}

/// The `grpc-message` of a call a server ends at its caller's deadline.
pub(crate) const SERVER_MESSAGE: &str = "the caller's deadline passed; the server cancelled the call";

/// The error a body gives when a deadline cut it off. Its source is HTTP/2's `CANCEL`, which
/// hyper sends as the stream's `RST_STREAM` reason.
#[derive(Debug)]
struct DeadlinePassed {
    what: &'static str,
}

impl std::fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for DeadlinePassed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        static CANCEL: std::sync::LazyLock<h2::Error> = std::sync::LazyLock::new(|| h2::Reason::CANCEL.into());
        Some(&*CANCEL)
    }
}

/// What bounds a response body by its call's deadline, apart from the body: the expiry, and
/// whether a frame was read past it. [`DeadlineBody`] is a body and its guard; the client's
/// one response body ([`ResponseBody`](crate::client::ResponseBody)) holds one beside its other
/// duties.
pub(crate) struct Guard {
    expiry: Option<Expiry>,
    // A frame was read past the deadline: the next poll ends the call.
    overdue: bool,
}

/// Where the frame [`Guard::poll_frame`] gives came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The guarded body; `at_end` when it ended with this frame (its last, its trailers, an
    /// error or the end).
    Inner { at_end: bool },
    /// The deadline: the guarded body was dropped for it.
    Expired,
    /// The deadline ended the call before: nothing more comes.
    Ended,
}

/// A frame [`Guard::poll_frame`] gives, and where it came from.
pub(crate) type Guarded<D> = (Option<Result<Frame<D>, BoxError>>, Source);

impl Guard {
    /// A guard of `expiry` over a body; a complete body needs none.
    pub(crate) fn new(expiry: Option<Expiry>, complete: bool) -> Self {
        Self { expiry: expiry.filter(|_| !complete), overdue: false }
    }

    /// Whether the deadline still guards the body (it is not complete).
    pub(crate) fn is_guarded(&self) -> bool {
        self.expiry.is_some()
    }

    /// The call's deadline, while it guards the body.
    pub(crate) fn deadline(&self) -> Option<Deadline> {
        self.expiry.as_ref().map(Expiry::deadline)
    }

    /// The next frame of `inner` until the deadline passes, then the end of the call, `inner`
    /// dropped (see the [module docs](self)). `observe` sees every frame `inner` gives, and
    /// whether it ended `inner`, before the deadline is asked (as a body wrapped inside a
    /// [`DeadlineBody`] would).
    pub(crate) fn poll_frame<B, F>(
        &mut self,
        mut inner: Pin<&mut Option<B>>,
        cx: &mut Context<'_>,
        observe: F,
    ) -> Poll<Guarded<B::Data>>
    where
        B: Body,
        B::Error: Into<BoxError>,
        F: FnOnce(&Option<Result<Frame<B::Data>, B::Error>>, bool),
    {
        let Some(body) = inner.as_mut().as_pin_mut() else {
            return Poll::Ready((None, Source::Ended));
        };
        // What is ready is delivered, as the response head is when it wins the race with the
        // timer. But a body that always has a frame ready would never let the timer be polled:
        // past the deadline (read on each frame), only the frame that ends the body still is.
        if let Poll::Ready(frame) = body.poll_frame(cx) {
            let (at_end, ends_guard) = match &frame {
                Some(Ok(frame)) => {
                    let at_end = frame.is_trailers() || inner.as_ref().as_pin_ref().is_none_or(|b| b.is_end_stream());
                    (at_end, at_end)
                }
                Some(Err(_)) => (true, !self.expiry.as_ref().is_some_and(Expiry::is_due_at_peer)),
                None => (true, true),
            };
            observe(&frame, at_end);
            let frame = frame.map(|f| f.map_err(Into::into));
            if ends_guard {
                // Dropping the expiry also tells the request body the deadline no longer applies.
                self.expiry = None;
                return Poll::Ready((frame, Source::Inner { at_end }));
            }
            let Some(expiry) = self.expiry.as_ref() else {
                return Poll::Ready((frame, Source::Inner { at_end }));
            };
            // A data frame after the deadline, or a reset at the deadline the server was told.
            if !self.overdue && !matches!(frame, Some(Err(_))) {
                self.overdue = Instant::now() >= expiry.at;
                return Poll::Ready((frame, Source::Inner { at_end }));
            }
        } else if !self.overdue {
            let Some(expiry) = self.expiry.as_mut() else {
                return Poll::Pending;
            };
            ready!(expiry.poll_passed(cx));
        }
        let expiry = self.expiry.take().expect("only a guarded body expires");
        inner.set(None);
        Poll::Ready((Some(expiry.expire()), Source::Expired))
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("limit", &self.expiry.as_ref().map(|e| e.limit)).finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body bounded by its call's deadline: frame for frame the body it wraps until
    /// the deadline passes, then the end of the call (see the [module docs](self)).
    pub struct DeadlineBody<B> {
        // `None` once the deadline ended the call: the wrapped body is dropped then.
        #[pin]
        inner: Option<B>,
        guard: Guard,
    }
}

impl<B: Body> DeadlineBody<B> {
    /// `inner`, ended by `expiry` if it passes first. A complete body needs no deadline.
    pub(crate) fn new(inner: B, expiry: Option<Expiry>) -> Self {
        let guard = Guard::new(expiry, inner.is_end_stream());
        Self { inner: Some(inner), guard }
    }

    /// Whether the deadline still guards the body (it is not complete).
    pub(crate) fn is_guarded(&self) -> bool {
        self.guard.is_guarded()
    }
}

impl<B: Default> Default for DeadlineBody<B> {
    fn default() -> Self {
        Self { inner: Some(B::default()), guard: Guard { expiry: None, overdue: false } }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        this.guard.poll_frame(this.inner, cx, |_, _| ()).map(|(frame, _)| frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> std::fmt::Debug for DeadlineBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineBody")
            .field("ended", &self.inner.is_none())
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A request body that fails when its call's deadline passes, so hyper resets the stream
    /// with `CANCEL` (see the [module docs](self)). Without a deadline it is the body it wraps.
    pub struct CancelOnDeadline<B> {
        #[pin]
        inner: B,
        // Told when the deadline passes; closed once the response completed without it.
        cancelled: Option<oneshot::Receiver<()>>,
    }
}

impl<B> CancelOnDeadline<B> {
    /// `inner`, with no deadline to cancel it.
    pub(crate) fn open(inner: B) -> Self {
        Self { inner, cancelled: None }
    }

    /// `inner`, failed when `cancelled` is told.
    pub(crate) fn new(inner: B, cancelled: oneshot::Receiver<()>) -> Self {
        Self { inner, cancelled: Some(cancelled) }
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for CancelOnDeadline<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // Asked first, so a body that always has a frame ready still stops.
        if let Some(cancelled) = this.cancelled {
            match Pin::new(cancelled).poll(cx) {
                Poll::Ready(Ok(())) => {
                    *this.cancelled = None;
                    let error = DeadlinePassed { what: "the call's deadline passed; its request stream was cancelled" };
                    return Poll::Ready(Some(Err(error.into())));
                }
                // The response completed, or was dropped by its reader: no deadline to enforce.
                Poll::Ready(Err(_)) => *this.cancelled = None,
                Poll::Pending => {}
            }
        }
        this.inner.poll_frame(cx).map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for CancelOnDeadline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelOnDeadline").field("armed", &self.cancelled.is_some()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    /// A body whose frames the test writes.
    struct Channel(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

    impl Channel {
        fn new(buffer: usize) -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Self) {
            let (tx, rx) = mpsc::channel(buffer);
            (tx, Self(rx))
        }
    }

    impl Body for Channel {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }

    fn expiry(after: Duration, grpc: bool, side: Side, cancel: Option<oneshot::Sender<()>>) -> Expiry {
        Expiry::new(Instant::now() + after, after, grpc, side, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_stream_ends_with_deadline_exceeded_and_cancels_its_request() {
        let (tx, inner) = Channel::new(4);
        let (cancel, cancelled) = oneshot::channel();
        let (_writer, request) = Channel::new(1);
        let mut request = CancelOnDeadline::new(request, cancelled);
        let expiry = expiry(Duration::from_millis(500), true, Side::Client, Some(cancel));
        let mut response = DeadlineBody::new(inner, Some(expiry));
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
        assert_eq!(response.frame().await.unwrap().unwrap().into_data().unwrap(), "first");
        let started = Instant::now();
        let trailers = response.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(grpc::status(&trailers), Some(grpc::code::DEADLINE_EXCEEDED));
        assert!(response.frame().await.is_none() && response.is_end_stream());
        // The wrapped body was dropped: its writer sees the reader gone.
        assert!(tx.send(Ok(Frame::data(Bytes::new()))).await.is_err());
        // The request body, still open, fails with HTTP/2's CANCEL.
        let error = request.frame().await.unwrap().unwrap_err();
        let source = std::error::Error::source(&*error).unwrap().downcast_ref::<h2::Error>().unwrap();
        assert_eq!(source.reason(), Some(h2::Reason::CANCEL));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http_body_fails_with_the_route_timeout() {
        let (_tx, inner) = Channel::new(1);
        let mut response =
            DeadlineBody::new(inner, Some(expiry(Duration::from_millis(200), false, Side::Client, None)));
        let error = response.frame().await.unwrap().unwrap_err();
        assert_eq!(error.downcast_ref::<RouteTimeout>().unwrap().0, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_ends_a_plain_response_with_cancel() {
        let (_tx, inner) = Channel::new(1);
        let mut response =
            DeadlineBody::new(inner, Some(expiry(Duration::from_millis(200), false, Side::Server, None)));
        let error = response.frame().await.unwrap().unwrap_err();
        let source = std::error::Error::source(&*error).unwrap().downcast_ref::<h2::Error>().unwrap();
        assert_eq!(source.reason(), Some(h2::Reason::CANCEL));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_completes_in_time_is_untouched_and_releases_its_request() {
        let (tx, inner) = Channel::new(1);
        let (cancel, cancelled) = oneshot::channel();
        let (_writer, request) = Channel::new(1);
        let mut request = CancelOnDeadline::new(request, cancelled);
        let expiry = expiry(Duration::from_millis(100), true, Side::Client, Some(cancel));
        let mut response = DeadlineBody::new(inner, Some(expiry));
        let mut done = http::HeaderMap::new();
        done.insert(grpc::STATUS, http::HeaderValue::from_static("0"));
        tx.send(Ok(Frame::trailers(done))).await.unwrap();
        let trailers = response.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(grpc::status(&trailers), Some(grpc::code::OK));
        assert!(!response.is_guarded());
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The deadline no longer applies to the request: it stays open.
        let polled = tokio::time::timeout(Duration::from_secs(1), request.frame()).await;
        assert!(polled.is_err(), "the request body ended: {polled:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_is_never_guarded() {
        let expiry = expiry(Duration::ZERO, true, Side::Client, None);
        let body = DeadlineBody::new(http_body_util::Empty::<Bytes>::new(), Some(expiry));
        assert!(!body.is_guarded() && body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_at_the_servers_rounded_deadline_reads_as_the_deadline() {
        let reset = || -> BoxError { h2::Error::from(h2::Reason::CANCEL).into() };
        // Long before the deadline, the server's reset is the server's: it passes through.
        let (tx, inner) = Channel::new(1);
        let mut response = DeadlineBody::new(inner, Some(expiry(Duration::from_millis(500), true, Side::Client, None)));
        tx.send(Err(reset())).await.unwrap();
        assert!(response.frame().await.unwrap().unwrap_err().downcast_ref::<h2::Error>().is_some());
        // Within the rounding of the grpc-timeout it sent, it is the deadline.
        let (tx, inner) = Channel::new(1);
        let mut response = DeadlineBody::new(inner, Some(expiry(Duration::from_millis(500), true, Side::Client, None)));
        tokio::time::sleep(Duration::from_micros(499_500)).await;
        tx.send(Err(reset())).await.unwrap();
        let trailers = response.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(grpc::status(&trailers), Some(grpc::code::DEADLINE_EXCEEDED));
    }

    /// A body with a frame always ready, and its count.
    struct Endless(usize);

    impl Body for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0 += 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_is_always_ready_still_ends_at_the_deadline() {
        let mut response =
            DeadlineBody::new(Endless(0), Some(expiry(Duration::from_millis(50), true, Side::Client, None)));
        for _ in 0..3 {
            assert!(response.frame().await.unwrap().unwrap().is_data());
        }
        tokio::time::advance(Duration::from_millis(50)).await;
        // The frame read past the deadline is the last one of data.
        assert!(response.frame().await.unwrap().unwrap().is_data());
        let trailers = response.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(grpc::status(&trailers), Some(grpc::code::DEADLINE_EXCEEDED));
        // The request side: told to cancel, it stops though its body always has more.
        let (cancel, cancelled) = oneshot::channel();
        let mut request = CancelOnDeadline::new(Endless(0), cancelled);
        assert!(request.frame().await.unwrap().is_ok());
        cancel.send(()).unwrap();
        assert!(request.frame().await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_ready_when_the_deadline_passes_is_delivered() {
        // The head won the race with the timer; its body is there too: the call succeeds.
        let (tx, inner) = Channel::new(2);
        let mut response = DeadlineBody::new(inner, Some(expiry(Duration::from_millis(50), true, Side::Client, None)));
        let mut done = http::HeaderMap::new();
        done.insert(grpc::STATUS, http::HeaderValue::from_static("0"));
        tx.send(Ok(Frame::data(Bytes::from_static(b"reply")))).await.unwrap();
        tx.send(Ok(Frame::trailers(done))).await.unwrap();
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(response.frame().await.unwrap().unwrap().is_data());
        let trailers = response.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(grpc::status(&trailers), Some(grpc::code::OK));
    }
}
