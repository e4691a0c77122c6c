//! CDS: EDS clusters with their load-balancing policy (gRFC A42, A48), circuit breaker (A32),
//! outlier detection (A50) and security (A29).

use std::time::Duration;

use envoy_types::pb::{
    envoy::config::{
        cluster::v3::{
            Cluster as RawCluster, LoadBalancingPolicy, OutlierDetection as RawOutlier,
            cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
        },
        core::v3::transport_socket::ConfigType,
    },
    envoy::extensions::load_balancing_policies::wrr_locality::v3::WrrLocality,
    google::protobuf::UInt32Value,
};
use mesh_core::policy::{OutlierDetection, Percentage};

use super::field::{DecodeContext, FieldError, FieldResult, decode_any, duration};
use super::security::{self, ClusterTls};

/// A checked EDS cluster.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cluster {
    /// The name to ask EDS for.
    pub(crate) eds_service_name: String,
    pub(crate) lb: LbKind,
    /// `circuit_breakers.thresholds[0].max_requests` (default 1024, gRFC A32).
    pub(crate) max_requests: u32,
    pub(crate) outlier_detection: Option<OutlierDetection>,
    /// `None`: plaintext.
    pub(crate) tls: Option<ClusterTls>,
}

/// A cluster's load-balancing policy, as mesh runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LbKind {
    /// `ROUND_ROBIN`: mesh's round robin.
    RoundRobin,
    /// `LEAST_REQUEST`: mesh's P2C over peak-EWMA (least loaded of two).
    LeastRequest,
    /// `RING_HASH`: consistent hashing on the route's hash policy header.
    RingHash,
}

pub(crate) fn parse(raw: &RawCluster, ctx: &DecodeContext<'_>) -> FieldResult<Cluster> {
    match &raw.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => {}
        Some(ClusterDiscoveryType::Type(t)) => {
            let name = DiscoveryType::try_from(*t).map_or("unknown", |t| t.as_str_name());
            return Err(FieldError::new("type", format!("{name} clusters are not supported (only EDS)")));
        }
        Some(ClusterDiscoveryType::ClusterType(c)) => {
            return Err(FieldError::new(
                "cluster_type",
                format!("custom cluster type {:?} is not supported (aggregate clusters neither)", c.name),
            ));
        }
        None => return Err(FieldError::new("type", "missing (only EDS is supported)")),
    }
    let eds = raw.eds_cluster_config.as_ref();
    if let Some(source) = eds.and_then(|e| e.eds_config.as_ref()) {
        use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as S;
        if source.config_source_specifier.as_ref().is_some_and(|s| !matches!(s, S::Ads(_) | S::Self_(_))) {
            return Err(FieldError::new(
                "eds_cluster_config.eds_config",
                "only ADS and self config sources are supported",
            ));
        }
    }
    let eds_service_name =
        eds.map(|e| e.service_name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| raw.name.clone());
    let lb = match &raw.load_balancing_policy {
        // gRFC A52: the typed policy, when present, wins over lb_policy.
        Some(policy) => typed_policy(policy, 0).map_err(|e| e.within("load_balancing_policy"))?,
        None => lb_policy(raw.lb_policy)?,
    };
    let max_requests = raw
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.first())
        .and_then(|t| t.max_requests.as_ref())
        .map_or(1024, |m| m.value);
    if max_requests == 0 {
        return Err(FieldError::new("circuit_breakers.thresholds[0].max_requests", "0 would refuse every request"));
    }
    let outlier_detection =
        raw.outlier_detection.as_ref().map(|o| outlier(o).map_err(|e| e.within("outlier_detection"))).transpose()?;
    let tls = match &raw.transport_socket {
        None => None,
        Some(socket) => match &socket.config_type {
            Some(ConfigType::TypedConfig(any)) => {
                Some(security::parse_upstream(any, ctx).map_err(|e| e.within("transport_socket.typed_config"))?)
            }
            None => return Err(FieldError::new("transport_socket.typed_config", "missing")),
        },
    };
    if !raw.transport_socket_matches.is_empty() {
        return Err(FieldError::new("transport_socket_matches", "per-endpoint transport sockets are not supported"));
    }
    Ok(Cluster { eds_service_name, lb, max_requests, outlier_detection, tls })
}

fn lb_policy(policy: i32) -> FieldResult<LbKind> {
    match LbPolicy::try_from(policy) {
        Ok(LbPolicy::RoundRobin) => Ok(LbKind::RoundRobin),
        Ok(LbPolicy::LeastRequest) => Ok(LbKind::LeastRequest),
        Ok(LbPolicy::RingHash) => Ok(LbKind::RingHash),
        Ok(other) => Err(FieldError::new(
            "lb_policy",
            format!("{} is not supported (ROUND_ROBIN, LEAST_REQUEST, RING_HASH)", other.as_str_name()),
        )),
        Err(_) => Err(FieldError::new("lb_policy", format!("unknown policy {policy}"))),
    }
}

/// The first policy of a typed `load_balancing_policy` list that mesh has (gRFC A52): round robin,
/// least request, ring hash, or any of them under `wrr_locality` (locality weights are already
/// folded into endpoint weights). None supported: refused.
fn typed_policy(policy: &LoadBalancingPolicy, depth: usize) -> FieldResult<LbKind> {
    const POLICIES: &str = "type.googleapis.com/envoy.extensions.load_balancing_policies";
    if depth > 8 {
        return Err(FieldError::new("policies", "nested too deeply"));
    }
    let mut seen = Vec::new();
    for (i, p) in policy.policies.iter().enumerate() {
        let Some(any) = p.typed_extension_config.as_ref().and_then(|t| t.typed_config.as_ref()) else {
            return Err(FieldError::new(format!("policies[{i}].typed_extension_config"), "missing"));
        };
        match any.type_url.strip_prefix(POLICIES).unwrap_or_default() {
            ".round_robin.v3.RoundRobin" => return Ok(LbKind::RoundRobin),
            ".least_request.v3.LeastRequest" => return Ok(LbKind::LeastRequest),
            ".ring_hash.v3.RingHash" => return Ok(LbKind::RingHash),
            ".wrr_locality.v3.WrrLocality" => {
                let field = format!("policies[{i}].typed_extension_config.typed_config");
                let wrr: WrrLocality = decode_any(any, &field)?;
                let inner = wrr
                    .endpoint_picking_policy
                    .ok_or_else(|| FieldError::new(format!("{field}.endpoint_picking_policy"), "missing"))?;
                return typed_policy(&inner, depth + 1)
                    .map_err(|e| e.within(&format!("{field}.endpoint_picking_policy")));
            }
            _ => seen.push(any.type_url.clone()),
        }
    }
    Err(FieldError::new(
        "policies",
        format!("none of {seen:?} is supported (round_robin, least_request, ring_hash, wrr_locality)"),
    ))
}

fn value(v: &Option<UInt32Value>, default: u32) -> u32 {
    v.as_ref().map_or(default, |v| v.value)
}

/// gRFC A50's consecutive-5xx ejection as mesh's outlier detection (which counts every failure
/// the shared classifier sees). Success-rate and failure-percentage ejection are refused.
fn outlier(raw: &RawOutlier) -> FieldResult<OutlierDetection> {
    if value(&raw.enforcing_success_rate, 100) != 0 {
        return Err(FieldError::new("enforcing_success_rate", "success-rate ejection is not supported: set it to 0"));
    }
    if value(&raw.enforcing_failure_percentage, 0) != 0 {
        return Err(FieldError::new("enforcing_failure_percentage", "failure-percentage ejection is not supported"));
    }
    let d = |v: &Option<envoy_types::pb::google::protobuf::Duration>, field: &str, default: Duration| {
        v.as_ref().map_or(Ok(default), |d| duration(d, field))
    };
    let base_ejection_time = d(&raw.base_ejection_time, "base_ejection_time", Duration::from_secs(30))?;
    let max_ejection_time =
        d(&raw.max_ejection_time, "max_ejection_time", Duration::from_secs(300))?.max(base_ejection_time);
    let percent = value(&raw.max_ejection_percent, 10).min(100);
    let max_ejection_percent =
        Percentage::new(f64::from(percent)).map_err(|e| FieldError::new("max_ejection_percent", e.reason))?;
    let consecutive_failures = if value(&raw.enforcing_consecutive_5xx, 100) == 0 {
        // Ejection on consecutive failures disabled: an unreachable threshold keeps mesh from ejecting.
        u32::MAX
    } else {
        value(&raw.consecutive_5xx, 5).max(1)
    };
    let mut policy = OutlierDetection::default();
    policy.consecutive_failures = consecutive_failures;
    policy.base_ejection_time = base_ejection_time;
    policy.max_ejection_time = max_ejection_time;
    policy.max_ejection_percent = max_ejection_percent;
    policy.validate().map_err(|e| FieldError::new(e.field, e.reason))?;
    Ok(policy)
}
