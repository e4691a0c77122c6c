use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::Response;
use hyper::body::Incoming;
use hyper_util::client::legacy;
use pin_project_lite::pin_project;

use super::plan::OutlierRecorder;
use crate::{BoxError, Upstream, balance::InFlight, telemetry::GoldenSignals};

type Resolving = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`MeshClient`](super::MeshClient).
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        // The usual path: no allocation beyond hyper-util's own.
        Sending {
            #[pin] future: legacy::ResponseFuture,
            upstream: Option<Upstream>,
            in_flight: InFlight,
            outlier: Option<OutlierRecorder>,
            signals: Option<(GoldenSignals, Instant)>,
        },
        // Before the first snapshot only.
        Resolving { future: Resolving },
        Failed { error: Option<BoxError> },
    }
}

impl ResponseFuture {
    pub(crate) fn sending(
        future: legacy::ResponseFuture,
        upstream: Upstream,
        in_flight: InFlight,
        outlier: Option<OutlierRecorder>,
        signals: Option<GoldenSignals>,
    ) -> Self {
        let signals = signals.map(|s| (s, Instant::now()));
        Self { state: State::Sending { future, upstream: Some(upstream), in_flight, outlier, signals } }
    }

    pub(crate) fn resolving(
        future: impl Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static,
    ) -> Self {
        Self { state: State::Resolving { future: Box::pin(future) } }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self { state: State::Failed { error: Some(error) } }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { future, upstream, in_flight, outlier, signals } => {
                let result = ready!(future.poll(cx));
                // Server errors and transport failures count against the endpoint; 4xx do not.
                let failed = match &result {
                    Ok(response) => {
                        response.status().is_server_error()
                            || crate::classify::grpc_status(response.headers()) == Some(14)
                    }
                    Err(_) => true,
                };
                if let Some(outlier) = outlier.take() {
                    outlier.record(failed);
                }
                if let (Some((signals, started)), Some(upstream)) = (signals.take(), upstream.as_ref()) {
                    signals.record(upstream.subset.as_ref(), started.elapsed(), !failed);
                }
                let mut response = result?;
                // Latency to the response headers: what the balancer compares.
                in_flight.finish();
                if let Some(upstream) = upstream.take() {
                    response.extensions_mut().insert(upstream);
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Resolving { future } => future.as_mut().poll(cx),
            StateProj::Failed { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(|| "ResponseFuture polled after completion".into())))
            }
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
