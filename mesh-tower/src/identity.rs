//! Who is on the other end: the peer identity handed to handlers, and what happens to those who
//! cannot prove one.

use std::{
    fmt, io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use mesh_core::{SpiffeId, identity::tls::PeerRejected};
use rustls::CertificateError;

/// How a client or server secures connections. There is no default: plaintext is a choice.
#[derive(Clone)]
pub(crate) enum Security {
    Unset,
    Plaintext,
    Mtls(mesh_core::IdentitySource),
}

impl Security {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Unset => "unset",
            Self::Plaintext => "plaintext",
            Self::Mtls(_) => "mtls",
        }
    }
}

/// A client or server configured without saying how connections are secured.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} has no identity: call `.identity(source)` for mutual TLS, or `.plaintext()` to opt out of TLS explicitly"
)]
pub struct MissingIdentity {
    pub(crate) what: String,
}

/// Who is on the other end of an mTLS connection, verified at the handshake (chained to the
/// trust bundle, valid, exactly one SPIFFE ID, and on the client side the one discovery expects).
///
/// On the server, in every request's extensions: the caller. On the client, in every response's
/// extensions: the endpoint that answered.
///
/// ```
/// # fn handler(req: http::Request<()>) {
/// match req.extensions().get::<mesh_tower::PeerIdentity>() {
///     Some(peer) => println!("called by {}", peer.id()),
///     None => println!("plaintext server: caller unknown"),
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub(crate) id: SpiffeId,
    pub(crate) serial: Arc<str>,
}

impl PeerIdentity {
    /// The caller's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The serial number (hex) of the certificate the caller presented.
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

/// Why an mTLS handshake on the server failed, as counted in [`HandshakeCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The client sent no certificate.
    NoClientCertificate,
    /// The certificate does not chain to the trust bundle (another CA, a bad signature).
    UntrustedIssuer,
    /// The certificate expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// The certificate chains, but its SPIFFE identity is unusable: none, several, or from a
    /// trust domain outside the bundle.
    BadIdentity,
    /// Another certificate problem (wrong key usage, malformed).
    BadCertificate,
    /// What arrived was not TLS: a plaintext request, garbage, a truncated ClientHello.
    NotTls,
    /// TLS, but nothing in common (versions, cipher suites) or a protocol violation.
    Protocol,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection broke during the handshake.
    Io,
    /// The server had no configuration yet (a server whose control plane has not configured
    /// it, [`ServerBuilder::security_from`](crate::server::ServerBuilder::security_from)): the
    /// connection was closed on accept.
    NotServing,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 11] = [
        Self::NoClientCertificate,
        Self::UntrustedIssuer,
        Self::Expired,
        Self::NotYetValid,
        Self::BadIdentity,
        Self::BadCertificate,
        Self::NotTls,
        Self::Protocol,
        Self::Timeout,
        Self::Io,
        Self::NotServing,
    ];

    /// A stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadIdentity => "bad_identity",
            Self::BadCertificate => "bad_certificate",
            Self::NotTls => "not_tls",
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::NotServing => "not_serving",
        }
    }

    /// Classifies the error of a failed handshake.
    pub(crate) fn classify(error: &io::Error) -> Self {
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return Self::Io;
        };
        match tls {
            rustls::Error::NoCertificatesPresented => Self::NoClientCertificate,
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UntrustedIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Self::NotYetValid,
                CertificateError::Other(other) if other.0.downcast_ref::<PeerRejected>().is_some() => Self::BadIdentity,
                _ => Self::BadCertificate,
            },
            rustls::Error::InvalidMessage(_) => Self::NotTls,
            _ => Self::Protocol,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Handshake outcomes of a server, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct HandshakeStats {
    succeeded: AtomicU64,
    failed: [AtomicU64; HandshakeFailure::ALL.len()],
    changed: tokio::sync::Notify,
}

impl HandshakeStats {
    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn failed(&self, why: HandshakeFailure) {
        let i = HandshakeFailure::ALL.iter().position(|f| *f == why).unwrap_or(0);
        self.failed[i].fetch_add(1, Ordering::Relaxed);
        crate::metrics::tls_handshake_failure(why.as_str());
        self.changed.notify_waiters();
    }

    /// Waits until the counts satisfy `condition`.
    pub(crate) async fn wait_for(&self, mut condition: impl FnMut(&HandshakeCounts) -> bool) -> HandshakeCounts {
        loop {
            // Created before the check, so a change between the check and the wait still wakes us.
            let changed = self.changed.notified();
            let counts = self.counts();
            if condition(&counts) {
                return counts;
            }
            changed.await;
        }
    }

    pub(crate) fn counts(&self) -> HandshakeCounts {
        HandshakeCounts {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: HandshakeFailure::ALL
                .iter()
                .zip(&self.failed)
                .map(|(why, n)| (*why, n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// How a server's mTLS handshakes went since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    /// Handshakes that completed.
    pub succeeded: u64,
    /// Failed handshakes by reason (only reasons seen).
    pub failed: Vec<(HandshakeFailure, u64)>,
}

impl HandshakeCounts {
    /// Failures for one reason.
    pub fn failed(&self, why: HandshakeFailure) -> u64 {
        self.failed.iter().find(|(w, _)| *w == why).map_or(0, |(_, n)| *n)
    }

    /// All failures.
    pub fn total_failed(&self) -> u64 {
        self.failed.iter().map(|(_, n)| n).sum()
    }
}
