//! The client side of each configuration: one `send` that the load generator calls in a loop.

use std::path::Path;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh_tower::client::MeshClient;
use tower::{Service, ServiceExt};

use crate::{
    configs::Config,
    grpc::{self, pb::greeter_client::GreeterClient},
    mesh_config,
    plumbing::BoxError,
    tls::RustlsConnector,
};

/// A response that was not `200 OK`.
#[derive(Debug, thiserror::Error)]
#[error("unexpected status {0}")]
pub(crate) struct BadStatus(StatusCode);

/// How requests leave the load generator.
#[derive(Clone)]
pub(crate) enum Sender {
    /// hyper-util's pooled client over plain TCP (`bare`, and the sidecars' local hop).
    Plain(Client<HttpConnector, Full<Bytes>>, Uri),
    /// hyper-util's pooled client over hand-wired tokio-rustls (`bare-mtls`).
    Tls(Client<RustlsConnector, Full<Bytes>>, Uri),
    /// mesh's whole client stack (`mesh`).
    Mesh(MeshClient<Full<Bytes>>, Uri),
    /// The generated Greeter client on a tonic `Channel` over hand-wired rustls (`grpc-tonic`).
    Tonic(GreeterClient<tonic::transport::Channel>),
    /// The generated Greeter client on a `MeshChannel` (`grpc-mesh`).
    MeshGrpc(GreeterClient<mesh_tonic::MeshChannel>),
}

/// What a load-generator run asks of its senders.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// HTTP/2 rather than HTTP/1.1.
    pub(crate) h2: bool,
    /// Keep connections (false: one new connection per request).
    pub(crate) pooled: bool,
}

fn hyper_client<C>(connector: C, shape: Shape) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_timer(TokioTimer::new()).timer(TokioTimer::new()).http2_only(shape.h2);
    if !shape.pooled {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
}

impl Sender {
    /// A sender for `config` aimed at `ports` (the server's, the mesh's endpoints, or the local
    /// proxy's: `[h1, h2]` for sidecars). Each call makes its own connection pool (a tonic
    /// `Channel` is one connection; gRPC is always HTTP/2, whatever `shape` says).
    pub(crate) fn new(config: Config, certs: &Path, ports: &[u16], shape: Shape) -> Result<Self, BoxError> {
        let port = |i: usize| ports.get(i).or(ports.first()).copied().ok_or("no port to send to");
        match config {
            Config::Mesh => {
                let client = mesh_config::client(certs, ports, shape.h2, shape.pooled)?;
                Ok(Sender::Mesh(client, Uri::from_static("/hello")))
            }
            Config::BareMtls => {
                let uri = format!("http://127.0.0.1:{}/hello", port(0)?).parse()?;
                Ok(Sender::Tls(hyper_client(crate::tls::connector(certs, shape.h2)?, shape), uri))
            }
            Config::GrpcTonic => Ok(Sender::Tonic(grpc::tonic_client(certs, port(0)?)?)),
            Config::GrpcMesh => Ok(Sender::MeshGrpc(grpc::mesh_client(certs, ports)?)),
            Config::Bare | Config::SidecarNginx | Config::SidecarHaproxy | Config::SidecarEnvoy => {
                let port = if config.is_sidecar() && shape.h2 { port(1)? } else { port(0)? };
                let uri = format!("http://127.0.0.1:{port}/hello").parse()?;
                let mut http = HttpConnector::new();
                http.set_nodelay(true);
                Ok(Sender::Plain(hyper_client(http, shape), uri))
            }
        }
    }

    /// Sends one GET and reads the whole response body (or makes one unary gRPC call).
    pub(crate) async fn send(&mut self) -> Result<(), BoxError> {
        let request = |uri: &Uri| Request::get(uri.clone()).body(Full::new(Bytes::new()));
        let (status, body) = match self {
            Sender::Plain(client, uri) => {
                let response = client.request(request(uri)?).await?;
                (response.status(), response.into_body().collect().await?.to_bytes())
            }
            Sender::Tls(client, uri) => {
                let response = client.request(request(uri)?).await?;
                (response.status(), response.into_body().collect().await?.to_bytes())
            }
            Sender::Mesh(stack, uri) => {
                let response = stack.ready().await?.call(request(uri)?).await?;
                (response.status(), response.into_body().collect().await?.to_bytes())
            }
            Sender::Tonic(client) => return grpc::call(client).await,
            Sender::MeshGrpc(client) => return grpc::call(client).await,
        };
        if status != StatusCode::OK || body.as_ref() != crate::hello::HELLO {
            return Err(BadStatus(status).into());
        }
        Ok(())
    }
}
