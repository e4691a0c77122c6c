//! A workload's identity from the [SPIFFE Workload API]: the X.509-SVID and trust bundles a SPIRE
//! agent (or any Workload API server) hands the process over a Unix socket, renewed live.
//!
//! [`WorkloadApi::connect`] returns a [`mesh_core::IdentitySource`], the same type
//! `IdentitySource::from_files` returns, so a server and a client take it the same way:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_spiffe::WorkloadApi;
//!
//! // SPIFFE_ENDPOINT_SOCKET, as the SPIFFE spec says; or WorkloadApi::new("unix:/run/spire/agent.sock")?.
//! let identity = WorkloadApi::from_env()?.connect().await?;
//! println!("serving as {}", identity.current().credentials().spiffe_id());
//! // Server::builder().identity(identity.clone()) and MeshClient::builder(..).identity(identity)
//! # Ok(()) }
//! ```
//!
//! - The first SVID is awaited up to [`WorkloadApi::first_svid_timeout`] (10 s by default); the
//!   agent may still be starting, or the workload's registration entry not yet synced to it. Past
//!   that, [`WorkloadApiError::NoSvid`] names the socket and says what the last attempt got
//!   (`no identity issued` when no registration entry matches this process).
//! - Every update the agent pushes (a renewed SVID, a trust bundle with a root added or removed,
//!   a federated trust domain added or dropped) is checked like the first and applied to the next
//!   handshake; open connections carry on.
//! - When the stream breaks (the agent restarts, say), it is re-established with jittered
//!   exponential backoff ([`Backoff`]). Meanwhile the last good SVID stays in use and the error is
//!   reported beside it, as a refused file renewal is: `IdentitySource::last_error` (an
//!   [`InvalidIdentity::WorkloadApi`](mesh_core::InvalidIdentity::WorkloadApi) naming the socket),
//!   `IdentitySource::changes`, and the `tracing` log. The next update clears it.
//! - Federated bundles are trusted as the agent sends them: a peer of another trust domain is
//!   checked against that domain's roots, and only while the agent lists it.
//! - When the agent gives the workload several SVIDs, [`WorkloadApi::spiffe_id`] picks one; by
//!   default the first, as the Workload API specifies.
//!
//! The stream stops when the last clone of the source is dropped.
//!
//! [SPIFFE Workload API]: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE_Workload_API.md

mod backoff;
mod context;
mod endpoint;
mod error;
mod stream;
#[cfg(test)]
mod testing;

pub use self::backoff::Backoff;
pub use self::endpoint::{SPIFFE_ENDPOINT_SOCKET, WorkloadApi};
pub use self::error::{FetchError, WorkloadApiError};
