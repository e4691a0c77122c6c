use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh_core::{Discovery, IdentitySource, ServiceName};

pub use super::call::{ResponseBody, ResponseFuture};
use super::{
    call::CallPath,
    config::{ClientConfig, Protocol},
    endpoint::{
        self, Endpoints, Http1Connections, Http2Connections, Transport,
        connect::{IdentityBook, MeshConnector},
        mirror::MirrorStats,
    },
    fault::FaultLayer,
    outlier::OutlierStats,
    retry::{RetryLayer, RetryStats},
    router::RouterLayer,
    shed::LoadShedLayer,
};
use crate::{
    BoxError, MissingIdentity,
    identity::Security,
    telemetry::{TelemetryLayer, grpc_otel::AttemptLayer},
};

/// Calls one service by name, through the whole client stack. See the [module docs](super).
///
/// `B` is the request body type, such as `http_body_util::Full<Bytes>` or `tonic::body::Body`.
/// Cheap to clone: clones share the connection pool, the balancer, the retry budget and the load
/// shedder, so make one per destination and clone it into every task that calls it. It is `Send`
/// and `Sync`.
pub struct MeshClient<B> {
    path: Arc<CallPath<B>>,
    handles: Arc<Handles>,
}

/// What the stack's layers count, kept for the client's accessors.
struct Handles {
    service: ServiceName,
    config: ClientConfig,
    outliers: Arc<OutlierStats>,
    mirrors: Arc<MirrorStats>,
    retries: Arc<RetryStats>,
    shed: LoadShedLayer,
    faults: FaultLayer,
    telemetry: TelemetryLayer,
    /// Keeps the backend (and its file watcher or control-plane task) alive as long as a client.
    _discovery: Arc<dyn Discovery>,
}

/// Configures a [`MeshClient`]. See [`MeshClient::builder`].
#[derive(Clone)]
pub struct MeshClientBuilder {
    discovery: Arc<dyn Discovery>,
    service: ServiceName,
    config: ClientConfig,
    security: Security,
    telemetry: Option<TelemetryLayer>,
}

impl MeshClient<()> {
    /// Starts configuring a client of `service`, resolved through `discovery`.
    pub fn builder(discovery: impl Discovery, service: ServiceName) -> MeshClientBuilder {
        MeshClientBuilder {
            discovery: Arc::new(discovery),
            service,
            config: ClientConfig::default(),
            security: Security::Unset,
            telemetry: None,
        }
    }
}

impl MeshClientBuilder {
    /// The client's telemetry: by default `TelemetryLayer::client(service)` (spans and metrics
    /// on, access log off). Keep [`TelemetryLayer::golden_signals`] and
    /// [`TelemetryLayer::attempt_signals`] before handing it over to read the signals (or ask
    /// [`MeshClient::telemetry`]).
    pub fn telemetry(mut self, telemetry: TelemetryLayer) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Dials every endpoint with mutual TLS: presents `source`'s current certificate, and accepts
    /// only an endpoint whose certificate chains to `source`'s trust bundle and carries the SPIFFE
    /// ID discovery gives for it (`identity` on the endpoint, else on the service). An endpoint
    /// without an expected identity is not dialled.
    pub fn identity(mut self, source: IdentitySource) -> Self {
        self.security = Security::Mtls(source);
        self
    }

    /// Opts out of TLS: connections are plaintext, and peers are not authenticated. For local
    /// development and for traffic that another layer already protects.
    pub fn plaintext(mut self) -> Self {
        self.security = Security::Plaintext;
        self
    }

    /// HTTP/1.1 (the default) or HTTP/2.
    ///
    /// ```
    /// # let discovery = mesh_core::StaticDiscovery::new();
    /// use mesh_tower::client::{MeshClient, Protocol};
    /// let client = MeshClient::builder(discovery, "reviews".parse()?)
    ///     .plaintext()
    ///     .protocol(Protocol::Http2)
    ///     .build::<http_body_util::Empty<bytes::Bytes>>()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.config.protocol = protocol;
        self
    }

    /// How long opening a connection may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long a request waits for the destination's first snapshot (default 5 s).
    pub fn resolve_timeout(mut self, timeout: Duration) -> Self {
        self.config.resolve_timeout = timeout;
        self
    }

    /// Builds the client: the whole stack, in the order `docs/architecture.md` gives, with every
    /// policy discovery configures for the destination applied, live (run as one call path,
    /// not as nested services: see the [module docs](super)):
    ///
    /// 1. telemetry: the span, metrics, access log and golden signals of the request as the
    ///    application sees it ([`telemetry`](Self::telemetry));
    /// 2. the [router](super::router): the snapshot loaded, the route matched and the subset
    ///    chosen, once;
    /// 3. the [deadline](crate::client::deadline): the route's timeout, the request's own, the handler's;
    /// 4. [fault injection](super::fault);
    /// 5. [retries](super::retry) with the budget and the hop guard, inside the chosen subset;
    ///    each attempt measured for gRPC's metrics ([`AttemptLayer`], when the telemetry has them);
    /// 6. [load shedding](super::shed) (the circuit breaker);
    /// 7. the [endpoint](super::endpoint): the balancer's pick, outlier detection, mirroring,
    ///    and the pooled connection with mTLS that checks the endpoint's SPIFFE ID.
    ///
    /// Opens no connection and spawns nothing; the first requests connect, on the current tokio
    /// runtime. Fails if neither [`identity`](Self::identity) nor [`plaintext`](Self::plaintext)
    /// was chosen.
    ///
    /// ```
    /// # let discovery = mesh_core::StaticDiscovery::new();
    /// let client = mesh_tower::client::MeshClient::builder(discovery, "reviews".parse()?)
    ///     .plaintext()
    ///     .build::<http_body_util::Full<bytes::Bytes>>()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn build<B>(self) -> Result<MeshClient<B>, MissingIdentity>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let path = self.path()?;
        let handles = Handles {
            service: self.service.clone(),
            config: self.config.clone(),
            outliers: path.router.outlier_stats(),
            mirrors: path.endpoints.mirror_stats(),
            retries: path.retries.stats(),
            shed: path.shed.clone(),
            faults: path.faults.clone(),
            telemetry: path.telemetry.clone(),
            _discovery: self.discovery.clone(),
        };
        Ok(MeshClient { path: Arc::new(path), handles: Arc::new(handles) })
    }

    /// Every capability of the stack, each its layer's state, for the one call path.
    pub(super) fn path<B>(&self) -> Result<CallPath<B>, MissingIdentity>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let telemetry = self.telemetry.clone().unwrap_or_else(|| TelemetryLayer::client(self.service.clone()));
        let identities = Arc::new(IdentityBook::default());
        let router =
            RouterLayer::with_identities(self.discovery.watch(&self.service), &self.config, identities.clone());
        Ok(CallPath {
            endpoints: self.endpoints(identities, &telemetry)?,
            attempts: AttemptLayer::new(&telemetry),
            telemetry,
            router,
            faults: FaultLayer::new(),
            retries: RetryLayer::new(),
            shed: LoadShedLayer::new(),
        })
    }

    /// The bottom of the stack: the pooled connections, mTLS included.
    fn endpoints<B>(
        &self,
        identities: Arc<IdentityBook>,
        telemetry: &TelemetryLayer,
    ) -> Result<Endpoints<B>, MissingIdentity>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let config = &self.config;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        // Dead peers are found even when the route sets no timeout: docs/reliability.md.
        connector.set_keepalive(config.tcp_keepalive);
        connector.set_keepalive_interval(config.tcp_keepalive.map(|_| config.tcp_keepalive_interval));
        connector.set_keepalive_retries(config.tcp_keepalive.map(|_| 3));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        connector.set_tcp_user_timeout(config.tcp_user_timeout);
        let mut http = Client::builder(TokioExecutor::new());
        http.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint)
            .http2_only(config.protocol == Protocol::Http2)
            .http2_keep_alive_interval(config.http2_keepalive_interval)
            .http2_keep_alive_timeout(config.http2_keepalive_timeout)
            .http2_keep_alive_while_idle(false);
        let connector = match &self.security {
            Security::Unset => return Err(MissingIdentity { what: format!("the client of service {}", self.service) }),
            Security::Plaintext => MeshConnector::plaintext(connector),
            Security::Mtls(source) => MeshConnector::mtls(
                connector,
                source.clone(),
                self.service.clone(),
                identities,
                config.protocol,
                config.connect_timeout,
            ),
        };
        let shared = endpoint::Shared {
            mirror_http: http.build(connector.clone()),
            mirrors: Arc::default(),
            mirror_slots: Arc::new(tokio::sync::Semaphore::new(config.max_mirrors_in_flight)),
            attempt_signals: Some(telemetry.attempt_signals()),
            config: config.clone(),
            host: HeaderValue::from_str(self.service.as_str()).ok(),
        };
        let transport = match config.protocol {
            Protocol::Http1 => Transport::Http1(Arc::new(Http1Connections::new(connector, config))),
            Protocol::Http2 => Transport::Http2(Arc::new(Http2Connections::new(connector, config))),
        };
        Ok(Endpoints::new(shared, transport))
    }
}

impl<B> MeshClient<B> {
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.handles.service
    }

    /// The configuration the client was built with ([`MeshClientBuilder::config`] and the
    /// setters that edit it).
    pub fn config(&self) -> &ClientConfig {
        &self.handles.config
    }

    /// Ejections by outlier detection so far.
    pub fn outlier_stats(&self) -> Arc<OutlierStats> {
        self.handles.outliers.clone()
    }

    /// The counts of mirrored copies.
    pub fn mirror_stats(&self) -> Arc<MirrorStats> {
        self.handles.mirrors.clone()
    }

    /// What the retry layer did: requests, retries, exhausted budgets, bodies not replayable.
    pub fn retry_stats(&self) -> Arc<RetryStats> {
        self.handles.retries.clone()
    }

    /// Requests the load shedder (the circuit breaker) refused so far.
    pub fn shed(&self) -> u64 {
        self.handles.shed.shed()
    }

    /// Faults injected so far (delays and aborts).
    pub fn faults_injected(&self) -> u64 {
        self.handles.faults.injected()
    }

    /// The client's telemetry layer: its [golden signals](TelemetryLayer::golden_signals) per
    /// request and [per attempt](TelemetryLayer::attempt_signals).
    pub fn telemetry(&self) -> &TelemetryLayer {
        &self.handles.telemetry
    }
}

impl<B> tower::Service<Request<B>> for MeshClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: endpoints are picked per request, and a client without a snapshot yet
    /// waits inside the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.path.call(request)
    }
}

impl<B> Clone for MeshClient<B> {
    fn clone(&self) -> Self {
        Self { path: self.path.clone(), handles: self.handles.clone() }
    }
}

impl<B> fmt::Debug for MeshClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshClient").field("service", &self.handles.service).finish_non_exhaustive()
    }
}

impl fmt::Debug for MeshClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = self.security.name();
        f.debug_struct("MeshClientBuilder")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("security", &security)
            .finish()
    }
}
