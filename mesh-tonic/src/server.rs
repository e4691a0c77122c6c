use std::io;

use http::{Request, Response};
use hyper::body::Incoming;
use mesh_tower::{
    BoxError, ConnectionInfo, PeerIdentity,
    authz::AuthorizationLayer,
    context::ContextLayer,
    server::{RequestStack, Server, ServerHandle},
    telemetry::TelemetryLayer,
};
use tokio::net::TcpListener;
use tower::Service;

/// Serves tonic services with the mesh server stack: the same stack [`Server`] runs for HTTP
/// services. Its setters configure that stack, a [`RequestStack`], as
/// [`ServerBuilder`](mesh_tower::server::ServerBuilder)'s do (configure it there, or here on a
/// server built already: it is the same configuration).
///
/// The connection is [`Server`]'s: mTLS with the caller's SPIFFE ID verified once per connection,
/// HTTP/2, [`PeerIdentity`] and [`ConnectionInfo`] in every request's extensions (read them in a
/// handler with [`PeerIdentityExt`]), graceful drain (`GOAWAY`, then the RPCs in flight finish).
/// Then, per call, in this order:
///
/// 0. telemetry, if configured ([`telemetry`](Self::telemetry)): the server span with the
///    caller's trace context, request metrics, the access log; above authorization, so denied
///    calls are seen and counted;
/// 1. authorization ([`authorization`](Self::authorization)), by caller and by gRPC method (a
///    rule's paths match `/package.Service/Method`): a denied call is answered
///    `PERMISSION_DENIED` and never reaches the service;
/// 2. the caller's deadline (`grpc-timeout`, or the mesh's `x-mesh-timeout`): when it passes the
///    handler is dropped and the caller gets `DEADLINE_EXCEEDED`; the mesh calls the handler makes
///    carry the time left on (see [`mesh_tower::context`]);
/// 3. the service: a generated `…Server`, a `tonic::service::Routes`, or any tower service of
///    HTTP requests.
///
/// ```no_run
/// use mesh_core::{IdentitySource, policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch}};
/// use mesh_tonic::GrpcServer;
/// use mesh_tower::{authz::AuthorizationLayer, server::Server};
/// use tonic_health::server::health_reporter;
///
/// # async fn f(identity: IdentitySource) -> Result<(), Box<dyn std::error::Error>> {
/// let (_reporter, health) = health_reporter(); // any tonic service
/// let web = PrincipalMatch::Exact("spiffe://example.org/web".parse()?);
/// let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![web])]);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let handle = GrpcServer::new(Server::builder().identity(identity).build()?)
///     .authorization(AuthorizationLayer::new(policy))
///     .spawn(listener, health)?;
/// // ... later: stop accepting, finish the RPCs in flight.
/// handle.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcServer {
    server: Server,
}

impl GrpcServer {
    /// Serves with `server`'s connection settings (identity, timeouts, drain) and its request
    /// stack (what [`ServerBuilder`](mesh_tower::server::ServerBuilder) configured).
    pub fn new(server: Server) -> Self {
        Self { server }
    }

    /// Traces, measures and logs every call: `TelemetryLayer::server(service_name)` (see
    /// [`RequestStack::telemetry`]).
    pub fn telemetry(self, layer: TelemetryLayer) -> Self {
        self.edit(|stack| stack.telemetry(layer))
    }

    /// Authorizes every call before it reaches the service: [`AuthorizationLayer::new`] for a
    /// fixed policy, [`AuthorizationLayer::from_discovery`] to follow the service's snapshot (see
    /// [`RequestStack::authorization`]). Without it, every caller that completes the mTLS
    /// handshake is served.
    pub fn authorization(self, layer: AuthorizationLayer) -> Self {
        self.edit(|stack| stack.authorization(layer))
    }

    /// Replaces the context layer (to read the cohort from another header; see
    /// [`RequestStack::context`]).
    pub fn context(self, layer: ContextLayer) -> Self {
        self.edit(|stack| stack.context(layer))
    }

    /// The server's request stack, changed by `change`.
    fn edit(self, change: impl FnOnce(RequestStack) -> RequestStack) -> Self {
        let stack = change(self.server.request_stack().clone());
        Self { server: self.server.with_request_stack(stack) }
    }

    /// Serves `service` on `listener` in a background task; the handle drains it.
    ///
    /// Needs a tokio runtime. Fails only if the listener has no local address.
    pub fn spawn<S, B>(&self, listener: TcpListener, service: S) -> io::Result<ServerHandle>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Default + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.server.spawn(listener, service)
    }
}

/// What the mesh knows about a call's peer, read from a [`tonic::Request`] in a handler.
///
/// ```
/// use mesh_tonic::PeerIdentityExt;
///
/// fn caller<T>(request: &tonic::Request<T>) -> String {
///     request.peer_identity().map_or_else(|| "nobody".to_owned(), |peer| peer.id().to_string())
/// }
/// ```
pub trait PeerIdentityExt {
    /// The caller's verified SPIFFE ID (absent on plaintext connections).
    fn peer_identity(&self) -> Option<&PeerIdentity>;

    /// The connection's addresses and TLS details.
    fn connection_info(&self) -> Option<&ConnectionInfo>;
}

impl<T> PeerIdentityExt for tonic::Request<T> {
    fn peer_identity(&self) -> Option<&PeerIdentity> {
        // tonic moves the HTTP request's extensions, where the server put these, into its own.
        self.extensions().get::<PeerIdentity>()
    }

    fn connection_info(&self) -> Option<&ConnectionInfo> {
        self.extensions().get::<ConnectionInfo>()
    }
}
