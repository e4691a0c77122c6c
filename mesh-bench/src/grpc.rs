//! The gRPC configurations: unary `helloworld.Greeter/SayHello` with ~100-byte messages.
//!
//! - `grpc-tonic`: what a careful tonic user wires by hand without mesh. The client is tonic's
//!   `Channel` (one HTTP/2 connection each) over the same hand-wired tokio-rustls connector as
//!   `bare-mtls` (TLS 1.3, ring, chain checked against the CA, no resumption); the server is
//!   tonic's `Server` serving the generated `GreeterServer` on connections accepted by the same
//!   hand-wired rustls acceptor (a client certificate is required).
//! - `grpc-mesh`: `mesh_tonic::MeshChannel` -> `mesh_tonic::GrpcServer`, set up like the `mesh`
//!   configuration (`mesh_config`): discovery with two routes, a 50/50 split, a retry policy
//!   with budget, circuit breaker and outlier detection; telemetry with the Prometheus recorder
//!   and the OTLP pipeline at 1%; authorization allowing exactly the client's SPIFFE ID; the
//!   server process listens on [`mesh_config::ENDPOINTS`] ports.
//!
//! Both serve the same generated service (`examples/proto/gen/helloworld.rs`, the code the
//! examples use) with the same handler, which echoes the request's name as the reply's message.

use std::path::Path;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::{mesh_config, plumbing::BoxError, tls};

/// The generated `helloworld` messages, client and server.
#[allow(missing_docs, unreachable_pub, dead_code, clippy::all)]
pub(crate) mod pb {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/proto/gen/helloworld.rs"));
}

use pb::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};

/// The name every request carries (100 bytes; the reply echoes it, so both messages are ~100
/// bytes on the wire).
pub(crate) const NAME: &str =
    "mesh-bench unary call: one hundred bytes of request name, echoed back as the reply message..........";

/// The handler both servers run: the reply's message is the request's name.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Echo;

#[tonic::async_trait]
impl Greeter for Echo {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(HelloReply { message: request.into_inner().name }))
    }
}

/// A reply that was not the echo of the request.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply of {0} bytes")]
pub(crate) struct BadReply(usize);

/// One call; checks the reply.
pub(crate) async fn call<T>(client: &mut GreeterClient<T>) -> Result<(), BoxError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let reply = client.say_hello(HelloRequest { name: NAME.to_owned() }).await?.into_inner();
    if reply.message != NAME {
        return Err(BadReply(reply.message.len()).into());
    }
    Ok(())
}

/// A tonic `Channel` (one HTTP/2 connection, opened on the first call) to `port` over the
/// hand-wired rustls connector.
pub(crate) fn tonic_client(certs: &Path, port: u16) -> Result<GreeterClient<tonic::transport::Channel>, BoxError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;
    let channel = endpoint.connect_with_connector_lazy(tls::connector(certs, true)?);
    Ok(GreeterClient::new(channel))
}

/// A `MeshChannel` to the mesh server's endpoints (`ports`), the `mesh` configuration's client
/// setup with a route for the Greeter (see [`mesh_config::snapshot`]). It opens one HTTP/2
/// connection per endpoint.
pub(crate) fn mesh_client(certs: &Path, ports: &[u16]) -> Result<GreeterClient<mesh_tonic::MeshChannel>, BoxError> {
    let mut telemetry = mesh_tower::telemetry::TelemetryLayer::client(mesh_config::service()?);
    if let Some(metrics) = mesh_config::grpc_metrics() {
        telemetry = telemetry.grpc_metrics(metrics);
    }
    let channel = mesh_tonic::MeshChannel::builder(
        mesh_config::discovery(ports, mesh_config::Traffic::Grpc)?,
        mesh_config::service()?,
    )
    .identity(crate::certs::identity(certs, "client")?)
    .telemetry(telemetry)
    .build()?;
    Ok(GreeterClient::new(channel))
}

/// `grpc-tonic`'s server: tonic's `Server` on connections from the hand-wired rustls acceptor.
/// Each handshake runs in its own task; finished connections reach tonic through a channel.
/// Returns the port and the server's future (run it until the process is killed).
pub(crate) async fn serve_tonic(certs: &Path) -> Result<(u16, impl Future<Output = Result<(), BoxError>>), BoxError> {
    let acceptor = tls::acceptor(certs)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (accepted, incoming) = tokio::sync::mpsc::channel::<std::io::Result<_>>(1024);
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    let _ = accepted.send(Err(error)).await;
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Err(error) => tracing::debug!(%error, "handshake failed"),
                }
            });
        }
    });
    let serve = async move {
        tonic::transport::Server::builder()
            .serve_with_incoming(GreeterServer::new(Echo), ReceiverStream::new(incoming))
            .await?;
        Ok(())
    };
    Ok((port, serve))
}

/// `grpc-mesh`'s server: `GrpcServer` over the `mesh` configuration's server (mTLS, telemetry,
/// authorization of the client's SPIFFE ID) on [`mesh_config::endpoints`] listeners.
pub(crate) async fn serve_mesh(certs: &Path) -> Result<(Vec<u16>, Vec<mesh_tower::server::ServerHandle>), BoxError> {
    let server = mesh_tonic::GrpcServer::new(mesh_config::server(certs)?);
    let (mut ports, mut handles) = (Vec::new(), Vec::new());
    for _ in 0..mesh_config::endpoints()? {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let handle = server.spawn(listener, GreeterServer::new(Echo))?;
        ports.push(handle.local_addr().port());
        handles.push(handle);
    }
    Ok((ports, handles))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn messages_are_about_100_bytes() {
        assert_eq!(NAME.len(), 100);
        let encoded = HelloRequest { name: NAME.to_owned() }.encode_to_vec().len();
        assert!((100..=104).contains(&encoded), "{encoded} bytes on the wire");
    }
}
