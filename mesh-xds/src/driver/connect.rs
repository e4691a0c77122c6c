//! The channel to the control plane the bootstrap names: TCP (plaintext or TLS, with keepalive
//! probes) or a Unix socket.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::{
    bootstrap::{Bootstrap, ChannelCredentials, ServerTarget},
    error::XdsError,
};

pub(super) async fn connect(bootstrap: &Bootstrap) -> Result<Channel, XdsError> {
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
