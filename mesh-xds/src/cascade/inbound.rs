//! A server's inbound Listener (gRFC A36) as the cache holds it: its routes and filters are
//! inline, so the cascade stops at the Listener.

use crate::{
    ads::AdsState,
    resource::{Resource, ResourceType, inbound::InboundConfig},
};

/// What the cache holds for a server's inbound Listener.
#[derive(Debug, PartialEq)]
pub(crate) enum InboundUpdate<'a> {
    /// No configuration to apply, and why (`None`: the Listener was refused and has no good
    /// version, with nothing to tell).
    Unusable(Option<String>),
    /// The Listener's last good configuration, and why its latest update was refused, if it was.
    Config { config: &'a InboundConfig, refused: Option<String> },
}

impl<'a> InboundUpdate<'a> {
    /// What the cache holds for the inbound Listener `name` (`None`: nothing yet).
    pub(super) fn of(cache: &'a AdsState, name: &str) -> Option<Self> {
        let entry = cache.entry(ResourceType::Listener, name)?;
        let refused = entry.error.as_ref().map(ToString::to_string);
        Some(match &entry.good {
            _ if entry.missing => Self::Unusable(Some(format!("LDS resource {name:?} does not exist"))),
            Some(Resource::InboundListener(config)) => Self::Config { config, refused },
            Some(_) => Self::Unusable(Some(format!("LDS resource {name:?} is an API listener, not a server listener"))),
            None => Self::Unusable(refused),
        })
    }
}
