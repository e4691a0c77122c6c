//! Workload identity: SPIFFE IDs, credentials, trust bundles, where they come from, and the
//! rustls configurations built from them.

mod credentials;
#[cfg(any(test, feature = "dev-certs"))]
pub mod dev;
mod expected;
mod source;
mod spiffe;
pub mod tls;
mod x509;

pub use self::credentials::{Credentials, InvalidIdentity, TrustBundle};
pub use self::expected::{ExpectedIdentity, SanMatcher};
pub use self::source::{Identity, IdentityChanges, IdentityFiles, IdentitySource, IdentityUpdater};
pub use self::spiffe::{InvalidSpiffeId, InvalidTrustDomain, SpiffeId, TrustDomain};
pub use self::x509::{PeerCertificateError, serial_of, spiffe_id_of};

#[cfg(test)]
mod tests;
