//! Certificates renewed on disk while requests flow: no request fails, and each side sees the
//! other's new certificate once it is renewed.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    convert::Infallible,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, IdentityFiles, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::dev::DevCert,
    },
    tower::{PeerIdentity, client::MeshClient, server::Server},
};
use support::ca;
use tokio::sync::watch;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(30);

/// Renews a workload's files the way a SPIRE agent does: each file written aside, then renamed
/// over the old one (so the pair is briefly mismatched, which mesh must refuse, not use).
fn renew(dir: &Path, name: &str, cert: &DevCert) {
    for (file, text) in [(format!("{name}.pem"), &cert.cert_pem), (format!("{name}-key.pem"), &cert.key_pem)] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
}

fn files(dir: &Path, name: &str) -> IdentityFiles {
    IdentityFiles::new(
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
        dir.join("ca.pem"),
        ca().trust_domain().clone(),
    )
}

fn serial(cert: &DevCert) -> String {
    cert.credentials().unwrap().serial().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_both_sides_twice_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca().cert_pem()).unwrap();
    renew(dir.path(), "server", &ca().issue("/reviews").unwrap());
    renew(dir.path(), "client", &ca().issue("/frontend").unwrap());
    let server_identity = IdentitySource::from_files(files(dir.path(), "server")).unwrap();
    let client_identity = IdentitySource::from_files(files(dir.path(), "client")).unwrap();

    // The server reports the serial of the client certificate each request came with.
    let handler = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let serial = req.extensions().get::<PeerIdentity>().map(|p| p.serial().to_owned()).unwrap_or_default();
        Ok::<_, Infallible>(http::Response::builder().header("x-client-serial", serial).body(String::new()).unwrap())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().identity(server_identity.clone()).build().unwrap().spawn(listener, handler).unwrap();

    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity("spiffe://example.org/reviews".parse().unwrap())
            .endpoint(Endpoint::new(server.local_addr()))
            .build()
            .unwrap(),
    );
    let client =
        MeshClient::builder(discovery, name).identity(client_identity.clone()).build::<Empty<bytes::Bytes>>().unwrap();

    // Callers: half keep connections alive (old connections must keep working), half close
    // after every request (new connections must pick up the renewed certificates).
    let (seen_tx, seen_rx) = watch::channel((String::new(), String::new()));
    let seen_tx = Arc::new(seen_tx);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (done_tx, done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (client, stop, sent, failed, seen_tx, done_tx) =
                (client.clone(), stop.clone(), sent.clone(), failed.clone(), seen_tx.clone(), done_tx.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut request = http::Request::get("/").body(Empty::new()).unwrap();
                    if i % 2 == 0 {
                        request.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    match client.clone().oneshot(request).await {
                        Ok(response) if response.status() == 200 => {
                            let server_serial =
                                response.extensions().get::<PeerIdentity>().unwrap().serial().to_owned();
                            let client_serial =
                                response.headers()["x-client-serial"].to_str().unwrap_or_default().to_owned();
                            let _ = response.into_body().collect().await;
                            if i % 2 == 0 {
                                seen_tx.send_replace((server_serial, client_serial));
                            }
                        }
                        Ok(response) => {
                            eprintln!("status {}", response.status());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            eprintln!("request failed: {error}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done_tx.send_modify(|n| *n += 1);
                }
            })
        })
        .collect();

    let mut seen = seen_rx.clone();
    let mut done = done_rx.clone();
    // Traffic flows before, between and after every renewal.
    let mut more_traffic = async move || {
        let target = *done.borrow() + 50;
        tokio::time::timeout(WAIT, done.wait_for(|n| *n >= target)).await.unwrap().unwrap();
    };
    more_traffic().await;
    let mut observed = Vec::new();
    for round in 0..2 {
        // The server's certificate is renewed: the client sees the new serial on new connections.
        let cert = ca().issue("/reviews").unwrap();
        let new_server = serial(&cert);
        renew(dir.path(), "server", &cert);
        tokio::time::timeout(WAIT, seen.wait_for(|(s, _)| *s == new_server)).await.unwrap().unwrap();
        more_traffic().await;
        // Then the client's.
        let cert = ca().issue("/frontend").unwrap();
        let new_client = serial(&cert);
        renew(dir.path(), "client", &cert);
        tokio::time::timeout(WAIT, seen.wait_for(|(_, c)| *c == new_client)).await.unwrap().unwrap();
        more_traffic().await;
        observed.push((round, new_server, new_client));
    }

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation: {sent} requests, {failed} failed, renewals observed: {observed:?}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during rotation");
    assert_eq!(server_identity.current().credentials().serial(), observed[1].1);
    assert_eq!(client_identity.current().credentials().serial(), observed[1].2);
    server.shutdown().await.unwrap();
}
