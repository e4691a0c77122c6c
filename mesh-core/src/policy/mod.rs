//! Policies: how requests to a service are retried, timed out, ejected, limited and authorized.
//!
//! These are plain data with `serde` and `Default`; [`ServiceSnapshot`](crate::ServiceSnapshot)
//! checks them with [`validate`](RetryPolicy::validate) when it is built or deserialized. The
//! layers in `mesh-tower` enforce them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod authz;
mod balance;
mod caller;
mod fault;
mod limits;
mod retry;

pub use self::authz::{
    AuthorizationAction, AuthorizationDecision, AuthorizationMode, AuthorizationPolicy, AuthorizationRule, Call,
    NoHeaders, PrincipalMatch, RequestHeaders,
};
pub use self::balance::{LoadBalancer, LoadBalancerKind};
pub use self::caller::CallerRules;
pub use self::fault::{AbortStatus, Fault, FaultAbort, FaultDelay};
pub use self::limits::{CircuitBreaker, OutlierDetection, Percentage};
pub use self::retry::{Backoff, RetryBudget, RetryOn, RetryPolicy};

/// A policy value that breaks a rule: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPolicy {
    /// The field, relative to the policy (`backoff.base`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidPolicy {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// The same error with `prefix.` before the field.
    pub(crate) fn within(self, prefix: &str) -> Self {
        Self { field: format!("{prefix}.{}", self.field), reason: self.reason }
    }
}

/// The policies of one service; a route's own retry policy and timeout take precedence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServicePolicies {
    /// Retries for routes that have no retry policy of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The timeout for routes that have none of their own.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Passive health checking of endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits on concurrent and pending requests to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// How a subset's endpoints share its traffic (default: P2C over peak-EWMA latency).
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Who may call the service: enforced by the service's own servers, with
    /// `mesh_tower::authz::AuthorizationLayer::from_discovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationPolicy>,
}

impl ServicePolicies {
    /// Checks every policy.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| e.within("retry"))?;
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(InvalidPolicy::new("timeout", "a timeout must be longer than zero"));
        }
        if let Some(o) = &self.outlier_detection {
            o.validate().map_err(|e| e.within("outlier_detection"))?;
        }
        if let Some(cb) = &self.circuit_breaker {
            cb.validate().map_err(|e| e.within("circuit_breaker"))?;
        }
        self.load_balancer.validate().map_err(|e| e.within("load_balancer"))?;
        if let Some(a) = &self.authorization {
            a.validate().map_err(|e| e.within("authorization"))?;
        }
        Ok(())
    }
}
