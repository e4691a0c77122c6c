use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Request, Response, Uri, header::HOST, uri::Scheme};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh_core::{Discovery, IdentitySource, ServiceName};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::{
    ClientConfig, Protocol, ResponseFuture, Unresolved,
    connect::{IdentityBook, MeshConnector},
    plan::{Choice, Pick, Planner, Target},
};
use crate::mirror::{MirrorStats, TeeBody};
use crate::{
    BoxError, MissingIdentity, Upstream,
    balance::InFlight,
    identity::Security,
    telemetry::{GoldenSignals, TelemetryLayer},
};

/// Calls one service by name through discovery. See the [module docs](super).
///
/// `B` is the request body type, such as `http_body_util::Full<Bytes>` or `tonic::body::Body`.
pub struct MeshClient<B> {
    shared: Arc<Shared>,
    http: Client<MeshConnector, TeeBody<B>>,
}

struct Shared {
    /// Mirrored copies travel on their own pool, so they never hold up a primary request.
    mirror_http: Client<MeshConnector, Full<Bytes>>,
    mirrors: Arc<MirrorStats>,
    mirror_slots: Arc<tokio::sync::Semaphore>,
    /// Per-attempt golden signals, when a telemetry layer asked for them.
    attempt_signals: Option<GoldenSignals>,
    service: ServiceName,
    planner: Planner,
    config: ClientConfig,
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
    /// The telemetry of the [client stack](Self::build_stack): by default
    /// `TelemetryLayer::client(service)` (spans and metrics on, access log off). Keep
    /// [`TelemetryLayer::golden_signals`] and [`TelemetryLayer::attempt_signals`] before handing
    /// it over, to read the signals. A client from [`build`](Self::build) has no telemetry layer
    /// of its own but still records every attempt into the layer's attempt signals.
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

    /// Builds the client. This opens no connection and spawns nothing; connections are opened
    /// by the first requests, on the current tokio runtime.
    ///
    /// Fails if neither [`identity`](Self::identity) nor [`plaintext`](Self::plaintext) was chosen.
    pub fn build<B>(self) -> Result<MeshClient<B>, MissingIdentity>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.config.connect_timeout));
        let mut http = Client::builder(TokioExecutor::new());
        http.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.config.pool_idle_timeout)
            .pool_max_idle_per_host(self.config.pool_max_idle_per_endpoint)
            .http2_only(self.config.protocol == Protocol::Http2);
        let watch = self.discovery.watch(&self.service);
        let identities = Arc::new(IdentityBook::default());
        let connector = match self.security {
            Security::Unset => return Err(MissingIdentity { what: format!("the client of service {}", self.service) }),
            Security::Plaintext => MeshConnector::plaintext(connector),
            Security::Mtls(source) => MeshConnector::mtls(
                connector,
                source,
                self.service.clone(),
                identities.clone(),
                self.config.protocol,
                self.config.connect_timeout,
            ),
        };
        let mirror_http = http.build(connector.clone());
        let http = http.build(connector);
        let shared = Shared {
            mirror_http,
            mirrors: Arc::default(),
            mirror_slots: Arc::new(tokio::sync::Semaphore::new(self.config.max_mirrors_in_flight)),
            attempt_signals: self.telemetry.as_ref().map(TelemetryLayer::attempt_signals),
            service: self.service,
            planner: Planner::new(
                watch,
                self.config.seed.unwrap_or_else(seed_from_clock),
                self.config.default_rtt,
                self.config.subset_header.clone(),
                self.config.cohort_header.is_some(),
                identities,
            ),
            config: self.config,
            _discovery: self.discovery,
        };
        Ok(MeshClient { shared: Arc::new(shared), http })
    }
}

impl MeshClientBuilder {
    /// The whole client stack, in the order `docs/architecture.md` gives: telemetry (span,
    /// metrics, access log, golden signals; see [`telemetry`](Self::telemetry)), fault injection, retries
    /// (with the budget, the hop guard and the route timeout), the circuit breaker, then the
    /// client (route, split, balance, outlier detection, mTLS connection). Every layer reads its
    /// policy from the destination's snapshot, live. Boxed once, at this boundary.
    ///
    /// ```
    /// # let discovery = mesh_core::StaticDiscovery::new();
    /// let client = mesh_tower::client::MeshClient::builder(discovery, "reviews".parse()?)
    ///     .plaintext()
    ///     .build_stack::<http_body_util::Full<bytes::Bytes>>()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_stack<B>(mut self) -> Result<ClientStack<B>, MissingIdentity>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (discovery, service) = (self.discovery.clone(), self.service.clone());
        let telemetry = self.telemetry.get_or_insert_with(|| TelemetryLayer::client(service.clone())).clone();
        let client = self.build::<crate::retry::RetryBody>()?;
        let stack = tower::ServiceBuilder::new()
            .layer(telemetry)
            .layer(crate::fault::FaultLayer::from_discovery(&discovery, &service))
            .layer(crate::retry::RetryLayer::from_discovery(&discovery, &service))
            .layer(crate::limit::ConcurrencyLimitLayer::from_discovery(&discovery, &service))
            .service(client);
        Ok(tower::util::BoxCloneSyncService::new(stack))
    }
}

/// The whole client stack for request bodies `B`, from [`MeshClientBuilder::build_stack`].
pub type ClientStack<B> = tower::util::BoxCloneSyncService<Request<B>, Response<ResponseBody>, BoxError>;

/// The response body of a [`ClientStack`]: hyper's body, observed by telemetry to its end (the
/// gRPC status in the trailers counts in metrics and spans).
pub type ResponseBody = crate::telemetry::TelemetryBody<Incoming>;

impl<B> MeshClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<BoxError>,
{
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.shared.service
    }

    /// Ejections by outlier detection so far.
    pub fn outlier_stats(&self) -> Arc<crate::outlier::OutlierStats> {
        self.shared.planner.outlier_stats()
    }

    /// The counts of mirrored copies.
    pub fn mirror_stats(&self) -> Arc<MirrorStats> {
        self.shared.mirrors.clone()
    }

    fn send(
        http: &Client<MeshConnector, TeeBody<B>>,
        shared: &Arc<Shared>,
        request: Request<B>,
        choice: Choice,
    ) -> ResponseFuture {
        let Choice { target, route, subset, mirror, outlier } = choice;
        let mut request = request;
        if let (Some(header), Some(subset)) = (&shared.config.cohort_header, &subset)
            && let Ok(value) = HeaderValue::from_str(subset.as_str())
        {
            // The next hop runs its handler in this cohort (see `crate::context`).
            request.headers_mut().insert(header.clone(), value);
        }
        // The caller's remaining time travels on, so the next hop stops when we would.
        if let Some(remaining) = crate::context::remaining() {
            crate::context::propagate_timeout(request.headers_mut(), remaining);
        }
        let attempt = request
            .headers()
            .get(crate::retry::ATTEMPT_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1);
        let upstream = Upstream { address: target.address, route, subset, attempt };
        let request = match mirror {
            Some(shadow) => Self::mirror(shared, request, shadow),
            None => request.map(TeeBody::plain),
        };
        let in_flight = InFlight::start(target.load);
        match rewrite(request, target.authority, shared) {
            Ok(request) => ResponseFuture::sending(
                http.request(request),
                upstream,
                in_flight,
                outlier,
                shared.attempt_signals.clone(),
            ),
            Err(error) => ResponseFuture::failed(error),
        }
    }

    /// Sets up the copy of `request` for `shadow` and returns the primary, whose body keeps the copy.
    fn mirror(shared: &Arc<Shared>, request: Request<B>, shadow: Target) -> Request<TeeBody<B>> {
        let Ok(slot) = shared.mirror_slots.clone().try_acquire_owned() else {
            shared.mirrors.record_skipped();
            return request.map(TeeBody::plain);
        };
        let (parts, body) = request.into_parts();
        let mut copy =
            Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).body(()).unwrap_or_default();
        *copy.headers_mut() = parts.headers.clone();
        copy.headers_mut().insert(crate::mirror::MIRROR_HEADER, HeaderValue::from_static("1"));
        let (done, copied) = tokio::sync::oneshot::channel();
        let body = if body.is_end_stream() {
            let _ = done.send(Bytes::new());
            TeeBody::plain(body)
        } else {
            TeeBody::tee(body, shared.config.mirror_body_limit, done)
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // Sent only once the primary body went out in full and within the limit.
            let Ok(bytes) = copied.await else {
                shared.mirrors.record_skipped();
                return;
            };
            let copy = copy.map(|()| Full::new(bytes));
            let outcome = match rewrite(copy, shadow.authority, &shared) {
                Ok(copy) => tokio::time::timeout(shared.config.mirror_timeout, async {
                    let response = shared.mirror_http.request(copy).await?;
                    response.into_body().collect().await.map_err(BoxError::from)?;
                    Ok::<_, BoxError>(())
                })
                .await
                .map_err(BoxError::from)
                .and_then(|r| r),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => shared.mirrors.record_sent(),
                Err(error) => {
                    tracing::debug!(%error, shadow = %shadow.address, "mirrored copy failed");
                    shared.mirrors.record_failed();
                }
            }
        });
        Request::from_parts(parts, body)
    }
}

/// Points the request at the chosen endpoint, keeping its path and query. On HTTP/1.1 the
/// `Host` header keeps the name the caller used (the service name by default), as a server
/// behind a sidecar would have seen it.
fn rewrite<B>(request: Request<B>, authority: http::uri::Authority, shared: &Shared) -> Result<Request<B>, BoxError> {
    let (mut parts, body) = request.into_parts();
    if shared.config.protocol == Protocol::Http1 && !parts.headers.contains_key(HOST) {
        let host = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str())?,
            None => HeaderValue::from_str(shared.service.as_str())?,
        };
        parts.headers.insert(HOST, host);
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri)?;
    Ok(Request::from_parts(parts, body))
}

impl<B> tower::Service<Request<B>> for MeshClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: endpoints are picked per request, and a client without a snapshot yet
    /// waits inside the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // (Route, split and balance happen in the planner: one lock-free pick.)
        match self.shared.planner.pick(&request) {
            Pick::Chosen(choice) => Self::send(&self.http, &self.shared, request, choice),
            Pick::Failed(error) => ResponseFuture::failed(error),
            Pick::NotResolved => {
                // Only before the first snapshot: wait for it, then pick as usual.
                let http = self.http.clone();
                let shared = self.shared.clone();
                ResponseFuture::resolving(async move {
                    let mut watch = shared.planner.watch().clone();
                    let waited = tokio::time::timeout(shared.config.resolve_timeout, watch.ready()).await;
                    if !matches!(waited, Ok(Ok(_))) {
                        let cause = watch.last_error();
                        return Err(Unresolved { service: shared.service.clone(), cause }.into());
                    }
                    match shared.planner.pick(&request) {
                        Pick::Chosen(choice) => Self::send(&http, &shared, request, choice).await,
                        Pick::Failed(error) => Err(error),
                        Pick::NotResolved => Err(Unresolved { service: shared.service.clone(), cause: None }.into()),
                    }
                })
            }
        }
    }
}

impl<B> Clone for MeshClient<B> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), http: self.http.clone() }
    }
}

impl<B> fmt::Debug for MeshClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshClient")
            .field("service", &self.shared.service)
            .field("config", &self.shared.config)
            .finish()
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

/// A seed that differs per client and per run, for when none is configured.
fn seed_from_clock() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLIENTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ CLIENTS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
