//! Security chosen per connection from a watch, for servers a control plane configures (an xDS
//! inbound listener): each accepted connection loads the current [`ServerSecurity`], so a change
//! applies to the next connection and never to the ones already open.

use std::sync::{Arc, Mutex, PoisonError};

use mesh_core::identity::tls::{ServerSecurity, TlsOptions, server_config};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The watch, and the TLS acceptor built for the last mTLS configuration seen (rebuilt only
/// when the watch holds a new value).
#[derive(Clone)]
pub(super) struct DynamicSecurity {
    current: watch::Receiver<Arc<ServerSecurity>>,
    options: TlsOptions,
    built: Arc<Mutex<Option<Built>>>,
}

/// An acceptor, and the configuration it was built for.
type Built = (Arc<ServerSecurity>, TlsAcceptor);

/// What to do with one accepted connection.
pub(super) enum Admission {
    /// Close it: nothing is configured yet.
    NotServing,
    /// Serve it in plaintext.
    Plaintext,
    /// Complete an mTLS handshake first.
    Tls(TlsAcceptor),
}

impl DynamicSecurity {
    pub(super) fn new(current: watch::Receiver<Arc<ServerSecurity>>, options: TlsOptions) -> Self {
        Self { current, options, built: Arc::default() }
    }

    /// The security of the connection being accepted now. A configuration rustls refuses leaves
    /// the connection refused (never plaintext).
    pub(super) fn admit(&self) -> Admission {
        let current = self.current.borrow().clone();
        let source = match &*current {
            ServerSecurity::Mtls(source) => source,
            ServerSecurity::Plaintext => return Admission::Plaintext,
            _ => return Admission::NotServing,
        };
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((security, acceptor)) = &*built
            && Arc::ptr_eq(security, &current)
        {
            return Admission::Tls(acceptor.clone());
        }
        match server_config(source, &self.options) {
            Ok(config) => {
                let acceptor = TlsAcceptor::from(config);
                *built = Some((current.clone(), acceptor.clone()));
                Admission::Tls(acceptor)
            }
            Err(error) => {
                tracing::warn!(%error, "the configured TLS settings are refused; not serving");
                Admission::NotServing
            }
        }
    }
}
