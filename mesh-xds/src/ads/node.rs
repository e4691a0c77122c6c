//! The bootstrap's node as the first request of each stream presents it to the control plane.

use std::collections::BTreeMap;

use envoy_types::pb::{
    envoy::config::core::v3::{Locality, Node, node::UserAgentVersionType},
    google::protobuf::{ListValue, Struct, Value, value::Kind},
};

use crate::bootstrap::Bootstrap;

/// The bootstrap's node as sent to the control plane.
pub(crate) fn node(bootstrap: &Bootstrap) -> Node {
    let n = &bootstrap.node;
    let fields: BTreeMap<String, Value> = n.metadata.iter().map(|(k, v)| (k.clone(), json_value(v))).collect();
    Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: Some(Struct { fields: fields.into_iter().collect() }),
        locality: Some(Locality {
            region: n.locality.region.clone(),
            zone: n.locality.zone.clone(),
            sub_zone: n.locality.sub_zone.clone(),
        }),
        user_agent_name: "mesh".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(env!("CARGO_PKG_VERSION").into())),
        client_features: vec![
            "envoy.lb.does_not_support_overprovisioning".into(),
            "xds.config.resource-in-sotw".into(),
        ],
        ..Default::default()
    }
}

fn json_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(json_value).collect() }),
        serde_json::Value::Object(o) => {
            Kind::StructValue(Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() })
        }
    };
    Value { kind: Some(kind) }
}
