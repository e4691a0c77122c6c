//! The per-request path of a [`Server`](super::Server): one service per connection and one future
//! per request for the whole request stack.
//!
//! What depends only on the connection is settled when it is accepted, in a [`Connection`]: its
//! addresses, the caller's identity, the authorization policy's rules narrowed to that caller and
//! port. Each request then runs telemetry's start, the authorization check and the call into the
//! context layer (the caller's deadline, kept as its own service: `crate::context`) from one
//! service, in one future, and its response body is the one wrapper that settles telemetry at the
//! end of the stream. The public layers ([`TelemetryLayer`](crate::telemetry::TelemetryLayer),
//! [`AuthorizationLayer`](crate::authz::AuthorizationLayer), [`ContextLayer`]) run the same code
//! for stacks composed by hand.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::Service;

use super::stack::RequestStack;
use crate::{
    BoxError, ConnectionInfo, PeerIdentity,
    authz::ConnectionAuthorization,
    context::{ContextLayer, WithContext},
    telemetry::{self, TelemetryBody},
};

/// What a server knows of one accepted connection, for every request on it.
pub(super) struct Connection {
    info: ConnectionInfo,
    peer: Option<PeerIdentity>,
    telemetry: Option<telemetry::Inbound>,
    authorization: Option<ConnectionAuthorization>,
}

impl Connection {
    /// The connection `info` from `peer` (`None`: plaintext), served with `stack`.
    pub(super) fn new(stack: &RequestStack, info: ConnectionInfo, peer: Option<PeerIdentity>) -> Self {
        let authorization = stack.authorization.as_ref().map(|layer| {
            ConnectionAuthorization::new(layer, peer.as_ref().map(PeerIdentity::id), info.local_addr.port())
        });
        let telemetry = stack.telemetry.as_ref().map(telemetry::Inbound::new);
        Self { info, peer, telemetry, authorization }
    }
}

/// The application's service behind the context layer, built once per server.
pub(super) type Application<S> = WithContext<S>;

/// `service` behind `context`.
pub(super) fn application<S>(context: &ContextLayer, service: S) -> Application<S> {
    tower::Layer::layer(context, service)
}

/// The service hyper calls for every request of one connection: `A` is the application's
/// service behind the context layer ([`Application`]), whatever its response body.
pub(super) struct ConnectionService<A> {
    application: A,
    connection: Arc<Connection>,
}

impl<A> ConnectionService<A> {
    pub(super) fn new(application: A, connection: Connection) -> Self {
        Self { application, connection: Arc::new(connection) }
    }
}

impl<A, B> hyper::service::Service<Request<Incoming>> for ConnectionService<A>
where
    A: Service<Request<Incoming>, Response = Response<B>> + Clone,
    A::Error: Into<BoxError>,
    B: http_body::Body + Default,
{
    type Response = Response<TelemetryBody<B>>;
    type Error = BoxError;
    type Future = ServerFuture<A, A::Future, B>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let connection = &*self.connection;
        let extensions = request.extensions_mut();
        extensions.insert(connection.info);
        if let Some(peer) = &connection.peer {
            extensions.insert(peer.clone());
        }
        let (exchange, scope) = match &connection.telemetry {
            Some(telemetry) => {
                let (exchange, scope) = telemetry.start(&request);
                (Some(exchange), scope)
            }
            None => (None, telemetry::Scope::none()),
        };
        // Inside the request's span, as the layers below telemetry run: a denial's log event
        // belongs to the request (authorization makes no calls, so the context is not attached).
        let denied = match &connection.authorization {
            Some(authorization) => scope.in_span(|| authorization.check(&request)),
            None => None,
        };
        let state = match denied {
            Some(response) => State::Denied { response: Some(response) },
            None => State::Ready { service: self.application.clone(), request: Some(request) },
        };
        ServerFuture { state, scope, exchange }
    }
}

pin_project! {
    /// The response future of one request: readiness, the call and its response, inside the
    /// request's span, settled by telemetry when it completes.
    pub(super) struct ServerFuture<Svc, F, B> {
        #[pin]
        state: State<Svc, F, B>,
        scope: telemetry::Scope,
        exchange: Option<telemetry::Exchange>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Svc, F, B> {
        // Waiting for the (cloned) service to be ready, as `tower::util::Oneshot` does.
        Ready { service: Svc, request: Option<Request<Incoming>> },
        Called { #[pin] future: F },
        // Refused by authorization: never reaches the service.
        Denied { response: Option<Response<B>> },
    }
}

impl<Svc, B, E> Future for ServerFuture<Svc, Svc::Future, B>
where
    Svc: Service<Request<Incoming>, Response = Response<B>, Error = E>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<TelemetryBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        // One entry into the request's scope per poll, however far the request gets in it.
        let result = ready!(this.scope.in_scope(|| loop {
            match state.as_mut().project() {
                StateProj::Ready { service, request } => {
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = request.take() else {
                        return Poll::Pending; // polled after completion
                    };
                    let future = service.call(request);
                    state.set(State::Called { future });
                }
                StateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Denied { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending, // polled after completion
                    };
                }
            }
        }));
        Poll::Ready(match this.exchange.take() {
            Some(exchange) => telemetry::settle(exchange, result),
            None => result.map(|response| response.map(TelemetryBody::passthrough)),
        })
    }
}
