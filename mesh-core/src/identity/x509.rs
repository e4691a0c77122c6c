//! Reading what mesh needs out of X.509 certificates.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::SpiffeId;

/// Why a certificate does not carry a usable SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerCertificateError {
    /// The certificate is not valid DER X.509.
    #[error("the certificate does not parse as X.509: {0}")]
    Unparsable(String),
    /// No URI SAN holds a SPIFFE ID (a DNS-only certificate, for instance).
    #[error("the certificate has no SPIFFE ID (no spiffe:// URI subject alternative name)")]
    NoSpiffeId,
    /// More than one URI SAN holds a SPIFFE ID; the SPIFFE X.509-SVID spec allows exactly one.
    #[error("the certificate has {0} SPIFFE IDs; an X.509-SVID carries exactly one")]
    MultipleSpiffeIds(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("the certificate's SPIFFE ID is invalid: {0}")]
    InvalidSpiffeId(#[from] super::InvalidSpiffeId),
}

/// What mesh reads from a leaf certificate.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    pub(crate) id: SpiffeId,
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The SPIFFE ID of a certificate: the one URI SAN with the `spiffe` scheme.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerCertificateError> {
    leaf_info(cert).map(|info| info.id)
}

pub(crate) fn leaf_info(cert: &CertificateDer<'_>) -> Result<LeafInfo, PeerCertificateError> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| PeerCertificateError::Unparsable(e.to_string()))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            // The scheme is case-insensitive in URIs; SpiffeId::new then insists on lowercase.
            if let GeneralName::URI(uri) = name
                && uri.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
            {
                ids.push(*uri);
            }
        }
    }
    let id = match ids.as_slice() {
        [] => return Err(PeerCertificateError::NoSpiffeId),
        [one] => SpiffeId::new(one)?,
        many => return Err(PeerCertificateError::MultipleSpiffeIds(many.len())),
    };
    let validity = parsed.validity();
    Ok(LeafInfo {
        id,
        serial: parsed.raw_serial_as_string().replace(':', ""),
        not_before: to_system_time(validity.not_before),
        not_after: to_system_time(validity.not_after),
    })
}

/// The serial number of a certificate, in hex, if it parses.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(parsed.raw_serial_as_string().replace(':', ""))
}
