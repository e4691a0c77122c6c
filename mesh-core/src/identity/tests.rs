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
