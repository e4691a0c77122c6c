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

use tokio::sync::oneshot::{self, error::TryRecvError};

use super::stream::MeshStream;
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
        let dials = parked.get_mut(&address)?;
        // Newest first. A dial that already failed is dropped, not handed on: the next call gets
        // a fresh dial, not an earlier call's failure.
        while let Some((_, mut answer)) = dials.pop() {
            match answer.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(Ok(stream)) => {
                    let (tell, ready) = oneshot::channel();
                    let _ = tell.send(Ok(stream));
                    answer = ready;
                }
                Ok(Err(_)) | Err(TryRecvError::Closed) => continue,
            }
            return Some(Claim { answer: Some(answer), address, unclaimed: self.clone() });
        }
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(address: SocketAddr) -> Dialled {
        Err(ConnectError::new(address.to_string(), ConnectErrorKind::Tcp(io::Error::other("refused").into())))
    }

    #[tokio::test]
    async fn a_parked_dial_that_failed_is_not_handed_to_the_next_call() {
        let unclaimed = Arc::new(Unclaimed::default());
        let address: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (tell, answer) = oneshot::channel();
        unclaimed.park(address, answer);
        assert!(tell.send(failed(address)).is_ok());
        assert!(unclaimed.claim(address).is_none(), "an earlier call's failure was handed on");
        assert!(unclaimed.parked.lock().unwrap().get(&address).is_none_or(Vec::is_empty));
    }

    #[tokio::test]
    async fn a_parked_dial_still_running_is_taken_over_and_answers_when_it_ends() {
        let unclaimed = Arc::new(Unclaimed::default());
        let address: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (tell, answer) = oneshot::channel();
        unclaimed.park(address, answer);
        let claim = unclaimed.claim(address).expect("the running dial is claimed");
        assert!(unclaimed.claim(address).is_none(), "one dial is claimed once");
        assert!(tell.send(failed(address)).is_ok());
        // The claimant waited on this dial, so it gets its outcome.
        assert!(claim.await.is_err());
    }
}
