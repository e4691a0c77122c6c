use rustls_pki_types::pem::PemObject as _;
use std::time::{Duration, SystemTime};

use super::{dev::*, *};

fn ca() -> DevCa {
    DevCa::new("example.org".parse().unwrap()).unwrap()
}

#[test]
fn dev_credentials_check_out() {
    let ca = ca();
    let cert = ca.issue("/ns/prod/sa/reviews").unwrap();
    let creds = cert.credentials().unwrap();
    assert_eq!(creds.spiffe_id().as_str(), "spiffe://example.org/ns/prod/sa/reviews");
    assert!(!creds.serial().is_empty());
    let other = ca.issue("/ns/prod/sa/reviews").unwrap().credentials().unwrap();
    assert_ne!(creds.serial(), other.serial(), "serials are unique");
    let identity = Identity::new(creds, ca.bundle().unwrap()).unwrap();
    assert_eq!(identity.bundle().trust_domains().count(), 1);
}

#[test]
fn improper_credentials_are_refused_with_the_reason() {
    let ca = ca();
    let good = ca.issue("/a").unwrap();
    let other = ca.issue("/b").unwrap();

    let mismatch = Credentials::from_pem(good.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(mismatch, InvalidIdentity::KeyMismatch), "{mismatch}");

    let dns_only = ca.issue_with(&LeafSpec::without_uris().dns("reviews.local")).unwrap().credentials().unwrap_err();
    assert!(matches!(dns_only, InvalidIdentity::Certificate(PeerCertificateError::NoSpiffeId)), "{dns_only}");

    let id: SpiffeId = "spiffe://example.org/a".parse().unwrap();
    let two = ca.issue_with(&LeafSpec::new(&id).uri("spiffe://example.org/b")).unwrap().credentials().unwrap_err();
    assert!(matches!(two, InvalidIdentity::Certificate(PeerCertificateError::MultipleSpiffeIds(2))), "{two}");

    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let expired =
        ca.issue_with(&LeafSpec::new(&id).valid(now - 2 * day, now - day)).unwrap().credentials().unwrap_err();
    assert!(matches!(expired, InvalidIdentity::Expired { .. }), "{expired}");
    let early = ca.issue_with(&LeafSpec::new(&id).valid(now + day, now + 2 * day)).unwrap().credentials().unwrap_err();
    assert!(matches!(early, InvalidIdentity::NotYetValid { .. }), "{early}");

    let garbage = Credentials::from_pem(b"not pem", good.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(garbage, InvalidIdentity::NoCertificate), "{garbage}");

    let other_ca = DevCa::new("example.org".parse().unwrap()).unwrap();
    let err = Identity::new(good.credentials().unwrap(), other_ca.bundle().unwrap()).unwrap_err();
    assert!(matches!(err, InvalidIdentity::UntrustedChain { .. }), "{err}");

    let foreign = DevCa::new("other.org".parse().unwrap()).unwrap();
    let err = Identity::new(good.credentials().unwrap(), foreign.bundle().unwrap()).unwrap_err();
    assert!(matches!(err, InvalidIdentity::ForeignTrustDomain(_)), "{err}");
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let good = ca.issue("/a").unwrap();
    let other = ca.issue("/b").unwrap();
    let (cert, key) = (dir.path().join("svid.pem"), dir.path().join("svid_key.pem"));
    std::fs::write(&cert, &good.cert_pem).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    let err = Credentials::from_pem_files(&cert, &key).unwrap_err().to_string();
    assert!(err.contains("svid_key.pem") && err.contains("does not match"), "{err}");
    let err = Credentials::from_pem_files(dir.path().join("missing.pem"), &key).unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");
}

#[tokio::test]
async fn file_source_renews_and_refuses_bad_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let files = IdentityFiles::new(
        dir.path().join("svid.pem"),
        dir.path().join("svid_key.pem"),
        dir.path().join("bundle.pem"),
        ca.trust_domain().clone(),
    );
    let write = |cert: &DevCert| {
        std::fs::write(&files.cert, &cert.cert_pem).unwrap();
        std::fs::write(&files.key, &cert.key_pem).unwrap();
    };
    std::fs::write(&files.bundle, ca.cert_pem()).unwrap();
    write(&ca.issue("/a").unwrap());
    let source = IdentitySource::from_files(files.clone()).unwrap();
    let first = source.current().credentials().serial().to_owned();

    let renewed = ca.issue("/a").unwrap();
    let serial = renewed.credentials().unwrap().serial().to_owned();
    write(&renewed);
    let wait = Duration::from_secs(20);
    tokio::time::timeout(wait, source.wait_for(|id| id.credentials().serial() == serial)).await.unwrap();
    assert_ne!(first, serial);

    // An expired renewal is refused; the current identity stays.
    let mut changes = source.changes();
    let now = SystemTime::now();
    let id: SpiffeId = "spiffe://example.org/a".parse().unwrap();
    let expired = ca
        .issue_with(&LeafSpec::new(&id).valid(now - Duration::from_secs(7200), now - Duration::from_secs(3600)))
        .unwrap();
    write(&expired);
    // In-place writes may first show a half-written file; that is refused too. Wait for the
    // refusal of the complete, expired one.
    let is_expired = |e: &InvalidIdentity| matches!(e, InvalidIdentity::File { source, .. } if matches!(**source, InvalidIdentity::Expired { .. }));
    tokio::time::timeout(wait, async {
        loop {
            if let Some(error) = changes.next().await {
                assert_eq!(source.current().credentials().serial(), serial, "refused: {error}");
                if is_expired(&error) {
                    return;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(source.current().credentials().serial(), serial);
}

#[tokio::test]
async fn an_unchanged_delivery_clears_the_error_without_a_renewal() {
    let ca = ca();
    let identity = ca.identity("/a").unwrap();
    let (source, updater) = IdentitySource::updatable(identity.clone());
    updater.report_error(InvalidIdentity::WorkloadApi { socket: "unix:/agent.sock".into(), reason: "gone".into() });
    assert!(source.last_error().unwrap().to_string().starts_with("SPIFFE Workload API at unix:/agent.sock: gone"));
    let mut changes = source.changes();
    assert!(!updater.update_if_changed(identity.clone()), "the same certificate and bundle");
    assert!(source.last_error().is_none(), "the source delivered again");
    assert!(changes.next().await.is_none(), "watchers see the error cleared");
    assert_eq!(source.current().credentials().serial(), identity.credentials().serial());

    let renewed = ca.identity("/a").unwrap();
    assert!(updater.update_if_changed(renewed.clone()));
    assert_eq!(updater.current().credentials().serial(), renewed.credentials().serial());
}

#[tokio::test]
async fn the_updater_learns_when_the_last_source_is_dropped() {
    let (source, updater) = IdentitySource::updatable(ca().identity("/a").unwrap());
    let clone = source.clone();
    drop(source);
    assert!(!updater.is_closed(), "a clone still lives");
    drop(clone);
    assert!(updater.is_closed());
    tokio::time::timeout(Duration::from_secs(5), updater.closed()).await.unwrap();
}

#[test]
fn bundles_from_der_need_a_root() {
    let ca = ca();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    let bundle = TrustBundle::new().with_roots_der(ca.trust_domain().clone(), [der]).unwrap();
    assert_eq!(bundle.roots("example.org").unwrap().len(), 1);
    let empty = TrustBundle::new().with_roots_der(ca.trust_domain().clone(), []).unwrap_err();
    assert!(matches!(empty, InvalidIdentity::NoCertificate), "{empty}");
}
