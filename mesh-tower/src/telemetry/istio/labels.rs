//! Istio's label values from what mesh knows: the peer's from its SPIFFE ID and exchanged
//! metadata, `destination_service` from the target, the version from the subset, and
//! `response_flags` from mesh's failure kinds. Pure functions, each run once per peer, target
//! or subset (their results are cached by the caller), never per request.

use mesh_core::SpiffeId;

use super::{peer_metadata::PeerMetadata, workload::UNKNOWN};
use crate::failure::ErrorKind;

/// The other side of a call, as Istio's `source_*` / `destination_*` labels and gRPC CSM's
/// `csm.remote_workload_*` attributes name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerLabels {
    pub(crate) workload: String,
    pub(crate) namespace: String,
    pub(crate) principal: String,
    pub(crate) app: String,
    pub(crate) version: String,
    pub(crate) canonical_service: String,
    pub(crate) canonical_revision: String,
    pub(crate) cluster: String,
    pub(crate) csm_type: String,
    pub(crate) csm_canonical_service: String,
}

fn known(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or(UNKNOWN).to_owned()
}

/// The namespace in an Istio-style SPIFFE ID (`spiffe://TD/ns/NS/sa/SA`).
pub(crate) fn spiffe_namespace(id: &SpiffeId) -> Option<&str> {
    let mut segments = id.path().trim_start_matches('/').split('/');
    match (segments.next(), segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(_), None) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

impl PeerLabels {
    /// The peer's labels: what it said about itself, its SPIFFE ID where it said nothing.
    pub(crate) fn of(id: Option<&SpiffeId>, metadata: Option<&PeerMetadata>) -> Self {
        let get = |istio: &str, csm: &str| metadata.and_then(|m| m.get(istio, csm));
        let label = |key: &str| metadata.and_then(|m| m.label(key));
        let canonical_service =
            known(label("service.istio.io/canonical-name").or_else(|| get("CANONICAL_SERVICE", "canonical_service")));
        let canonical_revision = known(label("service.istio.io/canonical-revision"));
        Self {
            workload: known(get("WORKLOAD_NAME", "workload_name")),
            namespace: known(get("NAMESPACE", "namespace_name").or_else(|| id.and_then(spiffe_namespace))),
            principal: known(id.map(SpiffeId::as_str)),
            app: known(label("app")).replace_unknown(&canonical_service),
            version: known(label("version")).replace_unknown(&canonical_revision),
            canonical_service,
            canonical_revision,
            cluster: known(get("CLUSTER_ID", "cluster_name")),
            csm_type: known(metadata.and_then(|m| m.fields.get("type").map(String::as_str))),
            csm_canonical_service: known(metadata.and_then(|m| m.fields.get("canonical_service").map(String::as_str))),
        }
    }
}

trait ReplaceUnknown {
    fn replace_unknown(self, with: &str) -> String;
}

impl ReplaceUnknown for String {
    fn replace_unknown(self, with: &str) -> String {
        if self == UNKNOWN { with.to_owned() } else { self }
    }
}

/// `destination_service`, `destination_service_name` and `destination_service_namespace` of a
/// target: xDS targets are named `HOST-PORT` (`greeter.default.svc.cluster.local-50051`); Istio
/// reports the host, its first label as the name and, for a Kubernetes service host
/// (`NAME.NAMESPACE.svc.DOMAIN`), its namespace.
pub(crate) fn destination_service(service: &str) -> (String, String, String) {
    let host = match service.rsplit_once('-') {
        Some((host, port)) if host.contains('.') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => service,
    };
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or(host);
    let namespace = match (labels.next(), labels.next()) {
        (Some(ns), Some("svc")) => ns,
        _ => UNKNOWN,
    };
    (host.to_owned(), name.to_owned(), namespace.to_owned())
}

/// The version a subset stands for: xDS subsets are the cluster's name
/// (`outbound_9080_v1_reviews.default.svc.cluster.local`, from `outbound|9080|v1|HOST`: `v1`;
/// with no subset part, `unknown`); other subsets are named after the version (`v1`).
pub(crate) fn subset_version(subset: &str) -> String {
    if let Some(rest) = subset.strip_prefix("outbound_") {
        let mut parts = rest.splitn(3, '_');
        if let (Some(port), Some(version), Some(_host)) = (parts.next(), parts.next(), parts.next())
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            return known(Some(version));
        }
    }
    subset.to_owned()
}

/// How an exchange ended, as far as `response_flags` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A response that reached its end (whatever its status).
    Complete,
    /// Mesh failed the request with this kind.
    Failed(ErrorKind),
    /// The response body failed part way.
    BodyError,
    /// The caller went away before the end.
    Dropped,
    /// Denied by the authorization policy.
    Denied,
}

/// Envoy's response flag for how a request ended (`-` for none), as Istio reports it.
pub(crate) fn response_flags(ending: Ending, inbound: bool) -> &'static str {
    match ending {
        Ending::Complete => "-",
        Ending::Denied => "RBAC",
        Ending::Dropped => "DC",
        Ending::BodyError if inbound => "DC",
        Ending::BodyError => "UC",
        Ending::Failed(kind) => kind.response_flag(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::istio::peer_metadata::{decode, encode};
    use crate::telemetry::istio::workload::WorkloadLabels;

    #[test]
    fn peer_from_spiffe_id_alone() {
        let id: SpiffeId = "spiffe://cluster.local/ns/prod/sa/frontend".parse().unwrap();
        let peer = PeerLabels::of(Some(&id), None);
        assert_eq!(peer.namespace, "prod");
        assert_eq!(peer.principal, "spiffe://cluster.local/ns/prod/sa/frontend");
        assert_eq!(peer.workload, UNKNOWN);
        assert_eq!(peer.version, UNKNOWN);
        let other: SpiffeId = "spiffe://example.org/frontend".parse().unwrap();
        assert_eq!(PeerLabels::of(Some(&other), None).namespace, UNKNOWN);
        assert_eq!(PeerLabels::of(None, None).principal, UNKNOWN);
    }

    #[test]
    fn peer_from_exchanged_metadata() {
        let sent = WorkloadLabels::new("reviews-v2", "default").canonical("reviews", "v2").cluster("Kubernetes");
        let metadata = decode(encode(&sent).as_bytes()).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/other/sa/reviews".parse().unwrap();
        let peer = PeerLabels::of(Some(&id), Some(&metadata));
        assert_eq!(peer.workload, "reviews-v2");
        assert_eq!(peer.namespace, "default", "what the peer says wins over the ID's namespace");
        assert_eq!((peer.app.as_str(), peer.version.as_str()), ("reviews", "v2"));
        assert_eq!((peer.canonical_service.as_str(), peer.canonical_revision.as_str()), ("reviews", "v2"));
        assert_eq!(peer.cluster, "Kubernetes");
        assert_eq!(peer.csm_canonical_service, "reviews");
    }

    #[test]
    fn destination_service_from_targets() {
        let fqdn = "greeter.default.svc.cluster.local";
        assert_eq!(
            destination_service("greeter.default.svc.cluster.local-50051"),
            (fqdn.into(), "greeter".into(), "default".into())
        );
        assert_eq!(destination_service("reviews"), ("reviews".into(), "reviews".into(), UNKNOWN.into()));
        // A dash in a plain name is not a port.
        assert_eq!(destination_service("reviews-v2").0, "reviews-v2");
        assert_eq!(destination_service("api.example.com").2, UNKNOWN);
    }

    #[test]
    fn versions_from_subsets() {
        assert_eq!(subset_version("outbound_50051_v1_greeter.default.svc.cluster.local"), "v1");
        assert_eq!(subset_version("outbound_50051__greeter.default.svc.cluster.local"), UNKNOWN);
        assert_eq!(subset_version("v2"), "v2");
        assert_eq!(subset_version("outbound_x_v1_h"), "outbound_x_v1_h");
    }

    #[test]
    fn response_flags_from_failure_kinds() {
        assert_eq!(response_flags(Ending::Complete, false), "-");
        assert_eq!(response_flags(Ending::Failed(ErrorKind::NoRoute), false), "NR");
        assert_eq!(response_flags(Ending::Failed(ErrorKind::NoEndpoints), false), "UH");
        assert_eq!(response_flags(Ending::Failed(ErrorKind::Timeout), false), "UT");
        assert_eq!(response_flags(Ending::Failed(ErrorKind::Overloaded), false), "UO");
        assert_eq!(response_flags(Ending::Failed(ErrorKind::Connect), false), "UF");
        assert_eq!(response_flags(Ending::Denied, true), "RBAC");
        assert_eq!(response_flags(Ending::BodyError, true), "DC");
        assert_eq!(response_flags(Ending::BodyError, false), "UC");
    }
}
