//! xDS-configured servers (gRFC A36): the inbound Listener of a server's address, followed live
//! as the security of new connections and the authorization policy of every request.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, PoisonError},
};

use mesh_core::{IdentitySource, identity::tls::ServerSecurity, policy::AuthorizationPolicy};
use tokio::sync::watch;

use crate::{
    Bootstrap, XdsDiscovery, XdsError,
    ads::state::AdsState,
    resource::{Resource, ResourceType, inbound::InboundConfig, security},
};

/// A server's inbound Listener, as the control plane sets it: give [`security`](Self::security)
/// to `ServerBuilder::security_from` and [`authorization`](Self::authorization) to
/// `AuthorizationLayer::from_watch`.
///
/// Until a first valid Listener arrives, the security is
/// [`ServerSecurity::NotServing`] (connections are closed, never served in plaintext). A
/// Listener that is later refused (NACKed) or removed leaves the last good configuration in place;
/// [`status`](Self::status) says why it was not applied. Holding this keeps the ADS stream open.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let xds = mesh_xds::XdsDiscovery::from_env()?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// let inbound = xds.inbound(listener.local_addr()?)?; // xds.istio.io/grpc/lds/inbound/0.0.0.0:8080
/// // Server::builder()
/// //     .security_from(inbound.security())
/// //     .authorization(AuthorizationLayer::from_watch(inbound.authorization()))
/// # let _ = inbound; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct InboundListener {
    name: String,
    address: SocketAddr,
    security: watch::Receiver<Arc<ServerSecurity>>,
    authorization: watch::Receiver<Option<Arc<AuthorizationPolicy>>>,
    status: watch::Receiver<InboundStatus>,
    _discovery: XdsDiscovery,
}

/// How a server's inbound Listener has been applied so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboundStatus {
    /// Configurations applied (each new valid Listener counts once).
    pub applied: u64,
    /// Whether a configuration was ever applied (the server serves).
    pub serving: bool,
    /// Why the latest Listener (or its absence) was not applied, if it was not; the last good
    /// configuration stays in force.
    pub last_error: Option<String>,
}

impl InboundListener {
    /// The Listener's resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address the Listener is for.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The security of the connections accepted next.
    pub fn security(&self) -> watch::Receiver<Arc<ServerSecurity>> {
        self.security.clone()
    }

    /// The policy of the RBAC filters (`None`: no RBAC filter, every caller is served).
    pub fn authorization(&self) -> watch::Receiver<Option<Arc<AuthorizationPolicy>>> {
        self.authorization.clone()
    }

    /// What has been applied, and the last error: watch it to wait for a change without sleeping.
    pub fn status(&self) -> watch::Receiver<InboundStatus> {
        self.status.clone()
    }
}

impl XdsDiscovery {
    /// Subscribes to the inbound Listener of a server listening on `address` (gRFC A36), named by
    /// the bootstrap's `server_listener_resource_name_template`. The Listener's address must be
    /// `address`; its one filter chain gives the transport (mTLS with the certificate provider
    /// instances it names, or plaintext) and the RBAC filters (gRFC A41).
    pub fn inbound(&self, address: SocketAddr) -> Result<InboundListener, XdsError> {
        let name = self.bootstrap.server_listener_name(address)?;
        let mut inbound = self.shared.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let target = inbound.entry(name.clone()).or_insert_with(|| InboundTarget::new(address));
        if target.address != address {
            return Err(XdsError::InboundAddress { listener: name, address: target.address });
        }
        let listener = InboundListener {
            name,
            address,
            security: target.security.subscribe(),
            authorization: target.authorization.subscribe(),
            status: target.status.subscribe(),
            _discovery: self.clone(),
        };
        drop(inbound);
        let _ = self.wake.send(());
        Ok(listener)
    }
}

/// One server's inbound Listener, on the stream task's side.
pub(crate) struct InboundTarget {
    address: SocketAddr,
    security: watch::Sender<Arc<ServerSecurity>>,
    authorization: watch::Sender<Option<Arc<AuthorizationPolicy>>>,
    status: watch::Sender<InboundStatus>,
    last: Option<InboundConfig>,
    /// Identities by (certificate instance, CA instance), made once: their files stay watched.
    identities: BTreeMap<security::ServerTls, IdentitySource>,
}

impl InboundTarget {
    /// Whether a server still reads one of its watches.
    pub(crate) fn is_watched(&self) -> bool {
        self.security.receiver_count() + self.authorization.receiver_count() + self.status.receiver_count() > 0
    }

    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            security: watch::Sender::new(Arc::new(ServerSecurity::NotServing)),
            authorization: watch::Sender::new(None),
            status: watch::Sender::new(InboundStatus::default()),
            last: None,
            identities: BTreeMap::new(),
        }
    }

    /// Applies what the cache holds for the Listener `name`, if it is new and valid.
    pub(crate) fn update(&mut self, state: &AdsState, name: &str, bootstrap: &Bootstrap) {
        let Some(entry) = state.entry(ResourceType::Listener, name) else { return };
        let refused = entry.error.as_ref().map(ToString::to_string);
        let config = match &entry.good {
            _ if entry.missing => {
                return self.report(Some(format!("LDS resource {name:?} does not exist")));
            }
            Some(Resource::InboundListener(config)) => config,
            Some(_) => {
                return self.report(Some(format!("LDS resource {name:?} is an API listener, not a server listener")));
            }
            None => return self.report(refused),
        };
        if self.last.as_ref() == Some(config) {
            return self.report(refused);
        }
        if config.address != self.address {
            // A later refused update is the newer news.
            return self.report(refused.or_else(|| {
                Some(format!(
                    "LDS resource {name:?} is for {}, and the server listens on {}",
                    config.address, self.address
                ))
            }));
        }
        if self.last.as_ref().is_none_or(|last| last.tls != config.tls) {
            let security = match &config.tls {
                None => ServerSecurity::Plaintext,
                Some(tls) => match self.identity(tls, bootstrap) {
                    Ok(source) => ServerSecurity::Mtls(source),
                    Err(reason) => return self.report(Some(format!("LDS resource {name:?}: {reason}"))),
                },
            };
            self.security.send_replace(Arc::new(security));
        }
        if self.last.as_ref().is_none_or(|last| last.authorization != config.authorization) {
            self.authorization.send_replace(config.authorization.clone().map(Arc::new));
        }
        tracing::info!(listener = name, tls = config.tls.is_some(), rbac = config.authorization.is_some(), "applied");
        self.last = Some(config.clone());
        self.status.send_modify(|s| {
            s.applied += 1;
            s.serving = true;
            s.last_error = refused;
        });
    }

    fn identity(&mut self, tls: &security::ServerTls, bootstrap: &Bootstrap) -> Result<IdentitySource, String> {
        if let Some(source) = self.identities.get(tls) {
            return Ok(source.clone());
        }
        let provider = |instance: &str| {
            bootstrap
                .certificate_providers
                .get(instance)
                .ok_or_else(|| format!("certificate provider instance {instance:?} is not in the bootstrap"))
        };
        let source = security::server_identity(provider(&tls.certificate_instance)?, provider(&tls.ca_instance)?)
            .map_err(|e| format!("certificate provider instance {:?}: {e}", tls.certificate_instance))?;
        self.identities.insert(tls.clone(), source.clone());
        Ok(source)
    }

    fn report(&self, error: Option<String>) {
        self.status.send_if_modified(|s| {
            if s.last_error == error {
                return false;
            }
            if let Some(error) = &error {
                tracing::warn!(%error, "the server keeps its last good configuration");
            }
            s.last_error = error;
            true
        });
    }
}
