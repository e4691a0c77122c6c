use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::InvalidPolicy;

/// How a route retries failed requests.
///
/// Retries are bounded three ways: attempts per request, a [`RetryBudget`] per destination (so an
/// outage does not turn into a retry storm), and the route's timeout, which retries never exceed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts per request, the first one included (1 to 10; 1 means no retry).
    pub max_attempts: u32,
    /// Which failures are retried.
    pub retry_on: Vec<RetryOn>,
    /// Whether methods that are not idempotent (`POST`, `PATCH`) are retried too.
    pub retry_non_idempotent: bool,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// The time one attempt may take.
    #[serde(with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// How many retries the destination tolerates on top of original requests.
    pub budget: RetryBudget,
    /// Request bodies up to this size are buffered so they can be replayed; larger ones are sent
    /// once and never retried.
    pub max_replay_bytes: u64,
    /// How many retrying hops a request may already have passed for this hop to retry it too.
    /// The default, 1, lets only the first retrying hop of a call chain retry: five services
    /// with three attempts each send at most 3 attempts to the last, not 3^5.
    pub max_retry_depth: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retry_on: vec![RetryOn::GatewayError, RetryOn::ConnectFailure, RetryOn::GrpcUnavailable],
            retry_non_idempotent: false,
            backoff: Backoff::default(),
            per_try_timeout: None,
            budget: RetryBudget::default(),
            max_replay_bytes: 64 * 1024,
            max_retry_depth: 1,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if !(1..=10).contains(&self.max_attempts) {
            return Err(InvalidPolicy::new(
                "max_attempts",
                format!("{} is out of range: 1 to 10 attempts", self.max_attempts),
            ));
        }
        for (i, on) in self.retry_on.iter().enumerate() {
            if let RetryOn::Status(code) = on
                && !(100..=599).contains(code)
            {
                return Err(InvalidPolicy::new(
                    format!("retry_on[{i}].status"),
                    format!("{code} is not an HTTP status"),
                ));
            }
        }
        if self.per_try_timeout == Some(Duration::ZERO) {
            return Err(InvalidPolicy::new("per_try_timeout", "must be longer than zero"));
        }
        self.backoff.validate().map_err(|e| e.within("backoff"))?;
        self.budget.validate().map_err(|e| e.within("budget"))
    }
}

/// A kind of failure that a retry policy may retry.
///
/// In files, a name (`gateway_error`, `connect_failure`, `grpc_unavailable`…) or an HTTP status
/// as a number (`429`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryOn {
    /// Any 5xx response.
    ServerError,
    /// 502, 503 and 504: the upstream was not reached or did not answer.
    GatewayError,
    /// A given HTTP status, such as 429.
    Status(u16),
    /// The connection could not be opened.
    ConnectFailure,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// The attempt's per-try timeout elapsed.
    PerTryTimeout,
    /// gRPC `UNAVAILABLE`.
    GrpcUnavailable,
    /// gRPC `RESOURCE_EXHAUSTED`.
    GrpcResourceExhausted,
    /// gRPC `CANCELLED`.
    GrpcCancelled,
    /// gRPC `DEADLINE_EXCEEDED` answered by the server (the caller's own deadline is never
    /// retried past).
    GrpcDeadlineExceeded,
    /// gRPC `INTERNAL`.
    GrpcInternal,
}

const RETRY_ON_NAMES: [(&str, RetryOn); 10] = [
    ("server_error", RetryOn::ServerError),
    ("gateway_error", RetryOn::GatewayError),
    ("connect_failure", RetryOn::ConnectFailure),
    ("reset", RetryOn::Reset),
    ("per_try_timeout", RetryOn::PerTryTimeout),
    ("grpc_unavailable", RetryOn::GrpcUnavailable),
    ("grpc_resource_exhausted", RetryOn::GrpcResourceExhausted),
    ("grpc_cancelled", RetryOn::GrpcCancelled),
    ("grpc_deadline_exceeded", RetryOn::GrpcDeadlineExceeded),
    ("grpc_internal", RetryOn::GrpcInternal),
];

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(code) => serializer.serialize_u16(*code),
            named => match RETRY_ON_NAMES.iter().find(|(_, v)| v == named) {
                Some((name, _)) => serializer.serialize_str(name),
                None => Err(serde::ser::Error::custom("unnamed retry condition")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RetryOn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a retry condition: an HTTP status such as 429, or one of ")?;
                f.write_str(&RETRY_ON_NAMES.map(|(n, _)| n).join(", "))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOn, E> {
                RETRY_ON_NAMES
                    .iter()
                    .find(|(n, _)| *n == v)
                    .map(|(_, on)| *on)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RetryOn, E> {
                u16::try_from(v)
                    .map(RetryOn::Status)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RetryOn, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Exponential backoff with full jitter: the n-th retry waits a random time up to
/// `min(max, base * 2^(n-1))`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The ceiling of the first wait.
    #[serde(with = "crate::duration")]
    pub base: Duration,
    /// The ceiling of every wait.
    #[serde(with = "crate::duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_millis(25), max: Duration::from_millis(250) }
    }
}

impl Backoff {
    fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.base > self.max {
            return Err(InvalidPolicy::new("base", format!("{:?} is longer than max ({:?})", self.base, self.max)));
        }
        Ok(())
    }
}

/// How many retries a destination tolerates: at most `ratio` retries per original request over
/// the last `window`, plus `min_per_second` so that low-traffic callers can still retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per original request (0.2 = retries add at most 20%), 0 to 1000.
    pub ratio: f64,
    /// Retries allowed per second whatever the ratio says.
    pub min_per_second: u32,
    /// How long a request counts towards the budget.
    #[serde(with = "crate::duration")]
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { ratio: 0.2, min_per_second: 10, window: Duration::from_secs(10) }
    }
}

impl RetryBudget {
    fn validate(&self) -> Result<(), InvalidPolicy> {
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(InvalidPolicy::new("ratio", format!("{} is out of range: 0 to 1000", self.ratio)));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.window) {
            return Err(InvalidPolicy::new("window", format!("{:?} is out of range: 1s to 60s", self.window)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_checks_fire() {
        RetryPolicy::default().validate().unwrap();
        let p = RetryPolicy { max_attempts: 0, ..Default::default() };
        assert_eq!(p.validate().unwrap_err().field, "max_attempts");
        let p = RetryPolicy {
            backoff: Backoff { base: Duration::from_secs(2), max: Duration::from_secs(1) },
            ..Default::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "backoff.base");
        let p = RetryPolicy { budget: RetryBudget { ratio: f64::NAN, ..Default::default() }, ..Default::default() };
        assert_eq!(p.validate().unwrap_err().field, "budget.ratio");
        let p = RetryPolicy { retry_on: vec![RetryOn::Status(42)], ..Default::default() };
        assert_eq!(p.validate().unwrap_err().field, "retry_on[0].status");
    }

    #[test]
    fn serde_shape() {
        let p: RetryPolicy = serde_json::from_str(
            r#"{"max_attempts":2,"retry_on":["gateway_error",429],"backoff":{"base":"10ms","max":"1s"}}"#,
        )
        .unwrap();
        assert_eq!(p.retry_on, vec![RetryOn::GatewayError, RetryOn::Status(429)]);
        assert_eq!(p.backoff.base, Duration::from_millis(10));
        assert_eq!(p.budget, RetryBudget::default());
        assert_eq!(serde_json::to_string(&p.retry_on).unwrap(), r#"["gateway_error",429]"#);
        let err = serde_json::from_str::<RetryOn>(r#""gateway""#).unwrap_err();
        assert!(err.to_string().contains("gateway_error"), "{err}");
    }
}
