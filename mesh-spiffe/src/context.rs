//! What the Workload API sent, made a mesh [`Identity`]: the SVID chosen, the bundles gathered,
//! everything checked. No I/O.

use mesh_core::{Credentials, Identity, SpiffeId, TrustBundle, TrustDomain};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::X509Context;

use crate::error::FetchError;

/// The identity in one Workload API update: the SVID `wanted` names (the first when `None`), its
/// trust domain's bundle and every federated bundle.
pub(crate) fn identity_from(context: &X509Context, wanted: Option<&SpiffeId>) -> Result<Identity, FetchError> {
    let svids = context.svids();
    let chosen = match wanted {
        None => svids.first().ok_or_else(|| FetchError::Malformed("the response holds no SVID".to_owned()))?,
        Some(wanted) => svids.iter().find(|svid| svid.spiffe_id().to_string() == wanted.as_str()).ok_or_else(|| {
            FetchError::NoMatchingSvid {
                wanted: wanted.clone(),
                offered: svids.iter().filter_map(|svid| SpiffeId::new(&svid.spiffe_id().to_string()).ok()).collect(),
            }
        })?,
    };
    let chain = chosen.cert_chain().iter().map(|cert| CertificateDer::from(cert.as_bytes().to_vec())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chosen.private_key().as_bytes().to_vec()));
    let credentials = Credentials::from_der(chain, key)?;
    let mut bundle = TrustBundle::new();
    for (trust_domain, roots) in context.bundle_set().iter() {
        let trust_domain = TrustDomain::new(trust_domain.as_str())
            .map_err(|e| FetchError::Malformed(format!("bundle of trust domain {trust_domain}: {e}")))?;
        let roots = roots.authorities().iter().map(|cert| CertificateDer::from(cert.as_bytes().to_vec()));
        bundle = bundle.with_roots_der(trust_domain, roots)?;
    }
    Ok(Identity::new(credentials, bundle)?)
}

#[cfg(test)]
mod tests;
