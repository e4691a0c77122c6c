//! A raw HTTP client for the mixed-mesh tests: one connection, plaintext or mTLS (checking the
//! server's SPIFFE ID), HTTP/1.1 or HTTP/2, so a test decides when connections open and close.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::core::{
    IdentitySource, SpiffeId,
    identity::tls::{TlsOptions, client_config},
};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How to secure a connection: mTLS as `identity`, expecting the server to be `server`.
#[derive(Clone, Copy)]
pub struct Mtls<'a> {
    pub identity: &'a IdentitySource,
    pub server: &'a str,
}

/// One HTTP connection.
pub enum Connection {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub async fn connect(addr: SocketAddr, mtls: Option<Mtls<'_>>, http2: bool) -> Result<Connection, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    match mtls {
        None => handshake(TokioIo::new(tcp), http2).await,
        Some(Mtls { identity, server }) => {
            let mut options = TlsOptions::default();
            options.alpn = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
            let expected: SpiffeId = server.parse()?;
            let config = client_config(identity, expected, &options)?;
            let server_name = rustls_pki_types::ServerName::try_from("mesh.test")?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
            handshake(TokioIo::new(tls), http2).await
        }
    }
}

async fn handshake<I>(io: TokioIo<I>, http2: bool) -> Result<Connection, BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        Ok(Connection::Http2(send))
    } else {
        let (send, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Connection::Http1(send))
    }
}

impl Connection {
    /// GET `path`: the status and the body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, String), BoxError> {
        let request = Request::get(path).header("host", "mesh.test").body(Full::new(Bytes::new()))?;
        let response = match self {
            Self::Http1(send) => send.send_request(request).await?,
            Self::Http2(send) => {
                // HTTP/2 requests carry the authority in the URI.
                let (mut parts, body) = request.into_parts();
                parts.uri = format!("http://mesh.test{path}").parse()?;
                parts.headers.remove("host");
                send.send_request(Request::from_parts(parts, body)).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One request on a new connection.
pub async fn get_once(
    addr: SocketAddr,
    mtls: Option<Mtls<'_>>,
    http2: bool,
    path: &str,
) -> Result<(StatusCode, String), BoxError> {
    connect(addr, mtls, http2).await?.get(path).await
}
