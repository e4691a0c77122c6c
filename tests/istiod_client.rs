//! mesh against a real istiod, side by side with grpcio's own xDS client: the client side.
//!
//! One istiod for the binary (run without Kubernetes, configuration from files edited live), a
//! recording ADS proxy in front of it, mesh (`XdsDiscovery` -> `MeshChannel`) and grpcio
//! (`xds:///` with xDS credentials) as two nodes calling the same target over real mTLS
//! (`spiffe://cluster.local/ns/default/sa/*`). Every check asserts both clients' outcomes and
//! what each ACKed or NACKed.
//!
//! Needs `MESH_ISTIOD` (`source .ci/peers.sh`) and `MESH_XDS_PYTHON`
//! (`source .ci/xds-interop-setup.sh`); skips without them unless `MESH_INTEROP=1`.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod istiod_support;

use std::{net::SocketAddr, time::Duration};

use istiod_support::{
    Istiod,
    ads::{AdsRecorder, CDS, EDS, LDS, RDS},
    grpcio::{Calls, MeshLoad, within},
    pair::Pair,
    workload::{self, backend, grpc::Behaviour, service_entry, workload_entry, workload_ip},
};

const HOST: &str = "reviews.default.svc.cluster.local";
const PORT: u16 = 9080;

fn target() -> String {
    format!("{HOST}:{PORT}")
}

fn destination_rule(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
{extra}  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"
    )
}

/// The VirtualService `reviews` of `HOST` with the `http` routes given (YAML list items).
fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
{http}"
    )
}

fn split(w1: u32, w2: u32) -> String {
    virtual_service(&format!(
        "  - route:
    - {{destination: {{host: {HOST}, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: {HOST}, subset: v2}}, weight: {w2}}}
"
    ))
}

/// The subsets and weights of the route configuration's first route.
fn weights(
    resources: &std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Any>,
) -> Vec<(String, u32)> {
    use envoy_types::pb::envoy::config::route::v3::{
        RouteConfiguration, route::Action, route_action::ClusterSpecifier,
    };
    use prost::Message;
    let Some(any) = resources.get(&format!("outbound|{PORT}||{HOST}")) else { return vec![] };
    let rc = RouteConfiguration::decode(any.value.as_slice()).unwrap();
    let Some(route) = rc.virtual_hosts.first().and_then(|v| v.routes.first()) else { return vec![] };
    match &route.action {
        Some(Action::Route(r)) => match &r.cluster_specifier {
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                w.clusters.iter().map(|c| (subset_of(&c.name), c.weight.as_ref().map_or(0, |w| w.value))).collect()
            }
            Some(ClusterSpecifier::Cluster(c)) => vec![(subset_of(c), 100)],
            _ => vec![],
        },
        _ => vec![],
    }
}

/// `v1` of `outbound|9080|v1|HOST`.
fn subset_of(cluster: &str) -> String {
    cluster.split('|').nth(2).unwrap_or_default().to_owned()
}

fn only(subset: &str) -> Vec<(String, u32)> {
    vec![(subset.to_owned(), 100)]
}

struct World {
    istiod: Istiod,
    recorder: AdsRecorder,
    python: std::path::PathBuf,
    v1: workload::grpc::GrpcBackend,
    v2: workload::grpc::GrpcBackend,
    _v3: workload::grpc::GrpcBackend,
}

impl World {
    async fn start() -> Option<Self> {
        let (binary, python) = istiod_support::peers()?;
        let v1 = backend(workload_ip(1), "reviews", "v1", Behaviour::Answer).await;
        let v2 = backend(workload_ip(2), "reviews", "v2", Behaviour::Answer).await;
        let v3 = backend(workload_ip(3), "reviews", "v3", Behaviour::Delay(Duration::from_millis(300))).await;
        let se = service_entry("reviews", HOST, PORT, "reviews");
        let we1 = workload_entry("reviews-v1", "reviews", "v1", v1.handle.local_addr(), "reviews");
        let we2 = workload_entry("reviews-v2", "reviews", "v2", v2.handle.local_addr(), "reviews");
        let we3 = workload_entry("reviews-v3", "reviews", "v3", v3.handle.local_addr(), "reviews");
        let dr = destination_rule("");
        let vs = split(90, 10);
        let istiod = Istiod::start(
            &binary,
            &[
                ("reviews-se", &se),
                ("reviews-we1", &we1),
                ("reviews-we2", &we2),
                ("reviews-we3", &we3),
                ("reviews-dr", &dr),
                ("reviews-vs", &vs),
            ],
        )
        .await;
        eprintln!("istiod: pilot-discovery {}", istiod.args.join(" "));
        let recorder = AdsRecorder::start(istiod.grpc).await;
        Some(Self { istiod, recorder, python, v1, v2, _v3: v3 })
    }

    fn addr(&self, v: &str) -> SocketAddr {
        if v == "v1" { self.v1.handle.local_addr() } else { self.v2.handle.local_addr() }
    }
}

/// Both clients accept everything istiod sends for the target (LDS, RDS, CDS, EDS) and split
/// 90/10; then the VirtualService is edited on disk under load, 90/10 -> 50/50 -> 0/100: at each
/// step both follow within a binomial tolerance, no call fails, and nothing reaches v1 after 0/100.
async fn weights_edited_under_load(world: &World, pair: &mut Pair) {
    // mesh subscribes when the channel is built; grpcio on its first call.
    let (m, g) = pair.round(&Calls::new(1).timeout(Duration::from_secs(30))).await;
    if m.failed() + g.failed() > 0 {
        let show = |n: &str| istiod_support::ads::summary(&world.recorder.client(n));
        panic!(
            "first call: mesh {m:?}, grpcio {g:?}\nmesh saw {:#?}\ngrpcio saw {:#?}\nistiod:\n{}",
            show(&pair.mesh_node),
            show(&pair.grpcio_node),
            world.istiod.log_tail(40)
        );
    }
    let (m, g) = pair.round(&Calls::new(400)).await;
    eprintln!("90/10: mesh {m:?}, grpcio {g:?}");
    let (mesh, grpcio) = pair.wait_settled(&world.recorder).await;
    for (who, c) in [("mesh", &mesh), ("grpcio", &grpcio)] {
        assert!(c.nacks().is_empty(), "{who} NACKed: {:?}", c.nacks());
        for t in [LDS, RDS, CDS, EDS] {
            assert!(!c.acked(t).is_empty(), "{who} ACKed nothing of {t}: {:#?}", istiod_support::ads::summary(c));
        }
    }
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!(o.failed(), 0, "{who}: {o:?}");
        assert!(within(o.version("v2"), 400, 0.1), "{who} at 90/10: {o:?}");
    }

    let load = Calls::new(0).concurrency(1);
    let mesh_load = MeshLoad::start(&pair.channel, &load);
    pair.grpcio.load_start(&load).await;
    for (w1, w2) in [(50, 50), (0, 100)] {
        world.istiod.apply("reviews-vs", &split(w1, w2));
        let expected = if w1 == 0 { only("v2") } else { vec![("v1".into(), w1), ("v2".into(), w2)] };
        pair.wait_acked(&world.recorder, RDS, &format!("the {w1}/{w2} route"), |r| weights(r) == expected).await;
        if w1 == 0 {
            let rounds = pair.settle("nothing to v1", |o| o.version("v1") == 0).await;
            eprintln!("0/100 in use after (mesh, grpcio) rounds {rounds:?}");
        }
        let (m, g) = pair.round(&Calls::new(400)).await;
        eprintln!("{w1}/{w2}: mesh {m:?}, grpcio {g:?}");
        for (who, o) in [("mesh", &m), ("grpcio", &g)] {
            assert_eq!(o.failed(), 0, "{who} at {w1}/{w2}: {o:?}");
            let share = f64::from(w2) / 100.0;
            assert!(within(o.version("v2"), 400, share), "{who} at {w1}/{w2}: {o:?}");
            if w1 == 0 {
                assert_eq!(o.version("v1"), 0, "{who} reached v1 after 0/100: {o:?}");
            }
        }
    }
    let (m, g) = (mesh_load.stop().await, pair.grpcio.load_stop().await);
    eprintln!("under load: mesh {m:?}, grpcio {g:?}");
    assert_eq!(m.failed(), 0, "mesh under load: {m:?}");
    assert_eq!(g.failed(), 0, "grpcio under load: {g:?}");
    assert!(m.calls() > 0 && g.calls() > 0);
    world.istiod.apply("reviews-vs", &split(90, 10));
}

fn route_all(subset: &str) -> String {
    virtual_service(&format!("  - route: [{{destination: {{host: {HOST}, subset: {subset}}}}}]\n"))
}

/// The endpoints of cluster `outbound|PORT|SUBSET|HOST` in the resources a client ACKed.
fn endpoints(
    resources: &std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Any>,
    subset: &str,
) -> usize {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    resources
        .get(&format!("outbound|{PORT}|{subset}|{HOST}"))
        .map(|a| ClusterLoadAssignment::decode(a.value.as_slice()).unwrap())
        .map_or(0, |la| la.endpoints.iter().map(|l| l.lb_endpoints.len()).sum())
}

/// A WorkloadEntry added under load is reached by both clients, and once removed no longer is;
/// no call fails throughout.
async fn workload_entry_added_and_removed_under_load(world: &World, pair: &mut Pair) {
    world.istiod.apply("reviews-vs", &route_all("v1"));
    pair.wait_acked(&world.recorder, RDS, "the all-to-v1 route", |r| weights(r) == only("v1")).await;
    let extra = backend(workload_ip(5), "reviews", "v1b", Behaviour::Answer).await;
    let load = Calls::new(0);
    let mesh_load = MeshLoad::start(&pair.channel, &load);
    pair.grpcio.load_start(&load).await;
    world
        .istiod
        .apply("reviews-we5", &workload_entry("reviews-v1b", "reviews", "v1", extra.handle.local_addr(), "reviews"));
    pair.wait_acked(&world.recorder, EDS, "two v1 endpoints", |r| endpoints(r, "v1") == 2).await;
    pair.settle("only v1's endpoints", |o| o.version("v2") == 0 && o.version("v1b") > 0).await;
    let (m, g) = pair.round(&Calls::new(200)).await;
    eprintln!("with the added WorkloadEntry: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!(o.failed(), 0, "{who}: {o:?}");
        assert!(o.version("v1b") > 0 && o.version("v1") > 0, "{who} did not reach both endpoints: {o:?}");
    }
    world.istiod.remove("reviews-we5");
    pair.wait_acked(&world.recorder, EDS, "one v1 endpoint", |r| endpoints(r, "v1") == 1).await;
    let rounds = pair.settle("the removed endpoint no longer reached", |o| o.version("v1b") == 0).await;
    eprintln!("removal in use after (mesh, grpcio) rounds {rounds:?}");
    let (m, g) = pair.round(&Calls::new(200)).await;
    eprintln!("after its removal: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!(o.failed(), 0, "{who}: {o:?}");
        assert_eq!(o.version("v1b"), 0, "{who} still reached the removed endpoint: {o:?}");
    }
    let (m, g) = (mesh_load.stop().await, pair.grpcio.load_stop().await);
    eprintln!("under load: mesh {m:?}, grpcio {g:?}");
    assert_eq!((m.failed(), g.failed()), (0, 0), "calls failed under load: mesh {m:?}, grpcio {g:?}");
    drop(extra);
}

/// ISTIO_MUTUAL: the cluster carries the SAN of the service's account, and an endpoint presenting
/// another service account is refused by both clients (and never reached).
async fn istio_mutual_checks_the_san(world: &World, pair: &mut Pair) {
    let (mesh, _) = pair.wait_settled(&world.recorder).await;
    let socket = sans_of(&mesh.acked(CDS), "v1");
    assert!(socket.contains(&workload::spiffe("default", "reviews")), "istiod's SAN: {socket}");

    let impostor = backend(workload_ip(6), "ratings", "impostor", Behaviour::Answer).await;
    world.istiod.apply("reviews-vs", &route_all("v2"));
    world
        .istiod
        .apply("reviews-we2", &workload_entry("reviews-v2", "reviews", "v2", impostor.handle.local_addr(), "reviews"));
    let impostor_port = impostor.handle.local_addr().port();
    wait_v2_endpoint(world, pair, "the impostor's endpoint", impostor_port).await;
    pair.wait_acked(&world.recorder, RDS, "the all-to-v2 route", |r| weights(r) == only("v2")).await;
    pair.settle("the impostor's endpoint in use", |o| o.versions.is_empty()).await;
    let (m, g) = pair.round(&Calls::new(20).fail_fast().timeout(Duration::from_secs(5))).await;
    eprintln!("to an impostor: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!(o.errors.get("UNAVAILABLE"), Some(&20), "{who} called the impostor: {o:?}");
    }
    assert!(
        m.first_error.as_deref().unwrap_or_default().contains("spiffe://cluster.local/ns/default/sa/ratings"),
        "{m:?}"
    );
    assert_eq!(impostor.seen.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    world.istiod.apply("reviews-we2", &workload_entry("reviews-v2", "reviews", "v2", world.addr("v2"), "reviews"));
    world.istiod.apply("reviews-vs", &split(90, 10));
    wait_v2_endpoint(world, pair, "v2's endpoint back", world.addr("v2").port()).await;
}

/// Waits until both clients ACKed the v2 cluster's endpoints with one on `port`.
async fn wait_v2_endpoint(world: &World, pair: &Pair, what: &str, port: u16) {
    pair.wait_acked(&world.recorder, EDS, what, move |r| {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use prost::Message;
        r.get(&format!("outbound|{PORT}|v2|{HOST}")).is_some_and(|a| {
            format!("{:?}", ClusterLoadAssignment::decode(a.value.as_slice()).unwrap())
                .contains(&format!("PortValue({port})"))
        })
    })
    .await;
}

/// A cluster's TLS context as istiod writes it (its SANs among the bytes), for `subset`.
fn sans_of(
    clusters: &std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Any>,
    subset: &str,
) -> String {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    let Some(any) = clusters.get(&format!("outbound|{PORT}|{subset}|{HOST}")) else { return String::new() };
    match Cluster::decode(any.value.as_slice()).unwrap().transport_socket.and_then(|t| t.config_type) {
        Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) => {
            String::from_utf8_lossy(&any.value).into_owned()
        }
        None => String::new(),
    }
}

/// A service whose workloads run as two service accounts: istiod's clusters then carry one SAN
/// per account (gRFC A29: the peer must match any). Both clients accept them and reach the
/// workload of the second account; an endpoint presenting a third account is refused by both.
async fn several_service_accounts(world: &World, pair: &mut Pair) {
    let canary_sa = workload::spiffe("default", "reviews-canary");
    let canary = backend(workload_ip(7), "reviews-canary", "v2", Behaviour::Answer).await;
    world.istiod.apply("reviews-vs", &route_all("v2"));
    world.istiod.apply(
        "reviews-we2",
        &workload_entry("reviews-v2", "reviews", "v2", canary.handle.local_addr(), "reviews-canary"),
    );
    let both = |r: &std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Any>| {
        let sans = sans_of(r, "v2");
        sans.contains(&workload::spiffe("default", "reviews"))
            && sans.contains(&workload::spiffe("default", "reviews-canary"))
    };
    pair.wait_acked(&world.recorder, CDS, "two SANs on the clusters", both).await;
    pair.wait_acked(&world.recorder, RDS, "the all-to-v2 route", |r| weights(r) == only("v2")).await;
    pair.settle("the canary's endpoint in use", |o| o.version("v2") == 20).await;
    let (m, g) = pair.round(&Calls::new(20).fail_fast().timeout(Duration::from_secs(5))).await;
    eprintln!("two service accounts: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!((o.version("v2"), o.failed()), (20, 0), "{who}: {o:?}");
    }
    assert!(canary.seen.calls.load(std::sync::atomic::Ordering::SeqCst) >= 40);

    // The attack: an endpoint of the second account's WorkloadEntry presenting a third account.
    let impostor = backend(workload_ip(8), "ratings", "impostor", Behaviour::Answer).await;
    world.istiod.apply(
        "reviews-we2",
        &workload_entry("reviews-v2", "reviews", "v2", impostor.handle.local_addr(), "reviews-canary"),
    );
    let impostor_port = impostor.handle.local_addr().port();
    wait_v2_endpoint(world, pair, "the impostor's endpoint", impostor_port).await;
    pair.wait_acked(&world.recorder, CDS, "two SANs on the clusters", both).await;
    pair.settle("the impostor's endpoint in use", |o| o.versions.is_empty()).await;
    let (m, g) = pair.round(&Calls::new(20).fail_fast().timeout(Duration::from_secs(5))).await;
    eprintln!("to an impostor of two accounts: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!(o.errors.get("UNAVAILABLE"), Some(&20), "{who} called the impostor: {o:?}");
    }
    let error = m.first_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("spiffe://cluster.local/ns/default/sa/ratings")
            && error.contains("an identity matching one of")
            && error.contains(&canary_sa),
        "{m:?}"
    );
    assert_eq!(impostor.seen.calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    world.istiod.apply("reviews-we2", &workload_entry("reviews-v2", "reviews", "v2", world.addr("v2"), "reviews"));
    world.istiod.apply("reviews-vs", &split(90, 10));
    pair.wait_acked(&world.recorder, CDS, "one SAN again", |r| !sans_of(r, "v2").contains("reviews-canary")).await;
    pair.wait_acked(&world.recorder, RDS, "the 90/10 route", |r| {
        weights(r) == vec![("v1".into(), 90), ("v2".into(), 10)]
    })
    .await;
}

/// How many routes the route configuration's virtual host has, and how many carry a filter
/// override (istiod puts a VirtualService's `fault` there).
fn routes_and_overrides(
    resources: &std::collections::BTreeMap<String, envoy_types::pb::google::protobuf::Any>,
) -> (usize, usize) {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;
    let Some(any) = resources.get(&format!("outbound|{PORT}||{HOST}")) else { return (0, 0) };
    let rc = RouteConfiguration::decode(any.value.as_slice()).unwrap();
    let routes = rc.virtual_hosts.first().map(|v| v.routes.as_slice()).unwrap_or_default();
    (routes.len(), routes.iter().filter(|r| !r.typed_per_filter_config.is_empty()).count())
}

/// Header routing and a gRPC fault abort (gRFC A33's `grpc_status`) under load: calls with
/// `end-user: jason` all reach v2; the others reach v1, a fifth of them aborted with
/// `RESOURCE_EXHAUSTED` (mesh's share is exact, grpcio's random, both within a binomial
/// tolerance), with no other failure, in rounds and in a background load alike.
async fn header_route_and_grpc_abort_under_load(world: &World, pair: &mut Pair) {
    world.istiod.apply(
        "reviews-vs",
        &virtual_service(&format!(
            "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
  - fault: {{abort: {{grpcStatus: RESOURCE_EXHAUSTED, percentage: {{value: 20}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
"
        )),
    );
    pair.wait_acked(&world.recorder, RDS, "the header route and the abort", |r| {
        weights(r) == only("v2") && routes_and_overrides(r) == (2, 1)
    })
    .await;
    pair.settle("the abort in use", |o| o.errors.contains_key("RESOURCE_EXHAUSTED")).await;
    let load = Calls::new(0).concurrency(2);
    let mesh_load = MeshLoad::start(&pair.channel, &load);
    pair.grpcio.load_start(&load).await;
    let aborted_fifth = |o: &istiod_support::grpcio::Outcome, n: usize| {
        let aborted = o.errors.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0);
        o.version("v1") + aborted == n && o.versions.len() <= 1 && o.errors.len() <= 1 && within(aborted, n, 0.2)
    };
    let (m, g) = pair.round(&Calls::new(400)).await;
    eprintln!("20% abort: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert!(aborted_fifth(o, 400), "{who}: {o:?}");
    }
    let (m, g) = pair.round(&Calls::new(200).header("end-user", "jason")).await;
    eprintln!("end-user jason: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert_eq!((o.version("v2"), o.failed()), (200, 0), "{who}: {o:?}");
    }
    let (m, g) = (mesh_load.stop().await, pair.grpcio.load_stop().await);
    eprintln!("under load, 20% abort: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        let n = o.calls();
        assert!(n >= 50 && aborted_fifth(o, n), "{who} under load: {o:?}");
    }
    world.istiod.apply("reviews-vs", &split(90, 10));
    pair.wait_acked(&world.recorder, RDS, "the 90/10 route", |r| {
        weights(r) == vec![("v1".into(), 90), ("v2".into(), 10)]
    })
    .await;
}

/// The connection pool's `http2MaxRequests` becomes the cluster's circuit breaker: with one
/// request allowed and a slow backend, concurrent calls beyond it fail at once, in both clients.
async fn connection_pool_limits_concurrent_calls(world: &World, pair: &mut Pair) {
    world.istiod.apply("reviews-dr", &destination_rule("    connectionPool: {http: {http2MaxRequests: 1}}\n"));
    world.istiod.apply("reviews-vs", &route_all("v3"));
    pair.wait_acked(&world.recorder, CDS, "max_requests 1", |r| {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::Message;
        r.get(&format!("outbound|{PORT}|v3|{HOST}")).is_some_and(|a| {
            Cluster::decode(a.value.as_slice())
                .unwrap()
                .circuit_breakers
                .is_some_and(|c| c.thresholds.first().and_then(|t| t.max_requests.as_ref()).map(|m| m.value) == Some(1))
        })
    })
    .await;
    pair.wait_acked(&world.recorder, RDS, "the all-to-v3 route", |r| weights(r) == only("v3")).await;
    pair.settle("the all-to-v3 route in use", |o| o.version("v1") + o.version("v2") == 0 && o.version("v3") > 0).await;
    let calls = Calls::new(20).concurrency(10).timeout(Duration::from_secs(10));
    let (m, g) = pair.round(&calls).await;
    eprintln!("max_requests 1, 10 at a time: mesh {m:?}, grpcio {g:?}");
    for (who, o) in [("mesh", &m), ("grpcio", &g)] {
        assert!(o.version("v3") >= 1, "{who}: {o:?}");
        assert!(o.failed() >= 5, "{who} let more than one call in flight: {o:?}");
        assert_eq!(o.version("v3") + o.errors.get("UNAVAILABLE").copied().unwrap_or(0), 20, "{who}: {o:?}");
    }
    world.istiod.apply("reviews-dr", &destination_rule(""));
    world.istiod.apply("reviews-vs", &split(90, 10));
    pair.wait_acked(&world.recorder, RDS, "the 90/10 route", |r| {
        weights(r) == vec![("v1".into(), 90), ("v2".into(), 10)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_client_side() {
    let Some(world) = World::start().await else { return };
    let started = std::time::Instant::now();
    let mut pair = Pair::start(&world.recorder, &world.python, &target(), "productpage");
    weights_edited_under_load(&world, &mut pair).await;
    workload_entry_added_and_removed_under_load(&world, &mut pair).await;
    istio_mutual_checks_the_san(&world, &mut pair).await;
    several_service_accounts(&world, &mut pair).await;
    header_route_and_grpc_abort_under_load(&world, &mut pair).await;
    connection_pool_limits_concurrent_calls(&world, &mut pair).await;
    eprintln!("client checks took {:?}", started.elapsed());
    let _ = Duration::ZERO;
}
