//! Connects that outlive the call that started them, as gRPC's do: a call whose deadline passes
//! while its connection is still being opened (a slow TLS handshake) gives up waiting, but the
//! connect goes on, and the next call to the endpoint takes it over, finished or not, instead of
//! dialling again.
//!
//! Every dial runs in its own task and answers through a oneshot channel ([`Claim`]). A claim
//! dropped before the answer is parked here, by endpoint; the next connect to that endpoint
//! claims the newest parked one. A parked dial nobody claims within [`Unclaimed::RETAIN`] is
//! dropped, its connection closed.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::connect::MeshStream;
use crate::connection::{ConnectError, ConnectErrorKind};

type Dialled = Result<MeshStream, ConnectError>;

/// A dial's answer, and when its caller gave up on it.
type Parked = (Instant, oneshot::Receiver<Dialled>);

/// The dials whose callers gave up, by endpoint.
#[derive(Default)]
pub(crate) struct Unclaimed {
    parked: Mutex<HashMap<SocketAddr, Vec<Parked>>>,
}

impl Unclaimed {
    /// How long a parked dial waits for a call to claim it. Far longer than a dial may take (the
    /// connect and handshake timeouts bound it), far shorter than servers keep an idle
    /// connection open.
    const RETAIN: Duration = Duration::from_secs(30);

    /// The newest parked dial to `address`, if any.
    fn claim(self: &Arc<Self>, address: SocketAddr) -> Option<Claim> {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        parked.retain(|_, dials| {
            dials.retain(|(parked_at, _)| now.saturating_duration_since(*parked_at) < Self::RETAIN);
            !dials.is_empty()
        });
        let (_, answer) = parked.get_mut(&address)?.pop()?;
        Some(Claim { answer: Some(answer), address, unclaimed: self.clone() })
    }

    fn park(&self, address: SocketAddr, answer: oneshot::Receiver<Dialled>) {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        parked.entry(address).or_default().push((Instant::now(), answer));
    }

    /// `dial` to `address`, in a task of its own; or a dial to it whose caller gave up.
    pub(crate) fn dial(
        self: &Arc<Self>,
        address: SocketAddr,
        dial: impl FnOnce() -> Pin<Box<dyn Future<Output = Dialled> + Send>>,
    ) -> Claim {
        if let Some(claim) = self.claim(address) {
            tracing::debug!(%address, "taking over a connect whose call gave up");
            return claim;
        }
        let (tell, answer) = oneshot::channel();
        let dial = dial();
        tokio::spawn(async move {
            // Nobody to tell once the claim was dropped unparked, or pruned: the connection closes.
            let _ = tell.send(dial.await);
        });
        Claim { answer: Some(answer), address, unclaimed: self.clone() }
    }
}

/// A dial's outcome, when it comes. Dropped before it, the dial is parked for the next call.
pub(crate) struct Claim {
    answer: Option<oneshot::Receiver<Dialled>>,
    address: SocketAddr,
    unclaimed: Arc<Unclaimed>,
}

impl Future for Claim {
    type Output = Dialled;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Dialled> {
        let answer = self.answer.as_mut().expect("polled after completion");
        let outcome = std::task::ready!(Pin::new(answer).poll(cx));
        self.answer = None;
        Poll::Ready(outcome.unwrap_or_else(|_| {
            let gone = io::Error::other("the connect task ended without an outcome (the runtime is shutting down)");
            Err(ConnectError::new(self.address.to_string(), ConnectErrorKind::Tcp(gone.into())))
        }))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            self.unclaimed.park(self.address, answer);
        }
    }
}
