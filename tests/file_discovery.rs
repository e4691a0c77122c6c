//! A discovery file edited while requests flow.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Discovery, FileDiscovery, ServiceName},
    tower::{Upstream, client::MeshClient},
};
use support::{backend, identity};
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;

const WAIT: Duration = Duration::from_secs(30);

fn file(endpoints: &[std::net::SocketAddr]) -> String {
    let mut text = String::from("services:\n  reviews:\n    identity: spiffe://example.org/backend\n    endpoints:\n");
    for ep in endpoints {
        text.push_str(&format!("      - address: {ep}\n        labels: {{ version: v1 }}\n"));
    }
    text
}

/// Replaces the file the way careful tools do: write aside, then rename over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_while_requests_flow_lose_no_request() {
    let a = backend("a").await;
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, file(&[a.addr()])).unwrap();

    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = FileDiscovery::open(&path).unwrap();
    let mut watch = discovery.watch(&name);
    let client =
        MeshClient::builder(discovery.clone(), name.clone()).identity(identity("/web")).build::<Body>().unwrap();

    // Four callers send requests back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, sent, failed) = (client.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = http::Request::get("/").body(Empty::new()).unwrap();
                    let ok = match client.clone().oneshot(request).await {
                        Ok(response) => response.status() == 200 && response.into_body().collect().await.is_ok(),
                        Err(error) => {
                            eprintln!("request failed: {error}");
                            false
                        }
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(WAIT, a.wait_for_hits_above(10)).await.unwrap();

    // 1. A new endpoint is added: it gets traffic.
    replace(&path, &file(&[a.addr(), b.addr()]));
    let added = tokio::time::timeout(WAIT, watch.wait_for(|s| s.endpoints().len() == 2)).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, b.wait_for_hits_above(10)).await.unwrap();

    // 2. A malformed edit: the error surfaces, naming file, line and field; the set stays.
    replace(&path, &format!("{}        weight: lots\n", file(&[a.addr(), b.addr()])));
    tokio::time::timeout(WAIT, async {
        while watch.last_error().is_none() {
            watch.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let error = watch.last_error().unwrap().to_string();
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("line "), "{error}");
    assert!(error.contains("services.reviews.endpoints[1].weight"), "{error}");
    assert_eq!(watch.current_version(), added.version(), "the malformed edit published nothing");
    let (a_before, b_before) = (a.hits(), b.hits());
    tokio::time::timeout(WAIT, a.wait_for_hits_above(a_before + 10)).await.unwrap();
    tokio::time::timeout(WAIT, b.wait_for_hits_above(b_before + 10)).await.unwrap();

    // 3. An edit in place (truncate and write) removes `a`: new requests go to `b` only.
    std::fs::write(&path, file(&[b.addr()])).unwrap();
    tokio::time::timeout(WAIT, watch.wait_for(|s| s.endpoints().len() == 1)).await.unwrap().unwrap();
    for _ in 0..20 {
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.extensions().get::<Upstream>().unwrap().address, b.addr());
    }

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 40, "traffic flowed for the whole test ({sent} requests)");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}
