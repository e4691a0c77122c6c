//! Dialling an endpoint: TCP, then (unless plaintext was chosen) mutual TLS that checks the
//! endpoint's expected SPIFFE ID.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use mesh_core::{
    ExpectedIdentity, IdentitySource,
    identity::{
        serial_of, spiffe_id_of,
        tls::{TlsOptions, client_config_expecting},
    },
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tower::Service;

use super::{stream::MeshStream, unclaimed::Unclaimed};
use crate::client::config::Protocol;
use crate::{
    PeerIdentity,
    connection::{ConnectError, ConnectErrorKind},
};

/// The identity each endpoint address must present, as of the last snapshot that listed it.
/// Entries outlive the endpoint's removal by [`IdentityBook::RETAIN`], longer than any connect takes.
#[derive(Debug, Default)]
pub(crate) struct IdentityBook {
    entries: Mutex<HashMap<SocketAddr, (Option<ExpectedIdentity>, tokio::time::Instant)>>,
}

impl IdentityBook {
    const RETAIN: std::time::Duration = std::time::Duration::from_secs(60);

    /// Records what `snapshot` expects of its endpoints.
    pub(crate) fn record(&self, snapshot: &mesh_core::ServiceSnapshot) {
        let now = tokio::time::Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < Self::RETAIN);
        for endpoint in snapshot.endpoints() {
            entries.insert(endpoint.address, (snapshot.expected_identity(endpoint).cloned(), now));
        }
    }

    fn lookup(&self, address: SocketAddr) -> Option<Option<ExpectedIdentity>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(&address).map(|(id, _)| id.clone())
    }
}

/// What the client dials with.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    http: HttpConnector,
    tls: Option<Arc<TlsDialer>>,
    /// Dials whose call gave up, for the next call to take over (see [`super::unclaimed`]).
    unclaimed: Arc<Unclaimed>,
}

pub(crate) struct TlsDialer {
    source: IdentitySource,
    service: mesh_core::ServiceName,
    book: Arc<IdentityBook>,
    options: TlsOptions,
    handshake_timeout: std::time::Duration,
    /// One configuration per expected identity; the identity source is read per handshake, so
    /// these never go stale.
    configs: Mutex<HashMap<ExpectedIdentity, Arc<ClientConfig>>>,
}

impl MeshConnector {
    pub(crate) fn plaintext(http: HttpConnector) -> Self {
        Self { http, tls: None, unclaimed: Arc::default() }
    }

    pub(crate) fn mtls(
        http: HttpConnector,
        source: IdentitySource,
        service: mesh_core::ServiceName,
        book: Arc<IdentityBook>,
        protocol: Protocol,
        handshake_timeout: std::time::Duration,
    ) -> Self {
        let alpn = match protocol {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        };
        let mut options = TlsOptions::default();
        options.alpn = alpn;
        let dialer = TlsDialer { source, service, book, options, handshake_timeout, configs: Mutex::default() };
        Self { http, tls: Some(Arc::new(dialer)), unclaimed: Arc::default() }
    }
}

impl TlsDialer {
    /// The identity the endpoint at `address` must present: as discovery said when the endpoint
    /// was last seen, so an endpoint picked just before it left the snapshot is still verified
    /// against what was expected of it.
    fn expected(&self, address: SocketAddr) -> Result<ExpectedIdentity, ConnectErrorKind> {
        let service = self.service.to_string();
        match self.book.lookup(address) {
            Some(Some(id)) => Ok(id),
            Some(None) => Err(ConnectErrorKind::NoExpectedIdentity(service)),
            None => Err(ConnectErrorKind::EndpointGone(service)),
        }
    }

    fn config(&self, expected: ExpectedIdentity) -> Result<Arc<ClientConfig>, ConnectErrorKind> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = configs.get(&expected) {
            return Ok(config.clone());
        }
        let config = client_config_expecting(&self.source, expected.clone(), &self.options)
            .map_err(|e| ConnectErrorKind::Tls(io::Error::other(e)))?;
        configs.insert(expected, config.clone());
        Ok(config)
    }
}

impl Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(|e| ConnectError::new(String::new(), ConnectErrorKind::Tcp(e.into())))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let endpoint = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let fail = move |kind| ConnectError::new(endpoint.clone(), kind);
        // The balancer puts the endpoint's socket address in the URI.
        let address: Option<SocketAddr> = uri.authority().and_then(|a| a.as_str().parse().ok());
        let tls = self.tls.clone();
        let connecting = self.http.call(uri);
        let dial = async move {
            let Some(tls) = tls else {
                let tcp = connecting.await.map_err(|e| fail(ConnectErrorKind::Tcp(e.into())))?;
                return Ok(MeshStream::Plain { io: tcp });
            };
            // Check before dialling: never open a connection we could not verify.
            let address = address.ok_or_else(|| fail(ConnectErrorKind::EndpointGone(tls.service.to_string())))?;
            let config = tls.expected(address).and_then(|expected| tls.config(expected)).map_err(&fail)?;
            let tcp = connecting.await.map_err(|e| fail(ConnectErrorKind::Tcp(e.into())))?;
            let handshake =
                TlsConnector::from(config).connect(ServerName::IpAddress(address.ip().into()), tcp.into_inner());
            // A peer that accepts TCP and then says nothing must not hold the request forever.
            let stream = tokio::time::timeout(tls.handshake_timeout, handshake)
                .await
                .map_err(|_| fail(ConnectErrorKind::HandshakeTimeout(tls.handshake_timeout)))?
                .map_err(|e| fail(ConnectErrorKind::Tls(e)))?;
            // The verifier checked the chain and the SPIFFE ID; record who answered so every
            // response on this connection carries it.
            let peer = stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).and_then(|leaf| {
                Some(PeerIdentity { id: spiffe_id_of(leaf).ok()?, serial: serial_of(leaf).unwrap_or_default().into() })
            });
            Ok(MeshStream::Tls { io: TokioIo::new(stream), peer })
        };
        let dial = Box::pin(dial);
        // The dial goes on when the call that started it gives up (its deadline passed): the next
        // call to the endpoint takes it over.
        match address {
            Some(address) => Box::pin(self.unclaimed.dial(address, move || dial)),
            None => dial,
        }
    }
}
