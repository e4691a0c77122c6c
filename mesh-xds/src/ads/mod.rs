//! The ADS protocol (state of the world) without I/O, beneath the cascade: per resource type the
//! subscribed names, the accepted version, the nonce, ACKs and NACKs, the does-not-exist timers
//! (gRFC A57) and the cache of decoded resources ([`state`]); and the node the first request of a
//! stream presents ([`node`]). The driver (`crate::driver`) feeds it bytes and the clock and sends
//! the requests it returns; the cascade (`crate::cascade`) reads its cache and sets its
//! subscriptions.

mod node;
mod state;

#[cfg(test)]
pub(crate) use self::state::Handled;
pub(crate) use self::{node::node, state::AdsState};
