use std::{io, net::SocketAddr};

use std::sync::Arc;

use tokio::{sync::oneshot, task::JoinHandle};

use crate::{HandshakeCounts, identity::HandshakeStats};

/// A server running in the background, from [`Server::spawn`](super::Server::spawn).
///
/// Dropping the handle shuts the server down gracefully in the background; call
/// [`shutdown`](Self::shutdown) to wait for the drain.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    trigger: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
    handshakes: Arc<HandshakeStats>,
}

impl ServerHandle {
    pub(super) fn new(
        local_addr: SocketAddr,
        trigger: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
        handshakes: Arc<HandshakeStats>,
    ) -> Self {
        Self { local_addr, trigger: Some(trigger), task: Some(task), handshakes }
    }

    /// How the server's mTLS handshakes went so far.
    pub fn handshake_counts(&self) -> HandshakeCounts {
        self.handshakes.counts()
    }

    /// Waits until the handshake counts satisfy `condition` (for tests and health checks).
    pub async fn wait_for_handshakes(&self, condition: impl FnMut(&HandshakeCounts) -> bool) -> HandshakeCounts {
        self.handshakes.wait_for(condition).await
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish, and returns when the server is drained.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}
