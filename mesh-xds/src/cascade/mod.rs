//! The cascade, LDS -> RDS -> CDS -> EDS, as one pure step (grpc-go's `xdsresource` watchers and
//! grpc-rust's resource manager, above the protocol state): given the ADS state's cache and the
//! targets watched, [`step`] settles which names each type subscribes to, decides for each client
//! target whether its resources are complete and what snapshot they make, and reads each server's
//! inbound Listener. No I/O and no clock of its own: the driver calls it after every response,
//! watch and timer, and the unit tests, the fuzz targets and the seed corpus call it exactly so.
//!
//! Each cluster a route sends to becomes one subset, named after the cluster
//! ([`subset_for_cluster`]); an endpoint belongs to the subsets of every cluster that lists it.

mod build;
mod client;
mod error;
mod follow;
mod inbound;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_core::ServiceName;
use tokio::time::Instant;

#[cfg(test)]
pub(crate) use self::follow::virtual_host;
pub(crate) use self::{
    build::BuildOptions,
    client::{ClientCascade, ClientUpdate},
    inbound::InboundUpdate,
};
pub use self::{build::subset_for_cluster, error::CascadeError};
use crate::{ads::AdsState, resource::ResourceType};

/// Subscribing drops the cache entries of names no longer wanted, which may change what is
/// wanted (a cluster that is gone no longer names its endpoints): a step re-derives the
/// subscriptions until they settle, at most this many times (one per level of the cascade).
const SETTLE_PASSES: usize = 4;

/// What one step decided: the requests to send and the news for each target.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    /// Subscription requests, in the order to send them.
    pub(crate) requests: Vec<DiscoveryRequest>,
    /// The client targets with news: a new snapshot, or a new reason for having none.
    pub(crate) clients: Vec<(ServiceName, ClientUpdate)>,
    /// What the cache holds for each server's inbound Listener it has an entry for.
    pub(crate) servers: Vec<(&'a str, InboundUpdate<'a>)>,
}

/// Runs the cascade once over `cache` for the client targets `clients` (service, and what the
/// cascade remembers of it) and the servers' inbound Listeners `servers` (their routes are inline:
/// nothing more to follow).
pub(crate) fn step<'a, 'c>(
    cache: &'a mut AdsState,
    clients: impl IntoIterator<Item = (&'c ServiceName, &'c mut ClientCascade)>,
    servers: impl IntoIterator<Item = &'a str>,
    options: &BuildOptions,
    now: Instant,
) -> Step<'a> {
    let clients: Vec<_> = clients.into_iter().collect();
    let servers: Vec<&str> = servers.into_iter().collect();
    let mut requests = Vec::new();
    for _ in 0..SETTLE_PASSES {
        let mut wanted = follow::wanted(cache, clients.iter().map(|(_, c)| c.listener()));
        wanted.entry(ResourceType::Listener).or_default().extend(servers.iter().map(|s| (*s).to_owned()));
        let before = requests.len();
        for (kind, names) in wanted {
            requests.extend(cache.subscribe(kind, names, now));
        }
        if requests.len() == before {
            break;
        }
    }
    let cache: &'a AdsState = cache;
    let clients = clients
        .into_iter()
        .filter_map(|(service, target)| target.update(cache, service, options).map(|u| (service.clone(), u)))
        .collect();
    let servers = servers.into_iter().filter_map(|name| InboundUpdate::of(cache, name).map(|u| (name, u))).collect();
    Step { requests, clients, servers }
}
