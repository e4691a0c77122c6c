//! The request stack every server runs, for HTTP and gRPC alike.

use http::Request;
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceExt, util::Either};

use crate::{
    BoxError,
    authz::{Authorization, AuthorizationLayer},
    context::{ContextLayer, WithContext},
    telemetry::TelemetryLayer,
};

/// The layers a [`Server`](super::Server) puts in front of the application, outermost first:
/// telemetry (if configured), authorization (if configured), then the caller's deadline and
/// context.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestLayers {
    pub(crate) telemetry: Option<TelemetryLayer>,
    pub(crate) authorization: Option<AuthorizationLayer>,
    pub(crate) context: ContextLayer,
}

/// The application's errors, boxed, so telemetry can read them.
type Boxed<S> = tower::util::MapErr<S, fn(<S as Service<Request<Incoming>>>::Error) -> BoxError>;

/// Everything under telemetry.
pub(crate) type Inner<S> = Either<Authorization<WithContext<Boxed<S>>>, WithContext<Boxed<S>>>;

impl RequestLayers {
    /// Authorization and context around `service`; the caller adds telemetry above.
    pub(crate) fn inner<S>(&self, service: S) -> Inner<S>
    where
        S: Service<Request<Incoming>>,
        S::Error: Into<BoxError>,
    {
        let service = self.context.layer(service.map_err(Into::into as fn(S::Error) -> BoxError));
        match &self.authorization {
            Some(authorization) => Either::Left(authorization.layer(service)),
            None => Either::Right(service),
        }
    }
}
