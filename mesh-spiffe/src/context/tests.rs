use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use mesh_core::{
    InvalidIdentity,
    identity::dev::{DevCa, DevCert, LeafSpec},
};
use spiffe::{X509Bundle, X509BundleSet, X509Context, X509Svid};

use super::*;
use crate::testing::{der_certs, der_key};

fn ca(td: &str) -> DevCa {
    DevCa::new(td.parse().unwrap()).unwrap()
}

fn svid(cert: &DevCert) -> Arc<X509Svid> {
    Arc::new(X509Svid::parse_from_der(&der_certs(&cert.cert_pem), &der_key(&cert.key_pem)).unwrap())
}

fn bundles(cas: &[&DevCa]) -> X509BundleSet {
    let mut set = X509BundleSet::new();
    for ca in cas {
        let td = spiffe::TrustDomain::new(ca.trust_domain().as_str()).unwrap();
        set.add_bundle(X509Bundle::parse_from_der(td, &der_certs(ca.cert_pem())).unwrap());
    }
    set
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[test]
fn the_first_svid_unless_one_is_named() {
    let ours = ca("example.org");
    let context =
        X509Context::new([svid(&ours.issue("/web").unwrap()), svid(&ours.issue("/admin").unwrap())], bundles(&[&ours]));
    let first = identity_from(&context, None).unwrap();
    assert_eq!(first.credentials().spiffe_id().as_str(), "spiffe://example.org/web");
    let named = identity_from(&context, Some(&id("spiffe://example.org/admin"))).unwrap();
    assert_eq!(named.credentials().spiffe_id().as_str(), "spiffe://example.org/admin");

    let error = identity_from(&context, Some(&id("spiffe://example.org/db"))).unwrap_err();
    let FetchError::NoMatchingSvid { wanted, offered } = &error else { panic!("{error}") };
    assert_eq!(wanted.as_str(), "spiffe://example.org/db");
    assert_eq!(
        offered.iter().map(SpiffeId::as_str).collect::<Vec<_>>(),
        ["spiffe://example.org/web", "spiffe://example.org/admin"]
    );
    assert!(
        error.to_string().contains("gives this workload spiffe://example.org/web, spiffe://example.org/admin but not")
    );
}

#[test]
fn federated_bundles_are_trusted_per_trust_domain() {
    let (ours, partner) = (ca("example.org"), ca("partner.org"));
    let context = X509Context::new([svid(&ours.issue("/web").unwrap())], bundles(&[&ours, &partner]));
    let identity = identity_from(&context, None).unwrap();
    let domains: Vec<&str> = identity.bundle().trust_domains().map(TrustDomain::as_str).collect();
    assert_eq!(domains, ["example.org", "partner.org"]);
    assert_eq!(identity.bundle().roots("partner.org").unwrap().len(), 1);

    // Dropped by the agent, dropped here: the next update holds only our own roots.
    let context = X509Context::new([svid(&ours.issue("/web").unwrap())], bundles(&[&ours]));
    let identity = identity_from(&context, None).unwrap();
    assert!(identity.bundle().roots("partner.org").is_none());
}

#[test]
fn a_bundle_with_two_roots_trusts_both() {
    // A CA rotation: the agent sends the old and the new root together.
    let (old, new) = (ca("example.org"), ca("example.org"));
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let both = [der_certs(old.cert_pem()), der_certs(new.cert_pem())].concat();
    let mut set = X509BundleSet::new();
    set.add_bundle(X509Bundle::parse_from_der(td, &both).unwrap());
    for issuer in [&old, &new] {
        let context = X509Context::new([svid(&issuer.issue("/web").unwrap())], set.clone());
        let identity = identity_from(&context, None).unwrap();
        assert_eq!(identity.bundle().roots("example.org").unwrap().len(), 2);
    }
}

#[test]
fn an_svid_that_does_not_check_out_is_refused_with_the_reason() {
    let (ours, stranger) = (ca("example.org"), ca("example.org"));
    // Signed by a CA the bundle does not hold.
    let context = X509Context::new([svid(&stranger.issue("/web").unwrap())], bundles(&[&ours]));
    let error = identity_from(&context, None).unwrap_err();
    assert!(matches!(error, FetchError::Invalid(InvalidIdentity::UntrustedChain { .. })), "{error}");

    // Expired.
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let expired = ours.issue_with(&LeafSpec::new(&id("spiffe://example.org/web")).valid(now - 2 * day, now - day));
    let context = X509Context::new([svid(&expired.unwrap())], bundles(&[&ours]));
    let error = identity_from(&context, None).unwrap_err();
    assert!(matches!(error, FetchError::Invalid(InvalidIdentity::Expired { .. })), "{error}");

    // No bundle for the SVID's own trust domain (only a federated one).
    let partner = ca("partner.org");
    let context = X509Context::new([svid(&ours.issue("/web").unwrap())], bundles(&[&partner]));
    let error = identity_from(&context, None).unwrap_err();
    assert!(matches!(error, FetchError::Invalid(InvalidIdentity::ForeignTrustDomain(_))), "{error}");
}
