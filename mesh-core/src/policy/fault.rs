use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{InvalidPolicy, Percentage};

/// Faults a route injects, for chaos testing: a share of requests delayed, a share aborted with
/// a status, before they leave the client.
///
/// In files: `fault: { delay: { duration: 100ms, percent: 10 }, abort: { status: 503, percent: 5 } }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Abort a share of requests with a status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay injected into a share of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    #[serde(with = "crate::duration")]
    pub duration: Duration,
    /// Which share of the route's requests.
    pub percent: Percentage,
}

/// An abort injected into a share of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status the request fails with.
    pub status: u16,
    /// Which share of the route's requests.
    pub percent: Percentage,
}

impl Fault {
    /// Delays `percent` of requests by `duration`.
    pub fn delay(duration: Duration, percent: Percentage) -> Self {
        Self { delay: Some(FaultDelay { duration, percent }), abort: None }
    }

    /// Aborts `percent` of requests with `status`.
    pub fn abort(status: u16, percent: Percentage) -> Self {
        Self { delay: None, abort: Some(FaultAbort { status, percent }) }
    }

    /// Checks the status.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if let Some(abort) = &self.abort
            && !(100..=599).contains(&abort.status)
        {
            return Err(InvalidPolicy::new("abort.status", format!("{} is not an HTTP status", abort.status)));
        }
        Ok(())
    }
}
