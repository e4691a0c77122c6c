//! HTTP/1.1 connections of our own: an idle list per endpoint, kept in the endpoint's
//! [`ConnectionSlot`] beside its latency estimate and health. A request takes the newest idle
//! connection of its endpoint (or dials one), sends on it, and puts it back as soon as the
//! connection can take the next request -- no pool keyed by scheme and authority, no connect
//! future raced against a checkout per request, as hyper-util's pool has.
//!
//! - **Dialling** uses the client's [`MeshConnector`] (the same mTLS, checking the endpoint's
//!   expected SPIFFE ID). A request that finds no idle connection dials its own, as hyper-util's
//!   pool does for HTTP/1.1: one request per connection at a time.
//! - **Back to the idle list**: when the response head arrives and the connection is already
//!   ready for the next request (its body was read off the socket with the head, the common case
//!   for small bodies), at once; otherwise the response body carries it (a [`Lease`]) and gives
//!   it back the moment the body ends, so the caller's next request finds it (hyper-util's pool
//!   spawns a task per such response to wait for the connection instead). A connection whose
//!   response body is dropped unread is closed by hyper, so it is never reused half-read.
//! - A request a reused connection refused before sending it (the server had just closed it) is
//!   sent again on the next idle connection, or once on a fresh one, as hyper-util's pool does.
//! - At most [`ClientConfig::pool_max_idle_per_endpoint`] connections wait per endpoint; an idle
//!   one closes after [`ClientConfig::pool_idle_timeout`] (between one and 1.25 times that),
//!   when the peer closes it, or when the endpoint leaves discovery (its slot is dropped with the
//!   last plan that listed it).

use std::{
    any::Any,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::uri::{Authority, Scheme};
use hyper::{body::Incoming, client::conn::http1};
use tower::Service;

use super::connect::MeshConnector;
use crate::{
    BoxError, PeerIdentity,
    client::config::ClientConfig,
    connection::{ConnectError, ConnectErrorKind, ConnectionSlot},
};

/// Dials and keeps the HTTP/1.1 connections of one client.
pub(crate) struct Http1Connections {
    connector: MeshConnector,
    builder: http1::Builder,
    idle_timeout: Duration,
    max_idle: usize,
}

/// A connection: the sender, and who answered (in every response's extensions).
struct Connection<B> {
    send: http1::SendRequest<B>,
    peer: Option<PeerIdentity>,
    /// The idle watch's tick when the connection was last put back.
    idle_since: u64,
}

/// An endpoint's idle connections, newest last, and the idle watch's clock: a tick per quarter
/// of the idle timeout, so that putting a connection back reads no clock.
struct Endpoint<B> {
    idle: Mutex<Vec<Connection<B>>>,
    tick: AtomicU64,
}

/// How many ticks of the idle watch make the idle timeout.
const TICKS: u64 = 4;

impl Http1Connections {
    pub(crate) fn new(connector: MeshConnector, config: &ClientConfig) -> Self {
        Self {
            connector,
            builder: http1::Builder::new(),
            idle_timeout: config.pool_idle_timeout,
            max_idle: config.pool_max_idle_per_endpoint,
        }
    }

    /// Sends `request` (origin-form, its `Host` set) to the endpoint at `authority` on an idle
    /// connection of the endpoint's, or on one dialled for it. With the response comes the
    /// connection's lease when it is still busy with the response body.
    pub(crate) async fn send<B>(
        self: Arc<Self>,
        slot: Arc<ConnectionSlot>,
        authority: Authority,
        mut request: http::Request<B>,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), BoxError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let endpoint = self.endpoint_of::<B>(&slot);
        // At most one resend: a reused connection may have closed just as it was taken.
        loop {
            let (mut connection, reused) = match endpoint.take() {
                Some(connection) => (connection, true),
                None => (self.dial(&authority).await?, false),
            };
            match connection.send.try_send_request(request).await {
                Ok(mut response) => {
                    if let Some(peer) = &connection.peer {
                        response.extensions_mut().insert(peer.clone());
                    }
                    if connection.send.is_ready() {
                        endpoint.put(connection, self.max_idle);
                        return Ok((response, None));
                    }
                    let lease = Leased { endpoint: Arc::downgrade(&endpoint), connection, max_idle: self.max_idle };
                    return Ok((response, Some(Lease(Box::new(lease)))));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// A new connection to the endpoint at `authority`: TCP, mTLS, the HTTP/1.1 handshake, its
    /// task spawned.
    async fn dial<B>(&self, authority: &Authority) -> Result<Connection<B>, BoxError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let uri = http::Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ConnectError::new(authority.to_string(), ConnectErrorKind::Tcp(e.into())))?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let stream = connector.call(uri).await?;
        let peer = stream.peer().cloned();
        let handshake = |e: hyper::Error| ConnectError::new(authority.to_string(), ConnectErrorKind::Tcp(e.into()));
        let (mut send, connection) = self.builder.handshake(stream).await.map_err(handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/1.1 connection ended");
            }
        });
        send.ready().await.map_err(handshake)?;
        Ok(Connection { send, peer, idle_since: 0 })
    }

    /// The endpoint's idle list for body type `B`, created in its slot (with its idle watch) on
    /// first use.
    fn endpoint_of<B: Send + 'static>(&self, slot: &ConnectionSlot) -> Arc<Endpoint<B>> {
        let erased: Arc<dyn Any + Send + Sync> = slot.get_or_init(|| {
            let endpoint = Arc::new(Endpoint::<B>::new());
            watch_idle(Arc::downgrade(&endpoint), self.idle_timeout);
            let erased: Arc<dyn Any + Send + Sync> = endpoint;
            erased
        });
        // A client has one body type, and its slots are its own: the downcast holds.
        erased.downcast::<Endpoint<B>>().unwrap_or_else(|_| Arc::new(Endpoint::new()))
    }
}

impl<B> Endpoint<B> {
    fn new() -> Self {
        Self { idle: Mutex::new(Vec::new()), tick: AtomicU64::new(0) }
    }

    /// The newest idle connection that is still open.
    fn take(&self) -> Option<Connection<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(connection) = idle.pop() {
            if connection.send.is_ready() {
                return Some(connection);
            }
            // Closed by the peer (or broken) while it waited: dropped.
        }
        None
    }

    /// Puts `connection` back on the idle list, unless `max_idle` wait there already.
    fn put(&self, mut connection: Connection<B>, max_idle: usize) {
        connection.idle_since = self.tick.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < max_idle {
            idle.push(connection);
        }
    }
}

impl<B: Send + 'static> Endpoint<B> {
    /// Puts `connection` back once it can take the next request: now if it already can, else
    /// when hyper's connection task has caught up (a task waits for that). A closed connection
    /// is dropped.
    fn put_back_when_ready(self: &Arc<Self>, mut connection: Connection<B>, max_idle: usize) {
        if connection.send.is_ready() {
            self.put(connection, max_idle);
        } else if !connection.send.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let endpoint = Arc::downgrade(self);
            runtime.spawn(async move {
                if connection.send.ready().await.is_ok()
                    && let Some(endpoint) = endpoint.upgrade()
                {
                    endpoint.put(connection, max_idle);
                }
            });
        }
    }
}

/// An HTTP/1.1 connection busy with a response body: the body holds it, and gives it back to its
/// endpoint's idle list when it has been read to its end. Dropped otherwise, the connection
/// closes (hyper closes a connection whose response was not read).
pub(crate) struct Lease(Box<dyn GiveBack>);

impl Lease {
    /// The body was read to its end: the connection goes back to its endpoint.
    pub(crate) fn give_back(self) {
        self.0.give_back();
    }
}

/// [`Lease`]'s connection, its request body type erased.
trait GiveBack: Send + Sync {
    fn give_back(self: Box<Self>);
}

struct Leased<B> {
    endpoint: Weak<Endpoint<B>>,
    connection: Connection<B>,
    max_idle: usize,
}

impl<B: Send + 'static> GiveBack for Leased<B> {
    fn give_back(self: Box<Self>) {
        let Leased { endpoint, connection, max_idle } = *self;
        if let Some(endpoint) = endpoint.upgrade() {
            endpoint.put_back_when_ready(connection, max_idle);
        }
    }
}

/// Advances the endpoint's idle clock every quarter of `idle` and drops the connections put back
/// more than `TICKS` ticks ago (idle for between one and 1.25 times `idle`); holds only a weak reference, so it ends with the endpoint.
fn watch_idle<B: Send + 'static>(endpoint: Weak<Endpoint<B>>, idle: Duration) {
    let every = (idle / TICKS as u32).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let Some(endpoint) = endpoint.upgrade() else { return };
            let now = endpoint.tick.fetch_add(1, Ordering::Relaxed) + 1;
            let mut list = endpoint.idle.lock().unwrap_or_else(PoisonError::into_inner);
            list.retain(|connection| now - connection.idle_since <= TICKS && !connection.send.is_closed());
        }
    });
}
