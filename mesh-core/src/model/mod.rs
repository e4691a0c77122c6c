//! The configuration model: services, endpoints, subsets, routes and snapshots.

mod endpoint;
mod labels;
mod route;
mod snapshot;
mod weight;

pub use self::endpoint::Endpoint;
pub use self::labels::{InvalidLabel, Labels};
pub use self::route::{DnsTarget, Mirror, Route, RouteAction, RouteMatch, Subset, WeightedTarget};
pub(crate) use self::snapshot::CheckedSpec;
pub use self::snapshot::{InvalidSnapshot, ServiceSnapshot, ServiceSnapshotBuilder, ServiceSpec};
pub use self::weight::{InvalidWeight, Weight};
