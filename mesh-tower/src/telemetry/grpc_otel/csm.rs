//! Cloud Service Mesh's labels (gRFC A79, as gRPC's CSM plugins write them): this workload's
//! `csm.workload_canonical_service` and `csm.mesh_id`, and the peer's `csm.remote_workload_*`
//! from the `x-envoy-peer-metadata` it sent. Pure functions, run once per peer metadata value.

use opentelemetry::KeyValue;

use super::super::istio::{
    peer_metadata::{self, PeerMetadata},
    workload::{CSM_TYPE_GCE, CSM_TYPE_GKE, UNKNOWN, WorkloadLabels},
};

/// The peer's fields every CSM peer has, and their attribute names.
const FIXED: [(&str, &str); 2] =
    [("type", "csm.remote_workload_type"), ("canonical_service", "csm.remote_workload_canonical_service")];

/// A GKE peer's further fields.
const GKE: [(&str, &str); 5] = [
    ("workload_name", "csm.remote_workload_name"),
    ("namespace_name", "csm.remote_workload_namespace_name"),
    ("cluster_name", "csm.remote_workload_cluster_name"),
    ("location", "csm.remote_workload_location"),
    ("project_id", "csm.remote_workload_project_id"),
];

/// A GCE peer's further fields.
const GCE: [(&str, &str); 3] = [
    ("workload_name", "csm.remote_workload_name"),
    ("location", "csm.remote_workload_location"),
    ("project_id", "csm.remote_workload_project_id"),
];

/// This workload's labels on every measurement that carries CSM labels.
pub(crate) fn local_labels(workload: &WorkloadLabels) -> Vec<KeyValue> {
    vec![
        KeyValue::new("csm.workload_canonical_service", workload.canonical_service().to_owned()),
        KeyValue::new("csm.mesh_id", workload.mesh_id().to_owned()),
    ]
}

/// The peer's labels from the raw `x-envoy-peer-metadata` value: without one, or with one that
/// does not decode, its type and canonical service are `unknown` (and the error says why).
pub(crate) fn remote_labels(metadata: Option<&[u8]>) -> (Vec<KeyValue>, Option<peer_metadata::PeerMetadataError>) {
    match metadata.map(peer_metadata::decode) {
        Some(Ok(decoded)) => (remote_of(Some(&decoded)), None),
        Some(Err(error)) => (remote_of(None), Some(error)),
        None => (remote_of(None), None),
    }
}

fn remote_of(metadata: Option<&PeerMetadata>) -> Vec<KeyValue> {
    // A field that is there but empty stays empty, as gRPC's plugins read it.
    let get = |key: &str| metadata.and_then(|m| m.fields.get(key)).map_or(UNKNOWN, String::as_str).to_owned();
    let mut labels: Vec<KeyValue> = FIXED.iter().map(|(field, name)| KeyValue::new(*name, get(field))).collect();
    let more: &[(&str, &str)] = match metadata.and_then(|m| m.fields.get("type")).map(String::as_str) {
        Some(CSM_TYPE_GKE) => &GKE,
        Some(CSM_TYPE_GCE) => &GCE,
        _ => &[],
    };
    labels.extend(more.iter().map(|(field, name)| KeyValue::new(*name, get(field))));
    labels
}

/// `csm.service_name` and `csm.service_namespace_name` of a client's destination: gRPC takes them
/// from the control plane's cluster metadata; mesh from the service's name (`NAME.NAMESPACE.svc…`
/// gives both), `unknown` where it says nothing.
pub(crate) fn service_labels(name: &str, namespace: &str) -> [KeyValue; 2] {
    let known = |v: &str| if v.is_empty() { UNKNOWN.to_owned() } else { v.to_owned() };
    [KeyValue::new("csm.service_name", known(name)), KeyValue::new("csm.service_namespace_name", known(namespace))]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(kvs: &[KeyValue]) -> Vec<(String, String)> {
        kvs.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_gke_peer_names_its_workload() {
        let peer = WorkloadLabels::new("reviews-v2", "default").canonical("reviews", "v2").cluster("c1").csm_platform(
            CSM_TYPE_GKE,
            "us-east1-b",
            "p-1",
        );
        let encoded = peer_metadata::encode(&peer);
        let (remote, error) = remote_labels(Some(encoded.as_bytes()));
        assert!(error.is_none());
        assert_eq!(
            labels(&remote),
            pairs(&[
                ("csm.remote_workload_type", CSM_TYPE_GKE),
                ("csm.remote_workload_canonical_service", "reviews"),
                ("csm.remote_workload_name", "reviews-v2"),
                ("csm.remote_workload_namespace_name", "default"),
                ("csm.remote_workload_cluster_name", "c1"),
                ("csm.remote_workload_location", "us-east1-b"),
                ("csm.remote_workload_project_id", "p-1"),
            ])
        );
    }

    #[test]
    fn a_gce_peer_has_no_namespace_and_an_unknown_type_only_two_labels() {
        let gce = WorkloadLabels::new("vm", "default").csm_platform(CSM_TYPE_GCE, "eu", "p");
        let (remote, _) = remote_labels(Some(peer_metadata::encode(&gce).as_bytes()));
        let keys: Vec<_> = labels(&remote).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "csm.remote_workload_type",
                "csm.remote_workload_canonical_service",
                "csm.remote_workload_name",
                "csm.remote_workload_location",
                "csm.remote_workload_project_id"
            ]
        );
        let off_cloud = WorkloadLabels::new("w", "ns").canonical("svc", "v1");
        let (remote, _) = remote_labels(Some(peer_metadata::encode(&off_cloud).as_bytes()));
        assert_eq!(
            labels(&remote),
            pairs(&[("csm.remote_workload_type", UNKNOWN), ("csm.remote_workload_canonical_service", "svc")])
        );
    }

    #[test]
    fn missing_or_malformed_metadata_leaves_the_peer_unknown() {
        let unknown =
            pairs(&[("csm.remote_workload_type", UNKNOWN), ("csm.remote_workload_canonical_service", UNKNOWN)]);
        let (remote, error) = remote_labels(None);
        assert_eq!((labels(&remote), error), (unknown.clone(), None));
        let (remote, error) = remote_labels(Some(b"%%% not base64"));
        assert_eq!((labels(&remote), error), (unknown.clone(), Some(peer_metadata::PeerMetadataError::Base64)));
        let oversized = vec![b'A'; peer_metadata::MAX_ENCODED + 4];
        let (remote, error) = remote_labels(Some(&oversized));
        assert_eq!((labels(&remote), error), (unknown, Some(peer_metadata::PeerMetadataError::Oversized)));
    }
}
