//! Client errors as HTTP responses, in one place, for callers that want a response rather than an
//! error (a gateway, or a handler that passes a failed call on).
//!
//! The status is the one [`ErrorKind`]'s table gives the error's kind ([`status_of`]: 404 for no
//! route, 503 for no endpoints, 504 for a timeout, 502 for a connect or transport failure, an
//! injected fault's own status, ...); an injected gRPC status is answered as a gRPC server fails
//! a call at once, a trailers-only response (200, `grpc-status` in the headers, no body). Each such response carries [`ERROR_HEADER`] (`x-mesh-error: timeout`, …, the kind's
//! [`as_str`](ErrorKind::as_str)), so a caller can tell mesh's answer from the upstream's, as
//! Linkerd's `l5d-proxy-error` does, and a `text/plain` body with the error's message.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{
    BoxError,
    failure::{ClientError, ErrorKind, status_of},
};

/// The response header that names why mesh answered instead of the upstream.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-mesh-error");

/// The body of a response from [`ErrorResponseLayer`]: the upstream's, or mesh's message.
pub type ErrorResponse<B> = Either<B, Full<Bytes>>;

/// Turns the errors of the service below (a [`MeshClient`](super::MeshClient)) into HTTP
/// responses, with the statuses of [`ErrorKind`]'s table ([`status_of`]).
///
/// ```
/// use mesh_tower::client::{ERROR_HEADER, ErrorResponseLayer, MeshClient};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// // A destination discovery knows nothing about: mesh answers 503 and says why.
/// let client = MeshClient::builder(mesh_core::StaticDiscovery::new(), "reviews".parse()?)
///     .plaintext()
///     .resolve_timeout(std::time::Duration::from_millis(10))
///     .build::<http_body_util::Empty<bytes::Bytes>>()?;
/// let client = ErrorResponseLayer::new().layer(client);
/// let response = client.oneshot(http::Request::get("/").body(Default::default())?).await?;
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()[ERROR_HEADER], "unresolved");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer {
    _private: (),
}

impl ErrorResponseLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponses<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponses { inner, not_ready: None }
    }
}

/// The service [`ErrorResponseLayer`] makes.
#[derive(Debug)]
pub struct ErrorResponses<S> {
    inner: S,
    /// The inner service failed to become ready: the next request is answered with that.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponses<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), not_ready: None }
    }
}

/// The response mesh answers with for `error`.
pub fn response_of<B>(error: &BoxError) -> Response<ErrorResponse<B>> {
    let kind = ErrorKind::of(error.as_ref());
    let message = match error.downcast_ref::<ClientError>() {
        Some(client) => client.to_string(),
        None => error.to_string(),
    };
    if let Some(code) = injected_grpc_status(error.as_ref()) {
        // As a gRPC server fails a call it never started: the status in the headers, no body.
        let (mut parts, ()) = crate::grpc::status_response::<()>(code, &message).into_parts();
        parts.headers.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
        return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    }
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message))));
    *response.status_mut() = status_of(kind, error.as_ref());
    let headers = response.headers_mut();
    headers.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The gRPC status code an injected abort names, if `error` is one.
fn injected_grpc_status(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    std::iter::successors(Some(error), |e| (*e).source())
        .find_map(|e| e.downcast_ref::<crate::failure::InjectedFault>())
        .and_then(|fault| fault.grpc_status())
}

impl<S, Req, B> Service<Req> for ErrorResponses<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ErrorResponse<B>>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that cannot become ready: the request is answered with its error.
        if let Err(error) = ready!(self.inner.poll_ready(cx)) {
            self.not_ready = Some(error.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.not_ready.take() {
            Some(error) => ErrorResponseFuture { state: Answer::Failed { error: Some(error) } },
            None => ErrorResponseFuture { state: Answer::Inner { inner: self.inner.call(request) } },
        }
    }
}

pin_project! {
    /// The response future of [`ErrorResponses`].
    pub struct ErrorResponseFuture<F> {
        #[pin]
        state: Answer<F>,
    }
}

pin_project! {
    #[project = AnswerProj]
    enum Answer<F> {
        Inner { #[pin] inner: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F, B, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ErrorResponse<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self.project().state.project() {
            AnswerProj::Inner { inner } => ready!(inner.poll(cx)).map_err(Into::into),
            AnswerProj::Failed { error } => Err(error.take().unwrap_or_else(|| "polled after completion".into())),
        };
        Poll::Ready(Ok(match result {
            Ok(response) => response.map(Either::Left),
            Err(error) => response_of(&error),
        }))
    }
}

impl<F> std::fmt::Debug for ErrorResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorResponseFuture").finish_non_exhaustive()
    }
}
