//! Internals exposed for mesh's own benchmarks: **no stability promise**. They may change or go
//! away in any release; applications should not use them.

pub use crate::client::balance::{EndpointLoad, InFlight, Rng};
pub use crate::client::resolution::route::select as select_route;
pub use crate::client::resolution::split::WeightedSplit;
