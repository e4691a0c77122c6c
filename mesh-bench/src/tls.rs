//! `bare-mtls`: mutual TLS wired by hand with tokio-rustls, as a careful user would without mesh.
//!
//! TLS 1.3 only, the *ring* provider, both sides verify the peer's chain against the benchmark
//! CA (the client also checks the server's DNS name, `localhost`), and session resumption is off
//! on both sides, as in mesh, so a new connection is a full handshake.

use std::{
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use pin_project_lite::pin_project;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::{Resumption, WebPkiServerVerifier},
    crypto::ring,
    server::{NoServerSessionStorage, WebPkiClientVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use crate::plumbing::BoxError;

fn chain(dir: &Path, name: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BoxError> {
    let certs = CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}-key.pem")))?;
    Ok((certs, key))
}

fn roots(dir: &Path) -> Result<Arc<RootCertStore>, BoxError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    Ok(Arc::new(roots))
}

/// The server side: requires a client certificate chained to the CA; ALPN `h2`, `http/1.1`.
pub(crate) fn acceptor(dir: &Path) -> Result<TlsAcceptor, BoxError> {
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider.clone()).build()?;
    let (certs, key) = chain(dir, "server")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side, for HTTP/1.1 or HTTP/2 (by ALPN).
pub(crate) fn connector(dir: &Path, h2: bool) -> Result<RustlsConnector, BoxError> {
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(dir)?, provider.clone()).build()?;
    let (certs, key) = chain(dir, "client")?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    config.resumption = Resumption::disabled();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Ok(RustlsConnector { http, tls: TlsConnector::from(Arc::new(config)) })
}

/// A hyper-util connector: TCP, then the TLS handshake with server name `localhost`.
#[derive(Clone)]
pub(crate) struct RustlsConnector {
    http: HttpConnector,
    tls: TlsConnector,
}

impl tower::Service<Uri> for RustlsConnector {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            let stream = tls.connect(ServerName::try_from("localhost")?, tcp.into_inner()).await?;
            Ok(TlsIo { io: TokioIo::new(stream) })
        })
    }
}

pin_project! {
    /// A client mTLS connection, as hyper wants it.
    pub(crate) struct TlsIo {
        #[pin]
        io: TokioIo<TlsStream<TcpStream>>,
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        let (tcp, session) = self.io.inner().get_ref();
        let connected = tcp.connected();
        if session.alpn_protocol() == Some(b"h2") { connected.negotiated_h2() } else { connected }
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
