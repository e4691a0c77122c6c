//! What the ADS stream and the servers' inbound Listeners report, as watched values: tests and
//! operators wait on them for an ACK, a NACK, a reconnection or an applied configuration without
//! sleeping.

/// What the ADS stream has done so far, for operations and tests: watch it to wait for an ACK,
/// a NACK or a reconnection without sleeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdsStatus {
    /// Whether a stream is open.
    pub connected: bool,
    /// Streams opened so far.
    pub streams: u64,
    /// Responses received.
    pub responses: u64,
    /// Responses ACKed.
    pub acks: u64,
    /// Responses NACKed (wholly or in part).
    pub nacks: u64,
    /// The error detail of the last NACK.
    pub last_nack: Option<String>,
    /// Snapshots published, all targets together.
    pub published: u64,
}

/// How a server's inbound Listener has been applied so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboundStatus {
    /// Configurations applied (each new valid Listener counts once).
    pub applied: u64,
    /// Whether a configuration was ever applied (the server serves).
    pub serving: bool,
    /// Why the latest Listener (or its absence) was not applied, if it was not; the last good
    /// configuration stays in force.
    pub last_error: Option<String>,
}
