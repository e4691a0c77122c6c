//! Development certificates: a throwaway CA and SPIFFE leaf certificates, in memory.
//!
//! For tests and for trying mesh by hand (`cargo run --example gen-certs`). Not for production:
//! keys live in memory or in plain files, and nothing revokes them.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use super::{Credentials, Identity, InvalidIdentity, SpiffeId, TrustBundle, TrustDomain};

/// A failure to generate a development certificate.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a development certificate: {0}")]
pub struct DevCertError(String);

impl From<rcgen::Error> for DevCertError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

/// A development certificate authority for one trust domain.
pub struct DevCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A leaf certificate and its key, in PEM.
#[derive(Clone, Debug)]
pub struct DevCert {
    /// The certificate chain (the leaf; the CA is in the bundle).
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// What to put in a leaf certificate. [`LeafSpec::new`] makes a proper X.509-SVID; the other
/// setters make improper ones, for tests that show mesh refuses them.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    uris: Vec<String>,
    dns: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl LeafSpec {
    /// A certificate for `id`, valid from an hour ago for a day.
    pub fn new(id: &SpiffeId) -> Self {
        let now = SystemTime::now();
        Self {
            uris: vec![id.to_string()],
            dns: Vec::new(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(24 * 3600),
        }
    }

    /// No SPIFFE ID at all (pair with [`dns`](Self::dns) for a DNS-only certificate).
    pub fn without_uris() -> Self {
        Self {
            uris: Vec::new(),
            ..Self::new(&SpiffeId::new("spiffe://unused").unwrap_or_else(|e| unreachable!("{e}")))
        }
    }

    /// Adds a URI SAN (any string, valid or not).
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uris.push(uri.into());
        self
    }

    /// Adds a DNS SAN.
    pub fn dns(mut self, name: impl Into<String>) -> Self {
        self.dns.push(name.into());
        self
    }

    /// Sets the validity period.
    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

fn next_serial() -> SerialNumber {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Positive, unique within the process, unlikely to repeat across runs.
    SerialNumber::from((base ^ (n << 48)).wrapping_add(n) >> 1)
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl DevCa {
    /// A new CA (ECDSA P-256) for `trust_domain`, valid for ten years.
    pub fn new(trust_domain: TrustDomain) -> Result<Self, DevCertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("mesh development CA for {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = SystemTime::now();
        params.not_before = to_time(now - Duration::from_secs(3600));
        params.not_after = to_time(now + Duration::from_secs(10 * 365 * 24 * 3600));
        params.serial_number = Some(next_serial());
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self { trust_domain, cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate, in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, in PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A trust bundle holding this CA.
    pub fn bundle(&self) -> Result<TrustBundle, InvalidIdentity> {
        TrustBundle::from_pem(self.trust_domain.clone(), self.cert_pem.as_bytes())
    }

    /// A certificate for `spiffe://<trust domain><path>`.
    pub fn issue(&self, path: &str) -> Result<DevCert, DevCertError> {
        let id = self.trust_domain.id(path).map_err(|e| DevCertError(e.to_string()))?;
        self.issue_with(&LeafSpec::new(&id))
    }

    /// A certificate as `spec` says, proper or not.
    pub fn issue_with(&self, spec: &LeafSpec) -> Result<DevCert, DevCertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.uris.first().or(spec.dns.first()).cloned().unwrap_or_default());
        params.distinguished_name = dn;
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(uri.clone().try_into()?));
        }
        for name in &spec.dns {
            params.subject_alt_names.push(SanType::DnsName(name.clone().try_into()?));
        }
        // An X.509-SVID leaf says it is no CA (the SPIFFE X.509-SVID spec; the `spiffe` crate insists).
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_time(spec.not_before);
        params.not_after = to_time(spec.not_after);
        params.serial_number = Some(next_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(DevCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Credentials and bundle for `path`, ready for an [`IdentitySource`](super::IdentitySource).
    pub fn identity(&self, path: &str) -> Result<Identity, Box<dyn std::error::Error + Send + Sync>> {
        let cert = self.issue(path)?;
        Ok(Identity::new(cert.credentials()?, self.bundle()?)?)
    }
}

impl DevCert {
    /// Checks and loads the certificate as mesh credentials.
    pub fn credentials(&self) -> Result<Credentials, InvalidIdentity> {
        Credentials::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}
