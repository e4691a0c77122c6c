//! The core of mesh: the configuration model, workload identity and service discovery.
//!
//! This crate knows nothing of tower, hyper or tonic. It describes *what* the mesh should do:
//!
//! - the model: a [`ServiceName`] resolves to a [`ServiceSnapshot`] holding its [`Endpoint`]s, the
//!   [`Subset`]s that group them by label, the [`Route`]s that send requests to subsets by
//!   [`Weight`], and the [`policy`] structs for retries, timeouts, outlier detection, circuit breaking
//!   and authorization. Every type is validated when built and when deserialized; a bad value is an
//!   `Invalid…` error naming the field.
//! - [`identity`]: [`SpiffeId`] and [`TrustDomain`], the names that mTLS certificates carry; a
//!   workload's [`Credentials`] and [`TrustBundle`]; the [`IdentitySource`] that renews them; and
//!   the rustls configurations ([`identity::tls`]) that check peers by SPIFFE ID.
//! - [`discovery`]: the object-safe [`Discovery`] trait through which a client learns a service's
//!   snapshot and every later change of it, with two backends: [`StaticDiscovery`] (configured in
//!   code, changed live through its handle) and [`FileDiscovery`] (a YAML or JSON file, watched);
//!   and [`ComposedDiscovery`](discovery::ComposedDiscovery), which takes routes and policies from
//!   one of them and the endpoints of subsets that name a DNS name from an
//!   [`EndpointDiscovery`](discovery::EndpointDiscovery) such as `mesh-dns`.
//!
//! `mesh-tower` turns these into tower layers and the client and server stacks.
//!
//! # Example
//!
//! ```
//! use mesh_core::{Endpoint, ServiceName, ServiceSnapshot, discovery::{Discovery, StaticDiscovery}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reviews: ServiceName = "reviews".parse()?;
//! let discovery = StaticDiscovery::new();
//! discovery.set(
//!     ServiceSnapshot::builder(reviews.clone())
//!         .endpoint(Endpoint::new("127.0.0.1:9080".parse()?).with_label("version", "v1")?)
//!         .build()?,
//! );
//!
//! let mut watch = discovery.watch(&reviews);
//! let snapshot = watch.ready().await?;
//! assert_eq!(snapshot.endpoints().len(), 1);
//!
//! // Change it live: every watch sees the new version.
//! discovery.update(&reviews, |spec| spec.endpoints.clear())?;
//! watch.changed().await?;
//! assert!(watch.current().unwrap().endpoints().is_empty());
//! # Ok(()) }
//! ```

pub mod discovery;
mod duration;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
mod matching;
mod model;
mod name;
pub mod policy;

pub use crate::discovery::{Discovery, DiscoveryError, FileDiscovery, SnapshotWatch, StaticDiscovery};
pub use crate::identity::{
    Credentials, ExpectedIdentity, Identity, IdentityFiles, IdentitySource, InvalidIdentity, InvalidSpiffeId,
    InvalidTrustDomain, SanMatcher, SpiffeId, TrustBundle, TrustDomain,
};
pub use crate::matching::{HeaderMatch, HeaderRegex, HeaderValueMatch, InvalidPathMatch, InvalidRegex, PathMatch};
pub use crate::model::{
    DnsTarget, Endpoint, InvalidLabel, InvalidSnapshot, InvalidWeight, Labels, Mirror, Route, RouteAction, RouteMatch,
    ServiceSnapshot, ServiceSnapshotBuilder, ServiceSpec, Subset, Weight, WeightedTarget,
};
pub use crate::name::{DnsName, HeaderName, InvalidMethod, InvalidName, Method, RouteName, ServiceName, SubsetName};
