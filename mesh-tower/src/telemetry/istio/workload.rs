//! This workload's own labels: who it is, as Istio's metrics, Kiali and gRPC's CSM plugin name
//! a workload. Read once, from configuration or the environment the Downward API and
//! istio-agent give, never per request.

/// The value Istio and gRPC's CSM plugin write for a label nobody knows.
pub const UNKNOWN: &str = "unknown";

/// CSM's workload type for a pod on GKE (the `type` field of the exchanged metadata).
pub const CSM_TYPE_GKE: &str = "gcp_kubernetes_engine";
/// CSM's workload type for a VM on GCE.
pub const CSM_TYPE_GCE: &str = "gcp_compute_engine";

/// Who this workload is: the `source_*` labels of what it sends and the `destination_*` labels
/// of what it serves, and what it tells its peers in the metadata exchange.
///
/// Every field defaults to `unknown`. [`WorkloadLabels::from_env`] fills them from the variables
/// Istio's sidecar injector and the Kubernetes Downward API set (and gRPC's CSM variables);
/// the setters override any of them:
///
/// ```
/// use mesh_tower::telemetry::WorkloadLabels;
///
/// let labels = WorkloadLabels::new("reviews-v2", "default").canonical("reviews", "v2").cluster("Kubernetes");
/// assert_eq!(labels.app(), "reviews");
/// assert_eq!(labels.version(), "v2");
/// assert_eq!(labels.mesh_id(), "unknown");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadLabels {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) app: String,
    pub(crate) version: String,
    pub(crate) canonical_service: String,
    pub(crate) canonical_revision: String,
    pub(crate) cluster: String,
    pub(crate) mesh_id: String,
    pub(crate) csm_type: String,
    pub(crate) location: String,
    pub(crate) project_id: String,
    pub(crate) pod: String,
    pub(crate) principal: String,
}

impl Default for WorkloadLabels {
    fn default() -> Self {
        let unknown = || UNKNOWN.to_owned();
        Self {
            name: unknown(),
            namespace: unknown(),
            app: unknown(),
            version: unknown(),
            canonical_service: unknown(),
            canonical_revision: unknown(),
            cluster: unknown(),
            mesh_id: unknown(),
            csm_type: unknown(),
            location: unknown(),
            project_id: unknown(),
            pod: unknown(),
            principal: unknown(),
        }
    }
}

/// The first of `keys` set to a non-empty value.
fn first(lookup: &dyn Fn(&str) -> Option<String>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| lookup(k).filter(|v| !v.trim().is_empty()).map(|v| v.trim().to_owned()))
}

impl WorkloadLabels {
    /// Workload `name` (the Deployment's, as Istio's `WORKLOAD_NAME`) in `namespace`; the rest
    /// `unknown` until set.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self { name: name.into(), namespace: namespace.into(), ..Self::default() }
    }

    /// From this process's environment: see [`WorkloadLabels::from_lookup`].
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// From variables read through `lookup`, the first one set of each list winning:
    ///
    /// | label | variables |
    /// |---|---|
    /// | workload name | `ISTIO_META_WORKLOAD_NAME`, `CSM_WORKLOAD_NAME` |
    /// | namespace | `POD_NAMESPACE`, `ISTIO_META_NAMESPACE`, `CSM_NAMESPACE_NAME` |
    /// | canonical service (and app) | `CANONICAL_SERVICE`, `ISTIO_META_CANONICAL_SERVICE`, `CSM_CANONICAL_SERVICE_NAME`, `SERVICE_NAME` |
    /// | canonical revision (and version) | `CANONICAL_REVISION`, `ISTIO_META_CANONICAL_REVISION`, `SERVICE_VERSION` |
    /// | app, version | `ISTIO_META_APP`, `ISTIO_META_VERSION` (else the canonical ones) |
    /// | cluster | `ISTIO_META_CLUSTER_ID`, `CSM_CLUSTER_NAME` |
    /// | mesh id | `ISTIO_META_MESH_ID`, `CSM_MESH_ID` |
    /// | CSM type, location, project | `CSM_WORKLOAD_TYPE`, `CSM_LOCATION`, `CSM_PROJECT_ID` (`GOOGLE_CLOUD_PROJECT`) |
    /// | pod | `POD_NAME`, `HOSTNAME` |
    /// | principal | `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT` from `SERVICE_ACCOUNT` (Istio's injector sets it), `TRUST_DOMAIN` (default `cluster.local`) and the namespace |
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
        let or_unknown = |keys: &[&str]| first(lookup, keys).unwrap_or_else(|| UNKNOWN.to_owned());
        let canonical_service = or_unknown(&[
            "CANONICAL_SERVICE",
            "ISTIO_META_CANONICAL_SERVICE",
            "CSM_CANONICAL_SERVICE_NAME",
            "SERVICE_NAME",
        ]);
        let canonical_revision =
            or_unknown(&["CANONICAL_REVISION", "ISTIO_META_CANONICAL_REVISION", "SERVICE_VERSION"]);
        let namespace = or_unknown(&["POD_NAMESPACE", "ISTIO_META_NAMESPACE", "CSM_NAMESPACE_NAME"]);
        let principal = match first(lookup, &["SERVICE_ACCOUNT"]) {
            Some(account) if namespace != UNKNOWN => {
                let domain = first(lookup, &["TRUST_DOMAIN"]).unwrap_or_else(|| "cluster.local".to_owned());
                format!("spiffe://{domain}/ns/{namespace}/sa/{account}")
            }
            _ => UNKNOWN.to_owned(),
        };
        Self {
            name: or_unknown(&["ISTIO_META_WORKLOAD_NAME", "CSM_WORKLOAD_NAME"]),
            namespace,
            principal,
            app: first(lookup, &["ISTIO_META_APP"]).unwrap_or_else(|| canonical_service.clone()),
            version: first(lookup, &["ISTIO_META_VERSION"]).unwrap_or_else(|| canonical_revision.clone()),
            canonical_service,
            canonical_revision,
            cluster: or_unknown(&["ISTIO_META_CLUSTER_ID", "CSM_CLUSTER_NAME"]),
            mesh_id: or_unknown(&["ISTIO_META_MESH_ID", "CSM_MESH_ID"]),
            csm_type: or_unknown(&["CSM_WORKLOAD_TYPE"]),
            location: or_unknown(&["CSM_LOCATION"]),
            project_id: or_unknown(&["CSM_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"]),
            pod: or_unknown(&["POD_NAME", "HOSTNAME"]),
        }
    }

    /// The canonical service and revision (`service.istio.io/canonical-name` and `-revision`);
    /// `app` and `version` follow them, as Istio's defaults do.
    pub fn canonical(mut self, service: impl Into<String>, revision: impl Into<String>) -> Self {
        self.canonical_service = service.into();
        self.canonical_revision = revision.into();
        self.app = self.canonical_service.clone();
        self.version = self.canonical_revision.clone();
        self
    }

    /// The `app` and `version` labels, when they differ from the canonical service and revision.
    pub fn app_version(mut self, app: impl Into<String>, version: impl Into<String>) -> Self {
        self.app = app.into();
        self.version = version.into();
        self
    }

    /// The cluster (Istio's `CLUSTER_ID`, CSM's cluster name).
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// The mesh id (Istio's `MESH_ID`, CSM's `csm.mesh_id`).
    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    /// Sets the mesh id.
    pub fn with_mesh_id(mut self, mesh_id: impl Into<String>) -> Self {
        self.mesh_id = mesh_id.into();
        self
    }

    /// CSM's platform fields: `type` ([`CSM_TYPE_GKE`], [`CSM_TYPE_GCE`] or `unknown`; gRPC's CSM
    /// plugin reads the workload's name, namespace, cluster, location and project only from a
    /// GKE peer), location (zone or region) and project id.
    pub fn csm_platform(
        mut self,
        kind: impl Into<String>,
        location: impl Into<String>,
        project_id: impl Into<String>,
    ) -> Self {
        self.csm_type = kind.into();
        self.location = location.into();
        self.project_id = project_id.into();
        self
    }

    /// The workload's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The workload's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The `app` label.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The `version` label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The canonical service.
    pub fn canonical_service(&self) -> &str {
        &self.canonical_service
    }

    /// The canonical revision.
    pub fn canonical_revision(&self) -> &str {
        &self.canonical_revision
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &str {
        &self.cluster
    }

    /// This workload's SPIFFE ID, as Istio's `source_principal` (client side) and
    /// `destination_principal` (server side) name it: the identity the workload presents.
    pub fn with_principal(mut self, id: &mesh_core::SpiffeId) -> Self {
        self.principal = id.as_str().to_owned();
        self
    }

    /// This workload's SPIFFE ID, or `unknown`.
    pub fn principal(&self) -> &str {
        &self.principal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> WorkloadLabels {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        WorkloadLabels::from_lookup(move |key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    #[test]
    fn istio_agent_and_downward_api_variables() {
        let labels = env(&[
            ("ISTIO_META_WORKLOAD_NAME", "reviews-v2"),
            ("POD_NAMESPACE", "default"),
            ("CANONICAL_SERVICE", "reviews"),
            ("CANONICAL_REVISION", "v2"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_MESH_ID", "cluster.local"),
            ("POD_NAME", "reviews-v2-5d8f"),
        ]);
        assert_eq!(labels.name(), "reviews-v2");
        assert_eq!(labels.namespace(), "default");
        assert_eq!((labels.app(), labels.version()), ("reviews", "v2"));
        assert_eq!((labels.canonical_service(), labels.canonical_revision()), ("reviews", "v2"));
        assert_eq!(labels.cluster_id(), "Kubernetes");
        assert_eq!(labels.mesh_id(), "cluster.local");
        assert_eq!(labels.pod, "reviews-v2-5d8f");
        assert_eq!(labels.csm_type, UNKNOWN);
        assert_eq!(labels.principal(), UNKNOWN, "no service account, no principal");
        let with_account = env(&[("POD_NAMESPACE", "default"), ("SERVICE_ACCOUNT", "bookinfo-reviews")]);
        assert_eq!(with_account.principal(), "spiffe://cluster.local/ns/default/sa/bookinfo-reviews");
        let other_domain =
            env(&[("POD_NAMESPACE", "prod"), ("SERVICE_ACCOUNT", "web"), ("TRUST_DOMAIN", "example.org")]);
        assert_eq!(other_domain.principal(), "spiffe://example.org/ns/prod/sa/web");
    }

    #[test]
    fn csm_variables_and_precedence() {
        let labels = env(&[
            ("CSM_WORKLOAD_NAME", "frontend"),
            ("CSM_CANONICAL_SERVICE_NAME", "frontend-svc"),
            ("CSM_MESH_ID", "proj-123"),
            ("ISTIO_META_APP", "web"),
            ("ISTIO_META_WORKLOAD_NAME", "  "),
        ]);
        // A blank variable is not a value: the next one counts.
        assert_eq!(labels.name(), "frontend");
        assert_eq!(labels.canonical_service(), "frontend-svc");
        assert_eq!(labels.app(), "web");
        assert_eq!(labels.version(), UNKNOWN);
        assert_eq!(labels.mesh_id(), "proj-123");
    }

    #[test]
    fn nothing_set_is_unknown_everywhere() {
        let labels = env(&[]);
        assert_eq!(labels, WorkloadLabels::default());
        assert_eq!(labels.name(), UNKNOWN);
        assert_eq!(labels.cluster_id(), UNKNOWN);
    }
}
