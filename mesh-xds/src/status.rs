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

/// One line an operator can read: whether a stream is open, what was answered, and why the last
/// NACK was sent, e.g. `connected (stream 2); 14 responses: 13 ACKed, 1 NACKed; 3 snapshots
/// published; last NACK: CDS resource "...": lb_policy: MAGLEV is not supported`.
impl std::fmt::Display for XdsStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.connected, self.streams) {
            (true, n) => write!(f, "connected (stream {n})")?,
            (false, 0) => f.write_str("not connected yet")?,
            (false, n) => write!(f, "disconnected (after {n} stream{})", if n == 1 { "" } else { "s" })?,
        }
        write!(
            f,
            "; {} response{}: {} ACKed, {} NACKed; {} snapshot{} published",
            self.responses,
            if self.responses == 1 { "" } else { "s" },
            self.acks,
            self.nacks,
            self.published,
            if self.published == 1 { "" } else { "s" },
        )?;
        if let Some(nack) = &self.last_nack {
            write!(f, "; last NACK: {nack}")?;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::XdsStatus;

    #[test]
    fn status_reads_as_one_line() {
        let mut status = XdsStatus::default();
        assert_eq!(status.to_string(), "not connected yet; 0 responses: 0 ACKed, 0 NACKed; 0 snapshots published");
        status.connected = true;
        status.streams = 2;
        status.responses = 14;
        status.acks = 13;
        status.nacks = 1;
        status.published = 1;
        status.last_nack = Some("CDS resource \"c\": lb_policy: MAGLEV is not supported".into());
        assert_eq!(
            status.to_string(),
            "connected (stream 2); 14 responses: 13 ACKed, 1 NACKed; 1 snapshot published; last NACK: CDS resource \
             \"c\": lb_policy: MAGLEV is not supported"
        );
        status.connected = false;
        assert!(status.to_string().starts_with("disconnected (after 2 streams); "), "{status}");
        // Debug names every field.
        let debug = format!("{status:?}");
        assert!(debug.contains("acks: 13") && debug.contains("last_nack: Some("), "{debug}");
    }
}
