//! The server stack: serve a tower service over HTTP/1.1 and HTTP/2, and drain it gracefully.
//!
//! [`Server`] accepts connections on a `TcpListener`, completes a mutual TLS handshake that
//! verifies the caller's SPIFFE identity ([`ServerBuilder::identity`]; plaintext is an explicit
//! opt-out), speaks HTTP/1.1 or HTTP/2 on each connection (detected per connection, or forced),
//! hands every request to a clone of your service with a [`ConnectionInfo`] and the caller's
//! [`PeerIdentity`] in its extensions, and on shutdown:
//!
//! 1. stops accepting: the listener is closed, so new connections are refused;
//! 2. tells every connection to finish: HTTP/1.1 connections close after their current request,
//!    HTTP/2 connections send `GOAWAY` and finish the streams in flight;
//! 3. waits for them, up to [`ServerBuilder::drain_timeout`] if one is set.
//!
//! # The request stack
//!
//! Every request then goes through the same layers, for HTTP services (an axum `Router`, any
//! tower service) and gRPC ones (`mesh_tonic::GrpcServer` is this
//! server), outermost first:
//!
//! 1. telemetry, if configured ([`ServerBuilder::telemetry`]): the server span with the caller's
//!    trace context, request metrics, the access log, golden signals; above authorization, so
//!    denied requests are seen and counted;
//! 2. authorization, if configured ([`ServerBuilder::authorization`]): by caller, path and method;
//! 3. the caller's deadline and context ([`ServerBuilder::context`], on by default): when the
//!    caller's `x-mesh-timeout` or `grpc-timeout` passes the handler is dropped and the caller gets
//!    504 (`DEADLINE_EXCEEDED` for gRPC); the mesh calls the handler makes carry the time left;
//! 4. your service.
//!
//! They are configured in one place, a [`RequestStack`] (the builder's
//! [`telemetry`](ServerBuilder::telemetry), [`authorization`](ServerBuilder::authorization) and
//! [`context`](ServerBuilder::context) set it). The server runs them as one service per
//! connection and one future per request: what depends only on the connection (its addresses,
//! the caller's identity, the authorization rules that can cover that caller on that port) is
//! settled when it is accepted, and one response-body wrapper settles telemetry at the end of
//! the stream. The layers ([`TelemetryLayer`], [`AuthorizationLayer`], [`ContextLayer`]) stay
//! public for stacks composed by hand, and decide, answer and record the same way.
//!
//! ```
//! use mesh_tower::server::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ok = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = Server::builder().plaintext().build()?.spawn(listener, ok)?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await?; // drains in-flight requests
//! # Ok(()) }
//! ```

mod dynamic;
mod handle;
mod service;
mod stack;

use std::{fmt, future::Future, io, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
};
use mesh_core::{
    IdentitySource,
    identity::{
        serial_of, spiffe_id_of,
        tls::{ServerSecurity, TlsOptions, server_config},
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use self::dynamic::{Admission, DynamicSecurity};
pub use self::handle::ServerHandle;
use self::service::{Application, Connection, ConnectionService};
pub use self::stack::RequestStack;
use crate::{
    BoxError, ConnectionInfo, HandshakeCounts, HandshakeFailure, MissingIdentity, PeerIdentity,
    authz::AuthorizationLayer,
    context::ContextLayer,
    identity::{HandshakeStats, Security},
    telemetry::TelemetryLayer,
};

/// Serves tower services over HTTP. Cheap to clone; build it with [`Server::builder`].
#[derive(Clone)]
pub struct Server {
    protocol: ServerProtocol,
    drain_timeout: Option<Duration>,
    header_read_timeout: Duration,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
    /// Set by [`ServerBuilder::security_from`]; wins over `tls`.
    dynamic: Option<DynamicSecurity>,
    handshakes: Arc<HandshakeStats>,
    stack: RequestStack,
}

/// Configures a [`Server`].
#[derive(Clone)]
pub struct ServerBuilder {
    protocol: ServerProtocol,
    drain_timeout: Option<Duration>,
    header_read_timeout: Duration,
    handshake_timeout: Duration,
    security: Security,
    dynamic: Option<tokio::sync::watch::Receiver<Arc<ServerSecurity>>>,
    tls_options: TlsOptions,
    stack: RequestStack,
}

/// A server that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerBuildError {
    /// Neither mTLS nor plaintext was chosen.
    #[error(transparent)]
    MissingIdentity(#[from] MissingIdentity),
    /// The TLS options were refused by rustls.
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The HTTP versions a [`Server`] accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerProtocol {
    /// HTTP/1.1 and HTTP/2, told apart by the connection preface.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

impl Server {
    /// A server accepting HTTP/1.1 and HTTP/2, draining without a time limit. Choose
    /// [`identity`](ServerBuilder::identity) or [`plaintext`](ServerBuilder::plaintext) before
    /// building.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            protocol: ServerProtocol::Auto,
            drain_timeout: None,
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            security: Security::Unset,
            dynamic: None,
            tls_options: TlsOptions::default(),
            stack: RequestStack::default(),
        }
    }

    /// The request stack this server runs (see [`RequestStack`]).
    pub fn request_stack(&self) -> &RequestStack {
        &self.stack
    }

    /// This server, with the same connections and handshake counts, running `stack` for the
    /// requests of the servers it spawns from now on (how `mesh_tonic::GrpcServer` configures
    /// a server it was given).
    pub fn with_request_stack(mut self, stack: RequestStack) -> Self {
        self.stack = stack;
        self
    }

    /// How the mTLS handshakes went so far (all zero on a plaintext server).
    pub fn handshake_counts(&self) -> HandshakeCounts {
        self.handshakes.counts()
    }

    /// Serves `service` on `listener` until `signal` completes, then drains. Each request goes
    /// through the [request stack](self#the-request-stack) first.
    ///
    /// Returns once every connection has finished (or the drain timeout cut them off).
    pub async fn serve_with_shutdown<S, B>(
        &self,
        listener: TcpListener,
        service: S,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Default + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve_connections(listener, service::application(&self.stack.context, service), signal).await
    }

    /// Accepts connections and serves `service` (behind the context layer) on each.
    async fn serve_connections<S, B>(
        &self,
        listener: TcpListener,
        service: Application<S>,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Default + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let local_addr = listener.local_addr()?;
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http2().timer(TokioTimer::new());
        http.http1().timer(TokioTimer::new()).header_read_timeout(self.header_read_timeout);
        let http = match self.protocol {
            ServerProtocol::Auto => http,
            ServerProtocol::Http1 => http.http1_only(),
            ServerProtocol::Http2 => http.http2_only(),
        };
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tokio::pin!(signal);

        loop {
            tokio::select! {
                biased;
                () = &mut signal => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, remote_addr) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Usually out of file descriptors: back off instead of spinning.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let connection = Accepted {
                        stream,
                        info: ConnectionInfo { remote_addr, local_addr },
                        http: http.clone(),
                        watcher: graceful.watcher(),
                    };
                    connections.spawn(self.clone().handle(connection, service.clone()));
                }
            }
        }

        drop(listener);
        tracing::debug!(%local_addr, connections = connections.len(), "draining");
        let drained = async {
            graceful.shutdown().await;
            while connections.join_next().await.is_some() {}
        };
        match self.drain_timeout {
            None => drained.await,
            Some(limit) => {
                if tokio::time::timeout(limit, drained).await.is_err() {
                    tracing::warn!(%local_addr, ?limit, "drain timed out; closing the remaining connections");
                }
            }
        }
        Ok(())
    }

    /// One connection: the handshake (in its own task, so a slow client never holds up
    /// accepting), then HTTP until the connection ends or the server drains.
    async fn handle<S, B>(self, accepted: Accepted, service: Application<S>)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Default + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Accepted { stream, info, http, watcher } = accepted;
        let tls = match &self.dynamic {
            None => self.tls.clone(),
            Some(dynamic) => match dynamic.admit() {
                Admission::Tls(acceptor) => Some(acceptor),
                Admission::Plaintext => None,
                Admission::NotServing => {
                    self.handshakes.failed(HandshakeFailure::NotServing);
                    tracing::debug!(remote_addr = %info.remote_addr, "not serving yet: connection closed");
                    return;
                }
            },
        };
        let Some(tls) = tls else {
            let service = ConnectionService::new(service, Connection::new(&self.stack, info, None));
            return serve_connection(&http, watcher, stream, service, info).await;
        };
        let handshake = tokio::time::timeout(self.handshake_timeout, tls.accept(stream)).await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let why = HandshakeFailure::classify(&error);
                self.handshakes.failed(why);
                tracing::debug!(remote_addr = %info.remote_addr, reason = %why, %error, "mTLS handshake refused");
                return;
            }
            Err(_) => {
                self.handshakes.failed(HandshakeFailure::Timeout);
                tracing::debug!(remote_addr = %info.remote_addr, "mTLS handshake timed out");
                return;
            }
        };
        // The verifier already checked the chain and that there is exactly one SPIFFE ID.
        let (_, session) = stream.get_ref();
        let peer = session.peer_certificates().and_then(|certs| certs.first()).and_then(|leaf| {
            let id = spiffe_id_of(leaf).ok()?;
            let serial = serial_of(leaf).unwrap_or_default();
            Some(PeerIdentity { id, serial: serial.into() })
        });
        let Some(peer) = peer else {
            self.handshakes.failed(HandshakeFailure::BadIdentity);
            return;
        };
        self.handshakes.succeeded();
        let service = ConnectionService::new(service, Connection::new(&self.stack, info, Some(peer)));
        serve_connection(&http, watcher, stream, service, info).await;
    }

    /// Serves `service` on `listener` in a background task; the handle shuts it down. Each
    /// request goes through the [request stack](self#the-request-stack) first.
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
        let local_addr = listener.local_addr()?;
        let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
        let server = self.clone();
        let task = tokio::spawn(async move {
            // A dropped handle shuts the server down too.
            let signal = async {
                let _ = signal.await;
            };
            server.serve_with_shutdown(listener, service, signal).await
        });
        Ok(ServerHandle::new(local_addr, trigger, task, self.handshakes.clone()))
    }
}

impl ServerBuilder {
    /// Sets the request stack's telemetry ([`RequestStack::telemetry`]): traces, measures and logs
    /// every request (`TelemetryLayer::server(service_name)`), outermost, so requests that
    /// authorization denies or whose deadline passes are seen and counted.
    pub fn telemetry(mut self, layer: TelemetryLayer) -> Self {
        self.stack = self.stack.telemetry(layer);
        self
    }

    /// Sets the request stack's authorization ([`RequestStack::authorization`]): every request is
    /// authorized before it reaches the service, [`AuthorizationLayer::new`] for a fixed policy,
    /// [`AuthorizationLayer::from_discovery`] to follow the service's snapshot. Without it, every
    /// caller that completes the mTLS handshake is served.
    pub fn authorization(mut self, layer: AuthorizationLayer) -> Self {
        self.stack = self.stack.authorization(layer);
        self
    }

    /// Replaces the request stack's context layer ([`RequestStack::context`]: deadline and
    /// cohort; to read the cohort from another header).
    pub fn context(mut self, layer: ContextLayer) -> Self {
        self.stack = self.stack.context(layer);
        self
    }

    /// Replaces the whole request stack.
    pub fn request_stack(mut self, stack: RequestStack) -> Self {
        self.stack = stack;
        self
    }

    /// Accepts only mutual TLS: the server presents `source`'s current certificate, requires a
    /// client certificate chained to `source`'s trust bundle with exactly one SPIFFE ID, and puts
    /// the caller's [`PeerIdentity`] into every request's extensions. TLS 1.3 only unless
    /// [`tls_options`](Self::tls_options) says otherwise; ALPN `h2` and `http/1.1`.
    pub fn identity(mut self, source: IdentitySource) -> Self {
        self.security = Security::Mtls(source);
        self
    }

    /// Secures each new connection as `security` says when it is accepted, for a server a
    /// control plane configures (`mesh_xds::XdsDiscovery::inbound`): mTLS with the identity it
    /// names, plaintext, or no service at all ([`ServerSecurity::NotServing`]: the connection
    /// is closed at once and counted as [`HandshakeFailure::NotServing`]). A change applies to the
    /// connections accepted after it; open connections keep the security they were accepted
    /// with. Takes the place of [`identity`](Self::identity) and [`plaintext`](Self::plaintext).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mesh_core::identity::tls::ServerSecurity;
    ///
    /// let (set, security) = tokio::sync::watch::channel(Arc::new(ServerSecurity::NotServing));
    /// let server = mesh_tower::server::Server::builder().security_from(security).build()?;
    /// set.send_replace(Arc::new(ServerSecurity::Plaintext)); // the next connection is served
    /// # let _ = server;
    /// # Ok::<_, mesh_tower::server::ServerBuildError>(())
    /// ```
    pub fn security_from(mut self, security: tokio::sync::watch::Receiver<Arc<ServerSecurity>>) -> Self {
        self.dynamic = Some(security);
        self
    }

    /// Opts out of TLS: plaintext connections, callers unauthenticated.
    pub fn plaintext(mut self) -> Self {
        self.security = Security::Plaintext;
        self
    }

    /// TLS versions and ALPN protocols (with [`identity`](Self::identity)).
    pub fn tls_options(mut self, options: TlsOptions) -> Self {
        self.tls_options = options;
        self
    }

    /// How long a client may take to complete the TLS handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Which HTTP versions to accept (default: both).
    pub fn protocol(mut self, protocol: ServerProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// How long shutdown waits for in-flight requests before closing their connections
    /// (default: no limit).
    ///
    /// ```
    /// let server = mesh_tower::server::Server::builder()
    ///     .plaintext()
    ///     .drain_timeout(std::time::Duration::from_secs(30))
    ///     .build()?;
    /// # Ok::<_, mesh_tower::server::ServerBuildError>(())
    /// ```
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// How long a client may take to send an HTTP/1.1 request's headers (default 30 s).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The server. Fails if neither [`identity`](Self::identity) nor
    /// [`plaintext`](Self::plaintext) was chosen.
    pub fn build(self) -> Result<Server, ServerBuildError> {
        let dynamic = self.dynamic.map(|watch| DynamicSecurity::new(watch, self.tls_options.clone()));
        let tls = match &self.security {
            Security::Unset if dynamic.is_some() => None,
            Security::Unset => return Err(MissingIdentity { what: "the server".into() }.into()),
            Security::Plaintext => None,
            Security::Mtls(source) => Some(TlsAcceptor::from(server_config(source, &self.tls_options)?)),
        };
        Ok(Server {
            protocol: self.protocol,
            drain_timeout: self.drain_timeout,
            header_read_timeout: self.header_read_timeout,
            handshake_timeout: self.handshake_timeout,
            tls,
            dynamic,
            handshakes: Arc::default(),
            stack: self.stack,
        })
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("protocol", &self.protocol)
            .field("mtls", &self.tls.is_some())
            .field("dynamic_security", &self.dynamic.is_some())
            .field("drain_timeout", &self.drain_timeout)
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("protocol", &self.protocol)
            .field("security", &self.security.name())
            .finish_non_exhaustive()
    }
}

/// An accepted TCP connection, before its handshake.
struct Accepted {
    stream: TcpStream,
    info: ConnectionInfo,
    http: auto::Builder<TokioExecutor>,
    watcher: Watcher,
}

async fn serve_connection<I, S, B>(
    http: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    service: ConnectionService<Application<S>>,
    info: ConnectionInfo,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connection = http.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(remote_addr = %info.remote_addr, error = %error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests;
