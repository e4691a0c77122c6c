//! Security (gRFC A29): a cluster's `UpstreamTlsContext` naming certificate provider instances of
//! the bootstrap, and the SPIFFE ID its endpoints must present; the bootstrap's `file_watcher`
//! providers as mesh [`IdentitySource`]s.

use envoy_types::pb::{
    envoy::{
        extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
            common_tls_context::ValidationContextType,
        },
        r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
    },
    google::protobuf::Any,
};
use mesh_core::{Credentials, ExpectedIdentity, IdentityFiles, IdentitySource, InvalidIdentity, SanMatcher, SpiffeId};

use crate::{
    bootstrap::CertificateProvider,
    resource::field::{DecodeContext, FieldError, FieldResult, decode_any},
};

/// What a cluster's TLS context asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterTls {
    /// The certificate provider instance for both this client's certificate and the roots.
    pub(crate) instance: String,
    /// The identity every endpoint of the cluster must present.
    pub(crate) identity: ExpectedIdentity,
}

pub(crate) fn parse_upstream(any: &Any, ctx: &DecodeContext<'_>) -> FieldResult<ClusterTls> {
    let tls: UpstreamTlsContext = decode_any(any, "typed_config")?;
    let common = tls.common_tls_context.as_ref().ok_or_else(|| FieldError::new("common_tls_context", "missing"))?;
    parse_common(common, ctx).map_err(|e| e.within("common_tls_context"))
}

#[allow(deprecated)] // istiod sends the deprecated certificate provider fields beside the new ones.
fn parse_common(common: &CommonTlsContext, ctx: &DecodeContext<'_>) -> FieldResult<ClusterTls> {
    if !common.tls_certificates.is_empty() || !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(FieldError::new(
            "tls_certificates",
            "inline and SDS certificates are not supported: use a certificate provider instance",
        ));
    }
    let identity_instance =
        match (&common.tls_certificate_provider_instance, &common.tls_certificate_certificate_provider_instance) {
            (Some(new), _) => Some(("tls_certificate_provider_instance", new.instance_name.clone())),
            (None, Some(old)) => Some(("tls_certificate_certificate_provider_instance", old.instance_name.clone())),
            (None, None) => None,
        };
    let (validation, roots_instance) = validation_context(common)?;
    let Some(roots) = roots_instance else {
        return Err(FieldError::new(
            "validation_context",
            "no root certificate provider instance: mesh always verifies the endpoint",
        ));
    };
    let Some((identity_field, instance)) = identity_instance else {
        return Err(FieldError::new(
            "tls_certificate_provider_instance",
            "missing: mesh always presents a client certificate",
        ));
    };
    for (field, name) in [(identity_field, &instance), ("validation_context.ca_certificate_provider_instance", &roots)]
    {
        if !ctx.certificate_providers.contains_key(name) {
            return Err(FieldError::new(
                field,
                format!("certificate provider instance {name:?} is not in the bootstrap"),
            ));
        }
    }
    if roots != instance {
        return Err(FieldError::new(
            "validation_context.ca_certificate_provider_instance",
            format!(
                "roots from {roots:?} and certificate from {instance:?}: mesh takes both from one provider instance"
            ),
        ));
    }
    let identity = expected_identity(validation)
        .map_err(|e| e.within("combined_validation_context.default_validation_context"))?;
    Ok(ClusterTls { instance, identity })
}

/// The validation context and the certificate provider instance of the roots, in any of the
/// shapes upstream and downstream TLS contexts carry them (new and deprecated fields).
#[allow(deprecated)] // istiod sends the deprecated certificate provider fields beside the new ones.
fn validation_context(
    common: &CommonTlsContext,
) -> FieldResult<(Option<&CertificateValidationContext>, Option<String>)> {
    Ok(match &common.validation_context_type {
        Some(ValidationContextType::ValidationContext(v)) => {
            (Some(v), v.ca_certificate_provider_instance.as_ref().map(|p| p.instance_name.clone()))
        }
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            let default = c.default_validation_context.as_ref();
            let new =
                default.and_then(|v| v.ca_certificate_provider_instance.as_ref()).map(|p| p.instance_name.clone());
            let old = c.validation_context_certificate_provider_instance.as_ref().map(|p| p.instance_name.clone());
            (default, new.or(old))
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(p)) => {
            (None, Some(p.instance_name.clone()))
        }
        Some(_) => {
            return Err(FieldError::new(
                "validation_context_type",
                "only certificate provider instances are supported",
            ));
        }
        None => (None, None),
    })
}

#[allow(deprecated)] // istiod sends match_subject_alt_names
fn expected_identity(validation: Option<&CertificateValidationContext>) -> FieldResult<ExpectedIdentity> {
    let Some(v) = validation else {
        return Err(FieldError::new("match_subject_alt_names", "missing: mesh verifies each endpoint's SPIFFE ID"));
    };
    if !v.match_typed_subject_alt_names.is_empty() {
        return Err(FieldError::new(
            "match_typed_subject_alt_names",
            "typed SAN matchers are not supported: use match_subject_alt_names",
        ));
    }
    if v.trusted_ca.is_some()
        || v.custom_validator_config.is_some()
        || !v.verify_certificate_spki.is_empty()
        || !v.verify_certificate_hash.is_empty()
    {
        return Err(FieldError::new("trusted_ca", "only certificate provider roots and SAN matching are supported"));
    }
    match v.match_subject_alt_names.as_slice() {
        [] => Err(FieldError::new("match_subject_alt_names", "empty: mesh verifies each endpoint's SPIFFE ID")),
        // The common case (one service account): one exact SPIFFE ID.
        [one]
            if !one.ignore_case
                && matches!(&one.match_pattern, Some(MatchPattern::Exact(id)) if id.parse::<SpiffeId>().is_ok()) =>
        {
            let Some(MatchPattern::Exact(id)) = &one.match_pattern else { unreachable!() };
            id.parse::<SpiffeId>()
                .map(ExpectedIdentity::Exact)
                .map_err(|e| FieldError::new("match_subject_alt_names[0].exact", e.to_string()))
        }
        // gRFC A29: the peer is accepted when any matcher accepts it (istiod sends one exact SAN
        // per service account of the cluster's workloads).
        matchers => matchers
            .iter()
            .enumerate()
            .map(|(i, m)| san_matcher(m).map_err(|e| e.within(&format!("match_subject_alt_names[{i}]"))))
            .collect::<FieldResult<Vec<_>>>()
            .map(ExpectedIdentity::any_of),
    }
}

/// One SAN matcher, as gRPC reads a `StringMatcher` (empty prefixes, suffixes and substrings are
/// refused). It is matched against the peer's SPIFFE ID, the one SAN a mesh peer is checked by.
fn san_matcher(m: &StringMatcher) -> FieldResult<SanMatcher> {
    let nonempty = |kind: &str, v: &str| {
        if v.is_empty() { Err(FieldError::new(kind, "empty")) } else { Ok(v.to_owned()) }
    };
    let matcher = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => SanMatcher::exact(v.clone()),
        Some(MatchPattern::Prefix(v)) => SanMatcher::prefix(nonempty("prefix", v)?),
        Some(MatchPattern::Suffix(v)) => SanMatcher::suffix(nonempty("suffix", v)?),
        Some(MatchPattern::Contains(v)) => SanMatcher::contains(nonempty("contains", v)?),
        Some(MatchPattern::SafeRegex(r)) => {
            SanMatcher::regex(&r.regex).map_err(|e| FieldError::new("safe_regex.regex", e.to_string()))?
        }
        Some(MatchPattern::Custom(_)) => return Err(FieldError::new("custom", "custom matchers are not supported")),
        None => return Err(FieldError::new("match_pattern", "missing")),
    };
    Ok(if m.ignore_case { matcher.ignoring_case() } else { matcher })
}

/// What a server listener's `DownstreamTlsContext` asks for (gRFC A36): mTLS with the
/// certificate of one provider instance and the roots of another (or the same).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ServerTls {
    /// The instance whose certificate the server presents.
    pub(crate) certificate_instance: String,
    /// The instance whose roots verify the callers' certificates.
    pub(crate) ca_instance: String,
}

#[allow(deprecated)] // istiod sends the deprecated certificate provider fields beside the new ones.
pub(crate) fn parse_downstream(any: &Any, ctx: &DecodeContext<'_>) -> FieldResult<ServerTls> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    let tls: DownstreamTlsContext = decode_any(any, "typed_config")?;
    if tls.require_client_certificate.as_ref().is_none_or(|b| !b.value) {
        return Err(FieldError::new(
            "require_client_certificate",
            "TLS without client certificates is not supported: mesh servers require mTLS",
        ));
    }
    if tls.require_sni.as_ref().is_some_and(|b| b.value) {
        return Err(FieldError::new("require_sni", "is not supported"));
    }
    let common = tls.common_tls_context.as_ref().ok_or_else(|| FieldError::new("common_tls_context", "missing"))?;
    let within = |e: FieldError| e.within("common_tls_context");
    if !common.tls_certificates.is_empty() || !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(within(FieldError::new(
            "tls_certificates",
            "inline and SDS certificates are not supported: use a certificate provider instance",
        )));
    }
    let certificate_instance =
        match (&common.tls_certificate_provider_instance, &common.tls_certificate_certificate_provider_instance) {
            (Some(new), _) => new.instance_name.clone(),
            (None, Some(old)) => old.instance_name.clone(),
            (None, None) => {
                return Err(within(FieldError::new("tls_certificate_provider_instance", "missing")));
            }
        };
    let (validation, ca_instance) = validation_context(common).map_err(within)?;
    let ca_instance = ca_instance.ok_or_else(|| {
        within(FieldError::new("validation_context", "no root certificate provider instance to verify callers with"))
    })?;
    if let Some(v) = validation
        && (!v.match_subject_alt_names.is_empty()
            || !v.match_typed_subject_alt_names.is_empty()
            || v.trusted_ca.is_some()
            || v.custom_validator_config.is_some()
            || !v.verify_certificate_spki.is_empty()
            || !v.verify_certificate_hash.is_empty())
    {
        return Err(within(FieldError::new(
            "validation_context",
            "only certificate provider roots are supported on a server (callers are authorized by RBAC)",
        )));
    }
    for (field, name) in
        [("tls_certificate_provider_instance", &certificate_instance), ("validation_context", &ca_instance)]
    {
        if !ctx.certificate_providers.contains_key(name) {
            return Err(within(FieldError::new(
                field,
                format!("certificate provider instance {name:?} is not in the bootstrap"),
            )));
        }
    }
    Ok(ServerTls { certificate_instance, ca_instance })
}

/// The certificate and key of `certificate`'s files with the roots of `ca`'s, watched on disk.
pub(crate) fn server_identity(
    certificate: &CertificateProvider,
    ca: &CertificateProvider,
) -> Result<IdentitySource, InvalidIdentity> {
    let credentials = Credentials::from_pem_files(&certificate.certificate_file, &certificate.private_key_file)?;
    let trust_domain = credentials.spiffe_id().trust_domain();
    IdentitySource::from_files(IdentityFiles::new(
        &certificate.certificate_file,
        &certificate.private_key_file,
        &ca.ca_certificate_file,
        trust_domain,
    ))
}

/// A `file_watcher` provider's files as a watched mesh identity. The trust domain of the roots is
/// the one of the certificate's own SPIFFE ID.
pub(crate) fn identity_source(provider: &CertificateProvider) -> Result<IdentitySource, InvalidIdentity> {
    let credentials = Credentials::from_pem_files(&provider.certificate_file, &provider.private_key_file)?;
    let trust_domain = credentials.spiffe_id().trust_domain();
    IdentitySource::from_files(IdentityFiles::new(
        &provider.certificate_file,
        &provider.private_key_file,
        &provider.ca_certificate_file,
        trust_domain,
    ))
}
