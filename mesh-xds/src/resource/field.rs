//! What every translation uses: the resource types, errors that name a resource's field, decoding
//! helpers, and what decoding needs to know about this client.

use std::{fmt, time::Duration};

use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;

/// An xDS resource type of the client cascade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ResourceType {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    RouteConfiguration,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    ClusterLoadAssignment,
}

impl ResourceType {
    /// Every type, in the order of the cascade.
    pub const ALL: [ResourceType; 4] =
        [Self::Listener, Self::RouteConfiguration, Self::Cluster, Self::ClusterLoadAssignment];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::RouteConfiguration => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::ClusterLoadAssignment => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
    }

    /// The type for a type URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether a state-of-the-world response lists every resource of the type, so that a resource
    /// missing from it was deleted (LDS and CDS), rather than only those that changed.
    pub(crate) fn response_is_complete(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }

    /// The short name: LDS, RDS, CDS, EDS.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Listener => "LDS",
            Self::RouteConfiguration => "RDS",
            Self::Cluster => "CDS",
            Self::ClusterLoadAssignment => "EDS",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A resource mesh refuses: which one, which field, and why. NACKs carry these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} resource {name:?}: {field}: {reason}")]
pub struct ResourceError {
    kind: ResourceType,
    name: String,
    field: String,
    reason: String,
}

impl ResourceError {
    pub(crate) fn new(kind: ResourceType, name: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { kind, name: name.to_owned(), field: field.into(), reason: reason.into() }
    }

    /// The resource's type.
    pub fn kind(&self) -> ResourceType {
        self.kind
    }

    /// The resource's name (empty when it could not be decoded far enough to know it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offending field, as a path from the resource's root.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why it is refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A field error before the resource's name and type are attached.
#[derive(Debug)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// The same error under `prefix.`.
    pub(crate) fn within(self, prefix: &str) -> Self {
        Self { field: format!("{prefix}.{}", self.field), reason: self.reason }
    }

    pub(crate) fn into_resource(self, kind: ResourceType, name: &str) -> ResourceError {
        ResourceError::new(kind, name, self.field, self.reason)
    }
}

pub(crate) type FieldResult<T> = Result<T, FieldError>;

/// Decodes `any` as `M`, checking its type URL.
pub(crate) fn decode_any<M: Message + Default + prost::Name>(any: &Any, field: &str) -> FieldResult<M> {
    if any.type_url != M::type_url() {
        return Err(FieldError::new(field, format!("expected {}, got {}", M::type_url(), any.type_url)));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| FieldError::new(field, format!("cannot decode {}: {e}", M::full_name())))
}

/// A protobuf duration as a `Duration`; negative or out-of-range ones are errors.
pub(crate) fn duration(d: &PbDuration, field: &str) -> FieldResult<Duration> {
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(FieldError::new(field, format!("{}s {}ns is not a valid duration", d.seconds, d.nanos)));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// What decoding needs to know about this client: the certificate providers of its bootstrap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecodeContext<'a> {
    pub(crate) certificate_providers: &'a std::collections::BTreeMap<String, crate::bootstrap::CertificateProvider>,
}
