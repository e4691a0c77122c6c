use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::Response;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::{EndpointBody, http1::Lease};
use crate::{
    BoxError, Upstream,
    classify::{self, Class, ClassifyHead, TransportFailure},
    client::{balance::InFlight, deadline::Deadline, outlier::Health, resolution::Resolution},
    golden::GoldenSignals,
};

/// One attempt's accounting: recorded exactly once, however the attempt ends. Dropped without an
/// outcome, the attempt timed out if its deadline passed, else its caller gave up.
pub(crate) struct AttemptRecord {
    resolution: Resolution,
    address: SocketAddr,
    health: Arc<Health>,
    in_flight: InFlight,
    signals: Option<GoldenSignals>,
    started: Instant,
    deadline: Option<Deadline>,
    done: bool,
}

impl AttemptRecord {
    pub(crate) fn start(
        resolution: Resolution,
        address: SocketAddr,
        health: Arc<Health>,
        in_flight: InFlight,
        signals: Option<GoldenSignals>,
        deadline: Option<Deadline>,
    ) -> Self {
        Self { resolution, address, health, in_flight, signals, started: Instant::now(), deadline, done: false }
    }

    /// The response head arrived: what the balancer compares is the latency to it.
    fn head_arrived(&mut self) {
        self.in_flight.finish();
    }

    pub(crate) fn finish(&mut self, class: Class) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let failed = class.is_server_failure();
        if failed {
            self.resolution.record_failed(self.address);
        }
        // A caller that gave up says nothing about the endpoint.
        if class != Class::Cancelled
            && let Some(policy) = &self.resolution.plan().outlier
        {
            let plan = self.resolution.plan();
            if crate::client::outlier::record(&self.health, failed, policy, &plan.all_health, &plan.outlier_stats) {
                crate::metrics::per_service(crate::metrics::OUTLIER_EJECTIONS, self.resolution.service());
            }
        }
        if let Some(signals) = &self.signals {
            signals.record(self.resolution.subset(), self.started.elapsed(), !failed);
        }
    }
}

impl Drop for AttemptRecord {
    fn drop(&mut self) {
        if !self.done {
            let class = match self.deadline {
                Some(deadline) if deadline.has_passed() => Class::Transport(TransportFailure::Timeout),
                _ => Class::Cancelled,
            };
            self.finish(class);
        }
    }
}

/// An attempt on its way, on the endpoint's HTTP/1.1 or HTTP/2 connection of our own: boxed
/// once (hyper-util's pool boxed its future too). An HTTP/1.1 response whose body is still on
/// the connection comes with the connection's [`Lease`].
pub(crate) type Sending = Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Option<Lease>), BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Endpoints`](super::Endpoints).
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sending {
            future: Sending,
            upstream: Option<Upstream>,
            record: Option<AttemptRecord>,
        },
        Failed { error: Option<BoxError> },
    }
}

impl ResponseFuture {
    pub(crate) fn sending(future: Sending, upstream: Upstream, record: AttemptRecord) -> Self {
        Self { state: State::Sending { future, upstream: Some(upstream), record: Some(record) } }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self { state: State::Failed { error: Some(error) } }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<EndpointBody<Incoming>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { future, upstream, record } => {
                let result = ready!(future.as_mut().poll(cx));
                let Some(mut record) = record.take() else {
                    return Poll::Ready(Err("endpoint ResponseFuture polled after completion".into()));
                };
                let (mut response, lease) = match result {
                    Ok(sent) => sent,
                    Err(error) => {
                        record.finish(classify::error(&error));
                        return Poll::Ready(Err(error));
                    }
                };
                record.head_arrived();
                let status = response.status();
                let pending = match classify::head(status, response.headers()) {
                    ClassifyHead::Ready(class) => {
                        record.finish(class);
                        None
                    }
                    ClassifyHead::RequiresEos { .. } => Some(record),
                };
                if let Some(upstream) = upstream.take() {
                    response.extensions_mut().insert(upstream);
                }
                Poll::Ready(Ok(response.map(|body| EndpointBody::new(body, status, pending, lease))))
            }
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "endpoint ResponseFuture polled after completion".into()))),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
