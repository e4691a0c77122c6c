//! Authorization by peer identity: who may call what.
//!
//! [`AuthorizationLayer`] enforces an [`AuthorizationPolicy`](mesh_core::policy::AuthorizationPolicy) on the server side. It reads the
//! caller's [`PeerIdentity`](crate::PeerIdentity) (which the mTLS server stack puts in each
//! request's extensions) and asks the policy: a denied call gets `403 Forbidden` (a gRPC call,
//! known by its `content-type: application/grpc`, gets `grpc-status: 7`, `PERMISSION_DENIED`) and
//! never reaches the inner service. Rules match the request's path, which for gRPC is
//! `/package.Service/Method`, so a policy can allow some methods of a service and not others. Once a policy is configured, anything no `allow` rule covers is denied,
//! including callers without an identity.
//!
//! In [`DryRun`](mesh_core::policy::AuthorizationMode::DryRun) mode, denials are logged (target
//! `mesh::authz`) and counted, and the call goes through: roll a policy out in dry run, watch
//! [`AuthorizationStats::would_deny`], then enforce.
//!
//! ```
//! use mesh_core::policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch};
//! use mesh_tower::authz::AuthorizationLayer;
//! use tower::ServiceBuilder;
//!
//! let frontend = PrincipalMatch::Exact("spiffe://example.org/ns/prod/sa/frontend".parse()?);
//! let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![frontend])]);
//! let layer = AuthorizationLayer::new(policy);
//! let stats = layer.stats(); // shared by every service the layer makes
//! let service = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("reviews")))
//! });
//! # let _ = (service, stats);
//! # Ok::<_, mesh_core::InvalidSpiffeId>(())
//! ```

mod connection;
mod future;
mod layer;
mod service;

pub(crate) use self::connection::ConnectionAuthorization;
pub use self::future::ResponseFuture;
pub use self::layer::{AuthorizationLayer, AuthorizationStats};
pub use self::service::Authorization;

/// Marks a response the authorization policy refused (a response extension), so telemetry
/// tells a denial from the handler's own 403 (Istio's `response_flags="RBAC"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied;
