//! DNS discovery for mesh: the endpoints of a service's subsets from DNS records, as a Kubernetes
//! headless Service publishes its pods (and gRPC's default resolver reads them), with routes,
//! splits, identities and policies from another source.
//!
//! A subset names a DNS name instead of listing endpoints, in a discovery file or in code:
//!
//! ```yaml
//! services:
//!   reviews:
//!     identity: spiffe://cluster.local/ns/default/sa/reviews
//!     subsets:
//!       - { name: v1, dns: reviews-v1.default.svc.cluster.local, port: 9080 }  # A/AAAA records
//!       - { name: v2, dns: _http._tcp.reviews-v2.default.svc.cluster.local }   # SRV: ports, weights
//!     routes:
//!       - name: canary
//!         targets: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
//! ```
//!
//! [`DnsDiscovery`] looks those names up and follows their TTLs;
//! [`DnsDiscovery::compose`] merges it with the source of the routes into one
//! [`Discovery`](mesh_core::Discovery) (a [`ComposedDiscovery`](mesh_core::discovery::ComposedDiscovery)):
//!
//! ```no_run
//! use mesh_core::{FileDiscovery, discovery::Discovery};
//! use mesh_dns::DnsDiscovery;
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let dns = DnsDiscovery::builder().nameserver("10.96.0.10:53".parse()?).build()?;
//! let discovery = dns.compose(FileDiscovery::open("services.yaml")?).build()?;
//! let reviews = discovery.watch(&"reviews".parse()?).ready().await?;
//! # Ok(()) }
//! ```
//!
//! Lookups that fail keep the last good endpoints and report the error beside them, as every
//! discovery backend does. `docs/discovery.md` has the recipes for Kubernetes.

mod discovery;
mod lookup;

pub use self::discovery::{DnsConfigError, DnsDiscovery, DnsDiscoveryBuilder};
pub use self::lookup::DnsLookupError;
