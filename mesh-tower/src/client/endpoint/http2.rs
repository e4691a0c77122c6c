//! HTTP/2 connections of our own, one per endpoint: a request finds its endpoint's connection in
//! the endpoint's [`ConnectionSlot`] (kept with its latency estimate and health across snapshot
//! versions), checks it is still open and sends on a clone of its `SendRequest` -- no pool, no
//! lock, no key hashed per request, as tonic's `Channel` and grpc-go's `addrConn` do.
//!
//! - **Dialling** uses the client's [`MeshConnector`] (the same mTLS, checking the endpoint's
//!   expected SPIFFE ID). One dial per endpoint at a time: requests that find no open connection
//!   wait for the dial in flight, and every one of them gets its outcome -- the connection, or the
//!   dial's own error (its cause, a rejected SPIFFE ID included), shared.
//! - A request the connection refused before sending it (the connection had just closed: a
//!   GOAWAY, a reset) is sent again, once, on a fresh connection, as hyper-util's pool does.
//! - The connection closes when no request used it for [`ClientConfig::pool_idle_timeout`] (it
//!   is dropped between one and 1.25 times that after its last request; requests still open on it
//!   finish first), when the endpoint leaves discovery (its slot is dropped with the last plan
//!   that listed it), when the peer closes it, or when keep-alive pings go unanswered.

use std::{
    any::Any,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::TokioTimer;
use tower::Service;

use super::{connect::MeshConnector, future::Sending, http1::Lease};
use crate::{
    BoxError, PeerIdentity,
    client::config::ClientConfig,
    connection::{ConnectError, ConnectErrorKind, ConnectionSlot},
};

/// Dials and keeps the HTTP/2 connections of one client.
pub(crate) struct Http2Connections {
    connector: MeshConnector,
    builder: http2::Builder<BoxingExecutor>,
    idle_timeout: Duration,
}

/// Spawns what hyper runs beside a connection (a task per request, which holds the request's
/// body and response channel) boxed first: spawned as it is, the large future would be copied
/// three times on its way into its task; boxed, once (hyper-util's executor does the same).
#[derive(Clone, Copy, Debug)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let boxed: Pin<Box<dyn std::future::Future<Output = F::Output> + Send>> = Box::pin(future);
        tokio::spawn(boxed);
    }
}

/// One open connection: the sender, who answered (in every response's extensions), and whether
/// a request used it since its idle watch last looked.
struct Open<B> {
    send: http2::SendRequest<B>,
    peer: Option<PeerIdentity>,
    used: AtomicBool,
}

/// What a slot holds: the open connection (read without a lock per request), and the dial in
/// flight when there is none.
struct Endpoint<B> {
    open: ArcSwapOption<Open<B>>,
    dialling: Mutex<Option<tokio::sync::watch::Receiver<Option<Dialled<B>>>>>,
}

/// A dial's outcome, for every request that waited for it.
type Dialled<B> = Result<Arc<Open<B>>, Arc<ConnectError>>;

impl Http2Connections {
    pub(crate) fn new(connector: MeshConnector, config: &ClientConfig) -> Self {
        let mut builder = http2::Builder::new(BoxingExecutor);
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(config.http2_keepalive_interval)
            .keep_alive_timeout(config.http2_keepalive_timeout)
            .keep_alive_while_idle(false);
        Self { connector, builder, idle_timeout: config.pool_idle_timeout }
    }

    /// Sends `request` (its URI already the endpoint's) on the endpoint's connection, dialling
    /// one if it has none open. On an open connection the request is handed to it now, and the
    /// future returned only waits for the response: it stays under a kilobyte (936 bytes: within
    /// glibc's per-thread cache, which ends at 1,032), where one `async fn` holding the dial as
    /// well measured 1.4 KB, an allocation of the allocator's slow path on every request.
    pub(crate) fn send<B>(self: &Arc<Self>, slot: Arc<ConnectionSlot>, request: http::Request<B>) -> Sending
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let endpoint = endpoint_of::<B>(&slot);
        let Some(open) = endpoint.open() else {
            return Box::pin(self.clone().dial_and_send(endpoint, request, true));
        };
        open.used.store(true, Ordering::Relaxed);
        let sent = open.send.clone().try_send_request(request);
        Box::pin(self.clone().response(sent, open, endpoint))
    }

    /// The response to a request handed to `open` (`sent`), or, when the connection had just
    /// closed as it was picked, to the request sent once more on a fresh one.
    async fn response<B, F>(
        self: Arc<Self>,
        sent: F,
        open: Arc<Open<B>>,
        endpoint: Arc<Endpoint<B>>,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), BoxError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        F: Future<Output = Result<http::Response<Incoming>, hyper::client::conn::TrySendError<http::Request<B>>>>,
    {
        // The error is out of scope before the next await, so the future keeps no room for it
        // and the request it carries.
        let unsent = match sent.await {
            Ok(response) => return Ok((answered_by(&open, response), None)),
            Err(mut error) => match error.take_message() {
                Some(unsent) => unsent,
                None => return Err(error.into_error().into()),
            },
        };
        endpoint.closed(&open);
        Box::pin(self.dial_and_send(endpoint, unsent, false)).await
    }

    /// Sends `request` on a connection dialled for it (or the dial in flight); once more on a
    /// fresh one if that connection closed before taking it and `may_resend`.
    async fn dial_and_send<B>(
        self: Arc<Self>,
        endpoint: Arc<Endpoint<B>>,
        request: http::Request<B>,
        may_resend: bool,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), BoxError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let open = self.dial(&endpoint, request.uri().clone()).await?;
        open.used.store(true, Ordering::Relaxed);
        let mut send = open.send.clone();
        match send.try_send_request(request).await {
            Ok(response) => Ok((answered_by(&open, response), None)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if may_resend => {
                    endpoint.closed(&open);
                    Box::pin(self.dial_and_send(endpoint, unsent, false)).await
                }
                _ => Err(error.into_error().into()),
            },
        }
    }

    /// The endpoint's connection once a dial (this one, or the one in flight) is done.
    async fn dial<B>(&self, endpoint: &Arc<Endpoint<B>>, uri: http::Uri) -> Result<Arc<Open<B>>, BoxError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut outcome = {
            let mut dialling = endpoint.dialling.lock().unwrap_or_else(PoisonError::into_inner);
            // A dial that finished while this request waited for the lock counts.
            if let Some(open) = endpoint.open() {
                return Ok(open);
            }
            match &*dialling {
                Some(outcome) => outcome.clone(),
                None => {
                    let (tell, outcome) = tokio::sync::watch::channel(None);
                    *dialling = Some(outcome.clone());
                    // The dial runs on its own, so a caller that gives up does not cancel it
                    // for the others waiting.
                    let connecting = connect(self.connector.clone(), self.builder.clone(), uri);
                    let (endpoint, idle_timeout) = (endpoint.clone(), self.idle_timeout);
                    tokio::spawn(async move {
                        let dialled = connecting.await.map(Arc::new).map_err(Arc::new);
                        let mut dialling = endpoint.dialling.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Ok(open) = &dialled {
                            endpoint.open.store(Some(open.clone()));
                            watch_idle(Arc::downgrade(&endpoint), Arc::downgrade(open), idle_timeout);
                        }
                        *dialling = None;
                        let _ = tell.send(Some(dialled));
                    });
                    outcome
                }
            }
        };
        let dialled = outcome.wait_for(Option::is_some).await.map_err(|_| "the HTTP/2 dial task ended")?.clone();
        match dialled {
            Some(Ok(open)) => Ok(open),
            Some(Err(error)) => Err(ConnectError::clone(&error).into()),
            None => Err("the HTTP/2 dial ended without an outcome".into()),
        }
    }
}

/// `response`, with who answered it in its extensions.
fn answered_by<B>(open: &Open<B>, mut response: http::Response<Incoming>) -> http::Response<Incoming> {
    if let Some(peer) = &open.peer {
        response.extensions_mut().insert(peer.clone());
    }
    response
}

impl<B> Endpoint<B> {
    fn new() -> Self {
        Self { open: ArcSwapOption::empty(), dialling: Mutex::new(None) }
    }

    /// The open connection, if there is one that is not closed.
    fn open(&self) -> Option<Arc<Open<B>>> {
        self.open.load_full().filter(|open| !open.send.is_closed())
    }

    /// `open` refused a request: forget it (unless a newer one replaced it already).
    fn closed(&self, open: &Arc<Open<B>>) {
        let current = self.open.load();
        if current.as_ref().is_some_and(|current| Arc::ptr_eq(current, open)) {
            self.open.compare_and_swap(&*current, None);
        }
    }
}

/// Forgets `open` once no request used it for `idle` (checked every quarter of it), or once it
/// closed; holds neither the endpoint nor the connection.
fn watch_idle<B: Send + 'static>(endpoint: Weak<Endpoint<B>>, open: Weak<Open<B>>, idle: Duration) {
    const CHECKS: u32 = 4;
    let every = (idle / CHECKS).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut unused = 0;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let (Some(endpoint), Some(open)) = (endpoint.upgrade(), open.upgrade()) else { return };
            unused = if open.used.swap(false, Ordering::Relaxed) { 0 } else { unused + 1 };
            if unused >= CHECKS || open.send.is_closed() {
                endpoint.closed(&open);
                return;
            }
        }
    });
}

/// The endpoint's connection state for body type `B`, created in its slot on first use.
fn endpoint_of<B: Send + 'static>(slot: &ConnectionSlot) -> Arc<Endpoint<B>> {
    let erased: Arc<dyn Any + Send + Sync> = slot.get_or_init(|| {
        let endpoint: Arc<dyn Any + Send + Sync> = Arc::new(Endpoint::<B>::new());
        endpoint
    });
    // A client has one body type, and its slots are its own: the downcast holds.
    erased.downcast::<Endpoint<B>>().unwrap_or_else(|_| Arc::new(Endpoint::new()))
}

/// TCP, mTLS, the HTTP/2 handshake; the connection's task spawned.
async fn connect<B>(
    mut connector: MeshConnector,
    builder: http2::Builder<BoxingExecutor>,
    uri: http::Uri,
) -> Result<Open<B>, ConnectError>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let endpoint = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    let stream = connector.call(uri).await?;
    let peer = stream.peer().cloned();
    let handshake = |e: hyper::Error| ConnectError::new(endpoint.clone(), ConnectErrorKind::Tcp(e.into()));
    let (mut send, connection) = builder.handshake(stream).await.map_err(handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP/2 connection ended");
        }
    });
    send.ready().await.map_err(handshake)?;
    Ok(Open { send, peer, used: AtomicBool::new(true) })
}
