//! The bottom of the client stack: one attempt to one endpoint.
//!
//! [`Endpoints`] picks the endpoint in the subset the request's
//! [`Resolution`] chose (P2C, round robin or ring hash, see
//! [`balance`](super::balance)), skipping endpoints [outlier detection](super::outlier) ejected and the
//! ones that already failed this request, then sends on the endpoint's connection, dialled
//! with mutual TLS that checks the endpoint's expected SPIFFE ID: over HTTP/2 the endpoint's one
//! connection of our own (`http2`: a clone of its `SendRequest`, no pool lookup), over HTTP/1.1
//! the endpoint's idle list of our own (`http1`). A share of a route's requests is copied to a
//! shadow subset ([`mirror`]).
//!
//! Every attempt is accounted for, however it ends: a response (classified from its head, or at
//! the end of its body when the gRPC status is in the trailers), an error, a per-try or route
//! timeout, or the caller giving up. Its outcome, by the one [classifier](crate::classify), reaches
//! outlier detection, the per-attempt golden signals, and the request's [`Resolution`] (so a
//! retry avoids an endpoint that failed, whatever the failure); the response carries an
//! [`Upstream`] naming the route, subset, endpoint and attempt.

mod body;
pub(crate) mod connect;
mod future;
mod http1;
mod http2;
pub mod mirror;
mod stream;
mod unclaimed;

use std::{
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Uri,
    header::HOST,
    uri::{PathAndQuery, Scheme},
};
use http_body_util::Full;
use hyper_util::client::legacy::Client;

pub use self::body::EndpointBody;
pub use self::future::ResponseFuture;
use self::{
    connect::MeshConnector,
    future::{AttemptRecord, Sending},
    mirror::{MirrorStats, TeeBody},
};
pub(crate) use self::{http1::Http1Connections, http2::Http2Connections};
use super::{
    config::{ClientConfig, Protocol},
    resolution::{Resolution, plan::Target},
};
use crate::{
    BoxError, Upstream,
    client::{balance::InFlight, deadline::Deadline},
    golden::GoldenSignals,
};

/// Sends each attempt to an endpoint of its resolved subset. See the [module docs](self).
pub struct Endpoints<B> {
    shared: Arc<Shared>,
    transport: Transport,
    /// The request body type the connections are typed by (kept in the endpoints' slots).
    body: PhantomData<fn(B)>,
}

/// How attempts reach their endpoint.
#[derive(Clone)]
pub(crate) enum Transport {
    /// HTTP/1.1: the endpoint's idle list of our own. Behind an `Arc`: the retry layer clones
    /// the stack below it for each request that may be retried.
    Http1(Arc<Http1Connections>),
    /// HTTP/2: the endpoint's one connection of our own.
    Http2(Arc<Http2Connections>),
}

pub(crate) struct Shared {
    /// Mirrored copies travel on their own pool, so they never hold up a primary request.
    pub(crate) mirror_http: Client<MeshConnector, Full<Bytes>>,
    pub(crate) mirrors: Arc<MirrorStats>,
    pub(crate) mirror_slots: Arc<tokio::sync::Semaphore>,
    /// Per-attempt golden signals, when a telemetry layer asked for them.
    pub(crate) attempt_signals: Option<GoldenSignals>,
    pub(crate) config: ClientConfig,
    /// The `Host` of HTTP/1.1 requests that name none: the service name, made once.
    pub(crate) host: Option<HeaderValue>,
}

/// The request header that numbers a retried attempt (2 for the first retry); absent on first
/// attempts.
pub const ATTEMPT_HEADER: http::HeaderName = http::HeaderName::from_static("x-mesh-attempt");

/// The request had no [`Resolution`]: [`Endpoints`] was used without the router above it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the request was not resolved: the endpoint layer needs the client stack's router above it")]
pub struct NotResolved;

impl<B> Endpoints<B> {
    pub(crate) fn new(shared: Shared, transport: Transport) -> Self {
        Self { shared: Arc::new(shared), transport, body: PhantomData }
    }

    /// The counts of mirrored copies.
    pub(crate) fn mirror_stats(&self) -> Arc<MirrorStats> {
        self.shared.mirrors.clone()
    }
}

impl<B> Clone for Endpoints<B> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), transport: self.transport.clone(), body: PhantomData }
    }
}

impl<B> std::fmt::Debug for Endpoints<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl<B> tower::Service<Request<B>> for Endpoints<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<EndpointBody<hyper::body::Incoming>>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: endpoints are picked per request.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(resolution) = request.extensions_mut().remove::<Resolution>() else {
            return ResponseFuture::failed(NotResolved.into());
        };
        let deadline = request.extensions().get::<Deadline>().copied();
        self.send(request, resolution, deadline)
    }
}

impl<B> Endpoints<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<BoxError>,
{
    /// One attempt of a request resolved to `resolution`, bounded by `deadline` (the attempt's:
    /// the call's, or sooner by the per-try timeout): what [`call`](tower::Service::call) does
    /// with the two it finds in the request's extensions, and what the client's one call path
    /// (`client::call`) hands it directly.
    pub(crate) fn send(
        &self,
        mut request: Request<B>,
        resolution: Resolution,
        deadline: Option<Deadline>,
    ) -> ResponseFuture {
        let (target, attempt) = match resolution.start_attempt(&request) {
            Ok((target, attempt)) => (target.clone(), attempt),
            Err(error) => return ResponseFuture::failed(error.into()),
        };
        if attempt > 1 {
            // For the server's logs; nothing of mesh's reads it back.
            request.headers_mut().insert(ATTEMPT_HEADER, crate::headers::small_number(attempt));
        }
        // The next hop stops when we would.
        if let Some(deadline) = deadline {
            crate::headers::propagate(request.headers_mut(), deadline.remaining());
        }
        let mirror = if attempt == 1 { resolution.mirror_target(&request).cloned() } else { None };
        let request = match mirror {
            Some(shadow) => self::mirror::tee(&self.shared, request, shadow),
            None => request.map(TeeBody::plain),
        };
        let upstream = Upstream {
            address: target.address,
            route: resolution.route().cloned(),
            subset: resolution.subset().cloned(),
            attempt,
        };
        let record = AttemptRecord::start(
            resolution,
            target.address,
            target.health.clone(),
            InFlight::start(target.load.clone()),
            self.shared.attempt_signals.clone(),
            deadline,
        );
        let sending: Result<Sending, BoxError> = match &self.transport {
            Transport::Http1(connections) => origin_form(request, &self.shared).map(|request| {
                let send = connections.clone().send(target.connection, target.authority.clone(), request);
                Box::pin(send) as Sending
            }),
            Transport::Http2(connections) => {
                rewrite(request, &target, &self.shared).map(|request| connections.send(target.connection, request))
            }
        };
        match sending {
            Ok(sending) => ResponseFuture::sending(sending, upstream, record),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

/// Points the request at `target`, keeping its path and query (absolute-form, as hyper-util's
/// client and HTTP/2's `:authority` want it). On HTTP/1.1 the `Host` header keeps the name the
/// caller used (the service name by default), as a server behind a sidecar would have seen it.
pub(crate) fn rewrite<B>(request: Request<B>, target: &Target, shared: &Shared) -> Result<Request<B>, BoxError> {
    let (mut parts, body) = request.into_parts();
    if shared.config.protocol == Protocol::Http1 {
        set_host(&mut parts, shared)?;
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(target.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri)?;
    Ok(Request::from_parts(parts, body))
}

/// The request as it goes on an HTTP/1.1 connection of our own: origin-form (`/path?query`, the
/// connection already leads to the endpoint), its `Host` the name the caller used (see
/// [`rewrite`]).
fn origin_form<B>(request: Request<B>, shared: &Shared) -> Result<Request<B>, BoxError> {
    let (mut parts, body) = request.into_parts();
    set_host(&mut parts, shared)?;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() || parts.uri.path_and_query().is_none() {
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    Ok(Request::from_parts(parts, body))
}

/// A `Host` header for an HTTP/1.1 request that has none: the authority the caller named, else
/// the service name.
fn set_host(parts: &mut http::request::Parts, shared: &Shared) -> Result<(), BoxError> {
    if !parts.headers.contains_key(HOST) {
        let host = match (parts.uri.authority(), &shared.host) {
            (Some(authority), _) => HeaderValue::from_str(authority.as_str())?,
            (None, Some(host)) => host.clone(),
            (None, None) => HeaderValue::from_static("localhost"),
        };
        parts.headers.insert(HOST, host);
    }
    Ok(())
}
