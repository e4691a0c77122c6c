//! The ADS stream (state of the world): one bidirectional gRPC stream to the control plane that
//! carries every subscription, ACKs and NACKs, and is re-opened with exponential backoff and
//! jitter when it fails. [`state`] is the protocol without I/O; [`stream`] drives it.

mod backoff;
pub(crate) mod state;
pub(crate) mod stream;

pub(crate) use self::backoff::Backoff;
