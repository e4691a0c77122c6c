//! Interop with a TLS stack that is not rustls: curl (OpenSSL) with a client certificate against
//! the mesh server. Set `MESH_INTEROP=1` to make a missing curl a failure instead of a skip
//! (`.ci/run` does).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{convert::Infallible, path::Path, process::Command};

use mesh::{
    core::{
        IdentitySource, SpiffeId,
        identity::dev::{DevCa, DevCert, LeafSpec},
    },
    tower::{PeerIdentity, server::Server},
};
use support::ca;

fn curl_available() -> bool {
    let present = Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    if !present && std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but curl is not installed");
    }
    if !present {
        eprintln!("curl not found: interop test not run (set MESH_INTEROP=1 to make this a failure)");
    }
    present
}

fn write(dir: &Path, name: &str, cert: &DevCert) -> (String, String) {
    let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// Runs curl against `https://localhost:port/` and returns (exit success, stdout, stderr).
async fn curl(port: u16, ca_file: &str, client: Option<(&str, &str)>) -> (bool, String, String) {
    let mut args: Vec<String> = vec![
        "--silent".into(),
        "--show-error".into(),
        "--max-time".into(),
        "20".into(),
        "--cacert".into(),
        ca_file.into(),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
    ];
    if let Some((cert, key)) = client {
        args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
    }
    args.push(format!("https://localhost:{port}/"));
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output()).await.unwrap().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_openssl_gets_in_with_the_right_identity_only() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca().cert_pem()).unwrap();
    let ca_file = ca_file.display().to_string();

    // The server's certificate also names `localhost`, so curl's hostname check passes.
    let server_id: SpiffeId = "spiffe://example.org/echo".parse().unwrap();
    let server_cert = ca().issue_with(&LeafSpec::new(&server_id).dns("localhost")).unwrap();
    let identity = mesh::core::Identity::new(server_cert.credentials().unwrap(), ca().bundle().unwrap()).unwrap();
    let handler = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let caller = req.extensions().get::<PeerIdentity>().map(|p| p.id().to_string()).unwrap_or_default();
        Ok::<_, Infallible>(http::Response::new(caller))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(IdentitySource::fixed(identity)).build().unwrap();
    let server = server.spawn(listener, handler).unwrap();
    let port = server.local_addr().port();

    // The right identity: curl gets the answer, naming it.
    let (cert, key) = write(dir.path(), "web", &ca().issue("/web").unwrap());
    let (ok, body, err) = curl(port, &ca_file, Some((&cert, &key))).await;
    assert!(ok, "curl failed: {err}");
    assert_eq!(body, "spiffe://example.org/web");

    // No client certificate.
    let (ok, body, _) = curl(port, &ca_file, None).await;
    assert!(!ok && body.is_empty(), "curl without a certificate got {body:?}");
    // A certificate from another CA.
    let rogue = DevCa::new("example.org".parse().unwrap()).unwrap();
    let (cert, key) = write(dir.path(), "rogue", &rogue.issue("/web").unwrap());
    let (ok, body, _) = curl(port, &ca_file, Some((&cert, &key))).await;
    assert!(!ok && body.is_empty(), "curl with a rogue certificate got {body:?}");
    // The right CA, but no SPIFFE ID (DNS only).
    let (cert, key) = write(dir.path(), "dns", &ca().issue_with(&LeafSpec::without_uris().dns("web.local")).unwrap());
    let (ok, body, _) = curl(port, &ca_file, Some((&cert, &key))).await;
    assert!(!ok && body.is_empty(), "curl with a DNS-only certificate got {body:?}");

    // curl may exit before the server has counted the refusal it sent.
    let counts = server.wait_for_handshakes(|c| c.total_failed() == 3).await;
    assert_eq!(counts.succeeded, 1, "{counts:?}");
    server.shutdown().await.unwrap();
}
