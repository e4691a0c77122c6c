//! A backend host blackholed mid-traffic (iptables DROP both ways in its namespace: connections
//! stay open, nothing gets through), with the real kernel: requests are bounded by the route
//! timeout, retries keep the success rate, the endpoint is ejected, new connections to it are
//! bounded by `connect_timeout`, and it comes back when the fault is lifted. Without a route
//! timeout, HTTP/2 keepalive pings and TCP_USER_TIMEOUT bound a request.
//!
//! Root, iproute2 and iptables needed; skipped otherwise unless `MESH_NETFAULTS=1`
//! (tests/netfault_support says more).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod netfault_support;
mod support;

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Endpoint, Route, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{LoadBalancer, OutlierDetection, Percentage, RetryOn, RetryPolicy},
    },
    tower::client::{ClientConfig, ClientError, ErrorKind, MeshClient, Protocol},
};
use netfault_support::{Lab, Summary, Traffic, backend};
use support::{backend_id, identity};
use tower::ServiceExt;

type Client = MeshClient<Empty<bytes::Bytes>>;

// Wide enough that a debug build on a busy 2-core machine never needs more on a healthy link.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(3);
const PER_TRY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const EJECTION: Duration = Duration::from_secs(2);

fn snapshot(name: &ServiceName, endpoints: &[std::net::SocketAddr], route: Option<Route>) -> ServiceSnapshot {
    let mut builder = ServiceSnapshot::builder(name.clone())
        .identity(backend_id())
        .endpoints(endpoints.iter().map(|a| Endpoint::new(*a)))
        .load_balancer(LoadBalancer::round_robin());
    if let Some(route) = route {
        builder = builder.route(route);
    }
    builder.build().unwrap()
}

fn mesh_client(discovery: &StaticDiscovery, name: &ServiceName, config: ClientConfig) -> Client {
    MeshClient::builder(discovery.clone(), name.clone()).identity(identity("/web")).config(config).build().unwrap()
}

fn config(protocol: Protocol) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.protocol = protocol;
    config.connect_timeout = CONNECT_TIMEOUT;
    config.seed = Some(7);
    config
}

async fn get(client: &Client) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let response = client.clone().oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn kind(error: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    error.downcast_ref::<ClientError>().unwrap_or_else(|| panic!("not a ClientError: {error}")).kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_endpoint_is_bounded_ejected_and_comes_back() {
    let Some(lab) = Lab::new("a_blackholed_endpoint_is_bounded_ejected_and_comes_back") else { return };
    let hosts = [lab.host(), lab.host(), lab.host()];
    let names = ["a", "b", "c"];
    let backends: Vec<_> = hosts.iter().zip(names).map(|(h, n)| backend(n, h.listen(), identity("/backend"))).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();

    let name: ServiceName = "reviews".parse().unwrap();
    let mut retry = RetryPolicy::default();
    retry.retry_on = vec![RetryOn::PerTryTimeout, RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::GatewayError];
    retry.per_try_timeout = Some(PER_TRY);
    let route = Route::new("default".parse().unwrap()).with_timeout(ROUTE_TIMEOUT).with_retry(retry);
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(&name, &addrs, Some(route)));
    let mut outlier = OutlierDetection::default();
    outlier.consecutive_failures = 3;
    outlier.base_ejection_time = EJECTION;
    outlier.max_ejection_time = EJECTION * 2;
    outlier.max_ejection_percent = Percentage::new(50.0).unwrap();
    discovery.update(&name, |spec| spec.policies.outlier_detection = Some(outlier)).unwrap();
    let client = mesh_client(&discovery, &name, config(Protocol::Http1));
    let stats = client.outlier_stats();

    // Warm-up: connections opened (TLS handshakes of a debug build on a busy machine can take a
    // good part of the per-try timeout) and the retry budget filled by ordinary traffic, as it
    // is in a service that has been running. Then a healthy stretch that must be clean.
    let traffic = Traffic::start(&client, 8);
    traffic.more(600).await;
    let warm = traffic.so_far();
    traffic.more(300).await;
    let before = traffic.so_far();

    // Blackhole c: its open connections go silent, new ones get no SYN-ACK.
    hosts[2].blackhole();
    tokio::time::timeout(Duration::from_secs(60), async {
        while stats.ejections() == 0 {
            traffic.more(10).await;
        }
    })
    .await
    .expect("the blackholed endpoint was never ejected");
    // Answers c sent before the fault have all arrived by now (an ejection takes a per-try
    // timeout or more): from here to the heal, c answers nothing.
    let c_answers = |s: &Summary| s.per_backend.get("c").copied().unwrap_or(0);
    let c_answered_at_ejection = c_answers(&traffic.so_far());
    // Keep traffic on through ejections and returns: 8 s in all, at least 2,000 requests.
    let fault_started = tokio::time::Instant::now();
    while fault_started.elapsed() < Duration::from_secs(8) || traffic.so_far().requests < before.requests + 2_000 {
        traffic.more(50).await;
    }
    let during = traffic.so_far();
    assert_eq!(c_answers(&during), c_answered_at_ejection, "a blackholed host answered");

    // A new connection to the blackholed host, without retries or route timeout, fails with a
    // connect error: bounded by connect_timeout, not by the kernel's SYN retries (about 2 min).
    let direct_name: ServiceName = "direct".parse().unwrap();
    discovery.set(snapshot(&direct_name, &addrs[2..], None));
    let mut direct_config = config(Protocol::Http1);
    direct_config.http2_keepalive_interval = None;
    let direct = mesh_client(&discovery, &direct_name, direct_config);
    let dialled = tokio::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(60), get(&direct)).await.expect("hung").unwrap_err();
    let connect_took = dialled.elapsed();
    assert_eq!(kind(&*error), ErrorKind::Connect, "{error}");

    // Lifted: c comes back once its ejection is over, and serves again.
    hosts[2].heal();
    let healed = tokio::time::Instant::now();
    let c_hits_at_heal = backends[2].hits();
    if tokio::time::timeout(Duration::from_secs(90), backends[2].wait_for_hits_above(c_hits_at_heal)).await.is_err() {
        let s = traffic.so_far();
        panic!(
            "c never came back in 90 s after the fault was lifted: ejections {}, answers {:?}, failed {}: {:?}",
            stats.ejections(),
            s.per_backend,
            s.failed,
            s.errors
        );
    }
    let back_after = healed.elapsed();
    traffic.more(200).await;
    let summary = traffic.stop().await;

    let summary = Summary { failed: summary.failed - warm.failed, ..summary };
    let faulted = during.requests - before.requests;
    let failed = during.failed - before.failed;
    let rate = (faulted - failed) as f64 / faulted as f64;
    eprintln!(
        "netfault blackhole: {faulted} requests while c was blackholed, {failed} failed (success rate {:.4}%), \
         slowest request {:?} (route timeout {ROUTE_TIMEOUT:?}, per-try {PER_TRY:?}), ejections {}; \
         a new connection to c failed after {connect_took:?} (connect_timeout {CONNECT_TIMEOUT:?}): {error}; \
         c served again {back_after:?} after the fault was lifted; total {} requests, {} failed after the warm-up \
         ({} during it), per backend {:?}",
        rate * 100.0,
        during.max_latency,
        stats.ejections(),
        summary.requests,
        summary.failed,
        warm.failed,
        summary.per_backend,
    );
    assert!(rate >= 0.999, "success rate {rate} under a blackholed endpoint: {:?}", summary.errors);
    assert!(stats.ejections() >= 1);
    // Every failure after the warm-up, if any, is a timeout's: none waited for anything else.
    for error in summary.errors.iter().skip(warm.errors.len()) {
        assert!(error.contains("timeout") || error.contains("timed out"), "a failure other than a timeout: {error}");
    }
}

/// Without a route timeout: a request written to a connection whose peer went silent fails when
/// HTTP/2 keepalive's PING goes unanswered (HTTP/2), or when its bytes stay unacknowledged past
/// TCP_USER_TIMEOUT (HTTP/1.1). Both are `ClientConfig` settings (docs/reliability.md gives the
/// defaults); here they are shortened to keep the test quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_route_timeout_keepalive_bounds_a_request() {
    let Some(lab) = Lab::new("without_a_route_timeout_keepalive_bounds_a_request") else { return };
    let mut figures = Vec::new();
    for protocol in [Protocol::Http2, Protocol::Http1] {
        let host = lab.host();
        let server = backend("silent", host.listen(), identity("/backend"));
        let name: ServiceName = "silent".parse().unwrap();
        let discovery = StaticDiscovery::new();
        discovery.set(snapshot(&name, &[server.addr], None));
        let mut config = config(protocol);
        config.connect_timeout = ClientConfig::default().connect_timeout;
        config.http2_keepalive_interval = Some(Duration::from_secs(1));
        config.http2_keepalive_timeout = Duration::from_secs(1);
        config.tcp_user_timeout = Some(Duration::from_secs(2));
        let client = mesh_client(&discovery, &name, config);
        // A pooled connection, then silence: the next request goes out on it and gets nothing.
        assert_eq!(get(&client).await.unwrap(), "silent");
        host.blackhole();
        let sent = tokio::time::Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(120), get(&client))
            .await
            .expect("a request to a silent peer without a route timeout hung")
            .unwrap_err();
        let took = sent.elapsed();
        assert_eq!(kind(&*error), ErrorKind::Transport, "{protocol:?}: {error}");
        figures.push(format!("{protocol:?}: failed after {took:?} ({error})"));
    }
    eprintln!(
        "netfault keepalive, no route timeout, HTTP/2 PING every 1 s (1 s to answer), TCP_USER_TIMEOUT 2 s: {}",
        figures.join("; ")
    );
}

/// A refused port (iptables REJECT with a TCP reset on new connections), every request on a new
/// connection: the connect fails at once, is retried on another endpoint (`connect_failure` is
/// in the default `retry_on`), and the endpoint is ejected; no request fails. The fault comes
/// after a warm-up: a client's retry budget starts empty (docs/resilience.md), so a client born
/// into an outage has its first few requests fail rather than retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_is_retried_elsewhere_and_ejected() {
    let Some(lab) = Lab::new("a_refused_port_is_retried_elsewhere_and_ejected") else { return };
    let (good, refusing) = (lab.host(), lab.host());
    let backends = [
        backend("good", good.listen(), identity("/backend")),
        backend("refusing", refusing.listen(), identity("/backend")),
    ];
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(&name, &[backends[0].addr, backends[1].addr], None));
    let mut outlier = OutlierDetection::default();
    outlier.consecutive_failures = 3;
    discovery
        .update(&name, |spec| {
            spec.policies.outlier_detection = Some(outlier);
            spec.policies.retry = Some(RetryPolicy::default());
        })
        .unwrap();
    let mut config = config(Protocol::Http1);
    config.pool_max_idle_per_endpoint = 0;
    let client = mesh_client(&discovery, &name, config);
    let traffic = Traffic::start(&client, 4);
    traffic.more(300).await;
    let warm = traffic.so_far();
    refusing.reject(backends[1].addr.port());
    let refused_from = backends[1].hits();
    traffic.more(1_000).await;
    let summary = traffic.stop().await;
    let summary =
        Summary { requests: summary.requests - warm.requests, failed: summary.failed - warm.failed, ..summary };
    let ejections = client.outlier_stats().ejections();
    eprintln!(
        "netfault refused port: {} requests, {} failed, slowest {:?}, ejections {ejections}, retries {}, per backend {:?}",
        summary.requests,
        summary.failed,
        summary.max_latency,
        client.retry_stats().retries(),
        summary.per_backend
    );
    assert_eq!(summary.failed, 0, "{:?}", summary.errors);
    // At most the 4 requests whose connections were open when the rule came: none after.
    assert!(backends[1].hits() <= refused_from + 4, "a refused port answered new connections");
    assert!(ejections >= 1, "the refusing endpoint was never ejected");
}
