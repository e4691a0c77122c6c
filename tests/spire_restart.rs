//! The SPIRE agent killed (SIGKILL) and restarted while requests flow: calls over open
//! connections go on, new handshakes use the last good SVIDs, the outage is reported beside them,
//! and after the restart the next SVIDs arrive and the error clears. No request fails.
//!
//! Needs SPIRE (`MESH_SPIRE_SERVER`, `MESH_SPIRE_AGENT`; tests/spire_support says more). Run with
//! `--nocapture` for the figures.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod spire_support;
mod support;

use std::{sync::Arc, time::Duration};

use mesh::{
    core::{IdentitySource, InvalidIdentity},
    tower::client::Protocol,
};
use spire_support::{
    Load, Spire, WAIT,
    mesh::{Workloads, grpc_call, grpc_client, http_call, http_client, serve, workloads},
};

fn serial(source: &IdentitySource) -> String {
    source.current().credentials().serial().to_owned()
}

/// Waits until both workloads satisfy `condition`.
async fn wait(spire: &Spire, w: &Workloads, what: &str, condition: impl Fn(&IdentitySource) -> bool) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_and_restarted_under_load_fails_no_request() {
    let Some(mut spire) = Spire::start().await else { return };
    let agent = spire.add_agent().await;
    // SVIDs that outlive the outage by far: what is kept stays valid.
    let w = workloads(&spire, agent, Duration::from_secs(120)).await;
    let servers = serve(&w.server).await;
    let addr = servers.http.local_addr();
    let pooled = Load::start("HTTP/2 over open connections", 2, {
        let client = http_client(addr, &w.server_id, &w.client, Protocol::Http2, false);
        move || {
            let client = client.clone();
            async move { http_call(&client).await.map(drop) }
        }
    });
    let grpc = Load::start("gRPC over open connections", 2, {
        let client = grpc_client(&servers.grpc, &w);
        move || {
            let client = client.clone();
            async move { grpc_call(&client).await }
        }
    });
    // New connections, each a handshake: they must present the SVIDs kept during the outage.
    let fresh_client = http_client(addr, &w.server_id, &w.client, Protocol::Http1, true);
    let kept = (serial(&w.server), serial(&w.client));
    let fresh = Load::start("HTTP/1.1, a new connection per request", 2, {
        let client = fresh_client.clone();
        move || {
            let client = client.clone();
            async move { http_call(&client).await.map(drop) }
        }
    });
    for load in [&pooled, &grpc, &fresh] {
        load.more(20).await;
    }

    spire.kill_agent(agent).await;
    wait(&spire, &w, "the outage reported", |s| s.last_error().is_some()).await;
    let error: Arc<InvalidIdentity> = w.client.last_error().unwrap();
    eprintln!("agent killed; reported: {error}");
    assert!(
        matches!(&*error, InvalidIdentity::WorkloadApi { socket, .. } if *socket == spire.agent(agent).socket()),
        "{error}"
    );
    assert_eq!((serial(&w.server), serial(&w.client)), kept, "the last good SVIDs stay in use");
    // While the agent is down: open connections carry calls, new handshakes succeed with the
    // SVIDs kept.
    let down_before = [pooled.calls(), grpc.calls(), fresh.calls()];
    for load in [&pooled, &grpc, &fresh] {
        load.more(20).await;
    }
    let (server_seen, client_seen) = http_call(&fresh_client).await.unwrap();
    assert_eq!((server_seen, client_seen), kept);
    assert!(w.client.last_error().is_some() && w.server.last_error().is_some(), "still down, still reported");
    let down: Vec<u64> =
        [pooled.calls(), grpc.calls(), fresh.calls()].iter().zip(down_before).map(|(a, b)| a - b).collect();

    spire.restart_agent(agent).await;
    // The restarted agent's cache is new: it fetches, and pushes, new SVIDs.
    wait(&spire, &w, "new SVIDs after the restart", |s| s.last_error().is_none()).await;
    wait(&spire, &w, "new SVIDs after the restart", |s| serial(s) != kept.0 && serial(s) != kept.1).await;
    let (server_seen, client_seen) = http_call(&fresh_client).await.unwrap();
    assert!(server_seen != kept.0 && client_seen != kept.1, "new handshakes present the new SVIDs");
    for load in [&pooled, &grpc, &fresh] {
        load.more(20).await;
    }

    let reports = [pooled.stop().await, grpc.stop().await, fresh.stop().await];
    eprintln!("SPIRE agent killed and restarted under load:");
    for (r, down) in reports.iter().zip(down) {
        eprintln!("  {}: {} calls ({down} while the agent was down), {} failed", r.name, r.calls, r.failures);
    }
    for r in &reports {
        assert_eq!(r.failures, 0, "{}: {:?}", r.name, &r.errors[..r.errors.len().min(5)]);
    }
}
