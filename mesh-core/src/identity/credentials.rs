//! A workload's credentials and the trust bundle it checks peers against.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use rustls::{RootCertStore, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{SpiffeId, TrustDomain, x509::leaf_info};

/// Why credentials or a trust bundle were refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidIdentity {
    /// A PEM input held no certificate.
    #[error("no certificate found in the PEM input")]
    NoCertificate,
    /// A PEM input could not be decoded.
    #[error("PEM decoding failed: {0}")]
    Pem(String),
    /// The private key is missing, unparsable or of an unsupported kind.
    #[error("the private key cannot be used: {0}")]
    Key(String),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// The leaf certificate carries no usable SPIFFE ID.
    #[error(transparent)]
    Certificate(#[from] super::PeerCertificateError),
    /// The certificate's validity ended.
    #[error("the certificate of {id} expired (not after {not_after})")]
    Expired {
        /// The certificate's identity.
        id: SpiffeId,
        /// When it expired (RFC 3339).
        not_after: String,
    },
    /// The certificate is not valid yet.
    #[error("the certificate of {id} is not valid yet (not before {not_before})")]
    NotYetValid {
        /// The certificate's identity.
        id: SpiffeId,
        /// When it becomes valid (RFC 3339).
        not_before: String,
    },
    /// A root certificate could not be added to the trust bundle.
    #[error("a trust bundle root is unusable: {0}")]
    Root(String),
    /// The certificate does not chain to the bundle's roots of its own trust domain.
    #[error("the certificate of {id} does not chain to the trust bundle: {reason}")]
    UntrustedChain {
        /// The certificate's identity.
        id: SpiffeId,
        /// What the verification said.
        reason: String,
    },
    /// Credentials from one trust domain with a bundle that does not cover it.
    #[error("the trust bundle has no roots for trust domain {0}, the workload's own")]
    ForeignTrustDomain(TrustDomain),
    /// A file could not be read or held invalid content; names the file.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: Box<InvalidIdentity>,
    },
    /// The SPIFFE Workload API (a SPIRE agent, say) could not be reached, or gave this workload
    /// no usable SVID; names the socket.
    #[error("SPIFFE Workload API at {socket}: {reason}")]
    WorkloadApi {
        /// The endpoint, as configured (`unix:/run/spire/agent.sock`).
        socket: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
}

impl InvalidIdentity {
    fn in_file(self, path: &Path) -> Self {
        Self::File { path: path.to_owned(), source: Box::new(self) }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn read(path: &Path) -> Result<Vec<u8>, InvalidIdentity> {
    std::fs::read(path).map_err(|e| InvalidIdentity::Io { path: path.to_owned(), message: e.to_string() })
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, InvalidIdentity> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InvalidIdentity::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(InvalidIdentity::NoCertificate);
    }
    Ok(certs)
}

/// The process-wide crypto provider mesh uses: rustls with *ring*.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// A workload's X.509-SVID: its certificate chain, private key and SPIFFE ID.
///
/// Checked when built: the leaf carries exactly one SPIFFE ID, the key matches it, and the
/// certificate is valid now. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<CredentialsInner>,
}

struct CredentialsInner {
    id: SpiffeId,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    certified_key: Arc<CertifiedKey>,
}

impl Credentials {
    /// Credentials from a PEM certificate chain (leaf first) and a PEM private key (PKCS#8,
    /// PKCS#1 or SEC1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, InvalidIdentity> {
        let chain = certificates(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| InvalidIdentity::Key(e.to_string()))?;
        Self::from_der(chain, key)
    }

    /// Credentials from files, as SPIRE agents and cert-manager write them. Errors name the file.
    pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, InvalidIdentity> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let chain_pem = read(chain)?;
        let key_pem = read(key)?;
        let certs = certificates(&chain_pem).map_err(|e| e.in_file(chain))?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| InvalidIdentity::Key(e.to_string()).in_file(key))?;
        Self::from_der(certs, key_der).map_err(|e| match e {
            InvalidIdentity::KeyMismatch | InvalidIdentity::Key(_) => e.in_file(key),
            e => e.in_file(chain),
        })
    }

    /// Credentials from DER.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, InvalidIdentity> {
        let leaf = chain.first().ok_or(InvalidIdentity::NoCertificate)?;
        let info = leaf_info(leaf)?;
        let now = SystemTime::now();
        if now > info.not_after {
            return Err(InvalidIdentity::Expired { id: info.id, not_after: rfc3339(info.not_after) });
        }
        if now < info.not_before {
            return Err(InvalidIdentity::NotYetValid { id: info.id, not_before: rfc3339(info.not_before) });
        }
        let signing_key =
            provider().key_provider.load_private_key(key).map_err(|e| InvalidIdentity::Key(e.to_string()))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(InvalidIdentity::KeyMismatch);
            }
            Err(e) => return Err(InvalidIdentity::Key(e.to_string())),
        }
        Ok(Self {
            inner: Arc::new(CredentialsInner {
                id: info.id,
                serial: info.serial,
                not_before: info.not_before,
                not_after: info.not_after,
                certified_key: Arc::new(certified_key),
            }),
        })
    }

    /// The workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.inner.id
    }

    /// The leaf certificate's serial number, in hex.
    pub fn serial(&self) -> &str {
        &self.inner.serial
    }

    /// When the leaf certificate stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// When the leaf certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.inner.not_before
    }

    /// The chain and key, as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.inner.certified_key
    }

    /// Checks that the chain leads to one of `roots`.
    pub(crate) fn verify_chain(&self, roots: &RootCertStore) -> Result<(), InvalidIdentity> {
        let chain = &self.inner.certified_key.cert;
        let leaf = chain.first().ok_or(InvalidIdentity::NoCertificate)?;
        let parsed = rustls::server::ParsedCertificate::try_from(leaf)
            .map_err(|e| InvalidIdentity::Certificate(super::PeerCertificateError::Unparsable(e.to_string())))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            &chain[1..],
            rustls_pki_types::UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| InvalidIdentity::UntrustedChain { id: self.inner.id.clone(), reason: e.to_string() })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.inner.id)
            .field("serial", &self.inner.serial)
            .field("not_after", &rfc3339(self.inner.not_after))
            .finish_non_exhaustive()
    }
}

/// The root certificates a workload trusts, per trust domain. A peer is checked against the roots
/// of the trust domain its SPIFFE ID names, so federating with another trust domain is adding its
/// roots here.
#[derive(Clone, Default)]
pub struct TrustBundle {
    roots: BTreeMap<TrustDomain, Arc<RootCertStore>>,
}

impl TrustBundle {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bundle with the PEM roots of one trust domain.
    pub fn from_pem(trust_domain: TrustDomain, roots_pem: &[u8]) -> Result<Self, InvalidIdentity> {
        Self::new().with_roots_pem(trust_domain, roots_pem)
    }

    /// A bundle with the roots of one trust domain from a PEM file. Errors name the file.
    pub fn from_pem_file(trust_domain: TrustDomain, path: impl AsRef<Path>) -> Result<Self, InvalidIdentity> {
        let path = path.as_ref();
        Self::from_pem(trust_domain, &read(path)?).map_err(|e| e.in_file(path))
    }

    /// Adds (or replaces) the roots of a trust domain.
    pub fn with_roots_pem(self, trust_domain: TrustDomain, roots_pem: &[u8]) -> Result<Self, InvalidIdentity> {
        self.with_roots_der(trust_domain, certificates(roots_pem)?)
    }

    /// Adds (or replaces) the roots of a trust domain, from DER certificates (as the SPIFFE
    /// Workload API sends them).
    pub fn with_roots_der(
        mut self,
        trust_domain: TrustDomain,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, InvalidIdentity> {
        let mut store = RootCertStore::empty();
        for cert in roots {
            store.add(cert).map_err(|e| InvalidIdentity::Root(e.to_string()))?;
        }
        if store.is_empty() {
            return Err(InvalidIdentity::NoCertificate);
        }
        self.roots.insert(trust_domain, Arc::new(store));
        Ok(self)
    }

    /// The roots of a trust domain.
    pub fn roots(&self, trust_domain: &str) -> Option<&Arc<RootCertStore>> {
        self.roots.iter().find(|(td, _)| td.as_str() == trust_domain).map(|(_, roots)| roots)
    }

    /// The trust domains covered.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.roots.keys()
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.roots.iter().map(|(td, roots)| (td, roots.len()))).finish()
    }
}
