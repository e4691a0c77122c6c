//! Endpoints: the addresses a service is reachable at.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{InvalidLabel, Labels, Weight};
use crate::identity::{ExpectedIdentity, SpiffeId};

/// One instance of a service: where to reach it, how it is labelled, its share of traffic within
/// its subset, and who it must prove to be.
///
/// ```
/// use mesh_core::{Endpoint, Weight};
/// let ep = Endpoint::new("10.0.0.7:8080".parse()?)
///     .with_label("version", "v2")?
///     .with_weight(Weight::new(3)?)
///     .with_identity("spiffe://example.org/ns/prod/sa/reviews".parse()?);
/// assert_eq!(ep.labels.get("version"), Some("v2"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Endpoint {
    /// Where the endpoint listens.
    pub address: SocketAddr,
    /// Labels that subsets select on, such as `version: v2`.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The endpoint's share of its subset's traffic, relative to the other endpoints.
    #[serde(default)]
    pub weight: Weight,
    /// The SPIFFE ID the endpoint must present in its certificate when mTLS is on (or the
    /// matchers of which one must accept it). When `None`, the service's identity applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ExpectedIdentity>,
}

impl Endpoint {
    /// An endpoint at `address`, unlabelled, with the default weight.
    pub fn new(address: SocketAddr) -> Self {
        Self { address, labels: Labels::new(), weight: Weight::DEFAULT, identity: None }
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Result<Self, InvalidLabel> {
        self.labels.insert(key, value)?;
        Ok(self)
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: Weight) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the identity the endpoint must present.
    pub fn with_identity(mut self, identity: SpiffeId) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Sets what the endpoint must present: matchers of which one must accept its SPIFFE ID.
    pub fn with_expected_identity(mut self, identity: ExpectedIdentity) -> Self {
        self.identity = Some(identity);
        self
    }
}
