//! The certificates every configuration uses: one development CA, a server and a client leaf.
//!
//! Each leaf carries its SPIFFE ID (what mesh checks) and the DNS name `localhost` (what the
//! hand-wired rustls pair, nginx and haproxy check), so every configuration authenticates both
//! ends against the same CA.

use std::path::{Path, PathBuf};

use mesh_core::{
    Credentials, Identity, IdentitySource, SpiffeId, TrustBundle, TrustDomain,
    identity::dev::{DevCa, LeafSpec},
};

use crate::plumbing::BoxError;

/// The trust domain of the benchmark's workloads.
pub(crate) const TRUST_DOMAIN: &str = "bench.mesh";
/// The server's SPIFFE ID.
pub(crate) const SERVER_ID: &str = "spiffe://bench.mesh/hello";
/// The client's SPIFFE ID.
pub(crate) const CLIENT_ID: &str = "spiffe://bench.mesh/loadgen";

/// Writes `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`, `client-key.pem` and the
/// `*-bundle.pem` files haproxy wants (certificate then key) into `dir`.
pub(crate) fn write(dir: &Path) -> Result<PathBuf, BoxError> {
    std::fs::create_dir_all(dir)?;
    let ca = DevCa::new(TrustDomain::new(TRUST_DOMAIN)?)?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    for (name, id) in [("server", SERVER_ID), ("client", CLIENT_ID)] {
        let id: SpiffeId = id.parse()?;
        let leaf = ca.issue_with(&LeafSpec::new(&id).dns("localhost"))?;
        std::fs::write(dir.join(format!("{name}.pem")), &leaf.cert_pem)?;
        std::fs::write(dir.join(format!("{name}-key.pem")), &leaf.key_pem)?;
        std::fs::write(dir.join(format!("{name}-bundle.pem")), format!("{}{}", leaf.cert_pem, leaf.key_pem))?;
    }
    Ok(dir.to_path_buf())
}

/// The mesh identity of `name` (`server` or `client`) from the files in `dir`.
pub(crate) fn identity(dir: &Path, name: &str) -> Result<IdentitySource, BoxError> {
    let credentials =
        Credentials::from_pem_files(dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")))?;
    let bundle = TrustBundle::from_pem_file(TrustDomain::new(TRUST_DOMAIN)?, dir.join("ca.pem"))?;
    Ok(IdentitySource::fixed(Identity::new(credentials, bundle)?))
}
