//! One lookup of a target: its endpoints, and how long the answer may be kept.

use std::{collections::BTreeMap, fmt, net::SocketAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    net::NetError,
    proto::rr::{RData, Record},
};
use mesh_core::{DnsTarget, Endpoint, Weight};

/// What one lookup found: the endpoints, and the shortest TTL of the records that gave them.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) ttl: Duration,
}

/// A lookup of a subset's DNS name that failed. The subset keeps its last good endpoints.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of {target} failed: {kind}")]
pub struct DnsLookupError {
    target: DnsTarget,
    kind: LookupErrorKind,
    #[source]
    source: Option<NetError>,
}

#[derive(Debug)]
enum LookupErrorKind {
    NxDomain,
    NoRecords,
    NoAddresses(String),
    Failed,
}

impl fmt::Display for LookupErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NxDomain => f.write_str("the name does not exist (NXDOMAIN)"),
            Self::NoRecords => f.write_str("the name has no records of that type"),
            Self::NoAddresses(target) => write!(f, "the SRV target {target} has no A/AAAA records"),
            Self::Failed => f.write_str("no answer from the nameservers"),
        }
    }
}

impl DnsLookupError {
    /// What was looked up.
    pub fn target(&self) -> &DnsTarget {
        &self.target
    }

    /// Whether the name does not exist (NXDOMAIN).
    pub fn is_nx_domain(&self) -> bool {
        matches!(self.kind, LookupErrorKind::NxDomain)
    }

    /// Whether the name exists but has no records of the type asked for (or an SRV record's target
    /// has no addresses).
    pub fn is_no_records(&self) -> bool {
        matches!(self.kind, LookupErrorKind::NoRecords | LookupErrorKind::NoAddresses(_))
    }

    /// Whether no nameserver answered (timeout, refused connection, server failure).
    pub fn is_unanswered(&self) -> bool {
        matches!(self.kind, LookupErrorKind::Failed)
    }

    fn new(target: &DnsTarget, error: NetError) -> Self {
        let kind = if error.is_nx_domain() {
            LookupErrorKind::NxDomain
        } else if error.is_no_records_found() {
            LookupErrorKind::NoRecords
        } else {
            LookupErrorKind::Failed
        };
        Self { target: target.clone(), kind, source: Some(error) }
    }
}

/// Looks `target` up once: its A/AAAA records at its port, or its SRV records.
pub(crate) async fn lookup(resolver: &TokioResolver, target: &DnsTarget) -> Result<Found, DnsLookupError> {
    match target.port {
        Some(port) => {
            let found = resolver.lookup_ip(target.name.as_str()).await.map_err(|e| DnsLookupError::new(target, e))?;
            let ttl = min_ttl(found.as_lookup().answers());
            let mut addresses: Vec<_> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            addresses.sort_unstable();
            addresses.dedup();
            Ok(Found { endpoints: addresses.into_iter().map(Endpoint::new).collect(), ttl })
        }
        None => lookup_srv(resolver, target).await,
    }
}

/// SRV records: the lowest priority's targets, each resolved to its addresses, at the record's
/// port, weighted by the record's weight (0, "no preference" in RFC 2782, counts as 1).
async fn lookup_srv(resolver: &TokioResolver, target: &DnsTarget) -> Result<Found, DnsLookupError> {
    let found = resolver.srv_lookup(target.name.as_str()).await.map_err(|e| DnsLookupError::new(target, e))?;
    let mut ttl = min_ttl(found.answers());
    let records: Vec<_> = found
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv),
            _ => None,
        })
        .collect();
    // Higher priorities are backups; this resolver gives the preferred ones only.
    let Some(priority) = records.iter().map(|srv| srv.priority).min() else {
        return Err(DnsLookupError { target: target.clone(), kind: LookupErrorKind::NoRecords, source: None });
    };
    let mut endpoints = BTreeMap::new();
    for srv in records.into_iter().filter(|srv| srv.priority == priority) {
        if srv.target.is_root() {
            continue; // "." : the service is decidedly not available here.
        }
        let addresses = resolver.lookup_ip(srv.target.clone()).await.map_err(|e| {
            let mut error = DnsLookupError::new(target, e);
            if !error.is_unanswered() {
                error.kind = LookupErrorKind::NoAddresses(srv.target.to_string());
            }
            error
        })?;
        ttl = ttl.min(min_ttl(addresses.as_lookup().answers()));
        let weight = Weight::new(u32::from(srv.weight.max(1))).unwrap_or(Weight::DEFAULT);
        for ip in addresses.iter() {
            let address = SocketAddr::new(ip, srv.port);
            endpoints.entry(address).or_insert_with(|| Endpoint::new(address).with_weight(weight));
        }
    }
    Ok(Found { endpoints: endpoints.into_values().collect(), ttl })
}

fn min_ttl(records: &[Record]) -> Duration {
    Duration::from_secs(records.iter().map(|r| u64::from(r.ttl)).min().unwrap_or(0))
}
