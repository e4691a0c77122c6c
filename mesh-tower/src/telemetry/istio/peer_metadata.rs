//! The peer-metadata exchange of Istio's sidecars and gRPC's CSM observability:
//! `x-envoy-peer-metadata` carries the sender's labels as a base64 `google.protobuf.Struct`
//! (on the request from the client, on the response headers from the server), and
//! `x-envoy-peer-metadata-id` its node id.
//!
//! One Struct serves both readers: Istio's keys (`WORKLOAD_NAME`, `NAMESPACE`, `CLUSTER_ID`,
//! `MESH_ID`, `LABELS.app`, `LABELS.version`, `LABELS.service.istio.io/canonical-*`) and gRPC
//! CSM's (`type`, `canonical_service`, `workload_name`, `namespace_name`, `cluster_name`,
//! `location`, `project_id`), each side reading its own and ignoring the rest.
//!
//! Reading is strict: a value over [`MAX_ENCODED`] bytes, bad base64, a malformed Struct or one
//! nested too deep is ignored (the peer stays `unknown`), counted in
//! `mesh_peer_metadata_rejected_total{reason}`, and never fails the request.

use std::collections::BTreeMap;

use base64::Engine;
use http::HeaderValue;

use super::workload::WorkloadLabels;

/// The header carrying the sender's metadata.
pub const PEER_METADATA: &str = "x-envoy-peer-metadata";
/// The header carrying the sender's node id.
pub const PEER_METADATA_ID: &str = "x-envoy-peer-metadata-id";
/// The longest `x-envoy-peer-metadata` value read; longer ones are ignored.
pub const MAX_ENCODED: usize = 8 * 1024;
/// Counter of the values ignored, by `reason` (`oversized`, `base64`, `protobuf`).
pub const REJECTED: &str = "mesh_peer_metadata_rejected_total";

/// Struct nesting read (the top level and `LABELS`); deeper values are skipped, not read.
const MAX_DEPTH: u8 = 2;

const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// What a peer said about itself: the Struct's string fields, and those of its `LABELS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// Top-level string fields.
    pub fields: BTreeMap<String, String>,
    /// The string fields of the nested `LABELS` struct (Istio's pod labels).
    pub labels: BTreeMap<String, String>,
}

/// Why a peer's metadata was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerMetadataError {
    /// Longer than [`MAX_ENCODED`].
    #[error("x-envoy-peer-metadata longer than {MAX_ENCODED} bytes")]
    Oversized,
    /// Not base64.
    #[error("x-envoy-peer-metadata is not base64")]
    Base64,
    /// Not a serialized `google.protobuf.Struct`.
    #[error("x-envoy-peer-metadata is not a google.protobuf.Struct")]
    Protobuf,
}

impl PeerMetadataError {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Base64 => "base64",
            Self::Protobuf => "protobuf",
        }
    }
}

impl PeerMetadata {
    /// A string field, Istio's key first, then CSM's.
    pub(crate) fn get(&self, istio: &str, csm: &str) -> Option<&str> {
        self.fields.get(istio).or_else(|| self.fields.get(csm)).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A pod label (`LABELS.key`).
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Decodes an `x-envoy-peer-metadata` value.
pub fn decode(value: &[u8]) -> Result<PeerMetadata, PeerMetadataError> {
    if value.len() > MAX_ENCODED {
        return Err(PeerMetadataError::Oversized);
    }
    let bytes = BASE64.decode(value).map_err(|_| PeerMetadataError::Base64)?;
    let mut metadata = PeerMetadata::default();
    read_struct(&bytes, 1, &mut |depth, key, value| match (depth, value) {
        (1, Field::String(s)) => {
            metadata.fields.insert(key.1.to_owned(), s.to_owned());
        }
        (2, Field::String(s)) if key.0 == "LABELS" => {
            metadata.labels.insert(key.1.to_owned(), s.to_owned());
        }
        _ => {}
    })
    .ok_or(PeerMetadataError::Protobuf)?;
    Ok(metadata)
}

/// The Struct this workload sends, base64: Istio's keys and CSM's.
pub fn encode(workload: &WorkloadLabels) -> HeaderValue {
    let mut labels = Vec::new();
    for (key, value) in [
        ("app", &workload.app),
        ("version", &workload.version),
        ("service.istio.io/canonical-name", &workload.canonical_service),
        ("service.istio.io/canonical-revision", &workload.canonical_revision),
    ] {
        entry(&mut labels, key, &string_value(value));
    }
    let mut out = Vec::new();
    let strings = [
        ("NAME", &workload.pod),
        ("NAMESPACE", &workload.namespace),
        ("WORKLOAD_NAME", &workload.name),
        ("CLUSTER_ID", &workload.cluster),
        ("MESH_ID", &workload.mesh_id),
        ("type", &workload.csm_type),
        ("canonical_service", &workload.canonical_service),
        ("workload_name", &workload.name),
        ("namespace_name", &workload.namespace),
        ("cluster_name", &workload.cluster),
        ("location", &workload.location),
        ("project_id", &workload.project_id),
    ];
    for (key, value) in strings {
        entry(&mut out, key, &string_value(value));
    }
    let mut value = Vec::new();
    field(&mut value, 5, &labels);
    entry(&mut out, "LABELS", &value);
    HeaderValue::from_str(&BASE64.encode(&out)).unwrap_or_else(|_| unreachable!("base64 is a valid header value"))
}

/// This workload's node id, as Envoy's (`sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`
/// needs an address this layer does not know, so the pod and namespace alone: `POD.NAMESPACE`).
pub fn node_id(workload: &WorkloadLabels) -> HeaderValue {
    HeaderValue::from_str(&format!("{}.{}", workload.pod, workload.namespace))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

// --- protobuf wire format, only what Struct needs ---

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field.
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn string_value(s: &str) -> Vec<u8> {
    let mut value = Vec::new();
    field(&mut value, 3, s.as_bytes());
    value
}

/// A `fields` map entry of a Struct: `{1: key, 2: Value}`.
fn entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let mut e = Vec::new();
    field(&mut e, 1, key.as_bytes());
    field(&mut e, 2, value);
    field(out, 1, &e);
}

/// Called for each field of a Struct: its depth, (parent key, key) and value.
type Visit<'v, 'a> = dyn FnMut(u8, (&str, &str), Field<'a>) + 'v;

enum Field<'a> {
    String(&'a str),
    Other,
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

/// One field: its number and, for length-delimited ones, the bytes (others are skipped).
fn read_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let key = read_varint(buf)?;
    let number = key >> 3;
    let bytes = match key & 7 {
        0 => {
            read_varint(buf)?;
            None
        }
        1 => {
            *buf = buf.get(8..)?;
            None
        }
        2 => {
            let len = usize::try_from(read_varint(buf)?).ok()?;
            let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
            *buf = rest;
            Some(bytes)
        }
        5 => {
            *buf = buf.get(4..)?;
            None
        }
        _ => return None,
    };
    (number != 0).then_some((number, bytes))
}

/// Walks a Struct, calling `visit(depth, (parent key, key), value)` for each field; `None` when
/// malformed.
fn read_struct<'a>(mut buf: &'a [u8], depth: u8, visit: &mut Visit<'_, 'a>) -> Option<()> {
    read_struct_in(&mut buf, depth, "", visit)
}

fn read_struct_in<'a>(buf: &mut &'a [u8], depth: u8, parent: &str, visit: &mut Visit<'_, 'a>) -> Option<()> {
    while !buf.is_empty() {
        let (number, bytes) = read_field(buf)?;
        // Field 1 of a Struct is its map; others are unknown fields, skipped.
        let (1, Some(mut entry)) = (number, bytes) else {
            if number == 1 {
                return None;
            }
            continue;
        };
        let (mut key, mut value) = ("", None);
        while !entry.is_empty() {
            match read_field(&mut entry)? {
                (1, Some(k)) => key = std::str::from_utf8(k).ok()?,
                (2, Some(v)) => value = Some(v),
                (1 | 2, None) => return None,
                _ => {}
            }
        }
        let Some(mut value) = value else { continue };
        while !value.is_empty() {
            match read_field(&mut value)? {
                (3, Some(s)) => {
                    let s = std::str::from_utf8(s).ok()?;
                    visit(depth, (parent, key), Field::String(s));
                }
                (5, Some(mut nested)) if depth < MAX_DEPTH => read_struct_in(&mut nested, depth + 1, key, visit)?,
                (3 | 5 | 6, None) => return None,
                _ => visit(depth, (parent, key), Field::Other),
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> WorkloadLabels {
        WorkloadLabels::new("reviews-v2", "default")
            .canonical("reviews", "v2")
            .cluster("Kubernetes")
            .with_mesh_id("cluster.local")
    }

    #[test]
    fn round_trip_carries_istio_and_csm_keys() {
        let header = encode(&workload());
        let metadata = decode(header.as_bytes()).unwrap();
        assert_eq!(metadata.get("WORKLOAD_NAME", "workload_name"), Some("reviews-v2"));
        assert_eq!(metadata.fields["workload_name"], "reviews-v2");
        assert_eq!(metadata.fields["canonical_service"], "reviews");
        assert_eq!(metadata.fields["NAMESPACE"], "default");
        assert_eq!(metadata.fields["type"], "unknown");
        assert_eq!(metadata.label("version"), Some("v2"));
        assert_eq!(metadata.label("service.istio.io/canonical-name"), Some("reviews"));
        assert!(!metadata.fields.contains_key("LABELS"), "a struct is not a string field");
    }

    /// The bytes Python's protobuf writes for `Struct(fields={"type": "unknown",
    /// "canonical_service": "frontend"})` (grpcio's CSM plugin off GCP), base64.
    #[test]
    fn reads_what_grpcio_csm_writes() {
        let mut raw = Vec::new();
        entry(&mut raw, "type", &string_value("unknown"));
        entry(&mut raw, "canonical_service", &string_value("frontend"));
        let metadata = decode(BASE64.encode(&raw).as_bytes()).unwrap();
        assert_eq!(metadata.get("CANONICAL_SERVICE", "canonical_service"), Some("frontend"));
        // Unpadded base64 is read too.
        let unpadded = BASE64.encode(&raw).trim_end_matches('=').to_owned();
        assert_eq!(decode(unpadded.as_bytes()).unwrap(), metadata);
    }

    #[test]
    fn malformed_values_are_refused_with_their_reason() {
        assert_eq!(decode(&vec![b'A'; MAX_ENCODED + 4]), Err(PeerMetadataError::Oversized));
        assert_eq!(decode(b"not base64!"), Err(PeerMetadataError::Base64));
        // A truncated entry: field 1, length 10, two bytes.
        assert_eq!(decode(BASE64.encode([0x0a, 10, 1, 2]).as_bytes()), Err(PeerMetadataError::Protobuf));
        // Wire type 7 does not exist.
        assert_eq!(decode(BASE64.encode([0x0f]).as_bytes()), Err(PeerMetadataError::Protobuf));
        // A string that is not UTF-8.
        let mut raw = Vec::new();
        entry(&mut raw, "NAME", &{
            let mut v = Vec::new();
            field(&mut v, 3, &[0xff, 0xfe]);
            v
        });
        assert_eq!(decode(BASE64.encode(&raw).as_bytes()), Err(PeerMetadataError::Protobuf));
    }

    #[test]
    fn missing_fields_and_deep_nesting_are_not_errors() {
        assert_eq!(decode(b"").unwrap(), PeerMetadata::default());
        // Numbers, bools and structs nested below LABELS are skipped, not read.
        let mut deep = Vec::new();
        entry(&mut deep, "x", &string_value("too deep"));
        let mut inner_value = Vec::new();
        field(&mut inner_value, 5, &deep);
        let mut labels = Vec::new();
        entry(&mut labels, "nested", &inner_value);
        let mut labels_value = Vec::new();
        field(&mut labels_value, 5, &labels);
        let mut raw = Vec::new();
        entry(&mut raw, "LABELS", &labels_value);
        entry(&mut raw, "COUNT", &[0x11, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
        let metadata = decode(BASE64.encode(&raw).as_bytes()).unwrap();
        assert!(metadata.labels.is_empty() && metadata.fields.is_empty(), "{metadata:?}");
    }
}
