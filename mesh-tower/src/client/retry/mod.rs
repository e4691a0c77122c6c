//! Retries with a budget, per route.
//!
//! [`RetryLayer`] reads the request's [`RetryPolicy`](mesh_core::policy::RetryPolicy) (the
//! route's own, else the service's) from its [`Resolution`](super::Resolution); a request without
//! one is sent once. A request is retried only if:
//!
//! - the policy's `retry_on` says the outcome is retryable (by the one [classifier](crate::classify));
//! - its method is idempotent, or the policy sets `retry_non_idempotent`;
//! - its body can be replayed: bodies whose size is known to be at most `max_replay_bytes`
//!   (64 KiB by default) are buffered; larger or unbounded ones are sent once, and counted;
//! - the destination's **retry budget** allows it. Every original request deposits into the budget
//!   and every retry withdraws; retries may add `ratio` (20%) on top of original requests, plus
//!   `min_per_second` so quiet callers can still retry. Fixed retry counts multiply load during an
//!   outage (3 attempts = 3x); a budget caps the extra at 20% whatever happens (tower's
//!   `retry::budget` explains the reasoning). Unlike tower's `TpsBudget`, the per-second floor
//!   accrues over time instead of being granted up front, so over any stretch retries stay below
//!   `requests × ratio + min_per_second × seconds`.
//!
//! - fewer than `max_retry_depth` hops upstream retry it already (the hop guard: each retrying
//!   hop counts itself in `x-mesh-retry-depth`, which servers read with
//!   [`ContextLayer`](crate::context::ContextLayer); by default only the first retrying hop of a
//!   call chain retries, so a chain of five cannot multiply load 3^5 times).
//!
//! # gRPC
//!
//! A gRPC call (`content-type: application/grpc`) is retried by the same policy, following gRPC's
//! retry design: the outcome is read from `grpc-status` in the response headers (a call that
//! fails before its first message answers trailers-only, so the status is there; once messages
//! flow the call is committed and never retried); the policy on the method's route is what makes
//! it retryable, so its `POST` is not held against it; retried attempts carry
//! `grpc-previous-rpc-attempts`; and a server's `grpc-retry-pushback-ms` replaces the backoff (or,
//! if it is not a number, stops the retries). A gRPC request body never says its size, so the
//! messages ready when the call starts are buffered (all of a unary or server-streaming call);
//! a client stream still waiting on the application is sent once.
//!
//! Every attempt goes to the subset the router chose for the request (a split is decided once per
//! request, as Envoy and gRPC retry inside the weighted cluster they picked), and to an endpoint
//! other than the ones that already failed it, whatever the failure (an error status, a refused
//! connection, a per-try timeout). Attempts wait an exponential backoff with full jitter, may each
//! be bounded by `per_try_timeout`, and never run past the request's deadline (see
//! [`crate::client::deadline`]). [`RetryStats`] counts retries, exhausted budgets and bodies too large to
//! replay.

mod body;
mod budget;
mod replay;
mod service;

pub use self::body::RetryBody;
pub(crate) use self::service::{Plan, RetryCopy};
pub use self::service::{Retry, RetryLayer, RetryStats};
