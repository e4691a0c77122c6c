//! Where the Workload API is, and how to ask it: [`WorkloadApi`].

use std::time::Duration;

use mesh_core::SpiffeId;

use crate::{
    backoff::Backoff,
    error::{WorkloadApiError, chain},
};

/// The environment variable that names the Workload API's socket, per the SPIFFE Workload
/// Endpoint specification.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// A SPIFFE Workload API endpoint and how to follow it; [`connect`](Self::connect) makes the
/// [`IdentitySource`](mesh_core::IdentitySource).
#[derive(Clone, Debug)]
pub struct WorkloadApi {
    pub(crate) socket: String,
    pub(crate) endpoint: spiffe::transport::Endpoint,
    pub(crate) spiffe_id: Option<SpiffeId>,
    pub(crate) first_svid_timeout: Duration,
    pub(crate) backoff: Backoff,
}

impl WorkloadApi {
    /// The Workload API at `socket`: `unix:/PATH` or `unix:///PATH` (a Unix socket, as SPIRE
    /// agents serve it), `tcp:IP:PORT`, or an absolute path alone (taken as `unix:`).
    pub fn new(socket: &str) -> Result<Self, WorkloadApiError> {
        let uri = if socket.starts_with('/') { format!("unix:{socket}") } else { socket.to_owned() };
        let endpoint = spiffe::transport::Endpoint::parse(&uri)
            .map_err(|e| WorkloadApiError::InvalidSocket { socket: socket.to_owned(), reason: chain(&e) })?;
        Ok(Self {
            socket: socket.to_owned(),
            endpoint,
            spiffe_id: None,
            first_svid_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
        })
    }

    /// The Workload API that `SPIFFE_ENDPOINT_SOCKET` names.
    pub fn from_env() -> Result<Self, WorkloadApiError> {
        match std::env::var(SPIFFE_ENDPOINT_SOCKET) {
            Ok(socket) if !socket.is_empty() => Self::new(&socket),
            Ok(_) | Err(std::env::VarError::NotPresent) => Err(WorkloadApiError::NoSocket),
            Err(std::env::VarError::NotUnicode(raw)) => Err(WorkloadApiError::InvalidSocket {
                socket: raw.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".to_owned(),
            }),
        }
    }

    /// The socket, as given.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Use the SVID with this SPIFFE ID when the agent gives the workload several (default: the
    /// first, as the Workload API specifies). An update without it is refused and reported.
    pub fn spiffe_id(mut self, id: SpiffeId) -> Self {
        self.spiffe_id = Some(id);
        self
    }

    /// How long [`connect`](Self::connect) waits for the first usable SVID (default 10 s).
    pub fn first_svid_timeout(mut self, timeout: Duration) -> Self {
        self.first_svid_timeout = timeout;
        self
    }

    /// How a broken stream is retried (default [`Backoff::default`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_forms() {
        for (given, path) in [
            ("unix:/run/spire/agent.sock", "/run/spire/agent.sock"),
            ("unix:///run/spire/agent.sock", "/run/spire/agent.sock"),
            ("/run/spire/agent.sock", "/run/spire/agent.sock"),
        ] {
            let api = WorkloadApi::new(given).unwrap();
            assert_eq!(api.socket(), given);
            assert_eq!(api.endpoint, spiffe::transport::Endpoint::Unix(path.into()), "{given}");
        }
        let tcp = WorkloadApi::new("tcp:127.0.0.1:8081").unwrap();
        assert!(matches!(tcp.endpoint, spiffe::transport::Endpoint::Tcp { port: 8081, .. }));
    }

    #[test]
    fn bad_sockets_are_named() {
        for bad in ["run/spire/agent.sock", "http://127.0.0.1:1", "unix:", "tcp:localhost:1", ""] {
            let error = WorkloadApi::new(bad).unwrap_err();
            assert!(
                matches!(&error, WorkloadApiError::InvalidSocket { socket, .. } if socket == bad),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }
}
