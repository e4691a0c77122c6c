//! Which endpoint takes the next request: round robin over the current snapshot's endpoints.
//!
//! The traffic-management work replaces this with weighted subset splits and P2C; the contract
//! stays: the pick reads the snapshot lock-free and never blocks.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwapOption;
use http::uri::Authority;
use mesh_core::{ServiceSnapshot, SnapshotWatch};

use super::NoEndpoints;

/// An endpoint ready to be dialled.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) address: SocketAddr,
    pub(crate) authority: Authority,
}

/// The targets of one snapshot version, built once per version rather than per request.
#[derive(Debug)]
struct Targets {
    version: u64,
    targets: Box<[Target]>,
}

impl Targets {
    fn of(snapshot: &ServiceSnapshot) -> Self {
        let targets = snapshot
            .endpoints()
            .iter()
            .filter(|ep| !ep.weight.is_zero())
            .filter_map(|ep| {
                let authority = Authority::try_from(ep.address.to_string()).ok()?;
                Some(Target { address: ep.address, authority })
            })
            .collect();
        Self { version: snapshot.version(), targets }
    }
}

/// What a pick found.
pub(crate) enum Pick {
    Target(Target),
    /// Discovery has published nothing yet.
    NotResolved,
    NoEndpoints(NoEndpoints),
}

#[derive(Debug)]
pub(crate) struct RoundRobin {
    watch: SnapshotWatch,
    cache: ArcSwapOption<Targets>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(watch: SnapshotWatch) -> Self {
        Self { watch, cache: ArcSwapOption::empty(), next: AtomicUsize::new(0) }
    }

    pub(crate) fn watch(&self) -> &SnapshotWatch {
        &self.watch
    }

    pub(crate) fn pick(&self) -> Pick {
        let version = self.watch.current_version();
        if version == 0 {
            return Pick::NotResolved;
        }
        let cached = self.cache.load();
        let targets = match cached.as_ref() {
            Some(t) if t.version == version => t.clone(),
            _ => {
                let Some(snapshot) = self.watch.current() else { return Pick::NotResolved };
                let fresh = Arc::new(Targets::of(&snapshot));
                // Racing rebuilds of the same version are harmless; a newer one must not be
                // replaced by an older one.
                self.cache.rcu(|old| match old {
                    Some(old) if old.version > fresh.version => Some(old.clone()),
                    _ => Some(fresh.clone()),
                });
                fresh
            }
        };
        if targets.targets.is_empty() {
            let service = self.watch.service().clone();
            return Pick::NoEndpoints(NoEndpoints { service, version: targets.version });
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % targets.targets.len();
        Pick::Target(targets.targets[i].clone())
    }
}
