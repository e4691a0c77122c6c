//! The driver: the task that owns the ADS stream. It only moves bytes and calls the logic
//! beneath it: it connects ([`connect`]), hands each response and each timer to the protocol
//! state (`crate::ads`), runs one cascade step (`crate::cascade::step`) after each, sends the
//! requests the two return, and tells the watched targets (`crate::targets`) the step's news. It
//! reconnects with backoff ([`backoff`]); the last good snapshots stay whatever happens here.

mod backoff;
mod connect;

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use self::{backoff::Backoff, connect::connect};
use crate::{
    ads::{self, AdsState},
    bootstrap::Bootstrap,
    cascade::{self, BuildOptions},
    error::XdsError,
    resource::DecodeContext,
    targets::Shared,
};

/// The stream's settings.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) resource_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) seed: Option<u64>,
    pub(crate) build: BuildOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resource_timeout: Duration::from_secs(15),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            seed: None,
            build: BuildOptions::default(),
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    bootstrap: Arc<Bootstrap>,
    options: Options,
    state: AdsState,
}

/// How often a stream whose handles are all dropped checks whether its watches still are.
const ABANDONED_CHECK: Duration = Duration::from_secs(1);

/// The handles' end of the task: their wake-ups, and whether any handle is left.
pub(crate) struct Wake {
    rx: mpsc::UnboundedReceiver<()>,
    handles_gone: bool,
}

impl Wake {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<()>) -> Self {
        Self { rx, handles_gone: false }
    }

    /// The next wake-up: `true` when a handle asked for one, `false` when nothing is left to
    /// serve (every handle and every watch taken from them dropped). Once the handles are gone,
    /// the watches are checked every [`ABANDONED_CHECK`].
    async fn next(&mut self, shared: &Shared) -> bool {
        if !self.handles_gone {
            if self.rx.recv().await.is_some() {
                return true;
            }
            self.handles_gone = true;
        }
        loop {
            if !shared.watched() {
                return false;
            }
            tokio::time::sleep(ABANDONED_CHECK).await;
        }
    }
}

/// Runs while a handle or a watch taken from one is in use.
pub(crate) async fn run(shared: Arc<Shared>, bootstrap: Arc<Bootstrap>, options: Options, mut wake: Wake) {
    let seed = options.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u64) ^ u64::from(std::process::id())
    });
    let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max, seed);
    let state = AdsState::new(ads::node(&bootstrap), options.resource_timeout)
        .ignoring_deletions(bootstrap.server.ignore_resource_deletion);
    let mut driver = Driver { shared, bootstrap, options, state };
    // Wait for the first watch before connecting.
    if !wake.next(&driver.shared).await {
        return;
    }
    loop {
        let result = match connect(&driver.bootstrap).await {
            Ok(channel) => driver.stream(channel, &mut wake, &mut backoff).await,
            Err(e) => Err(e),
        };
        driver.state.on_stream_end();
        match result {
            Ok(()) => {
                // Every handle and every watch dropped: nothing is left to serve.
                driver.shared.status.send_modify(|s| s.connected = false);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "xDS stream failed; keeping the last good configuration");
                driver.report(|| error.to_string());
            }
        }
        // After the report, so a reader woken by the status sees the error beside the snapshot.
        driver.shared.status.send_modify(|s| s.connected = false);
        let delay = backoff.next_delay();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                woken = wake.next(&driver.shared) => if !woken { return },
            }
        }
    }
}

impl Driver {
    /// One stream, until it fails (`Err`) or nothing is left to serve (`Ok`).
    async fn stream(&mut self, channel: Channel, wake: &mut Wake, backoff: &mut Backoff) -> Result<(), XdsError> {
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        let send = |requests: Vec<DiscoveryRequest>| {
            for request in requests {
                let _ = tx.send(request);
            }
        };
        let now = Instant::now();
        send(self.state.on_stream_start(now));
        send(self.step(now));
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let response = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| self.error(s.to_string()))?;
        let mut inbound = response.into_inner();
        self.shared.status.send_modify(|s| {
            s.connected = true;
            s.streams += 1;
        });
        loop {
            let deadline = self.state.next_deadline();
            tokio::select! {
                message = inbound.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return Err(self.error("the control plane closed the stream".into())),
                        Err(status) => return Err(self.error(status.to_string())),
                    };
                    backoff.reset();
                    send(self.on_response(response));
                }
                woken = wake.next(&self.shared) => {
                    if !woken {
                        return Ok(());
                    }
                    send(self.step(Instant::now()));
                }
                () = sleep_until(deadline) => {
                    if self.state.expire(Instant::now()) {
                        send(self.step(Instant::now()));
                    }
                }
            }
        }
    }

    fn error(&self, reason: String) -> XdsError {
        XdsError::Stream { server: self.bootstrap.server.uri.clone(), reason }
    }

    /// The ACK or NACK of `response`, then the step's requests.
    fn on_response(&mut self, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let now = Instant::now();
        let ctx = DecodeContext { certificate_providers: &self.bootstrap.certificate_providers };
        let handled = self.state.on_response(response, &ctx, now);
        if let Some(detail) = &handled.nack {
            tracing::warn!(%detail, "NACK: refused xDS resources");
        }
        self.count(handled.nack);
        let mut requests = vec![handled.reply];
        if handled.applied {
            requests.extend(self.step(now));
        }
        requests
    }

    fn count(&self, nack: Option<String>) {
        self.shared.status.send_modify(|s| {
            s.responses += 1;
            match nack {
                Some(detail) => {
                    s.nacks += 1;
                    s.last_nack = Some(detail);
                }
                None => s.acks += 1,
            }
        });
    }

    /// Runs one cascade step over the watched targets, tells them its news, and returns the
    /// subscription requests to send.
    fn step(&mut self, now: Instant) -> Vec<DiscoveryRequest> {
        let mut targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inbound = self.shared.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let names: Vec<String> = inbound.keys().cloned().collect();
        let step = cascade::step(
            &mut self.state,
            targets.iter_mut().map(|(service, target)| (service, &mut target.cascade)),
            names.iter().map(String::as_str),
            &self.options.build,
            now,
        );
        let mut published = 0;
        for (service, update) in step.clients {
            if let Some(target) = targets.get_mut(&service)
                && target.apply(update)
            {
                published += 1;
            }
        }
        if published > 0 {
            self.shared.status.send_modify(|s| s.published += published);
        }
        for (name, update) in step.servers {
            if let Some(target) = inbound.get_mut(name) {
                target.apply(name, update, &self.bootstrap);
            }
        }
        step.requests
    }

    /// Tells every target's watchers, keeping their snapshots.
    fn report(&self, reason: impl Fn() -> String) {
        let targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        for target in targets.values() {
            target.publisher.report_error(self.error(reason()).into_discovery());
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
