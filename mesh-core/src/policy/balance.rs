use serde::{Deserialize, Serialize};

use super::InvalidPolicy;
use crate::name::HeaderName;

/// How the endpoints of a subset share its traffic.
///
/// In files: `load_balancer: { kind: p2c_peak_ewma }`, `{ kind: round_robin }` or
/// `{ kind: ring_hash, header: x-user-id }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LoadBalancer {
    /// The algorithm.
    #[serde(default)]
    pub kind: LoadBalancerKind,
    /// For `ring_hash`: the request header whose value picks the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderName>,
}

/// A load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadBalancerKind {
    /// Power of two choices: of two endpoints picked at random, the one with the lower
    /// peak-EWMA latency times outstanding requests. Slow or overloaded endpoints get less.
    #[default]
    P2cPeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
    /// Consistent hashing on a header: the same value goes to the same endpoint while the
    /// endpoint set allows (sticky sessions, caches).
    RingHash,
}

impl LoadBalancer {
    /// Round robin.
    pub fn round_robin() -> Self {
        Self { kind: LoadBalancerKind::RoundRobin, header: None }
    }

    /// Consistent hashing on `header`.
    pub fn ring_hash(header: HeaderName) -> Self {
        Self { kind: LoadBalancerKind::RingHash, header: Some(header) }
    }

    /// Checks that `ring_hash` names a header, and only it does.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        match (self.kind, &self.header) {
            (LoadBalancerKind::RingHash, None) => {
                Err(InvalidPolicy::new("header", "ring_hash needs the header to hash"))
            }
            (LoadBalancerKind::RingHash, Some(_)) | (_, None) => Ok(()),
            (_, Some(_)) => Err(InvalidPolicy::new("header", "only ring_hash hashes a header")),
        }
    }
}
