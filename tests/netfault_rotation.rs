//! Certificates rotated on both sides during 5% packet loss (iptables random drop, each way, in
//! the backends' namespace), over pooled connections and over a new connection per request: no
//! request fails.
//!
//! Root, iproute2 and iptables needed; skipped otherwise unless `MESH_NETFAULTS=1`
//! (tests/netfault_support says more).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod netfault_support;
mod support;

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::IdentitySource,
    tower::{
        PeerIdentity,
        client::{ClientConfig, MeshClient},
    },
};
use netfault_support::{Lab, Traffic, backend};
use support::{ca, retrying_client as client};
use tower::ServiceExt;

const LOSS: f64 = 0.05;

/// A request through `client`: the serial of the certificate the server presented.
async fn server_serial(client: &MeshClient<Empty<bytes::Bytes>>) -> Option<String> {
    let response = client.clone().oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await.ok()?;
    let serial = response.extensions().get::<PeerIdentity>()?.serial().to_owned();
    response.into_body().collect().await.ok()?;
    Some(serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_during_loss_fail_no_request() {
    let Some(lab) = Lab::new("certificates_rotated_during_loss_fail_no_request") else { return };
    let host = lab.host();
    let (server_id, server_updater) = IdentitySource::updatable(ca().identity("/backend").unwrap());
    let (client_id, client_updater) = IdentitySource::updatable(ca().identity("/web").unwrap());
    let backends = [backend("r1", host.listen(), server_id.clone()), backend("r2", host.listen(), server_id.clone())];
    host.loss(LOSS);
    let addrs = [backends[0].addr, backends[1].addr];
    // Pooled connections (old ones must keep working) and fresh ones for every request (new
    // handshakes must use the renewed certificates), both under loss.
    let pooled = client(&addrs, client_id.clone(), ClientConfig::default());
    let mut fresh_config = ClientConfig::default();
    fresh_config.pool_max_idle_per_endpoint = 0;
    let fresh = client(&addrs, client_id.clone(), fresh_config);
    let (a, b) = (Traffic::start(&pooled, 4), Traffic::start(&fresh, 4));
    a.more(100).await;
    b.more(100).await;

    let mut rotations = Vec::new();
    for _ in 0..2 {
        let identity = ca().identity("/backend").unwrap();
        let serial = identity.credentials().serial().to_owned();
        server_updater.update(identity);
        // New connections now present the new certificate (the hang guard fails the test).
        tokio::time::timeout(Duration::from_secs(60), async {
            while server_serial(&fresh).await.as_deref() != Some(&serial) {}
        })
        .await
        .expect("the renewed server certificate was never presented");
        a.more(100).await;
        b.more(100).await;
        client_updater.update(ca().identity("/web").unwrap());
        a.more(100).await;
        b.more(100).await;
        rotations.push(serial);
    }
    let (a, b) = (a.stop().await, b.stop().await);
    eprintln!(
        "netfault rotation during {LOSS} loss: server and client certificates rotated twice; pooled: {} requests, \
         {} failed; new connection per request: {} requests, {} failed; slowest {:?}",
        a.requests,
        a.failed,
        b.requests,
        b.failed,
        a.max_latency.max(b.max_latency)
    );
    assert_eq!(a.failed + b.failed, 0, "requests failed during rotation under loss: {:?} {:?}", a.errors, b.errors);
}
