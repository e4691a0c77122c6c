//! [`XdsDiscovery`]: mesh's `Discovery` fed by an xDS control plane.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use mesh_core::{Discovery, IdentitySource, ServiceName, SnapshotWatch, SubsetName};
use tokio::sync::{mpsc, watch};

use crate::{
    bootstrap::Bootstrap,
    driver::{self, Options},
    error::XdsError,
    resource::security,
    status::XdsStatus,
    targets::{ClientTarget, Shared},
};

/// Service discovery from an xDS control plane (istiod, or any xDS server), the way gRPC's
/// proxyless clients do it: [`watch`](Discovery::watch) of a service subscribes to its Listener
/// and follows the cascade to routes, clusters and endpoints; each consistent set becomes a
/// [`ServiceSnapshot`](mesh_core::ServiceSnapshot).
///
/// Cheap to clone. The ADS stream runs while a clone, an [`InboundListener`](crate::InboundListener)
/// or a watch taken from them is in use (a client's [`SnapshotWatch`], which `MeshChannel` and
/// `MeshClient` hold; a server's security and authorization watches): a server or client built
/// where this handle goes out of scope keeps its configuration live. Once all of them are
/// dropped, the stream ends (within a second).
#[derive(Clone)]
pub struct XdsDiscovery {
    pub(crate) shared: Arc<Shared>,
    pub(crate) wake: mpsc::UnboundedSender<()>,
    pub(crate) bootstrap: Arc<Bootstrap>,
}

/// Configures an [`XdsDiscovery`].
#[derive(Clone, Debug)]
pub struct XdsDiscoveryBuilder {
    bootstrap: Bootstrap,
    options: Options,
}

impl XdsDiscoveryBuilder {
    /// How long a subscribed resource may stay unanswered before it is reported as not existing
    /// (gRFC A57; default 15 s).
    pub fn resource_timeout(mut self, timeout: Duration) -> Self {
        self.options.resource_timeout = timeout;
        self
    }

    /// The first reconnection delay and the longest (defaults: 1 s and 120 s, as gRPC). Each
    /// failure multiplies the delay by 1.6, with +/-20% jitter.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.options.backoff_initial = initial;
        self.options.backoff_max = max.max(initial);
        self
    }

    /// Accepts clusters without an `UpstreamTlsContext` (plaintext). Without this, such a cluster
    /// makes its target fail with an error that says so.
    pub fn allow_plaintext(mut self) -> Self {
        self.options.build.allow_plaintext = true;
        self
    }

    /// Seeds the backoff jitter (for repeatable tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = Some(seed);
        self
    }

    /// Starts the ADS stream task (the driver). Must be called inside a tokio runtime.
    pub fn build(self) -> Result<XdsDiscovery, XdsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| XdsError::NoRuntime)?;
        let shared = Arc::new(Shared::new());
        let (wake, woken) = mpsc::unbounded_channel();
        let bootstrap = Arc::new(self.bootstrap);
        runtime.spawn(driver::run(shared.clone(), bootstrap.clone(), self.options, driver::Wake::new(woken)));
        Ok(XdsDiscovery { shared, wake, bootstrap })
    }
}

impl XdsDiscovery {
    /// Configures discovery from a bootstrap.
    pub fn builder(bootstrap: Bootstrap) -> XdsDiscoveryBuilder {
        XdsDiscoveryBuilder { bootstrap, options: Options::default() }
    }

    /// Discovery from the bootstrap named by `GRPC_XDS_BOOTSTRAP` (or inline in
    /// `GRPC_XDS_BOOTSTRAP_CONFIG`), with the defaults.
    pub fn from_env() -> Result<Self, XdsError> {
        Self::builder(Bootstrap::from_env()?).build()
    }

    /// The service name to give a client for the xDS target `listener` (the `xds:///` target of
    /// gRPC, such as `reviews.default.svc.cluster.local:9080`): the listener name with `:` turned
    /// into `-`, since service names are DNS names. Watching that service subscribes to the
    /// listener.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bootstrap = mesh_xds::Bootstrap::from_json(
    ///     r#"{"xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}]}"#,
    /// )?;
    /// let xds = mesh_xds::XdsDiscovery::builder(bootstrap).build()?;
    /// let service = xds.target("reviews.default.svc.cluster.local:9080")?;
    /// assert_eq!(service.as_str(), "reviews.default.svc.cluster.local-9080");
    /// # Ok(()) }
    /// ```
    pub fn target(&self, listener: &str) -> Result<ServiceName, XdsError> {
        let name = listener.to_ascii_lowercase().replace(':', "-");
        let service = ServiceName::new(&name)
            .map_err(|source| XdsError::InvalidTarget { target: listener.to_owned(), source })?;
        self.shared.aliases.lock().unwrap_or_else(PoisonError::into_inner).insert(service.clone(), listener.to_owned());
        Ok(service)
    }

    /// The identity of the bootstrap's certificate provider instance `instance`, watched on disk:
    /// give it to the client (`MeshChannel::builder(..).identity(..)`) when the clusters use TLS.
    pub fn identity(&self, instance: &str) -> Result<IdentitySource, XdsError> {
        let provider = self
            .bootstrap
            .certificate_providers
            .get(instance)
            .ok_or_else(|| XdsError::NoCertificateProvider(instance.to_owned()))?;
        security::identity_source(provider)
            .map_err(|source| XdsError::Identity { instance: instance.to_owned(), source })
    }

    /// The bootstrap.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// The ADS stream's counters, as a watch.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.shared.status.subscribe()
    }

    /// The cluster behind each subset of `service`, for every snapshot published so far (so a
    /// response to a request routed before a change still finds its cluster).
    pub fn clusters(&self, service: &ServiceName) -> BTreeMap<SubsetName, String> {
        let targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        targets.get(service).map(|t| t.known.clone()).unwrap_or_default()
    }

    /// The cluster behind `subset` of `service` (see [`clusters`](Self::clusters)).
    pub fn cluster(&self, service: &ServiceName, subset: &SubsetName) -> Option<String> {
        let targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        targets.get(service).and_then(|t| t.known.get(subset).cloned())
    }
}

impl Discovery for XdsDiscovery {
    fn watch(&self, service: &ServiceName) -> SnapshotWatch {
        let listener = self
            .shared
            .aliases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .cloned()
            .unwrap_or_else(|| service.to_string());
        let mut targets = self.shared.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let target = targets.entry(service.clone()).or_insert_with(|| ClientTarget::new(service.clone(), listener));
        let watch = target.publisher.subscribe();
        drop(targets);
        // The task may be gone (runtime shut down); the watch then keeps what it has.
        let _ = self.wake.send(());
        watch
    }
}

impl std::fmt::Debug for XdsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsDiscovery").field("server", &self.bootstrap.server.uri).finish_non_exhaustive()
    }
}
