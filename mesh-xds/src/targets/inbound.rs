//! One server's inbound Listener on the driver's side: the watches its server reads (security,
//! authorization, status), and the identities its TLS contexts name, loaded once.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use mesh_core::{IdentitySource, identity::tls::ServerSecurity, policy::AuthorizationPolicy};
use tokio::sync::watch;

use crate::{
    bootstrap::Bootstrap,
    cascade::InboundUpdate,
    resource::{inbound::InboundConfig, security},
    status::InboundStatus,
};

/// One server's inbound Listener, on the driver's side.
pub(crate) struct InboundTarget {
    pub(crate) address: SocketAddr,
    pub(crate) security: watch::Sender<Arc<ServerSecurity>>,
    pub(crate) authorization: watch::Sender<Option<Arc<AuthorizationPolicy>>>,
    pub(crate) status: watch::Sender<InboundStatus>,
    last: Option<InboundConfig>,
    /// Identities by (certificate instance, CA instance), made once: their files stay watched.
    identities: BTreeMap<security::ServerTls, IdentitySource>,
}

impl InboundTarget {
    /// Whether a server still reads one of its watches.
    pub(crate) fn is_watched(&self) -> bool {
        self.security.receiver_count() + self.authorization.receiver_count() + self.status.receiver_count() > 0
    }

    pub(crate) fn new(address: SocketAddr) -> Self {
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
    pub(crate) fn apply(&mut self, name: &str, update: InboundUpdate<'_>, bootstrap: &Bootstrap) {
        let (config, refused) = match update {
            InboundUpdate::Unusable(error) => return self.report(error),
            InboundUpdate::Config { config, refused } => (config, refused),
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
