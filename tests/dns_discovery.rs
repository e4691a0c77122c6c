//! DNS discovery against a real DNS server (dnsmasq) while requests flow: the canary split from a
//! file, the pods from DNS. Records are added and removed, the server is stopped, one subset's name
//! vanishes (NXDOMAIN), SRV records give ports and weights, and A and AAAA records both count.
//!
//! Needs dnsmasq (`MESH_DNSMASQ`, or on the PATH or in /usr/sbin); without it the tests skip with
//! the reason, unless `MESH_INTEROP=1`: then they fail.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod dns_support;
mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dns_support::{Dnsmasq, Pod, listeners_on_one_port, pod};
use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        Discovery, DiscoveryError, FileDiscovery, ServiceName, ServiceSnapshot, SnapshotWatch,
        discovery::ComposedDiscovery,
    },
    dns::{DnsDiscovery, DnsLookupError},
    tower::{Upstream, client::MeshClient},
};
use support::identity;
use tower::ServiceExt;

type Body = Empty<bytes::Bytes>;
type Client = mesh::tower::client::MeshClient<Body>;

const WAIT: Duration = Duration::from_secs(30);
const V1: &str = "reviews-v1.mesh.test";
const V2: &str = "reviews-v2.mesh.test";

/// The canary split in a file; the subsets name DNS names (A records, one port for every pod).
fn policy_file(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("services.yaml");
    let text = format!(
        "services:\n  reviews:\n    identity: spiffe://example.org/backend\n    subsets:\n      \
         - {{ name: v1, dns: {V1}, port: {port} }}\n      - {{ name: v2, dns: {V2}, port: {port} }}\n    \
         routes:\n      - name: canary\n        targets: [ {{ subset: v1, weight: 50 }}, {{ subset: v2, weight: 50 }} ]\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn hosts(records: &[(&Pod, &str)]) -> String {
    records.iter().map(|(pod, name)| format!("{} {name}\n", pod.addr().ip())).collect()
}

async fn composed(dns: &Dnsmasq, file: &Path) -> ComposedDiscovery {
    DnsDiscovery::builder()
        .nameserver(dns.nameserver())
        .refresh(Duration::from_millis(50), Duration::from_secs(1))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .compose(FileDiscovery::open(file).unwrap())
        .build()
        .unwrap()
}

fn client(discovery: &ComposedDiscovery) -> Client {
    MeshClient::builder(discovery.clone(), "reviews".parse::<ServiceName>().unwrap())
        .identity(identity("/web"))
        .build::<Body>()
        .unwrap()
}

fn subset(snapshot: &ServiceSnapshot, name: &str) -> Vec<SocketAddr> {
    let subset = snapshot.subset(&name.parse().unwrap()).unwrap();
    let mut addresses: Vec<_> = snapshot.subset_endpoints(subset).map(|ep| ep.address).collect();
    addresses.sort_unstable();
    addresses
}

/// Waits until the snapshot and the reported error satisfy `condition`.
async fn until(
    watch: &mut SnapshotWatch,
    mut condition: impl FnMut(&ServiceSnapshot, Option<&DiscoveryError>) -> bool,
) -> Arc<ServiceSnapshot> {
    let wait = async {
        loop {
            if let Some(snapshot) = watch.current()
                && condition(&snapshot, watch.last_error().as_deref())
            {
                return snapshot;
            }
            watch.changed().await.unwrap();
        }
    };
    tokio::time::timeout(WAIT, wait).await.expect("discovery did not reach the expected state")
}

/// The DNS lookup error behind a subset's reported error.
fn lookup_error(error: Option<&DiscoveryError>) -> Option<(&str, &DnsLookupError)> {
    let DiscoveryError::Endpoints { subset, source, .. } = error? else { return None };
    let DiscoveryError::Backend { source, .. } = &**source else { return None };
    Some((subset.as_str(), source.downcast_ref::<DnsLookupError>()?))
}

/// Callers sending requests back to back, counting failures, and requests sent after an
/// endpoint was removed that still reached it.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    removed: Arc<Mutex<Option<SocketAddr>>>,
    late: Arc<AtomicUsize>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &Client, callers: usize) -> Self {
        let mut traffic = Self {
            stop: Arc::default(),
            sent: Arc::default(),
            failed: Arc::default(),
            removed: Arc::default(),
            late: Arc::default(),
            callers: Vec::new(),
        };
        for _ in 0..callers {
            let client = client.clone();
            let (stop, sent, failed) = (traffic.stop.clone(), traffic.sent.clone(), traffic.failed.clone());
            let (removed, late) = (traffic.removed.clone(), traffic.late.clone());
            traffic.callers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let removed_before = *removed.lock().unwrap();
                    let request = http::Request::get("/").body(Empty::new()).unwrap();
                    let ok = match client.clone().oneshot(request).await {
                        Ok(response) => {
                            let upstream = response.extensions().get::<Upstream>().map(|u| u.address);
                            if upstream.is_some() && upstream == removed_before {
                                late.fetch_add(1, Ordering::Relaxed);
                            }
                            response.status() == 200 && response.into_body().collect().await.is_ok()
                        }
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
            }));
        }
        traffic
    }

    /// From now on, a request that reaches `address` is counted as late.
    fn removed(&self, address: SocketAddr) {
        *self.removed.lock().unwrap() = Some(address);
    }

    /// Stops the callers; returns (sent, failed, late).
    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for caller in self.callers {
            caller.await.unwrap();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), self.late.load(Ordering::Relaxed))
    }
}

async fn more_hits(pods: &[&Pod], n: usize) {
    for pod in pods {
        let before = pod.hits();
        tokio::time::timeout(WAIT, pod.wait_for_hits_above(before + n)).await.expect("a pod got no more traffic");
    }
}

/// Three pods on 127.0.0.11, .12 and .13, one port: v1a, v1b (v1) and v2.
async fn three_pods() -> (u16, Pod, Pod, Pod) {
    let (port, mut listeners) = listeners_on_one_port(&[[127, 0, 0, 11], [127, 0, 0, 12], [127, 0, 0, 13]]).await;
    let v2 = pod("v2", listeners.pop().unwrap());
    let v1b = pod("v1b", listeners.pop().unwrap());
    let v1a = pod("v1a", listeners.pop().unwrap());
    (port, v1a, v1b, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_added_and_removed_while_requests_flow() {
    let (port, v1a, v1b, v2) = three_pods().await;
    let Some(dns) = Dnsmasq::start(&hosts(&[(&v1a, V1), (&v2, V2)]), &[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let discovery = composed(&dns, &policy_file(dir.path(), port)).await;
    let mut watch = discovery.watch(&"reviews".parse().unwrap());
    let first = tokio::time::timeout(WAIT, watch.ready()).await.unwrap().unwrap();
    assert_eq!((subset(&first, "v1"), subset(&first, "v2")), (vec![v1a.addr()], vec![v2.addr()]));
    let client = client(&discovery);
    let traffic = Traffic::start(&client, 4);
    more_hits(&[&v1a, &v2], 10).await;

    // A pod is added to v1: it gets traffic.
    dns.set_hosts(&hosts(&[(&v1a, V1), (&v1b, V1), (&v2, V2)]));
    until(&mut watch, |s, _| subset(s, "v1") == [v1a.addr(), v1b.addr()]).await;
    more_hits(&[&v1b], 20).await;

    // v1a is removed: once the snapshot without it is out, no new request reaches it.
    dns.set_hosts(&hosts(&[(&v1b, V1), (&v2, V2)]));
    let last = until(&mut watch, |s, _| subset(s, "v1") == [v1b.addr()]).await;
    traffic.removed(v1a.addr());
    let v1a_at_removal = v1a.hits();
    more_hits(&[&v1b, &v2], 50).await;

    let (sent, failed, late) = traffic.finish().await;
    eprintln!(
        "records added/removed: {sent} requests, {failed} failed, {late} late; v1a {} (at removal {v1a_at_removal}), \
         v1b {}, v2 {}; snapshot version {}",
        v1a.hits(),
        v1b.hits(),
        v2.hits(),
        last.version()
    );
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert_eq!(late, 0, "{late} requests sent after v1a's removal reached it");
    assert!(v1a.hits() <= v1a_at_removal + 4, "at most the 4 requests in flight at removal finish there");
    assert!(watch.last_error().is_none(), "{:?}", watch.last_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_dns_server_keeps_the_last_good_set() {
    let (port, v1a, v1b, v2) = three_pods().await;
    let Some(mut dns) = Dnsmasq::start(&hosts(&[(&v1a, V1), (&v2, V2)]), &[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let discovery = composed(&dns, &policy_file(dir.path(), port)).await;
    let mut watch = discovery.watch(&"reviews".parse().unwrap());
    let good = tokio::time::timeout(WAIT, watch.ready()).await.unwrap().unwrap();
    let traffic = Traffic::start(&client(&discovery), 4);

    dns.stop();
    let failing = until(&mut watch, |_, e| lookup_error(e).is_some_and(|(_, e)| e.is_unanswered())).await;
    eprintln!("server stopped: {}", watch.last_error().unwrap());
    assert_eq!(failing.version(), good.version(), "a failed lookup publishes nothing");
    assert_eq!((subset(&failing, "v1"), subset(&failing, "v2")), (vec![v1a.addr()], vec![v2.addr()]));
    more_hits(&[&v1a, &v2], 20).await;

    // Back, with a new pod: the set follows again and the error clears.
    dns.write_hosts(&hosts(&[(&v1a, V1), (&v1b, V1), (&v2, V2)]));
    dns.restart(&[]);
    until(&mut watch, |s, e| e.is_none() && subset(s, "v1") == [v1a.addr(), v1b.addr()]).await;
    more_hits(&[&v1b], 10).await;

    let (sent, failed, _) = traffic.finish().await;
    eprintln!("server stopped and restarted: {sent} requests, {failed} failed");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_for_one_subset_keeps_that_subsets_last_good_set() {
    let (port, v1a, v1b, v2) = three_pods().await;
    let Some(dns) = Dnsmasq::start(&hosts(&[(&v1a, V1), (&v2, V2)]), &[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let discovery = composed(&dns, &policy_file(dir.path(), port)).await;
    let mut watch = discovery.watch(&"reviews".parse().unwrap());
    tokio::time::timeout(WAIT, watch.ready()).await.unwrap().unwrap();
    let traffic = Traffic::start(&client(&discovery), 4);

    // v2's name vanishes while v1 gains a pod: v1 follows, v2 keeps its pod, the error names v2.
    dns.set_hosts(&hosts(&[(&v1a, V1), (&v1b, V1)]));
    let snapshot = until(&mut watch, |s, e| {
        subset(s, "v1").len() == 2 && lookup_error(e).is_some_and(|(subset, e)| subset == "v2" && e.is_nx_domain())
    })
    .await;
    eprintln!("NXDOMAIN: {}", watch.last_error().unwrap());
    assert_eq!(subset(&snapshot, "v2"), [v2.addr()], "v2 keeps its last good set");
    more_hits(&[&v2, &v1b], 20).await;
    assert!(watch.last_error().is_some(), "the error stays reported while the name is missing");

    let (sent, failed, _) = traffic.finish().await;
    eprintln!("NXDOMAIN for v2: {sent} requests, {failed} failed; v2 {}", v2.hits());
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights() {
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (a, b, c) = (pod("a", bind().await), pod("b", bind().await), pod("c", bind().await));
    const SRV: &str = "_http._tcp.reviews.mesh.test";
    // a and b share priority 0 with weights 1 and 3; c (priority 1) is a backup, not used.
    let srv = |records: &[(&Pod, u16, u16)]| -> Vec<String> {
        records
            .iter()
            .map(|(pod, prio, w)| format!("{SRV},{}.mesh.test,{},{prio},{w}", pod.name, pod.addr().port()))
            .collect()
    };
    let hosts = "127.0.0.1 a.mesh.test\n127.0.0.1 b.mesh.test\n127.0.0.1 c.mesh.test\n";
    let Some(mut dns) = Dnsmasq::start(hosts, &srv(&[(&a, 0, 1), (&b, 0, 3), (&c, 1, 5)])) else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  reviews:\n    identity: spiffe://example.org/backend\n    subsets:\n      \
             - {{ name: pods, dns: {SRV} }}\n    routes:\n      - name: all\n        targets: [ {{ subset: pods, weight: 1 }} ]\n    \
             policies:\n      load_balancer: {{ kind: ring_hash, header: x-user }}\n"
        ),
    )
    .unwrap();
    let discovery = composed(&dns, &file).await;
    let mut watch = discovery.watch(&"reviews".parse().unwrap());
    let snapshot = tokio::time::timeout(WAIT, watch.ready()).await.unwrap().unwrap();
    let weights: BTreeMap<_, _> = snapshot.endpoints().iter().map(|ep| (ep.address, ep.weight.get())).collect();
    assert_eq!(weights, BTreeMap::from([(a.addr(), 1), (b.addr(), 3)]), "ports and weights from SRV; c is a backup");

    // Consistent hashing over the weights: b holds three times a's share of the ring.
    let client = client(&discovery);
    let mut served: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for user in 0..2000 {
        let request = http::Request::get("/").header("x-user", format!("user-{user}")).body(Empty::new()).unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        *served.entry(response.extensions().get::<Upstream>().unwrap().address).or_default() += 1;
    }
    let b_share = served.get(&b.addr()).copied().unwrap_or(0) as f64 / 2000.0;
    eprintln!("SRV weights 1:3: served {served:?}, b's share {b_share:.3}");
    assert_eq!(served.get(&c.addr()), None, "the backup got nothing");
    assert!((0.6..=0.9).contains(&b_share), "b's share {b_share} is not near 3/4");

    // The records change (a restart of the server): c replaces b.
    dns.restart(&srv(&[(&a, 0, 1), (&c, 0, 2)]));
    let changed = until(&mut watch, |s, e| e.is_none() && s.endpoints().iter().any(|ep| ep.address == c.addr())).await;
    let weights: BTreeMap<_, _> = changed.endpoints().iter().map(|ep| (ep.address, ep.weight.get())).collect();
    assert_eq!(weights, BTreeMap::from([(a.addr(), 1), (c.addr(), 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_both_give_endpoints() {
    // One pod on 127.0.0.1 and one on ::1, on one port, behind one name with an A and an AAAA record.
    let mut listeners = None;
    for _ in 0..20 {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port))).await {
            listeners = Some((port, v4, v6));
            break;
        }
    }
    let (port, v4, v6) = listeners.expect("no port free on both 127.0.0.1 and ::1 (is IPv6 loopback up?)");
    let (v4, v6) = (pod("v4", v4), pod("v6", v6));
    let Some(dns) = Dnsmasq::start(&hosts(&[(&v4, V1), (&v6, V1), (&v4, V2)]), &[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let discovery = composed(&dns, &policy_file(dir.path(), port)).await;
    let mut watch = discovery.watch(&"reviews".parse().unwrap());
    let snapshot = tokio::time::timeout(WAIT, watch.ready()).await.unwrap().unwrap();
    assert_eq!(subset(&snapshot, "v1"), [v4.addr(), v6.addr()]);

    let traffic = Traffic::start(&client(&discovery), 2);
    more_hits(&[&v6], 10).await;
    let (sent, failed, _) = traffic.finish().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}
