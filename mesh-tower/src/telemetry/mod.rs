//! Traces, golden metrics and access logs for every request, client and server side.

mod body;

pub use self::body::TelemetryBody;
