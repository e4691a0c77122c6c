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
use hyper_util::client::legacy;
use pin_project_lite::pin_project;

use super::{EndpointBody, connect::ConnectFailures};
use crate::{
    BoxError, Upstream,
    classify::{self, Class, ClassifyHead, TransportFailure},
    client::{balance::InFlight, deadline::Deadline, outlier::Health, resolution::Resolution},
    connection::ConnectError,
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
        // No allocation beyond hyper-util's own.
        Sending {
            #[pin] future: legacy::ResponseFuture,
            upstream: Option<Upstream>,
            record: Option<AttemptRecord>,
            failures: Arc<ConnectFailures>,
        },
        Failed { error: Option<BoxError> },
    }
}

impl ResponseFuture {
    pub(crate) fn sending(
        future: legacy::ResponseFuture,
        upstream: Upstream,
        record: AttemptRecord,
        failures: Arc<ConnectFailures>,
    ) -> Self {
        Self { state: State::Sending { future, upstream: Some(upstream), record: Some(record), failures } }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self { state: State::Failed { error: Some(error) } }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<EndpointBody<Incoming>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { future, upstream, record, failures } => {
                let result = ready!(future.poll(cx));
                let Some(mut record) = record.take() else {
                    return Poll::Ready(Err("endpoint ResponseFuture polled after completion".into()));
                };
                let mut response = match result {
                    Ok(response) => response,
                    Err(error) => {
                        let error = explain(error, failures, record.address, record.started);
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
                Poll::Ready(Ok(response.map(|body| EndpointBody::new(body, status, pending))))
            }
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "endpoint ResponseFuture polled after completion".into()))),
        }
    }
}

/// A request that waited for a connection another request was opening, when that connect
/// failed, gets only the pool's "request was canceled" from hyper-util: give it the connect's own
/// error instead, as the request that dialled got.
fn explain(error: legacy::Error, failures: &ConnectFailures, address: SocketAddr, started: Instant) -> BoxError {
    if error.is_connect()
        && !carries_connect_error(&error)
        && let Some(cause) = failures.since(address, started)
    {
        return cause.into();
    }
    error.into()
}

fn carries_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<ConnectError>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
