//! The four resource types of the client cascade, decoded and checked into what mesh can do.
//!
//! Each submodule turns one xDS type into a small typed value, or into a [`ResourceError`] that
//! names the resource, the field and the reason: that error is what a NACK's `error_detail`
//! carries. Anything that would change behaviour and that mesh cannot honour is an error here,
//! never silently dropped.

pub(crate) mod cluster;
pub(crate) mod endpoint;
mod field;
pub(crate) mod filter;
pub(crate) mod inbound;
pub(crate) mod listener;
pub(crate) mod rbac;
pub(crate) mod route;
pub(crate) mod security;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub(crate) use self::field::{DecodeContext, FieldError, FieldResult};
pub use self::field::{ResourceError, ResourceType};

/// A decoded resource of any type, as the cache holds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Resource {
    Listener(listener::Listener),
    /// A server's listener (gRFC A36): an address and a filter chain instead of an API listener.
    InboundListener(inbound::InboundConfig),
    RouteConfiguration(route::RouteConfig),
    Cluster(cluster::Cluster),
    ClusterLoadAssignment(endpoint::LoadAssignment),
}

/// Decodes one resource of a response: its name, and the resource or why it is refused.
///
/// The name is known whenever the bytes decode, so a bad resource can be NACKed by name and the
/// watchers of that name told (gRFC A46).
pub(crate) fn decode(
    kind: ResourceType,
    any: &Any,
    ctx: &DecodeContext<'_>,
) -> Result<(String, Result<Resource, ResourceError>), ResourceError> {
    let any = unwrap_resource(any).map_err(|e| e.into_resource(kind, ""))?;
    if any.type_url != kind.type_url() {
        return Err(ResourceError::new(
            kind,
            "",
            "type_url",
            format!("a {} response holds a {}", kind.short_name(), any.type_url),
        ));
    }
    let bytes = any.value.as_slice();
    let undecodable = |e: prost::DecodeError| ResourceError::new(kind, "", "value", format!("cannot decode: {e}"));
    Ok(match kind {
        ResourceType::Listener => {
            let raw = envoy_types::pb::envoy::config::listener::v3::Listener::decode(bytes).map_err(undecodable)?;
            let name = raw.name.clone();
            let parsed = if inbound::is_inbound(&raw) {
                inbound::parse(&raw, ctx).map(Resource::InboundListener)
            } else {
                listener::parse(&raw).map(Resource::Listener)
            };
            (name.clone(), parsed.map_err(|e| e.into_resource(kind, &name)))
        }
        ResourceType::RouteConfiguration => {
            let raw =
                envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(bytes).map_err(undecodable)?;
            let name = raw.name.clone();
            let parsed = route::parse(&raw).map(Resource::RouteConfiguration).map_err(|e| e.into_resource(kind, &name));
            (name, parsed)
        }
        ResourceType::Cluster => {
            let raw = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(bytes).map_err(undecodable)?;
            let name = raw.name.clone();
            let parsed = cluster::parse(&raw, ctx).map(Resource::Cluster).map_err(|e| e.into_resource(kind, &name));
            (name, parsed)
        }
        ResourceType::ClusterLoadAssignment => {
            let raw = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(bytes)
                .map_err(undecodable)?;
            let name = raw.cluster_name.clone();
            let parsed =
                endpoint::parse(&raw).map(Resource::ClusterLoadAssignment).map_err(|e| e.into_resource(kind, &name));
            (name, parsed)
        }
    })
}

/// A resource may come wrapped in `envoy.service.discovery.v3.Resource`.
fn unwrap_resource(any: &Any) -> FieldResult<std::borrow::Cow<'_, Any>> {
    use envoy_types::pb::envoy::service::discovery::v3::Resource as Wrapped;
    if any.type_url != "type.googleapis.com/envoy.service.discovery.v3.Resource" {
        return Ok(std::borrow::Cow::Borrowed(any));
    }
    let wrapped = Wrapped::decode(any.value.as_slice()).map_err(|e| FieldError::new("resource", e.to_string()))?;
    wrapped.resource.map(std::borrow::Cow::Owned).ok_or_else(|| FieldError::new("resource.resource", "missing"))
}
