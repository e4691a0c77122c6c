//! A recording ADS proxy between istiod and its clients (mesh and grpcio): every stream is
//! forwarded unchanged to istiod, and every request and response is kept, so a test can wait for
//! a client's ACK of the resources istiod sent, read a NACK's detail, and list what istiod sent.
//! istiod's own debug endpoints tell nonces, not NACK details nor the resources themselves.

use std::{collections::BTreeMap, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    },
    google::protobuf::Any,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

// The type URLs, from the xDS fixtures' one home.
pub use mesh_xds::testing::{CDS, EDS, LDS, RDS};

/// The short name of a type URL (`LDS`, `RDS`, `CDS`, `EDS`).
pub fn short(type_url: &str) -> &'static str {
    match type_url {
        LDS => "LDS",
        RDS => "RDS",
        CDS => "CDS",
        EDS => "EDS",
        _ => "?",
    }
}

/// One response istiod sent, and what the client answered.
#[derive(Clone, Debug)]
pub struct Sent {
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    pub resources: Vec<Any>,
    /// `None` until the client answers; `Some(None)` an ACK, `Some(Some(detail))` a NACK.
    pub answer: Option<Option<String>>,
}

/// Everything one client's streams saw, in order.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub streams: u64,
    pub sent: Vec<Sent>,
    /// The names subscribed to, by type, as of the last request.
    pub subscribed: BTreeMap<String, Vec<String>>,
}

impl Client {
    /// The resources of the latest ACKed response of `type_url`, by name.
    pub fn acked(&self, type_url: &str) -> BTreeMap<String, Any> {
        self.sent
            .iter()
            .rev()
            .find(|s| s.type_url == type_url && s.answer == Some(None))
            .map(|s| s.resources.iter().map(|a| (resource_name(a), a.clone())).collect())
            .unwrap_or_default()
    }

    /// The detail of every NACK, oldest first.
    pub fn nacks(&self) -> Vec<String> {
        self.sent.iter().filter_map(|s| s.answer.clone().flatten()).collect()
    }

    /// Whether the latest response of each type has been answered (a client may answer only
    /// the newest of several responses of a type sent in a row).
    pub fn settled(&self) -> bool {
        let mut latest: BTreeMap<&str, &Sent> = BTreeMap::new();
        for s in &self.sent {
            latest.insert(&s.type_url, s);
        }
        latest.values().all(|s| s.answer.is_some())
    }

    /// How many responses were sent.
    pub fn responses(&self) -> usize {
        self.sent.len()
    }
}

/// The name a resource carries (its first field, for the four types).
pub fn resource_name(any: &Any) -> String {
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };
    use prost::Message;
    let v = any.value.as_slice();
    match any.type_url.as_str() {
        LDS => Listener::decode(v).map(|l| l.name).unwrap_or_default(),
        RDS => RouteConfiguration::decode(v).map(|r| r.name).unwrap_or_default(),
        CDS => Cluster::decode(v).map(|c| c.name).unwrap_or_default(),
        EDS => ClusterLoadAssignment::decode(v).map(|c| c.cluster_name).unwrap_or_default(),
        _ => String::new(),
    }
}

/// What the proxy recorded, by node id.
pub type Record = BTreeMap<String, Client>;

/// The running proxy.
pub struct AdsRecorder {
    pub addr: SocketAddr,
    record: watch::Sender<Record>,
    server: tokio::task::JoinHandle<()>,
}

impl AdsRecorder {
    /// Listens on 127.0.0.1:0 and forwards every stream to `upstream` (istiod's gRPC address).
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = watch::channel(Record::new()).0;
        let service = Proxy { upstream, record: record.clone() };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Self { addr, record, server }
    }

    pub fn record(&self) -> watch::Receiver<Record> {
        self.record.subscribe()
    }

    /// A copy of what `node` saw.
    pub fn client(&self, node: &str) -> Client {
        self.record.borrow().get(node).cloned().unwrap_or_default()
    }

    /// Waits (at most `timeout`) until `pred` holds for `node`'s record; panics with the record
    /// otherwise.
    pub async fn wait(&self, node: &str, what: &str, timeout: Duration, pred: impl Fn(&Client) -> bool) -> Client {
        let mut record = self.record();
        let waited = tokio::time::timeout(timeout, record.wait_for(|r| r.get(node).is_some_and(&pred))).await;
        match waited {
            Ok(Ok(r)) => r.get(node).cloned().unwrap(),
            _ => panic!("{node}: {what} did not happen within {timeout:?}; it saw: {:#?}", summary(&self.client(node))),
        }
    }

    /// Forgets what was recorded so far (between corpus cases).
    pub fn clear(&self) {
        self.record.send_modify(|r| {
            for client in r.values_mut() {
                client.sent.clear();
            }
        });
    }
}

/// One line per response: type, version, resource names, answer.
pub fn summary(client: &Client) -> Vec<String> {
    client
        .sent
        .iter()
        .map(|s| {
            let names: Vec<String> = s.resources.iter().map(resource_name).collect();
            format!("{} v{} {:?} -> {:?}", short(&s.type_url), s.version, names, s.answer)
        })
        .collect()
}

impl Drop for AdsRecorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Proxy {
    upstream: SocketAddr,
    record: watch::Sender<Record>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Proxy {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut downstream = request.into_inner();
        let mut upstream = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.upstream))
            .await
            .map_err(|e| Status::unavailable(format!("istiod: {e}")))?;
        let (to_istiod, from_client) = mpsc::channel::<DiscoveryRequest>(64);
        let node = Arc::new(std::sync::Mutex::new(String::new()));
        // Client -> istiod, recording each request's answer. Started before the call to istiod:
        // istiod answers the call's headers only once it has the first request.
        let (record, node_up) = (self.record.clone(), node.clone());
        tokio::spawn(async move {
            while let Some(Ok(request)) = downstream.next().await {
                if let Some(n) = &request.node {
                    *node_up.lock().unwrap() = n.id.clone();
                    record.send_modify(|r| r.entry(n.id.clone()).or_default().streams += 1);
                }
                let id = node_up.lock().unwrap().clone();
                record.send_modify(|r| {
                    let client = r.entry(id).or_default();
                    client.subscribed.insert(request.type_url.clone(), request.resource_names.clone());
                    if !request.response_nonce.is_empty() {
                        let detail = request.error_detail.as_ref().map(|e| e.message.clone());
                        if let Some(sent) = client.sent.iter_mut().rev().find(|s| s.nonce == request.response_nonce) {
                            sent.answer.get_or_insert(detail);
                        }
                    }
                });
                if to_istiod.send(request).await.is_err() {
                    break;
                }
            }
        });
        let responses = upstream.stream_aggregated_resources(ReceiverStream::new(from_client)).await?.into_inner();
        let (tx, rx) = mpsc::channel(64);
        // istiod -> client, recording each response.
        let record = self.record.clone();
        tokio::spawn(async move {
            let mut responses = responses;
            while let Some(item) = responses.next().await {
                if let Ok(response) = &item {
                    let id = node.lock().unwrap().clone();
                    record.send_modify(|r| {
                        r.entry(id).or_default().sent.push(Sent {
                            type_url: response.type_url.clone(),
                            version: response.version_info.clone(),
                            nonce: response.nonce.clone(),
                            resources: response.resources.clone(),
                            answer: None,
                        })
                    });
                }
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta xDS is not proxied"))
    }
}
