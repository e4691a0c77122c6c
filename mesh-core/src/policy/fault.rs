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
///
/// In files, with an HTTP status (`{ status: 503, percent: 5 }`) or a gRPC status code
/// (`{ grpc_status: 8, percent: 5 }`), exactly one of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawAbort", into = "RawAbort")]
pub struct FaultAbort {
    /// What the request fails with.
    pub status: AbortStatus,
    /// Which share of the route's requests.
    pub percent: Percentage,
}

/// What an injected abort fails a request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AbortStatus {
    /// An HTTP status (100 to 599). A gRPC caller reads it as gRPC maps an HTTP status from
    /// something that is not a gRPC server (503: `UNAVAILABLE`, 403: `PERMISSION_DENIED`, ...).
    Http(u16),
    /// A gRPC status code (1 to 16), as a gRPC server would fail the call (gRFC A33's
    /// `grpc_status`): a gRPC caller sees exactly this code.
    Grpc(u16),
}

/// [`FaultAbort`] as files spell it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u16>,
    percent: Percentage,
}

impl TryFrom<RawAbort> for FaultAbort {
    type Error = String;

    fn try_from(raw: RawAbort) -> Result<Self, String> {
        let status = match (raw.status, raw.grpc_status) {
            (Some(http), None) => AbortStatus::Http(http),
            (None, Some(grpc)) => AbortStatus::Grpc(grpc),
            _ => return Err("an abort takes exactly one of `status` (HTTP) and `grpc_status`".into()),
        };
        Ok(Self { status, percent: raw.percent })
    }
}

impl From<FaultAbort> for RawAbort {
    fn from(abort: FaultAbort) -> Self {
        let (status, grpc_status) = match abort.status {
            AbortStatus::Http(s) => (Some(s), None),
            AbortStatus::Grpc(c) => (None, Some(c)),
        };
        Self { status, grpc_status, percent: abort.percent }
    }
}

impl Fault {
    /// Delays `percent` of requests by `duration`.
    pub fn delay(duration: Duration, percent: Percentage) -> Self {
        Self { delay: Some(FaultDelay { duration, percent }), abort: None }
    }

    /// Aborts `percent` of requests with the HTTP status `status`.
    pub fn abort(status: u16, percent: Percentage) -> Self {
        Self { delay: None, abort: Some(FaultAbort { status: AbortStatus::Http(status), percent }) }
    }

    /// Aborts `percent` of requests with the gRPC status code `code` (`8`: `RESOURCE_EXHAUSTED`).
    ///
    /// ```
    /// use mesh_core::policy::{AbortStatus, Fault, Percentage};
    /// let fault = Fault::abort_grpc(8, Percentage::new(100.0)?);
    /// assert_eq!(fault.abort.unwrap().status, AbortStatus::Grpc(8));
    /// # Ok::<_, mesh_core::policy::InvalidPolicy>(())
    /// ```
    pub fn abort_grpc(code: u16, percent: Percentage) -> Self {
        Self { delay: None, abort: Some(FaultAbort { status: AbortStatus::Grpc(code), percent }) }
    }

    /// Checks the status.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        match self.abort.as_ref().map(|a| a.status) {
            Some(AbortStatus::Http(s)) if !(100..=599).contains(&s) => {
                Err(InvalidPolicy::new("abort.status", format!("{s} is not an HTTP status")))
            }
            Some(AbortStatus::Grpc(c)) if !(1..=16).contains(&c) => Err(InvalidPolicy::new(
                "abort.grpc_status",
                format!("{c} is not a gRPC status code that fails a call (1 to 16)"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_has_an_http_or_a_grpc_status_in_files() {
        let grpc: Fault = serde_json::from_str(r#"{"abort":{"grpc_status":8,"percent":100}}"#).unwrap();
        assert_eq!(grpc.abort.as_ref().unwrap().status, AbortStatus::Grpc(8));
        let json = serde_json::to_string(&grpc).unwrap();
        assert_eq!(json, r#"{"abort":{"grpc_status":8,"percent":100.0}}"#);
        let http: Fault = serde_json::from_str(r#"{"abort":{"status":503,"percent":5}}"#).unwrap();
        assert_eq!(http.abort.unwrap().status, AbortStatus::Http(503));
        for bad in [
            r#"{"abort":{"percent":5}}"#,
            r#"{"abort":{"status":503,"grpc_status":14,"percent":5}}"#,
            r#"{"abort":{"code":14,"percent":5}}"#,
        ] {
            assert!(serde_json::from_str::<Fault>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Fault::abort_grpc(0, grpc.abort.unwrap().percent).validate().unwrap_err().field,
            "abort.grpc_status"
        );
        assert_eq!(Fault::abort(42, Percentage::new(1.0).unwrap()).validate().unwrap_err().field, "abort.status");
    }
}
