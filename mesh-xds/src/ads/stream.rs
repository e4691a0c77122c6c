//! The task that owns the ADS stream: connects, subscribes, applies responses, publishes
//! snapshots, and reconnects with backoff. The last good snapshots stay whatever happens here.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::{Locality, Node, node::UserAgentVersionType},
        service::discovery::v3::{
            DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
    },
    google::protobuf::{ListValue, Struct, Value, value::Kind},
};
use mesh_core::{DiscoveryError, ServiceSnapshot};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::{Backoff, state::AdsState};
use crate::{
    Bootstrap, XdsError,
    bootstrap::{ChannelCredentials, ServerTarget},
    cascade::{self, BuildOptions},
    resource::{DecodeContext, ResourceType},
    shared::Shared,
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
    let state = AdsState::new(node(&bootstrap), options.resource_timeout)
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
            Ok(()) => return, // every handle and every watch dropped
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
        let now = Instant::now();
        for request in self.state.on_stream_start(now) {
            let _ = tx.send(request);
        }
        for request in self.refresh(true, now) {
            let _ = tx.send(request);
        }
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
                    for request in self.on_response(response) {
                        let _ = tx.send(request);
                    }
                }
                woken = wake.next(&self.shared) => {
                    if !woken {
                        return Ok(());
                    }
                    for request in self.refresh(true, Instant::now()) {
                        let _ = tx.send(request);
                    }
                }
                () = sleep_until(deadline) => {
                    if self.state.expire(Instant::now()) {
                        for request in self.refresh(true, Instant::now()) {
                            let _ = tx.send(request);
                        }
                    }
                }
            }
        }
    }

    fn error(&self, reason: String) -> XdsError {
        XdsError::Stream { server: self.bootstrap.server.uri.clone(), reason }
    }

    fn on_response(
        &mut self,
        response: envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
    ) -> Vec<DiscoveryRequest> {
        let now = Instant::now();
        let ctx = DecodeContext { certificate_providers: &self.bootstrap.certificate_providers };
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        let handled = match self.state.on_response(response, &ctx, now) {
            Ok(handled) => handled,
            Err(unknown) => {
                let reply = DiscoveryRequest {
                    type_url,
                    response_nonce: nonce,
                    error_detail: Some(envoy_types::pb::google::rpc::Status {
                        code: 3,
                        message: unknown.to_string(),
                        details: Vec::new(),
                    }),
                    ..Default::default()
                };
                self.count(Some(unknown.to_string()));
                return vec![reply];
            }
        };
        if let Some(detail) = &handled.nack {
            tracing::warn!(%detail, "NACK: refused xDS resources");
        }
        self.count(handled.nack.clone());
        let mut requests = vec![handled.reply];
        requests.extend(self.refresh(true, now));
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

    /// Re-derives the subscriptions from the cache and publishes what changed; returns the
    /// subscription requests to send.
    fn refresh(&mut self, connected: bool, now: Instant) -> Vec<DiscoveryRequest> {
        let mut targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inbound = self.shared.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let mut requests = Vec::new();
        // Subscribing drops unwanted entries, which may change what is wanted: settle first.
        for _ in 0..4 {
            let mut wanted = cascade::wanted(&self.state, targets.values().map(|t| t.listener.as_str()));
            // Servers' inbound Listeners carry their routes inline: nothing more to follow.
            wanted.entry(ResourceType::Listener).or_default().extend(inbound.keys().cloned());
            let before = requests.len();
            for (kind, names) in wanted {
                requests.extend(self.state.subscribe(kind, names, connected, now));
            }
            if requests.len() == before {
                break;
            }
        }
        let mut published = 0;
        for (service, target) in targets.iter_mut() {
            match cascade::build(&self.state, &target.listener, &self.options.build) {
                Ok(Some(built)) => {
                    if target.last.as_ref() == Some(&built) {
                        continue;
                    }
                    match ServiceSnapshot::new(service.clone(), built.spec.clone()) {
                        Ok(snapshot) => {
                            target.known.extend(built.clusters.iter().map(|(s, c)| (s.clone(), c.clone())));
                            let _ = target.publisher.publish(snapshot);
                            target.last = Some(built);
                            target.last_error = None;
                            published += 1;
                        }
                        Err(e) => target.publisher.report_error(DiscoveryError::Invalid(e)),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if target.last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, target = %target.listener, "xDS target has no new configuration");
                        target.last_error = Some(e.clone());
                        target.publisher.report_error(backend_error(XdsError::Cascade(e)));
                    }
                }
            }
        }
        if published > 0 {
            self.shared.status.send_modify(|s| s.published += published);
        }
        for (name, target) in inbound.iter_mut() {
            target.update(&self.state, name, &self.bootstrap);
        }
        requests
    }

    /// Tells every target's watchers, keeping their snapshots.
    fn report(&self, reason: impl Fn() -> String) {
        let targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        for target in targets.values() {
            target.publisher.report_error(backend_error(self.error(reason())));
        }
    }
}

fn backend_error(e: XdsError) -> DiscoveryError {
    DiscoveryError::Backend { backend: "xds", source: Box::new(e) }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn connect(bootstrap: &Bootstrap) -> Result<Channel, XdsError> {
    let server = &bootstrap.server;
    let fail = |reason: String| XdsError::Stream { server: server.uri.clone(), reason };
    match &server.target {
        ServerTarget::Tcp { host, port } => {
            let host_in_uri = if host.contains(':') { format!("[{host}]") } else { host.clone() };
            let scheme = if matches!(server.credentials, ChannelCredentials::Insecure) { "http" } else { "https" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host_in_uri}:{port}"))
                .map_err(|e| fail(e.to_string()))?
                .connect_timeout(Duration::from_secs(20))
                // A silent stream is idle TCP: without probes, a control plane host that died
                // without a reset would hold the client on a dead stream for ever. 30 s idle, then
                // 3 probes 10 s apart: a dead host is left within about a minute (TCP keepalive,
                // not HTTP/2 pings, which grpc-go servers police on quiet streams).
                .tcp_keepalive(Some(Duration::from_secs(30)))
                .tcp_keepalive_interval(Some(Duration::from_secs(10)))
                .tcp_keepalive_retries(Some(3));
            if let ChannelCredentials::Tls { ca_certificate_file, certificate_file, private_key_file } =
                &server.credentials
            {
                let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| fail(format!("{}: {e}", p.display())));
                let mut tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read(ca_certificate_file)?))
                    .domain_name(host.clone());
                if let (Some(cert), Some(key)) = (certificate_file, private_key_file) {
                    tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| fail(e.to_string()))?;
            }
            endpoint.connect().await.map_err(|e| fail(format!("cannot connect: {e}")))
        }
        ServerTarget::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
                }))
                .await
                .map_err(|e| fail(format!("cannot connect: {e}")))
        }
    }
}

/// The bootstrap's node as sent to the control plane.
fn node(bootstrap: &Bootstrap) -> Node {
    let n = &bootstrap.node;
    let fields: BTreeMap<String, Value> = n.metadata.iter().map(|(k, v)| (k.clone(), json_value(v))).collect();
    Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: Some(Struct { fields: fields.into_iter().collect() }),
        locality: Some(Locality {
            region: n.locality.region.clone(),
            zone: n.locality.zone.clone(),
            sub_zone: n.locality.sub_zone.clone(),
        }),
        user_agent_name: "mesh".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(env!("CARGO_PKG_VERSION").into())),
        client_features: vec![
            "envoy.lb.does_not_support_overprovisioning".into(),
            "xds.config.resource-in-sotw".into(),
        ],
        ..Default::default()
    }
}

fn json_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(json_value).collect() }),
        serde_json::Value::Object(o) => {
            Kind::StructValue(Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() })
        }
    };
    Value { kind: Some(kind) }
}
