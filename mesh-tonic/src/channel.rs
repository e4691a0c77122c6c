use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use mesh_core::{Discovery, IdentitySource, ServiceName};
use mesh_tower::{
    BoxError, MissingIdentity,
    client::{ClientConfig, MeshClient, MeshClientBuilder, Protocol, ResponseBody},
    telemetry::TelemetryLayer,
};
use tonic::Status;

use crate::status::status_from_error;

/// A gRPC channel to one service, resolved through discovery, with the whole mesh client stack.
///
/// What a generated tonic client takes in place of tonic's `Channel`
/// (`GreeterClient::new(channel)`). Each call goes through the whole client stack (see
/// [`MeshClientBuilder::build`]): telemetry (spans, metrics, golden signals), the router (the
/// route matching `/package.Service/Method` and the weighted split, decided once per call), the
/// call's deadline, fault injection, retries by gRPC status inside the chosen subset (with the
/// destination's budget), load shedding, then P2C balancing, outlier detection and an HTTP/2
/// connection with mTLS that checks the endpoint's SPIFFE ID. Errors come back as [`Status`]es (see
/// [`status_from_error`]).
///
/// Cheap to clone, like tonic's `Channel`: clones share the connection pool, the balancer, the
/// retry budget and the circuit breaker, so make one per destination and clone it into every
/// task that calls it. It is `Send` and `Sync`, so a client can live in shared application state.
#[derive(Clone)]
pub struct MeshChannel {
    stack: MeshClient<tonic::body::Body>,
    service: ServiceName,
}

impl MeshChannel {
    /// Starts configuring a channel to `service`, resolved through `discovery`.
    ///
    /// ```
    /// use mesh_core::{IdentitySource, StaticDiscovery, identity::dev::DevCa};
    /// use mesh_tonic::MeshChannel;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let ca = DevCa::new("example.org".parse()?)?;
    /// let me = IdentitySource::fixed(ca.identity("/frontend")?);
    /// let channel = MeshChannel::builder(StaticDiscovery::new(), "greeter".parse()?).identity(me).build()?;
    /// assert_eq!(channel.service().as_str(), "greeter");
    /// # Ok(()) }
    /// ```
    pub fn builder(discovery: impl Discovery, service: ServiceName) -> MeshChannelBuilder {
        MeshChannelBuilder { client: MeshClient::builder(discovery, service.clone()), service }
    }

    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The mesh client underneath: its telemetry (golden signals per call and per attempt),
    /// outlier, retry and load-shedding counters.
    pub fn client(&self) -> &MeshClient<tonic::body::Body> {
        &self.stack
    }
}

/// Configures a [`MeshChannel`]: the mesh client's settings, always over HTTP/2.
///
/// Every setting of [`MeshClientBuilder`] is reachable: the ones almost every channel needs
/// ([`identity`](Self::identity), [`plaintext`](Self::plaintext), [`config`](Self::config),
/// [`telemetry`](Self::telemetry)) here, and all of them through
/// [`with_client`](Self::with_client), which hands over the client builder itself, so a setting
/// mesh-tower adds is there without a copy here.
#[derive(Clone)]
pub struct MeshChannelBuilder {
    client: MeshClientBuilder,
    service: ServiceName,
}

impl MeshChannelBuilder {
    /// Mutual TLS with SPIFFE verification of every endpoint (see
    /// [`MeshClientBuilder::identity`]).
    pub fn identity(mut self, source: IdentitySource) -> Self {
        self.client = self.client.identity(source);
        self
    }

    /// Plaintext, as an explicit choice: peers are not authenticated.
    pub fn plaintext(mut self) -> Self {
        self.client = self.client.plaintext();
        self
    }

    /// The client configuration (its protocol is ignored: gRPC is always HTTP/2).
    ///
    /// ```
    /// use mesh_tower::client::ClientConfig;
    /// # let discovery = mesh_core::StaticDiscovery::new();
    /// let mut config = ClientConfig::default();
    /// config.seed = Some(7); // repeatable balancing and splits, for tests
    /// let channel = mesh_tonic::MeshChannel::builder(discovery, "greeter".parse()?)
    ///     .plaintext()
    ///     .config(config)
    ///     .build()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.client = self.client.config(config);
        self
    }

    /// The channel's telemetry (by default `TelemetryLayer::client(service)`; see
    /// [`MeshClientBuilder::telemetry`]).
    pub fn telemetry(mut self, telemetry: TelemetryLayer) -> Self {
        self.client = self.client.telemetry(telemetry);
        self
    }

    /// Applies `configure` to the [`MeshClientBuilder`] underneath: any of its settings, as on a
    /// [`MeshClient`] (its protocol excepted: gRPC is always HTTP/2).
    ///
    /// ```
    /// use std::time::Duration;
    /// # let discovery = mesh_core::StaticDiscovery::new();
    /// let channel = mesh_tonic::MeshChannel::builder(discovery, "greeter".parse()?)
    ///     .plaintext()
    ///     .with_client(|client| client.connect_timeout(Duration::from_secs(1)).resolve_timeout(Duration::from_millis(500)))
    ///     .build()?;
    /// assert_eq!(channel.client().config().connect_timeout, Duration::from_secs(1));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_client(mut self, configure: impl FnOnce(MeshClientBuilder) -> MeshClientBuilder) -> Self {
        self.client = configure(self.client);
        self
    }

    /// The channel. Opens no connection (the first call does). Fails if neither
    /// [`identity`](Self::identity) nor [`plaintext`](Self::plaintext) was chosen.
    pub fn build(self) -> Result<MeshChannel, MissingIdentity> {
        let stack = self.client.protocol(Protocol::Http2).build::<tonic::body::Body>()?;
        Ok(MeshChannel { stack, service: self.service })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<ResponseBody>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.stack.poll_ready(cx).map_err(status_from_error)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        ResponseFuture { inner: self.stack.call(request) }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, BoxError>> + Send>>;

/// The response future of [`MeshChannel`]: the stack's, with its error as a [`Status`].
pub struct ResponseFuture {
    inner: BoxFuture,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map_err(status_from_error)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshChannel").field("service", &self.service).finish()
    }
}

impl fmt::Debug for MeshChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshChannelBuilder").field("service", &self.service).finish_non_exhaustive()
    }
}
