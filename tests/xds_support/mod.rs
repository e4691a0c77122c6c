//! A test xDS control plane: an ADS server (state of the world) on `127.0.0.1:0` built on
//! envoy-types' server stub, serving the Istio-shaped resources of `resources.rs`, recording
//! every ACK and NACK it receives; plus the bootstrap and certificate files a client needs.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod envoy;
pub mod http;
pub mod inbound;
pub mod resources;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
};

use envoy_types::pb::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    },
    google::protobuf::Any,
};
use futures_util::Stream;
use prost::Name;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The resources served, by type URL and name.
#[derive(Clone, Default)]
pub struct Resources {
    pub by_type: BTreeMap<String, BTreeMap<String, Any>>,
    /// What a wildcard LDS request (Envoy's) gets, instead of the client listeners.
    pub wildcard_listeners: BTreeMap<String, Any>,
}

impl Resources {
    pub fn set<M: prost::Message + Name>(&mut self, name: &str, resource: &M) {
        self.by_type.entry(M::type_url()).or_default().insert(name.into(), resources::any(resource));
    }

    pub fn set_any(&mut self, type_url: &str, name: &str, any: Any) {
        self.by_type.entry(type_url.into()).or_default().insert(name.into(), any);
    }

    pub fn remove(&mut self, type_url: &str, name: &str) {
        if let Some(m) = self.by_type.get_mut(type_url) {
            m.remove(name);
        }
    }
}

/// What the control plane heard from its clients.
#[derive(Clone, Debug, Default)]
pub struct Heard {
    pub requests: u64,
    /// (type URL, version) of every ACK.
    pub acks: Vec<(String, String)>,
    /// (type URL, error detail) of every NACK.
    pub nacks: Vec<(String, String)>,
    /// Streams opened.
    pub streams: u64,
    /// Streams the client ended.
    pub closed: u64,
}

struct State {
    resources: Mutex<(u64, Resources)>,
    changed: watch::Sender<u64>,
    heard: watch::Sender<Heard>,
    killed: watch::Sender<bool>,
}

/// A running control plane.
pub struct ControlPlane {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    pub async fn start(resources: Resources) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), resources).await
    }

    /// Starts on `addr` (a restart binds the port its predecessor had).
    pub async fn start_on(addr: SocketAddr, resources: Resources) -> Self {
        Self::start_with(addr, resources, None).await
    }

    /// Starts with TLS, presenting `cert`/`key` (PEM).
    pub async fn start_tls(resources: Resources, cert: &str, key: &str) -> Self {
        let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
        Self::start_with("127.0.0.1:0".parse().unwrap(), resources, Some(tls)).await
    }

    async fn start_with(
        addr: SocketAddr,
        resources: Resources,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, resources, tls)
    }

    /// Serves on `listener` (one made inside a network namespace, for instance).
    pub fn start_on_listener(listener: tokio::net::TcpListener, resources: Resources) -> Self {
        Self::serve(listener, resources, None)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        resources: Resources,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (state, service) = Self::service(resources);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let server = tokio::spawn(async move {
            let _ = builder.add_service(service).serve_with_incoming(incoming).await;
        });
        Self { addr, state, server }
    }

    /// Starts on a Unix socket, as Istio's grpc-agent serves xDS to the application.
    pub async fn start_unix(path: &Path, resources: Resources) -> Self {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (state, service) = Self::service(resources);
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Self { addr: "0.0.0.0:0".parse().unwrap(), state, server }
    }

    fn service(resources: Resources) -> (Arc<State>, AggregatedDiscoveryServiceServer<Ads>) {
        let state = Arc::new(State {
            resources: Mutex::new((1, resources)),
            changed: watch::channel(1).0,
            heard: watch::channel(Heard::default()).0,
            killed: watch::channel(false).0,
        });
        (state.clone(), AggregatedDiscoveryServiceServer::new(Ads { state }))
    }

    /// Changes the resources; every stream gets the new version of every type it watches.
    /// Returns the new version.
    pub fn update(&self, edit: impl FnOnce(&mut Resources)) -> String {
        let mut guard = self.state.resources.lock().unwrap();
        edit(&mut guard.1);
        guard.0 += 1;
        let version = guard.0;
        drop(guard);
        self.state.changed.send_replace(version);
        version.to_string()
    }

    /// Waits until a client ACKs `version` of `type_url`.
    pub async fn wait_ack(&self, type_url: &str, version: &str) {
        let mut heard = self.heard();
        heard.wait_for(|h| h.acks.iter().any(|(t, v)| t == type_url && v == version)).await.unwrap();
    }

    pub fn resources(&self) -> Resources {
        self.state.resources.lock().unwrap().1.clone()
    }

    pub fn heard(&self) -> watch::Receiver<Heard> {
        self.state.heard.subscribe()
    }

    /// Waits until a NACK whose detail satisfies `pred` arrives; returns its detail.
    pub async fn wait_nack(&self, pred: impl Fn(&str) -> bool) -> String {
        let mut heard = self.heard();
        let seen = heard.wait_for(|h| h.nacks.iter().any(|(_, d)| pred(d))).await.unwrap();
        seen.nacks.iter().find(|(_, d)| pred(d)).unwrap().1.clone()
    }

    /// Kills the control plane: every stream ends with UNAVAILABLE and the listener is closed
    /// when this returns (so a successor can bind the same port).
    pub async fn kill(mut self) -> (SocketAddr, Resources) {
        self.state.killed.send_replace(true);
        self.server.abort();
        let _ = (&mut self.server).await;
        (self.addr, self.resources())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.server.abort();
        self.state.killed.send_replace(true);
    }
}

struct Ads {
    state: Arc<State>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        self.state.heard.send_modify(|h| h.streams += 1);
        tokio::spawn(serve_stream(self.state.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta xDS"))
    }
}

async fn serve_stream(
    state: Arc<State>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    // Subscriptions by type: None is a wildcard.
    let mut subs: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut nonce = 0u64;
    let mut changed = state.changed.subscribe();
    let mut killed = state.killed.subscribe();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Ok(Some(request)) = message else {
                    state.heard.send_modify(|h| h.closed += 1);
                    return;
                };
                state.heard.send_modify(|h| {
                    h.requests += 1;
                    if !request.response_nonce.is_empty() {
                        match &request.error_detail {
                            Some(e) => h.nacks.push((request.type_url.clone(), e.message.clone())),
                            None => h.acks.push((request.type_url.clone(), request.version_info.clone())),
                        }
                    }
                });
                let wildcard = request.resource_names.is_empty() || request.resource_names.iter().any(|n| n == "*");
                let names = if wildcard && (request.type_url == LDS || request.type_url == CDS) {
                    None
                } else {
                    Some(request.resource_names.iter().filter(|n| *n != "*").cloned().collect())
                };
                if subs.get(&request.type_url) != Some(&names) {
                    subs.insert(request.type_url.clone(), names);
                    if send(&state, &subs, &request.type_url, &mut nonce, &tx).await.is_err() {
                        return;
                    }
                }
            }
            Ok(()) = changed.changed() => {
                let types: Vec<String> = subs.keys().cloned().collect();
                for type_url in types {
                    if send(&state, &subs, &type_url, &mut nonce, &tx).await.is_err() {
                        return;
                    }
                }
            }
            () = async { let _ = killed.wait_for(|k| *k).await; } => {
                let _ = tx.send(Err(Status::unavailable("control plane killed"))).await;
                return;
            }
        }
    }
}

async fn send(
    state: &State,
    subs: &BTreeMap<String, Option<BTreeSet<String>>>,
    type_url: &str,
    nonce: &mut u64,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<(), ()> {
    let response = {
        let guard = state.resources.lock().unwrap();
        let (version, resources) = &*guard;
        let empty = BTreeMap::new();
        let all = resources.by_type.get(type_url).unwrap_or(&empty);
        let picked: Vec<Any> = match subs.get(type_url) {
            Some(None) if type_url == LDS => resources.wildcard_listeners.values().cloned().collect(),
            Some(None) => all.values().cloned().collect(),
            Some(Some(names)) => names.iter().filter_map(|n| all.get(n).cloned()).collect(),
            None => return Ok(()),
        };
        *nonce += 1;
        DiscoveryResponse {
            version_info: version.to_string(),
            resources: picked,
            type_url: type_url.into(),
            nonce: nonce.to_string(),
            ..Default::default()
        }
    };
    tx.send(Ok(response)).await.map_err(|_| ())
}

/// A bootstrap file for a client of `cp`, with a `file_watcher` provider `default` over `certs`
/// (`cert.pem`, `key.pem`, `ca.pem`) when given.
pub fn bootstrap(dir: &Path, cp: SocketAddr, certs: Option<&Path>) -> PathBuf {
    bootstrap_for(dir, &cp.to_string(), serde_json::json!([{"type": "insecure"}]), certs)
}

/// A bootstrap for the control plane at `server_uri`, reached with `channel_creds`.
pub fn bootstrap_for(dir: &Path, server_uri: &str, channel_creds: serde_json::Value, certs: Option<&Path>) -> PathBuf {
    let mut json = serde_json::json!({
        "xds_servers": [{"server_uri": server_uri, "channel_creds": channel_creds, "server_features": ["xds_v3"]}],
        "node": {"id": "sidecar~127.0.0.1~client.default~default.svc.cluster.local", "cluster": "client.default",
                 "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}, "locality": {"zone": "test"}},
    });
    if let Some(certs) = certs {
        json["certificate_providers"] = serde_json::json!({"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": certs.join("cert.pem"), "private_key_file": certs.join("key.pem"),
            "ca_certificate_file": certs.join("ca.pem"), "refresh_interval": "600s"}}});
    }
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    path
}
