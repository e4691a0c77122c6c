//! What can go wrong between a workload and its Workload API.

use std::{error::Error as StdError, fmt::Write as _, time::Duration};

use mesh_core::{InvalidIdentity, SpiffeId};

/// Why [`WorkloadApi`](crate::WorkloadApi) gave no identity source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// [`WorkloadApi::from_env`](crate::WorkloadApi::from_env) found no `SPIFFE_ENDPOINT_SOCKET`.
    #[error(
        "SPIFFE_ENDPOINT_SOCKET is not set: it names the SPIFFE Workload API's socket (unix:/run/spire/agent.sock)"
    )]
    NoSocket,
    /// The socket address is not a Workload API endpoint (`unix:/PATH`, `unix:///PATH` or
    /// `tcp:IP:PORT`; mesh also takes an absolute path alone).
    #[error("invalid SPIFFE Workload API socket {socket:?}: {reason}")]
    InvalidSocket {
        /// The address given.
        socket: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No usable X.509-SVID arrived within the first-SVID timeout; says what the last attempt met.
    #[error(
        "no usable X.509-SVID from the SPIFFE Workload API at {socket} within {}{}",
        seconds(.waited),
        .last.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    NoSvid {
        /// The endpoint, as configured.
        socket: String,
        /// How long it was waited for.
        waited: Duration,
        /// What the last attempt met, if one ended.
        last: Option<FetchError>,
    },
}

/// What one attempt to get an identity from the Workload API met. After the first SVID, these are
/// reported by the source as [`InvalidIdentity::WorkloadApi`], naming the socket.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The socket could not be connected to (no agent listening, no such file, no permission).
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// The agent knows this workload but no registration entry matches it (SPIRE's
    /// `PermissionDenied: no identity issued`).
    #[error("no identity issued: no registration entry matches this workload (PermissionDenied)")]
    NoIdentityIssued,
    /// The agent refused the workload for another reason.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The stream failed (the agent went away, say).
    #[error("the stream failed: {0}")]
    Stream(String),
    /// The agent ended the stream.
    #[error("the agent closed the stream")]
    Ended,
    /// [`WorkloadApi::spiffe_id`](crate::WorkloadApi::spiffe_id) names an SPIFFE ID the agent
    /// does not give this workload.
    #[error("the agent gives this workload {} but not {wanted}", list(.offered))]
    NoMatchingSvid {
        /// The SPIFFE ID asked for.
        wanted: SpiffeId,
        /// The SPIFFE IDs of the SVIDs the agent sent.
        offered: Vec<SpiffeId>,
    },
    /// The agent's response is malformed (a missing field, a certificate that does not parse).
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The SVID or a bundle does not check out (expired, a chain that does not lead to the
    /// bundle, a key that does not match).
    #[error(transparent)]
    Invalid(#[from] InvalidIdentity),
}

impl FetchError {
    /// From the Workload API client's error, with its causes.
    pub(crate) fn from_client(error: &spiffe::WorkloadApiError) -> Self {
        use spiffe::WorkloadApiError as E;
        match error {
            E::NoIdentityIssued => Self::NoIdentityIssued,
            E::PermissionDenied(message) => Self::PermissionDenied(message.clone()),
            E::Transport(spiffe::transport::TransportError::Connect(_)) => Self::Unreachable(chain(error)),
            E::Transport(_) | E::EmptyResponse => Self::Stream(chain(error)),
            _ => Self::Malformed(chain(error)),
        }
    }
}

/// An error and its causes, each text once.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            let _ = write!(text, ": {more}");
        }
        source = cause.source();
    }
    text
}

fn list(ids: &[SpiffeId]) -> String {
    match ids {
        [] => "no SVID".to_owned(),
        ids => ids.iter().map(SpiffeId::as_str).collect::<Vec<_>>().join(", "),
    }
}

pub(crate) fn seconds(d: &Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{:.1} s", d.as_secs_f64()) }
}
