//! Workload identity: SPIFFE IDs and trust domains.

mod spiffe;

pub use self::spiffe::{InvalidSpiffeId, InvalidTrustDomain, SpiffeId, TrustDomain};
