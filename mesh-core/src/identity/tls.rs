//! rustls configurations built from an [`IdentitySource`]: mutual TLS where both sides are named
//! by SPIFFE ID, never by DNS name.

use std::{error::Error as StdError, fmt, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    server::{
        ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ExpectedIdentity, IdentitySource, PeerCertificateError, SpiffeId, credentials::provider, spiffe_id_of};

/// Why a peer's certificate was refused, beyond what X.509 path validation says.
///
/// Carried inside rustls' error; find it in an error chain with [`PeerRejected::find`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerRejected {
    /// The peer is a valid workload of a trusted trust domain, but not the one expected here.
    #[error("the peer presented SPIFFE ID {presented}, but {expected} was expected")]
    IdentityMismatch {
        /// The identity the destination must have (from discovery).
        expected: ExpectedIdentity,
        /// The identity its certificate carries.
        presented: SpiffeId,
    },
    /// The certificate carries no usable SPIFFE ID.
    #[error(transparent)]
    Certificate(#[from] PeerCertificateError),
    /// The peer's trust domain is not in the trust bundle.
    #[error("the peer's trust domain {0} is not in the trust bundle")]
    UntrustedTrustDomain(String),
}

impl PeerRejected {
    /// Looks for a `PeerRejected` in `error` and its sources, through `io::Error` and rustls
    /// errors, where TLS stacks put it.
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a PeerRejected> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<PeerRejected>() {
                return Some(found);
            }
            if let Some(TlsError::InvalidCertificate(CertificateError::Other(other))) = error.downcast_ref::<TlsError>()
                && let Some(found) = other.0.downcast_ref::<PeerRejected>()
            {
                return Some(found);
            }
            next = match error.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|e| e as &(dyn StdError + 'static)),
                None => error.source(),
            };
        }
        None
    }
}

fn reject(why: PeerRejected) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(why))))
}

/// How a server secures the connections it accepts next, when a control plane decides it
/// (`mesh_tower::server::ServerBuilder::security_from` follows a watch of it, per connection).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ServerSecurity {
    /// Nothing configured yet: accepted connections are closed at once. A server waiting for its
    /// configuration never falls back to plaintext.
    NotServing,
    /// Plaintext: callers are not authenticated.
    Plaintext,
    /// Mutual TLS: present this source's certificate, require a client certificate chained to its
    /// trust bundle, with exactly one SPIFFE ID.
    Mtls(IdentitySource),
}

/// Options for the TLS configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Accept TLS 1.2 as well as 1.3 (default: 1.3 only).
    pub allow_tls12: bool,
    /// ALPN protocols, in preference order (default: `h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self { allow_tls12: false, alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()] }
    }
}

impl TlsOptions {
    fn versions(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        if self.allow_tls12 { rustls::ALL_VERSIONS } else { TLS13_ONLY }
    }
}

/// A server configuration that requires a client certificate chained to the source's trust
/// bundle and carrying exactly one SPIFFE ID, and presents the source's current certificate.
///
/// Session resumption is off, so every connection proves the peer's current certificate: a
/// rotation or a trust-bundle change applies to the very next connection.
pub fn server_config(source: &IdentitySource, options: &TlsOptions) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(options.versions())?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier { source: source.clone() }))
        .with_cert_resolver(Arc::new(CurrentCredentials { source: source.clone() }));
    config.alpn_protocols = options.alpn.clone();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration that presents the source's current certificate and accepts only a
/// server chained to the trust bundle whose SPIFFE ID is `expected`. The DNS name or IP dialled is
/// not checked: in a mesh the SPIFFE ID is the name.
pub fn client_config(
    source: &IdentitySource,
    expected: SpiffeId,
    options: &TlsOptions,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_expecting(source, expected.into(), options)
}

/// As [`client_config`], for a server whose SPIFFE ID `expected` accepts (one ID, or matchers of
/// which one must accept it: an xDS cluster's `match_subject_alt_names`).
pub fn client_config_expecting(
    source: &IdentitySource,
    expected: ExpectedIdentity,
    options: &TlsOptions,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(options.versions())?
        .dangerous() // the verifier below replaces WebPKI's DNS-name check with a SPIFFE ID check
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier { source: source.clone(), expected }))
        .with_client_cert_resolver(Arc::new(CurrentCredentials { source: source.clone() }));
    config.alpn_protocols = options.alpn.clone();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Presents the source's current credentials on each handshake.
struct CurrentCredentials {
    source: IdentitySource,
}

impl ResolvesServerCert for CurrentCredentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.source.current().credentials().certified_key().clone())
    }
}

impl ResolvesClientCert for CurrentCredentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.source.current().credentials().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for CurrentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentCredentials").finish_non_exhaustive()
    }
}

fn supported_schemes() -> Vec<SignatureScheme> {
    provider().signature_verification_algorithms.supported_schemes()
}

fn verify13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, TlsError> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn verify12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, TlsError> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

/// The server's check of a client: chain to the roots of the trust domain the client's SPIFFE
/// ID names, with client-auth usage, and exactly one SPIFFE ID.
struct SpiffeClientVerifier {
    source: IdentitySource,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients have one certificate, and hints would list our CAs to anyone.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let id = spiffe_id_of(end_entity).map_err(|e| reject(e.into()))?;
        let identity = self.source.current();
        let roots = identity
            .bundle()
            .roots(id.trust_domain_name())
            .ok_or_else(|| reject(PeerRejected::UntrustedTrustDomain(id.trust_domain_name().to_owned())))?;
        let webpki = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::General(e.to_string()))?;
        webpki.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier").finish_non_exhaustive()
    }
}

/// The client's check of a server: chain to the roots of the server's trust domain, then the
/// SPIFFE ID must be the expected one.
struct SpiffeServerVerifier {
    source: IdentitySource,
    expected: ExpectedIdentity,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let presented = spiffe_id_of(end_entity).map_err(|e| reject(e.into()))?;
        let identity = self.source.current();
        let roots = identity
            .bundle()
            .roots(presented.trust_domain_name())
            .ok_or_else(|| reject(PeerRejected::UntrustedTrustDomain(presented.trust_domain_name().to_owned())))?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        if !self.expected.accepts(&presented) {
            return Err(reject(PeerRejected::IdentityMismatch { expected: self.expected.clone(), presented }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier").field("expected", &self.expected).finish_non_exhaustive()
    }
}
