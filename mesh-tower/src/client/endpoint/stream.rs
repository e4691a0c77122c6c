//! The connection to an endpoint that the connector hands to hyper: [`MeshStream`], plaintext or
//! mTLS with the peer's verified identity.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::PeerIdentity;

pin_project! {
    /// A connection to an endpoint, plaintext or mTLS.
    #[project = MeshStreamProj]
    pub(crate) enum MeshStream {
        Plain { #[pin] io: TokioIo<TcpStream> },
        Tls { #[pin] io: TokioIo<TlsStream<TcpStream>>, peer: Option<PeerIdentity> },
    }
}

impl MeshStream {
    /// Who answered, when the connection is mTLS.
    pub(crate) fn peer(&self) -> Option<&PeerIdentity> {
        match self {
            Self::Plain { .. } => None,
            Self::Tls { peer, .. } => peer.as_ref(),
        }
    }
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain { io } => io.connected(),
            Self::Tls { io, peer } => {
                let (tcp, session) = io.inner().get_ref();
                let mut connected = tcp.connected();
                if let Some(peer) = peer {
                    connected = connected.extra(peer.clone());
                }
                if session.alpn_protocol() == Some(b"h2") { connected.negotiated_h2() } else { connected }
            }
        }
    }
}

impl hyper::rt::Read for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.project() {
            MeshStreamProj::Plain { io } => io.poll_read(cx, buf),
            MeshStreamProj::Tls { io, .. } => io.poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MeshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.project() {
            MeshStreamProj::Plain { io } => io.poll_write(cx, buf),
            MeshStreamProj::Tls { io, .. } => io.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            MeshStreamProj::Plain { io } => io.poll_flush(cx),
            MeshStreamProj::Tls { io, .. } => io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            MeshStreamProj::Plain { io } => io.poll_shutdown(cx),
            MeshStreamProj::Tls { io, .. } => io.poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.project() {
            MeshStreamProj::Plain { io } => io.poll_write_vectored(cx, bufs),
            MeshStreamProj::Tls { io, .. } => io.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain { io } => io.is_write_vectored(),
            Self::Tls { io, .. } => io.is_write_vectored(),
        }
    }
}
