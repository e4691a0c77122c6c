//! mesh's xDS client against a real ADS control plane over real sockets, with real mTLS: the
//! control plane (tests/xds_support) serves Istio-shaped resources; the greeter backends are mesh
//! gRPC servers presenting SPIFFE certificates from a test CA; the client takes its identity from
//! the bootstrap's `file_watcher` certificate provider, as Istio's grpc-agent template sets it up.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod xds_support;

use std::{net::SocketAddr, path::Path, sync::atomic::Ordering, time::Duration};

use grpc_support::{Options, hello, pb::greeter_client::GreeterClient, serve};
use mesh::{
    core::{Discovery, IdentitySource, ServiceName, ServiceSnapshot, SnapshotWatch, identity::dev::DevCa},
    tonic::MeshChannel,
    tower::client::ClientConfig,
    xds::{Bootstrap, XdsDiscovery},
};
use xds_support::{ControlPlane, Resources, resources as r};

const HOST: &str = "reviews.default.svc.cluster.local";
const PORT: u16 = 9080;
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn listener() -> String {
    format!("{HOST}:{PORT}")
}

fn cluster(subset: &str) -> String {
    r::cluster_name(HOST, PORT, subset)
}

struct Setup {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    xds: XdsDiscovery,
    service: ServiceName,
    client: GreeterClient<MeshChannel>,
}

/// The resources for `weights` over subsets, each subset's endpoints given.
fn resources(weights: &[(&str, u32)], endpoints: &[(&str, Vec<SocketAddr>)]) -> Resources {
    let mut res = Resources::default();
    res.set(&listener(), &r::client_listener(&listener()));
    set_routes(&mut res, weights);
    for (subset, eps) in endpoints {
        res.set(&cluster(subset), &r::cluster(&cluster(subset), Some(REVIEWS)));
        res.set(&cluster(subset), &r::load_assignment(&cluster(subset), eps));
    }
    res
}

fn set_routes(res: &mut Resources, weights: &[(&str, u32)]) {
    let names: Vec<(String, u32)> = weights.iter().map(|(s, w)| (cluster(s), *w)).collect();
    let refs: Vec<(&str, u32)> = names.iter().map(|(c, w)| (c.as_str(), *w)).collect();
    res.set(&listener(), &r::route_config(&listener(), HOST, PORT, &refs));
}

fn write_client_certs(ca: &DevCa, dir: &Path) {
    let me = ca.issue("/ns/default/sa/client").unwrap();
    std::fs::write(dir.join("cert.pem"), &me.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &me.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
}

async fn setup(ca: &DevCa, res: Resources) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write_client_certs(ca, dir.path());
    let cp = ControlPlane::start(res).await;
    let bootstrap = xds_support::bootstrap(dir.path(), cp.addr, Some(dir.path()));
    let xds = XdsDiscovery::builder(Bootstrap::from_file(&bootstrap).unwrap())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .seed(7)
        .build()
        .unwrap();
    let service = xds.target(&listener()).unwrap();
    let identity = xds.identity("default").unwrap();
    let mut config = ClientConfig::default();
    config.seed = Some(11);
    let channel = MeshChannel::builder(xds.clone(), service.clone()).identity(identity).config(config).build().unwrap();
    Setup { _dir: dir, cp, xds, service, client: GreeterClient::new(channel) }
}

fn backend_identity(ca: &DevCa) -> IdentitySource {
    IdentitySource::fixed(ca.identity("/ns/default/sa/reviews").unwrap())
}

/// Sends `n` calls, `concurrency` at a time; returns (v1, v2, errors).
async fn traffic(client: &GreeterClient<MeshChannel>, n: usize, concurrency: usize) -> (usize, usize, Vec<String>) {
    let per = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut v1, mut v2, mut errors) = (0, 0, Vec::new());
                for _ in 0..per {
                    match client.say_hello(hello("xds")).await {
                        Ok(reply) if reply.get_ref().message.contains(" from v1,") => v1 += 1,
                        Ok(reply) if reply.get_ref().message.contains(" from v2,") => v2 += 1,
                        Ok(reply) if reply.get_ref().message.contains(" from v3,") => {}
                        Ok(reply) => errors.push(format!("unexpected reply {:?}", reply.get_ref().message)),
                        Err(status) => errors.push(status.to_string()),
                    }
                }
                (v1, v2, errors)
            })
        })
        .collect();
    let mut total = (0, 0, Vec::new());
    for t in tasks {
        let (a, b, mut e) = t.await.unwrap();
        total.0 += a;
        total.1 += b;
        total.2.append(&mut e);
    }
    total
}

/// Waits until the snapshot satisfies `cond`.
async fn wait_snapshot(watch: &mut SnapshotWatch, cond: impl FnMut(&ServiceSnapshot) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), watch.wait_for(cond))
        .await
        .expect("the snapshot never changed")
        .unwrap();
}

fn weights_of(s: &ServiceSnapshot) -> Vec<u32> {
    weights(s)
}

fn weights(s: &ServiceSnapshot) -> Vec<u32> {
    s.routes().first().map(|r| r.targets.iter().map(|t| t.weight.get()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_apply_live_without_failures() {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let v1 = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let v2 = serve(backend_identity(&ca), Options { version: "v2", ..Default::default() }).await;
    let endpoints = [("v1", vec![v1.handle.local_addr()]), ("v2", vec![v2.handle.local_addr()])];
    let s = setup(&ca, resources(&[("v1", 90), ("v2", 10)], &endpoints)).await;
    let mut watch = s.xds.watch(&s.service);
    wait_snapshot(&mut watch, |snap| weights(snap) == [90, 10]).await;

    // The split, measured with nothing else in flight: mesh's shares are exact, so within a few.
    let (a, b, errors) = traffic(&s.client, 1000, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!((90..=110).contains(&b), "90/10: v1 {a}, v2 {b}");
    eprintln!("90/10: v1 {a}, v2 {b}");

    // Each change is pushed under load: not one call may fail while it applies.
    let change = async |weights: &[(&str, u32)], expected: &[u32]| {
        let client = s.client.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (progress, mut done) = tokio::sync::watch::channel(0usize);
        let load = tokio::spawn(async move {
            let mut errors = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let (a, b, mut e) = traffic(&client, 8, 4).await;
                progress.send_modify(|n| *n += a + b + e.len());
                errors.append(&mut e);
            }
            (*progress.borrow(), errors)
        });
        // Calls before the change, while it applies, and after it.
        done.wait_for(|n| *n >= 40).await.unwrap();
        s.cp.update(|res| set_routes(res, weights));
        let mut watch = s.xds.watch(&s.service);
        wait_snapshot(&mut watch, |snap| weights_of(snap) == expected).await;
        let applied = *done.borrow();
        done.wait_for(|n| *n >= applied + 40).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let (calls, errors) = load.await.unwrap();
        assert!(
            errors.is_empty(),
            "during the change to {weights:?}: {} failures: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        calls
    };

    let during = change(&[("v1", 50), ("v2", 50)], &[50, 50]).await;
    let (a, b, errors) = traffic(&s.client, 1000, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!((490..=510).contains(&b), "50/50: v1 {a}, v2 {b}");
    eprintln!("50/50: v1 {a}, v2 {b} ({during} calls during the change, 0 failed)");

    let during = change(&[("v1", 0), ("v2", 100)], &[100]).await;
    // Nothing in flight now: after 0/100, not one call reaches v1.
    let v1_calls = v1.seen.calls.load(Ordering::SeqCst);
    let (a, b, errors) = traffic(&s.client, 1000, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((a, b), (0, 1000), "0/100");
    assert_eq!(v1.seen.calls.load(Ordering::SeqCst), v1_calls, "a call reached v1 after 0/100");
    eprintln!("0/100: v1 {a}, v2 {b} ({during} calls during the change, 0 failed)");
    // The client ACKed every version, and the cluster v1 is no longer watched.
    let heard = s.cp.heard().borrow().clone();
    assert!(heard.nacks.is_empty(), "{:?}", heard.nacks);
    let subsets: Vec<String> = watch.current().unwrap().subsets().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(subsets, [mesh::xds::subset_for_cluster(&cluster("v2")).to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_removed_by_eds_gets_no_new_calls() {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let a = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let b = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let s = setup(&ca, resources(&[("v1", 100)], &[("v1", vec![a.handle.local_addr(), b.handle.local_addr()])])).await;
    let mut watch = s.xds.watch(&s.service);
    wait_snapshot(&mut watch, |snap| snap.endpoints().len() == 2).await;
    let (v1, _, errors) = traffic(&s.client, 200, 4).await;
    assert!(errors.is_empty() && v1 == 200, "{errors:?}");
    assert!(b.seen.calls.load(Ordering::SeqCst) > 0, "both endpoints take calls first");

    s.cp.update(|res| res.set(&cluster("v1"), &r::load_assignment(&cluster("v1"), &[a.handle.local_addr()])));
    wait_snapshot(&mut watch, |snap| snap.endpoints().len() == 1).await;
    let before = b.seen.calls.load(Ordering::SeqCst);
    let (v1, _, errors) = traffic(&s.client, 200, 4).await;
    assert!(errors.is_empty() && v1 == 200, "{errors:?}");
    assert_eq!(b.seen.calls.load(Ordering::SeqCst), before, "the removed endpoint got calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_the_control_plane_and_follows_its_successor() {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let v1 = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let v2 = serve(backend_identity(&ca), Options { version: "v2", ..Default::default() }).await;
    let endpoints = [("v1", vec![v1.handle.local_addr()]), ("v2", vec![v2.handle.local_addr()])];
    let s = setup(&ca, resources(&[("v1", 100)], &endpoints)).await;
    let mut watch = s.xds.watch(&s.service);
    // A single-cluster route: one target.
    wait_snapshot(&mut watch, |snap| weights(snap) == [1]).await;
    let mut status = s.xds.status();
    status.wait_for(|st| st.connected).await.unwrap();

    let Setup { cp, client, xds, service, _dir, .. } = s;
    let (addr, mut res) = cp.kill().await;
    status.wait_for(|st| !st.connected).await.unwrap();
    // The last good configuration stays, with the failure reported beside it.
    let (a, b, errors) = traffic(&client, 300, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((a, b), (300, 0));
    assert!(watch.current().is_some());
    assert!(watch.last_error().is_some_and(|e| e.to_string().contains("xds")), "{:?}", watch.last_error());

    // A new control plane on the same address, with another configuration.
    set_routes(&mut res, &[("v2", 100)]);
    let _cp = ControlPlane::start_on(addr, res).await;
    let v2_subset = mesh::xds::subset_for_cluster(&cluster("v2"));
    wait_snapshot(&mut watch, |snap| snap.subsets().len() == 1 && snap.subsets()[0].name == v2_subset).await;
    assert_eq!(xds.cluster(&service, &v2_subset), Some(cluster("v2")));
    let (a, b, errors) = traffic(&client, 300, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((a, b), (0, 300));
    assert!(status.borrow().streams >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resource_is_nacked_by_name_while_traffic_continues() {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let v1 = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let v2 = serve(backend_identity(&ca), Options { version: "v2", ..Default::default() }).await;
    let endpoints = [("v1", vec![v1.handle.local_addr()]), ("v2", vec![v2.handle.local_addr()])];
    let s = setup(&ca, resources(&[("v1", 50), ("v2", 50)], &endpoints)).await;
    let mut watch = s.xds.watch(&s.service);
    wait_snapshot(&mut watch, |snap| weights(snap) == [50, 50]).await;
    let version = watch.current_version();

    // MAGLEV is a load-balancing policy mesh does not have.
    let mut bad = r::cluster(&cluster("v2"), Some(REVIEWS));
    bad.lb_policy = 5;
    s.cp.update(|res| res.set(&cluster("v2"), &bad));
    let detail = s.cp.wait_nack(|d| d.contains("lb_policy")).await;
    assert!(detail.contains(&format!("CDS resource \"{}\"", cluster("v2"))), "{detail}");
    assert!(detail.contains("lb_policy: MAGLEV is not supported"), "{detail}");
    assert_eq!(s.xds.status().borrow().last_nack.as_deref(), Some(detail.as_str()));

    // The last good cluster stays: traffic continues, split as before.
    let (a, b, errors) = traffic(&s.client, 400, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!((180..=220).contains(&b), "v1 {a}, v2 {b}");
    assert_eq!(watch.current_version(), version, "a NACKed update published a snapshot");

    // An endpoint update with a bad address is NACKed too, naming the field.
    s.cp.update(|res| {
        let mut la = r::load_assignment(&cluster("v1"), &[v1.handle.local_addr()]);
        if let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) =
            &mut la.endpoints[0].lb_endpoints[0].host_identifier
            && let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
                &mut e.address.as_mut().unwrap().address
        {
            sa.address = "not-an-ip".into();
        }
        res.set(&cluster("v1"), &la);
    });
    let detail = s.cp.wait_nack(|d| d.contains("not-an-ip")).await;
    assert!(
        detail.contains("EDS resource")
            && detail.contains("endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"),
        "{detail}"
    );
    let (_, _, errors) = traffic(&s.client, 100, 2).await;
    assert!(errors.is_empty(), "{errors:?}");

    // Fixed: the next good version is ACKed and used.
    s.cp.update(|res| {
        res.set(&cluster("v2"), &r::cluster(&cluster("v2"), Some(REVIEWS)));
        res.set(&cluster("v1"), &r::load_assignment(&cluster("v1"), &[v1.handle.local_addr()]));
        set_routes(res, &[("v1", 10), ("v2", 90)]);
    });
    wait_snapshot(&mut watch, |snap| weights(snap) == [10, 90]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_an_endpoint_presenting_another_spiffe_id() {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let good = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let intruder_id = IdentitySource::fixed(ca.identity("/ns/default/sa/ratings").unwrap());
    let intruder = serve(intruder_id, Options { version: "v2", ..Default::default() }).await;
    let endpoints = [("v1", vec![good.handle.local_addr()]), ("v2", vec![intruder.handle.local_addr()])];
    let s = setup(&ca, resources(&[("v1", 100)], &endpoints)).await;
    let mut watch = s.xds.watch(&s.service);
    // A single-cluster route: one target.
    wait_snapshot(&mut watch, |snap| weights(snap) == [1]).await;
    let snap = watch.current().unwrap();
    assert_eq!(
        snap.expected_identity(&snap.endpoints()[0]).and_then(|id| id.as_exact()).map(|id| id.as_str()),
        Some(REVIEWS)
    );
    let (a, _, errors) = traffic(&s.client, 50, 2).await;
    assert!(errors.is_empty() && a == 50, "{errors:?}");

    s.cp.update(|res| set_routes(res, &[("v2", 100)]));
    wait_snapshot(&mut watch, |snap| snap.subsets().len() == 1 && snap.subsets()[0].name.as_str().contains("v2")).await;
    let mut client = s.client.clone();
    let err = client.say_hello(hello("xds")).await.unwrap_err();
    assert!(err.message().contains(REVIEWS) || err.message().contains("ratings"), "{err}");
    assert_eq!(intruder.seen.calls.load(Ordering::SeqCst), 0, "a call reached the endpoint with the wrong identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_does_not_exist_is_reported_after_the_timeout() {
    let cp = ControlPlane::start(Resources::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = xds_support::bootstrap(dir.path(), cp.addr, None);
    let xds = XdsDiscovery::builder(Bootstrap::from_file(&bootstrap).unwrap())
        .resource_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let service = xds.target("ratings.default.svc.cluster.local:9080").unwrap();
    let mut watch = xds.watch(&service);
    let error = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(e) = watch.last_error() {
                break e;
            }
            watch.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        error.to_string().contains("LDS resource \"ratings.default.svc.cluster.local:9080\" does not exist"),
        "{error}"
    );
    assert!(watch.current().is_none());
}

/// The bootstrap's other ways to the control plane: a Unix socket (`unix:///…`, how Istio's
/// grpc-agent serves xDS to the application) and TLS (`channel_creds` `tls`, verifying the
/// control plane against `ca_certificate_file`, presenting a client certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_over_a_unix_socket_and_over_tls() {
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let v1 = serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await;
    let res = resources(&[("v1", 100)], &[("v1", vec![v1.handle.local_addr()])]);
    let dir = tempfile::tempdir().unwrap();
    write_client_certs(&ca, dir.path());
    let socket = dir.path().join("XDS");
    let _unix = ControlPlane::start_unix(&socket, res.clone()).await;
    let server = ca
        .issue_with(
            &mesh::core::identity::dev::LeafSpec::new(
                &"spiffe://cluster.local/ns/istio-system/sa/istiod".parse().unwrap(),
            )
            .dns("localhost"),
        )
        .unwrap();
    let tls = ControlPlane::start_tls(res, &server.cert_pem, &server.key_pem).await;
    let tls_creds = serde_json::json!([{"type": "tls", "config": {
        "ca_certificate_file": dir.path().join("ca.pem"),
        "certificate_file": dir.path().join("cert.pem"), "private_key_file": dir.path().join("key.pem")}}]);
    let insecure = serde_json::json!([{"type": "insecure"}]);
    let cases = [
        (format!("unix://{}", socket.display()), insecure, "unix"),
        (format!("dns:///localhost:{}", tls.addr.port()), tls_creds, "tls"),
    ];
    for (uri, creds, sub) in cases {
        let sub = dir.path().join(sub);
        std::fs::create_dir(&sub).unwrap();
        let bootstrap = xds_support::bootstrap_for(&sub, &uri, creds, Some(dir.path()));
        let xds = XdsDiscovery::builder(Bootstrap::from_file(&bootstrap).unwrap()).build().unwrap();
        let service = xds.target(&listener()).unwrap();
        let channel =
            MeshChannel::builder(xds.clone(), service).identity(xds.identity("default").unwrap()).build().unwrap();
        let (a, b, errors) = traffic(&GreeterClient::new(channel), 20, 2).await;
        assert!(errors.is_empty(), "{uri}: {errors:?}");
        assert_eq!((a, b), (20, 0), "{uri}");
    }
}

/// Istio's retry policy, a `max_stream_duration` and a VirtualService-style fault, pushed over xDS,
/// act on real calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_and_faults_from_xds_act_on_calls() {
    use envoy_types::pb::{
        envoy::{
            config::route::v3::{route::Action, route_action::MaxStreamDuration},
            extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort::ErrorType},
            r#type::v3::FractionalPercent,
        },
        google::protobuf::Duration as PbDuration,
    };
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let flaky = serve(
        backend_identity(&ca),
        Options { version: "v1", behaviour: grpc_support::Behaviour::FailFirstAttempts, ..Default::default() },
    )
    .await;
    let (dropped, mut handler_dropped) = tokio::sync::mpsc::unbounded_channel();
    let hang = serve(
        backend_identity(&ca),
        Options { version: "v2", behaviour: grpc_support::Behaviour::Hang(dropped), ..Default::default() },
    )
    .await;
    let healthy = serve(backend_identity(&ca), Options { version: "v3", ..Default::default() }).await;
    let endpoints = [
        ("v1", vec![flaky.handle.local_addr()]),
        ("v2", vec![hang.handle.local_addr()]),
        ("v3", vec![healthy.handle.local_addr()]),
    ];
    let s = setup(&ca, resources(&[("v3", 100)], &endpoints)).await;
    let mut watch = s.xds.watch(&s.service);
    wait_snapshot(&mut watch, |snap| weights(snap) == [1]).await;

    // Istio's default retry_on has `unavailable`. mesh bounds retries with the destination's
    // budget (20% of recent calls, plus 10 a second): 50 calls earn at least 10 retries.
    let (_, _, errors) = traffic(&s.client, 50, 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    s.cp.update(|res| set_routes(res, &[("v1", 100)]));
    let v1 = mesh::xds::subset_for_cluster(&cluster("v1"));
    wait_snapshot(&mut watch, |snap| snap.subsets().iter().all(|s| s.name == v1)).await;
    // Every first attempt on v1 fails; every call succeeds on its retry.
    let (a, _, errors) = traffic(&s.client, 5, 1).await;
    assert!(errors.is_empty() && a == 5, "{errors:?}");
    assert_eq!(*flaky.seen.previous_attempts.lock().unwrap(), vec!["1".to_owned(); 5]);

    // max_stream_duration (gRFC A31) bounds a call to an endpoint that never answers.
    s.cp.update(|res| {
        let mut rc = r::route_config(&listener(), HOST, PORT, &[(&cluster("v2"), 1)]);
        if let Some(Action::Route(action)) = &mut rc.virtual_hosts[0].routes[0].action {
            action.max_stream_duration = Some(MaxStreamDuration {
                max_stream_duration: Some(PbDuration { seconds: 0, nanos: 300_000_000 }),
                ..Default::default()
            });
        }
        res.set(&listener(), &rc);
    });
    wait_snapshot(&mut watch, |snap| snap.routes()[0].timeout == Some(Duration::from_millis(300))).await;
    let started = std::time::Instant::now();
    let err = s.client.clone().say_hello(hello("slow")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    handler_dropped.recv().await.unwrap();

    // A fault override on the route (a VirtualService `fault.abort`) fails calls before they leave.
    let calls = flaky.seen.calls.load(Ordering::SeqCst);
    s.cp.update(|res| {
        let mut rc = r::route_config(&listener(), HOST, PORT, &[(&cluster("v1"), 1)]);
        let abort = HttpFault {
            abort: Some(FaultAbort {
                error_type: Some(ErrorType::GrpcStatus(14)),
                percentage: Some(FractionalPercent { numerator: 100, denominator: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        rc.virtual_hosts[0].routes[0].typed_per_filter_config.insert("envoy.filters.http.fault".into(), r::any(&abort));
        res.set(&listener(), &rc);
    });
    wait_snapshot(&mut watch, |snap| snap.routes()[0].fault.is_some()).await;
    let err = s.client.clone().say_hello(hello("x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(flaky.seen.calls.load(Ordering::SeqCst), calls, "an aborted call reached the endpoint");
}

/// A `RING_HASH` cluster and a route hashing a header (gRFC A42): the same header value goes to the
/// same endpoint, and different values spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_from_xds_keeps_a_header_on_one_endpoint() {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action,
        route_action::{
            HashPolicy,
            hash_policy::{Header, PolicySpecifier},
        },
    };
    let ca = DevCa::new("cluster.local".parse().unwrap()).unwrap();
    let backends = [
        serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await,
        serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await,
        serve(backend_identity(&ca), Options { version: "v1", ..Default::default() }).await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.handle.local_addr()).collect();
    let mut res = resources(&[("v1", 100)], &[("v1", addrs)]);
    let mut c = r::cluster(&cluster("v1"), Some(REVIEWS));
    c.lb_policy = 2; // RING_HASH
    res.set(&cluster("v1"), &c);
    let mut rc = r::route_config(&listener(), HOST, PORT, &[(&cluster("v1"), 1)]);
    if let Some(Action::Route(action)) = &mut rc.virtual_hosts[0].routes[0].action {
        action.hash_policy.push(HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: "x-user".into(),
                regex_rewrite: None,
            })),
            terminal: false,
        });
    }
    res.set(&listener(), &rc);
    let s = setup(&ca, res).await;
    let mut watch = s.xds.watch(&s.service);
    wait_snapshot(&mut watch, |snap| snap.policies().load_balancer.header.is_some()).await;
    let calls = || backends.iter().map(|b| b.seen.calls.load(Ordering::SeqCst)).collect::<Vec<_>>();
    let mut used = std::collections::BTreeSet::new();
    for user in 0..20 {
        let before = calls();
        for _ in 0..5 {
            let mut request = tonic::Request::new(hello("hash"));
            request.metadata_mut().insert("x-user", format!("user-{user}").parse().unwrap());
            s.client.clone().say_hello(request).await.unwrap();
        }
        let after = calls();
        let hit: Vec<usize> = (0..3).filter(|i| after[*i] != before[*i]).collect();
        assert_eq!(hit.len(), 1, "user-{user} spread over {hit:?}");
        assert_eq!(after[hit[0]] - before[hit[0]], 5);
        used.insert(hit[0]);
    }
    assert!(used.len() >= 2, "20 users all hashed to one endpoint of 3");
}
