//! The Workload API stream: connect, await the first SVID, apply every update, reconnect with
//! backoff. The only I/O of the crate.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use mesh_core::{Identity, IdentitySource, InvalidIdentity, identity::IdentityUpdater};
use spiffe::{WorkloadApiClient, X509Context};

use crate::{
    FetchError, WorkloadApi, WorkloadApiError,
    backoff::Delays,
    context::identity_from,
    error::{chain, seconds},
};

type Updates = Pin<Box<dyn Stream<Item = Result<X509Context, spiffe::WorkloadApiError>> + Send>>;

impl WorkloadApi {
    /// Connects, waits for the first usable SVID (up to
    /// [`first_svid_timeout`](Self::first_svid_timeout)), and returns a source that follows the
    /// stream in a task of the current tokio runtime until its last clone is dropped.
    ///
    /// Fails with [`WorkloadApiError::NoSvid`] when no usable SVID arrived in time: the agent is
    /// not there, no registration entry matches this process, or what it sent does not check
    /// out. Never returns a source without an identity.
    pub async fn connect(self) -> Result<IdentitySource, WorkloadApiError> {
        let mut feed = Feed::new(self);
        let first = feed.first().await?;
        let (source, updater) = IdentitySource::updatable(first);
        tokio::spawn(async move {
            tokio::select! {
                () = updater.closed() => {}
                () = feed.follow(&updater) => {}
            }
        });
        Ok(source)
    }
}

/// Identities from the Workload API, one update at a time.
struct Feed {
    api: WorkloadApi,
    delays: Delays,
    updates: Option<Updates>,
    /// Whether the last attempt failed: the next one waits its turn.
    failing: bool,
    /// The error last reported, so a long outage is reported once, not at every attempt.
    reported: Option<String>,
}

impl Feed {
    fn new(api: WorkloadApi) -> Self {
        let delays = Delays::unseeded(api.backoff);
        Self { api, delays, updates: None, failing: false, reported: None }
    }

    /// The next identity the agent sends, or what went wrong instead. After a failure, waits
    /// the backoff before connecting again.
    async fn next(&mut self) -> Result<Identity, FetchError> {
        let mut updates = match self.updates.take() {
            Some(updates) => updates,
            None => {
                if self.failing {
                    tokio::time::sleep(self.delays.next()).await;
                }
                // Until a message arrives, this attempt counts as failed.
                self.failing = true;
                open(&self.api).await?
            }
        };
        match updates.next().await {
            Some(Ok(context)) => {
                // The stream works, and stays: an update refused below is no reason to reconnect.
                self.updates = Some(updates);
                self.failing = false;
                self.delays.reset();
                identity_from(&context, self.api.spiffe_id.as_ref())
            }
            Some(Err(error)) => Err(FetchError::from_client(&error)),
            None => Err(FetchError::Ended),
        }
    }

    async fn first(&mut self) -> Result<Identity, WorkloadApiError> {
        let mut last = None;
        let waited = self.api.first_svid_timeout;
        let first = tokio::time::timeout(waited, async {
            loop {
                match self.next().await {
                    Ok(identity) => return identity,
                    Err(error) => {
                        tracing::debug!(socket = %self.api.socket, %error, "no usable SVID yet");
                        last = Some(error);
                    }
                }
            }
        })
        .await;
        first.map_err(|_| WorkloadApiError::NoSvid { socket: self.api.socket.clone(), waited, last })
    }

    /// Applies every update to `updater`; reports failures beside the identity kept. Never ends.
    async fn follow(&mut self, updater: &IdentityUpdater) {
        loop {
            match self.next().await {
                Ok(identity) => {
                    let (id, serial) =
                        (identity.credentials().spiffe_id().clone(), identity.credentials().serial().to_owned());
                    if updater.update_if_changed(identity) {
                        tracing::debug!(socket = %self.api.socket, %id, %serial, "SVID or bundle updated");
                    }
                    if self.reported.take().is_some() {
                        tracing::info!(socket = %self.api.socket, %id, %serial, "Workload API stream re-established");
                    }
                }
                Err(error) => self.report(updater, &error),
            }
        }
    }

    fn report(&mut self, updater: &IdentityUpdater, error: &FetchError) {
        let reason = error.to_string();
        if self.reported.as_ref() == Some(&reason) {
            tracing::debug!(socket = %self.api.socket, %error, "Workload API still failing");
            return;
        }
        let kept = updater.current();
        let kept = kept.credentials();
        let expires = kept.not_after().duration_since(std::time::SystemTime::now()).unwrap_or_default();
        tracing::warn!(
            socket = %self.api.socket,
            %error,
            keeping = %kept.spiffe_id(),
            serial = %kept.serial(),
            expires_in = %seconds(&std::time::Duration::from_secs(expires.as_secs())),
            "Workload API update failed; keeping the last good SVID"
        );
        updater.report_error(InvalidIdentity::WorkloadApi { socket: self.api.socket.clone(), reason: reason.clone() });
        self.reported = Some(reason);
    }
}

async fn open(api: &WorkloadApi) -> Result<Updates, FetchError> {
    let client =
        WorkloadApiClient::connect(api.endpoint.clone()).await.map_err(|e| FetchError::Unreachable(chain(&e)))?;
    let updates = client.stream_x509_contexts().await.map_err(|e| FetchError::from_client(&e))?;
    Ok(Box::pin(updates))
}

#[cfg(test)]
mod tests;
