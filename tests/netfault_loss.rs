//! Packet loss (iptables random drop, 5% each way, in the backends' namespace) and latency with
//! jitter (a seeded relay adding 50 ms ± 20 ms each way; `tc netem` is not available): P2C steers
//! load away from the impaired endpoints and no request fails.
//!
//! Root, iproute2 and iptables needed; skipped otherwise unless `MESH_NETFAULTS=1`
//! (tests/netfault_support says more).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod netfault_support;
mod support;

use std::time::Duration;

use mesh::tower::client::ClientConfig;
use netfault_support::{Lab, Relay, Traffic, backend};
use support::{identity, retrying_client as client};

const LOSS: f64 = 0.05;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_steers_away_from_a_lossy_slow_subset_and_no_request_fails() {
    let Some(lab) = Lab::new("p2c_steers_away_from_a_lossy_slow_subset_and_no_request_fails") else { return };
    let (good, bad) = (lab.host(), lab.host());
    let backends = [
        backend("good-1", good.listen(), identity("/backend")),
        backend("good-2", good.listen(), identity("/backend")),
        backend("bad-1", bad.listen(), identity("/backend")),
        backend("bad-2", bad.listen(), identity("/backend")),
    ];
    bad.loss(LOSS);
    let (base, jitter) = (Duration::from_millis(50), Duration::from_millis(20));
    let relays =
        [Relay::start(backends[2].addr, base, jitter, 1).await, Relay::start(backends[3].addr, base, jitter, 2).await];
    let addrs = [backends[0].addr, backends[1].addr, relays[0].addr, relays[1].addr];
    let mut config = ClientConfig::default();
    config.seed = Some(42);
    let client = client(&addrs, identity("/web"), config);

    // Warm-up (every endpoint gets a latency estimate), then the measured stretch.
    let traffic = Traffic::start(&client, 4);
    traffic.more(200).await;
    let warm = traffic.so_far();
    traffic.more(3_000).await;
    let summary = traffic.stop().await;

    let served = |name: &str, s: &netfault_support::Summary| s.per_backend.get(name).copied().unwrap_or(0);
    let bad_now = served("bad-1", &summary) + served("bad-2", &summary);
    let bad_warm = served("bad-1", &warm) + served("bad-2", &warm);
    let measured = (summary.requests - summary.failed) - (warm.requests - warm.failed);
    let share = (bad_now - bad_warm) as f64 / measured as f64;
    eprintln!(
        "netfault loss+latency: {LOSS} loss each way and {base:?} ± {jitter:?} each way on 2 of 4 endpoints: \
         their share {:.2}% of {measured} requests after warm-up (fair share 50%), {} of {} requests failed in all, \
         slowest {:?}, per backend {:?}",
        share * 100.0,
        summary.failed,
        summary.requests,
        summary.max_latency,
        summary.per_backend
    );
    assert_eq!(summary.failed, 0, "requests failed under loss and latency: {:?}", summary.errors);
    assert!(share < 0.25, "the impaired subset kept {share} of the load (fair share 0.5, goal below 0.25)");
}
