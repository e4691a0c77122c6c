//! The server stack: serve a tower service over HTTP/1.1 and HTTP/2, and drain it gracefully.
//!
//! [`Server`] accepts connections on a `TcpListener`, speaks HTTP/1.1 or HTTP/2 on each (detected
//! per connection, or forced), hands every request to a clone of your service with a
//! [`ConnectionInfo`] in its extensions, and on shutdown:
//!
//! 1. stops accepting: the listener is closed, so new connections are refused;
//! 2. tells every connection to finish: HTTP/1.1 connections close after their current request,
//!    HTTP/2 connections send `GOAWAY` and finish the streams in flight;
//! 3. waits for them, up to [`ServerBuilder::drain_timeout`] if one is set.
//!
//! ```
//! use mesh_tower::server::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let ok = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = Server::builder().build().spawn(listener, ok)?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await // drains in-flight requests
//! # }
//! ```

mod handle;

use std::{future::Future, io, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, task::JoinSet};
use tower::{Service, ServiceExt};

pub use self::handle::ServerHandle;
use crate::{BoxError, ConnectionInfo};

/// Serves tower services over HTTP. Cheap to clone; build it with [`Server::builder`].
#[derive(Clone, Debug)]
pub struct Server {
    protocol: ServerProtocol,
    drain_timeout: Option<Duration>,
    header_read_timeout: Duration,
}

/// Configures a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    server: Server,
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
    /// A server accepting HTTP/1.1 and HTTP/2, draining without a time limit.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            server: Server {
                protocol: ServerProtocol::Auto,
                drain_timeout: None,
                header_read_timeout: Duration::from_secs(30),
            },
        }
    }

    /// Serves `service` on `listener` until `signal` completes, then drains.
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
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let local_addr = listener.local_addr()?;
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1().timer(TokioTimer::new()).header_read_timeout(self.header_read_timeout);
        http.http2().timer(TokioTimer::new());
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
                    let info = ConnectionInfo { remote_addr, local_addr };
                    let service = PerConnection { inner: service.clone(), info };
                    let connection = http.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%remote_addr, error = %error, "connection ended with an error");
                        }
                    });
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

    /// Serves `service` on `listener` in a background task; the handle shuts it down.
    ///
    /// Needs a tokio runtime. Fails only if the listener has no local address.
    pub fn spawn<S, B>(&self, listener: TcpListener, service: S) -> io::Result<ServerHandle>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
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
        Ok(ServerHandle::new(local_addr, trigger, task))
    }
}

impl ServerBuilder {
    /// Which HTTP versions to accept (default: both).
    pub fn protocol(mut self, protocol: ServerProtocol) -> Self {
        self.server.protocol = protocol;
        self
    }

    /// How long shutdown waits for in-flight requests before closing their connections
    /// (default: no limit).
    ///
    /// ```
    /// let server = mesh_tower::server::Server::builder()
    ///     .drain_timeout(std::time::Duration::from_secs(30))
    ///     .build();
    /// ```
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.server.drain_timeout = Some(timeout);
        self
    }

    /// How long a client may take to send an HTTP/1.1 request's headers (default 30 s).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.server.header_read_timeout = timeout;
        self
    }

    /// The server.
    pub fn build(self) -> Server {
        self.server
    }
}

/// The service of one connection: the application's service, told about the connection.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    info: ConnectionInfo,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, Request<Incoming>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info);
        self.inner.clone().oneshot(request)
    }
}

#[cfg(test)]
mod tests;
