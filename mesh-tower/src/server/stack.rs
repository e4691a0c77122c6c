//! The request stack every server runs, for HTTP and gRPC alike, and the one place it is
//! configured.

use crate::{authz::AuthorizationLayer, context::ContextLayer, telemetry::TelemetryLayer};

/// What a [`Server`](super::Server) runs for every request before the application's service,
/// outermost first: telemetry (if configured), authorization (if configured), then the caller's
/// deadline and context (see the [request stack](super#the-request-stack)).
///
/// The one configuration of a server's request stack: [`ServerBuilder`](super::ServerBuilder)'s
/// [`telemetry`](super::ServerBuilder::telemetry), [`authorization`](super::ServerBuilder::authorization)
/// and [`context`](super::ServerBuilder::context) set these, and `mesh_tonic::GrpcServer`'s
/// setters set them on its server through [`Server::with_request_stack`](super::Server::with_request_stack).
/// The server runs them as one service per connection (see `server/service.rs`); the layers
/// themselves stay public, for stacks composed by hand, and behave the same.
///
/// ```
/// use mesh_tower::{server::{RequestStack, Server}, telemetry::TelemetryLayer};
///
/// let stack = RequestStack::new().telemetry(TelemetryLayer::server("reviews".parse()?));
/// let server = Server::builder().plaintext().request_stack(stack).build()?;
/// assert!(server.request_stack().has_telemetry());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct RequestStack {
    pub(super) telemetry: Option<TelemetryLayer>,
    pub(super) authorization: Option<AuthorizationLayer>,
    pub(super) context: ContextLayer,
}

impl RequestStack {
    /// No telemetry, no authorization, the default context layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Traces, measures and logs every request (`TelemetryLayer::server(service_name)`),
    /// outermost, so requests that authorization denies or whose deadline passes are seen and
    /// counted.
    pub fn telemetry(mut self, layer: TelemetryLayer) -> Self {
        self.telemetry = Some(layer);
        self
    }

    /// Authorizes every request before it reaches the service: [`AuthorizationLayer::new`] for a
    /// fixed policy, [`AuthorizationLayer::from_discovery`] to follow the service's snapshot,
    /// [`AuthorizationLayer::from_watch`] for a control plane's. Without it, every caller that
    /// completes the mTLS handshake is served. The policy's rules are narrowed to each
    /// connection's caller and port once, when the connection is accepted (and again when the
    /// policy changes), so a policy that decides by caller costs nothing per request.
    pub fn authorization(mut self, layer: AuthorizationLayer) -> Self {
        self.authorization = Some(layer);
        self
    }

    /// Replaces the context layer (deadline and cohort; to read the cohort from another header).
    pub fn context(mut self, layer: ContextLayer) -> Self {
        self.context = layer;
        self
    }

    /// Whether telemetry is configured.
    pub fn has_telemetry(&self) -> bool {
        self.telemetry.is_some()
    }

    /// Whether authorization is configured.
    pub fn has_authorization(&self) -> bool {
        self.authorization.is_some()
    }
}
