use std::time::Duration;

use super::*;
use crate::{
    discovery::{EndpointsPublisher, StaticDiscovery},
    model::Subset,
    name::DnsName,
};

/// An endpoint source driven by the test: one publisher per target, made on first watch.
#[derive(Clone, Default)]
struct Driven(Arc<Mutex<HashMap<DnsTarget, Arc<EndpointsPublisher>>>>);

impl Driven {
    fn publisher(&self, target: &DnsTarget) -> Arc<EndpointsPublisher> {
        let mut map = self.0.lock().unwrap();
        map.entry(target.clone()).or_insert_with(|| Arc::new(EndpointsPublisher::new(target.clone()))).clone()
    }
}

impl EndpointDiscovery for Driven {
    fn watch_endpoints(&self, target: &DnsTarget) -> EndpointsWatch {
        self.publisher(target).subscribe()
    }
}

fn target(name: &str) -> DnsTarget {
    DnsTarget::addresses(DnsName::new(name).unwrap(), 80)
}

fn eps(ports: &[u16]) -> Vec<Endpoint> {
    ports.iter().map(|p| Endpoint::new(([127, 0, 0, 1], *p).into())).collect()
}

fn ports(snapshot: &ServiceSnapshot, subset: &str) -> Vec<u16> {
    let subset = snapshot.subset(&subset.parse().unwrap()).unwrap();
    let mut ports: Vec<_> = snapshot.subset_endpoints(subset).map(|ep| ep.address.port()).collect();
    ports.sort_unstable();
    ports
}

async fn until(watch: &mut SnapshotWatch, mut condition: impl FnMut(&ServiceSnapshot) -> bool) -> Arc<ServiceSnapshot> {
    tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|s| condition(s))).await.unwrap().unwrap()
}

async fn until_error(watch: &mut SnapshotWatch) -> Arc<DiscoveryError> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(error) = watch.last_error() {
                return error;
            }
            watch.changed().await.unwrap();
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn dns_subsets_get_their_endpoints_and_errors_keep_the_last_set() {
    let service: ServiceName = "reviews".parse().unwrap();
    let (t1, t2) = (target("v1.test"), target("v2.test"));
    let policies = StaticDiscovery::new();
    policies.set(
        ServiceSnapshot::builder(service.clone())
            .identity("spiffe://example.org/reviews".parse().unwrap())
            .subset(Subset::from_dns("v1".parse().unwrap(), t1.clone()))
            .subset(Subset::from_dns("v2".parse().unwrap(), t2.clone()))
            .build()
            .unwrap(),
    );
    let source = Driven::default();
    let discovery = ComposedDiscovery::builder(policies.clone(), source.clone()).build().unwrap();
    let mut watch = discovery.watch(&service);

    // Nothing is published until both subsets have an answer.
    source.publisher(&t1).publish(eps(&[1, 2]));
    tokio::task::yield_now().await;
    assert!(watch.current().is_none());
    source.publisher(&t2).publish(eps(&[2, 3]));
    let first = until(&mut watch, |_| true).await;
    assert_eq!((ports(&first, "v1"), ports(&first, "v2")), (vec![1, 2], vec![2, 3]), "127.0.0.1:2 is in both");
    assert_eq!(first.endpoints().len(), 3);
    let ep = &first.endpoints()[0];
    assert_eq!(first.expected_identity(ep).unwrap().to_string(), "spiffe://example.org/reviews");

    // v2 fails: its set stays, the error names the subset; v1 still changes.
    source.publisher(&t2).report_error(DiscoveryError::UnknownService("v2".parse().unwrap()));
    let error = until_error(&mut watch).await;
    assert!(matches!(&*error, DiscoveryError::Endpoints { subset, .. } if subset.as_str() == "v2"), "{error}");
    assert_eq!(watch.current_version(), first.version());
    source.publisher(&t1).publish(eps(&[1]));
    let later = until(&mut watch, |s| ports(s, "v1") == [1]).await;
    assert_eq!(ports(&later, "v2"), [2, 3], "the failing subset keeps its last good set");
    assert!(later.version() > first.version());
    assert!(watch.last_error().is_some(), "still failing, still reported");

    // v2 recovers with the same set: a snapshot clears the error.
    source.publisher(&t2).publish(eps(&[2, 3]));
    let recovered = until(&mut watch, |s| s.version() > later.version()).await;
    assert!(watch.last_error().is_none());
    assert_eq!(ports(&recovered, "v2"), [2, 3]);

    // The policy source changes the split and drops v2: v2's lookups are no longer watched.
    policies
        .update(&service, |spec| {
            spec.subsets.retain(|s| s.name.as_str() == "v1");
        })
        .unwrap();
    let dropped = until(&mut watch, |s| s.subsets().len() == 1).await;
    assert_eq!(dropped.endpoints().len(), 1);
    let t2_publisher = source.publisher(&t2);
    tokio::time::timeout(Duration::from_secs(10), t2_publisher.unwatched()).await.unwrap();
}

#[tokio::test]
async fn code_names_dns_subsets_for_sources_that_cannot() {
    let service: ServiceName = "reviews".parse().unwrap();
    let policies = StaticDiscovery::new();
    policies.set(ServiceSnapshot::builder(service.clone()).subset(Subset::version("v1").unwrap()).build().unwrap());
    let source = Driven::default();
    source.publisher(&target("v1.test")).publish(eps(&[7]));
    let discovery = ComposedDiscovery::builder(policies, source)
        .dns_subset(service.clone(), "v1".parse().unwrap(), target("v1.test"))
        .build()
        .unwrap();
    let snapshot = until(&mut discovery.watch(&service), |_| true).await;
    assert_eq!(ports(&snapshot, "v1"), [7]);
}

#[test]
fn building_outside_a_runtime_is_an_error() {
    let err = ComposedDiscovery::builder(StaticDiscovery::new(), Driven::default()).build().unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}
