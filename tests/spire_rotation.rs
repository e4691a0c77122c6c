//! Rotation driven by a real SPIRE while requests flow: short-lived SVIDs renewed by the agent
//! (HTTP/1.1, HTTP/2 and gRPC callers: no request fails, new connections present the newest
//! SVID), and the server's CA rotated (`spire-server localauthority x509 prepare / activate /
//! taint / revoke`): the new root is trusted before it signs, the old one dropped after.
//!
//! Needs SPIRE (`MESH_SPIRE_SERVER`, `MESH_SPIRE_AGENT`; tests/spire_support says more). Run with
//! `--nocapture` for the figures.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod spire_support;
mod support;

use std::{collections::BTreeSet, time::Duration};

use mesh::{
    core::{Identity, IdentitySource},
    tower::client::Protocol,
};
use spire_support::{
    Load, Spire, TRUST_DOMAIN, WAIT,
    mesh::{grpc_call, grpc_client, http_call, http_client, serve, workloads},
};

/// SPIRE backdates an SVID by 10 s and its agent renews it past half its life: a 20 s TTL
/// renews every ~5 s.
const SVID_TTL: Duration = Duration::from_secs(20);
const ROTATIONS: usize = 3;

fn serial(source: &IdentitySource) -> String {
    source.current().credentials().serial().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_rotated_by_the_agent_fail_no_request() {
    let Some(mut spire) = Spire::start().await else { return };
    let agent = spire.add_agent().await;
    let w = workloads(&spire, agent, SVID_TTL).await;
    let servers = serve(&w.server).await;
    let addr = servers.http.local_addr();

    let loads = [
        Load::start("HTTP/1.1", 2, {
            let client = http_client(addr, &w.server_id, &w.client, Protocol::Http1, false);
            move || {
                let client = client.clone();
                async move { http_call(&client).await.map(drop) }
            }
        }),
        Load::start("HTTP/2", 2, {
            let client = http_client(addr, &w.server_id, &w.client, Protocol::Http2, false);
            move || {
                let client = client.clone();
                async move { http_call(&client).await.map(drop) }
            }
        }),
        Load::start("gRPC", 2, {
            let client = grpc_client(&servers.grpc, &w);
            move || {
                let client = client.clone();
                async move { grpc_call(&client).await }
            }
        }),
    ];
    // A new connection per request: each shows which SVIDs new handshakes present.
    let fresh = http_client(addr, &w.server_id, &w.client, Protocol::Http1, true);
    let fresh_load = Load::start("HTTP/1.1, a new connection per request", 1, {
        let fresh = fresh.clone();
        move || {
            let fresh = fresh.clone();
            async move { http_call(&fresh).await.map(drop) }
        }
    });

    let (mut server_serials, mut client_serials) =
        (BTreeSet::from([serial(&w.server)]), BTreeSet::from([serial(&w.client)]));
    let mut presented = 0;
    let (mut server_changes, mut client_changes) = (w.server.changes(), w.client.changes());
    let rotated = tokio::time::timeout(WAIT * 2, async {
        while server_serials.len() <= ROTATIONS || client_serials.len() <= ROTATIONS {
            tokio::select! {
                error = server_changes.next() => assert!(error.is_none(), "server: {error:?}"),
                error = client_changes.next() => assert!(error.is_none(), "client: {error:?}"),
            }
            let changed = server_serials.insert(serial(&w.server)) | client_serials.insert(serial(&w.client));
            if changed {
                // New handshakes present the newest SVIDs, both ways. (Should yet another arrive
                // meanwhile, the next request shows that one: the bound on the whole loop fails
                // the test if they never do.)
                loop {
                    let seen = http_call(&fresh).await.unwrap();
                    if seen == (serial(&w.server), serial(&w.client)) {
                        presented += 1;
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        rotated.is_ok(),
        "fewer than {ROTATIONS} rotations each: server {server_serials:?}, client {client_serials:?}\n{}",
        spire.logs()
    );
    for load in &loads {
        load.more(20).await;
    }
    fresh_load.more(5).await;

    let mut reports = Vec::new();
    for load in loads {
        reports.push(load.stop().await);
    }
    reports.push(fresh_load.stop().await);
    eprintln!(
        "SPIRE SVID rotation ({}s TTL): server SVID rotated {} times, client {} times; new connections presented \
         the newest SVIDs after each of {presented} changes",
        SVID_TTL.as_secs(),
        server_serials.len() - 1,
        client_serials.len() - 1
    );
    for r in &reports {
        eprintln!("  {}: {} calls, {} failed", r.name, r.calls, r.failures);
    }
    for r in &reports {
        assert_eq!(r.failures, 0, "{}: {:?}", r.name, &r.errors[..r.errors.len().min(5)]);
        assert!(r.calls > 0, "{}", r.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_by_the_server_is_followed() {
    let Some(mut spire) = Spire::start().await else { return };
    let agent = spire.add_agent().await;
    // Long-lived SVIDs: only the rotation renews them.
    let w = workloads(&spire, agent, Duration::from_secs(600)).await;
    let servers = serve(&w.server).await;
    let addr = servers.http.local_addr();
    let roots = |s: &IdentitySource| s.current().bundle().roots(TRUST_DOMAIN).map_or(0, |r| r.len());
    assert_eq!((roots(&w.server), roots(&w.client)), (1, 1));
    let pooled = Load::start("HTTP/2 over pooled connections", 2, {
        let client = http_client(addr, &w.server_id, &w.client, Protocol::Http2, false);
        move || {
            let client = client.clone();
            async move { http_call(&client).await.map(drop) }
        }
    });
    let fresh = Load::start("HTTP/1.1, a new connection per request", 2, {
        let client = http_client(addr, &w.server_id, &w.client, Protocol::Http1, true);
        move || {
            let client = client.clone();
            async move { http_call(&client).await.map(drop) }
        }
    });
    pooled.more(20).await;
    fresh.more(5).await;
    let old_client = w.client.current();

    // 1. A new CA is prepared: its root joins the bundle before it signs anything.
    let before = spire.authorities().await;
    spire.server_cli(&["localauthority", "x509", "prepare"]).await.unwrap();
    let prepared = spire.authorities().await.prepared.expect("a prepared authority");
    let both = wait(&spire, &w, "the new root joined the bundle", |s| roots(s) == 2).await;
    fresh.more(5).await;

    // 2. It is activated and the old one tainted: the agent renews every SVID from the new CA.
    let (server_before, client_before) = (serial(&w.server), serial(&w.client));
    spire.server_cli(&["localauthority", "x509", "activate", "-authorityID", &prepared]).await.unwrap();
    let old = spire.authorities().await.old.expect("the old authority");
    assert_eq!(Some(&old), before.active.as_ref());
    spire.server_cli(&["localauthority", "x509", "taint", "-authorityID", &old]).await.unwrap();
    wait(&spire, &w, "SVIDs renewed by the new CA", |s| serial(s) != server_before && serial(s) != client_before).await;
    fresh.more(5).await;

    // 3. The old CA is revoked: its root leaves the bundle.
    spire.server_cli(&["localauthority", "x509", "revoke", "-authorityID", &old]).await.unwrap();
    wait(&spire, &w, "the old root left the bundle", |s| roots(s) == 1).await;
    fresh.more(5).await;
    pooled.more(20).await;

    // A client still holding an SVID of the old CA (valid for minutes yet; it trusts the new CA
    // too) is refused by the server now.
    let stale = IdentitySource::fixed(Identity::new(old_client.credentials().clone(), both).unwrap());
    let refused_before = servers.http.handshake_counts().total_failed();
    let error = http_call(&http_client(addr, &w.server_id, &stale, Protocol::Http1, true)).await.unwrap_err();
    eprintln!("an SVID of the revoked CA: {error}");
    let counted = servers.http.wait_for_handshakes(|c| c.total_failed() > refused_before);
    assert!(tokio::time::timeout(WAIT, counted).await.is_ok(), "the server did not refuse it");

    let (pooled, fresh) = (pooled.stop().await, fresh.stop().await);
    eprintln!("SPIRE CA rotation (prepare, activate, taint, revoke):");
    for r in [&pooled, &fresh] {
        eprintln!("  {}: {} calls, {} failed", r.name, r.calls, r.failures);
        assert_eq!(r.failures, 0, "{}: {:?}", r.name, &r.errors[..r.errors.len().min(5)]);
    }
}

/// Waits until both workloads' identities satisfy `condition`; returns the client's bundle then.
async fn wait(
    spire: &Spire,
    w: &spire_support::mesh::Workloads,
    what: &str,
    condition: impl Fn(&IdentitySource) -> bool,
) -> mesh::core::TrustBundle {
    let (mut a, mut b) = (w.server.changes(), w.client.changes());
    let done = tokio::time::timeout(WAIT, async {
        while !(condition(&w.server) && condition(&w.client)) {
            tokio::select! {
                _ = a.next() => {}
                _ = b.next() => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{what}: not within {WAIT:?}\n{}", spire.logs());
    w.client.current().bundle().clone()
}
