use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::InvalidPolicy;

/// A share between 0 and 100 percent.
#[derive(Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Percentage(f64);

impl Percentage {
    /// Validates `percent` (0 to 100).
    pub fn new(percent: f64) -> Result<Self, InvalidPolicy> {
        if (0.0..=100.0).contains(&percent) {
            Ok(Self(percent))
        } else {
            Err(InvalidPolicy::new("percentage", format!("{percent} is out of range: 0 to 100")))
        }
    }

    /// The percentage.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Percentage {
    type Error = InvalidPolicy;
    fn try_from(p: f64) -> Result<Self, Self::Error> {
        Self::new(p)
    }
}

impl From<Percentage> for f64 {
    fn from(p: Percentage) -> f64 {
        p.0
    }
}

impl fmt::Debug for Percentage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Passive health checking: an endpoint that fails `consecutive_failures` times in a row is taken
/// out of rotation for `base_ejection_time`, longer each time it is ejected again, up to
/// `max_ejection_time`; never more than `max_ejection_percent` of a subset is out at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint (at least 1).
    pub consecutive_failures: u32,
    /// How long the first ejection lasts.
    #[serde(with = "crate::duration")]
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts.
    #[serde(with = "crate::duration")]
    pub max_ejection_time: Duration,
    /// The largest share of a subset's endpoints ejected at once.
    pub max_ejection_percent: Percentage,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: Percentage(50.0),
        }
    }
}

impl OutlierDetection {
    /// Checks the policy.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.consecutive_failures == 0 {
            return Err(InvalidPolicy::new("consecutive_failures", "must be at least 1"));
        }
        if self.base_ejection_time.is_zero() {
            return Err(InvalidPolicy::new("base_ejection_time", "must be longer than zero"));
        }
        if self.base_ejection_time > self.max_ejection_time {
            return Err(InvalidPolicy::new("base_ejection_time", "is longer than max_ejection_time"));
        }
        Ok(())
    }
}

/// Limits on requests to one destination: beyond them, requests fail fast instead of queueing
/// without bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreaker {
    /// Requests in flight at once (at least 1).
    pub max_concurrent: u32,
    /// Requests waiting for a slot; beyond this they are rejected at once.
    pub max_pending: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self { max_concurrent: 1024, max_pending: 1024 }
    }
}

impl CircuitBreaker {
    /// Checks the policy.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.max_concurrent == 0 {
            return Err(InvalidPolicy::new("max_concurrent", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        OutlierDetection::default().validate().unwrap();
        CircuitBreaker::default().validate().unwrap();
        assert!(Percentage::new(100.5).is_err());
        assert!(serde_json::from_str::<OutlierDetection>(r#"{"max_ejection_percent": 101}"#).is_err());
        let o = OutlierDetection { consecutive_failures: 0, ..Default::default() };
        assert_eq!(o.validate().unwrap_err().field, "consecutive_failures");
        let cb = CircuitBreaker { max_concurrent: 0, max_pending: 0 };
        assert_eq!(cb.validate().unwrap_err().field, "max_concurrent");
    }
}
