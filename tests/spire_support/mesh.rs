//! The mesh side of the SPIRE tests: workloads whose identities come from the agent, the servers
//! they run (HTTP and gRPC) and the callers that load them.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery},
    spiffe::{Backoff, WorkloadApi},
    tonic::MeshChannel,
    tower::{
        PeerIdentity,
        client::{ClientConfig, MeshClient, Protocol},
        server::{Server, ServerHandle},
    },
};
use tower::ServiceExt;

use super::{Spire, TRUST_DOMAIN, WAIT};
use crate::grpc_support::{self, GrpcBackend, Options, hello, pb::greeter_client::GreeterClient};

/// A server and a client workload, both in this process (one uid), each with its entry and its
/// source picking its own SVID by SPIFFE ID.
pub struct Workloads {
    pub server: IdentitySource,
    pub client: IdentitySource,
    pub server_id: SpiffeId,
    pub client_id: SpiffeId,
}

pub fn id(path: &str) -> SpiffeId {
    format!("spiffe://{TRUST_DOMAIN}{path}").parse().unwrap()
}

/// The Workload API of agent `n` for `id`, reconnecting fast (the tests restart agents).
pub async fn source(spire: &Spire, n: usize, id: &SpiffeId) -> IdentitySource {
    WorkloadApi::new(&spire.agent(n).socket())
        .unwrap()
        .spiffe_id(id.clone())
        .first_svid_timeout(WAIT)
        .backoff(Backoff::new(Duration::from_millis(50), Duration::from_millis(500)))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", spire.logs()))
}

/// Registers a server and a client under agent `n` with SVIDs living `ttl`, and connects both.
pub async fn workloads(spire: &Spire, n: usize, ttl: Duration) -> Workloads {
    let (server_id, client_id) = (id("/ns/default/sa/server"), id("/ns/default/sa/client"));
    spire.entry(n, server_id.as_str(), ttl, &[]).await;
    spire.entry(n, client_id.as_str(), ttl, &[]).await;
    let server = source(spire, n, &server_id).await;
    let client = source(spire, n, &client_id).await;
    Workloads { server, client, server_id, client_id }
}

/// The HTTP server (answering with the serial of the client certificate it saw) and the gRPC
/// server of one workload.
pub struct Servers {
    pub http: ServerHandle,
    pub grpc: GrpcBackend,
}

pub async fn serve(identity: &IdentitySource) -> Servers {
    let handler = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let serial = req.extensions().get::<PeerIdentity>().map(|p| p.serial().to_owned()).unwrap_or_default();
        Ok::<_, Infallible>(http::Response::new(serial))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = Server::builder().identity(identity.clone()).build().unwrap().spawn(listener, handler).unwrap();
    let grpc = grpc_support::serve(identity.clone(), Options::default()).await;
    Servers { http, grpc }
}

pub type HttpClient = MeshClient<Empty<bytes::Bytes>>;

/// A client of the HTTP server; `fresh`: a new connection (a new handshake) for every request.
pub fn http_client(
    addr: SocketAddr,
    server_id: &SpiffeId,
    identity: &IdentitySource,
    protocol: Protocol,
    fresh: bool,
) -> HttpClient {
    let name: ServiceName = "echo".parse().unwrap();
    let discovery = StaticDiscovery::new();
    let snapshot = ServiceSnapshot::builder(name.clone()).identity(server_id.clone()).endpoint(Endpoint::new(addr));
    discovery.set(snapshot.build().unwrap());
    let mut config = ClientConfig::default();
    if fresh {
        config.pool_max_idle_per_endpoint = 0;
    }
    MeshClient::builder(discovery, name).identity(identity.clone()).protocol(protocol).config(config).build().unwrap()
}

/// One request: (the serial the server presented, the serial of ours the server saw).
pub async fn http_call(client: &HttpClient) -> Result<(String, String), String> {
    let request = http::Request::get("/").body(Empty::new()).unwrap();
    let response = client.clone().oneshot(request).await.map_err(|e| format!("{e}: {:?}", e.source()))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let server = response.extensions().get::<PeerIdentity>().map(|p| p.serial().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((server, String::from_utf8_lossy(&body).into_owned()))
}

pub fn grpc_client(backend: &GrpcBackend, w: &Workloads) -> GreeterClient<MeshChannel> {
    let discovery = StaticDiscovery::new();
    let snapshot = ServiceSnapshot::builder(grpc_support::greeter())
        .identity(w.server_id.clone())
        .endpoint(backend.endpoint("v1"));
    discovery.set(snapshot.build().unwrap());
    GreeterClient::new(
        MeshChannel::builder(discovery, grpc_support::greeter()).identity(w.client.clone()).build().unwrap(),
    )
}

pub async fn grpc_call(client: &GreeterClient<MeshChannel>) -> Result<(), String> {
    let reply = client.clone().say_hello(hello("spire")).await.map_err(|s| format!("{s:?}"))?;
    let message = reply.into_inner().message;
    if message.ends_with(&id("/ns/default/sa/client").to_string()) { Ok(()) } else { Err(message) }
}
