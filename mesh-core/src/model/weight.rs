//! Traffic weights.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A relative traffic weight between 0 and [`Weight::MAX`]. Weight 0 means "no traffic at all".
///
/// Weights are relative: targets weighted 90 and 10 get 90% and 10%, as do 9 and 1.
///
/// ```
/// use mesh_core::Weight;
/// let w = Weight::new(90)?;
/// assert_eq!(w.get(), 90);
/// assert!(Weight::new(Weight::MAX.get() + 1).is_err());
/// # Ok::<_, mesh_core::InvalidWeight>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u32);

/// A weight out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid weight {0}: weights range from 0 to 1000000")]
pub struct InvalidWeight(u64);

impl Weight {
    /// No traffic.
    pub const ZERO: Weight = Weight(0);
    /// The weight of an endpoint that does not say.
    pub const DEFAULT: Weight = Weight(1);
    /// The largest weight: large enough for shares of 0.0001%, small enough that sums of many
    /// weights never overflow a `u64`.
    pub const MAX: Weight = Weight(1_000_000);

    /// Validates `weight`.
    pub fn new(weight: u32) -> Result<Self, InvalidWeight> {
        if weight > Self::MAX.0 { Err(InvalidWeight(weight.into())) } else { Ok(Self(weight)) }
    }

    /// The weight as a number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Whether this weight sends no traffic.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u32> for Weight {
    type Error = InvalidWeight;
    fn try_from(w: u32) -> Result<Self, Self::Error> {
        Self::new(w)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
