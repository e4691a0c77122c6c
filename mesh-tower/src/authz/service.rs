use std::{
    sync::Arc,
    task::{Context, Poll},
};

use std::borrow::Cow;

use http::{HeaderMap, Request, Response, StatusCode};
use mesh_core::{
    HeaderName,
    policy::{AuthorizationDecision, AuthorizationMode, Call, RequestHeaders},
};
use tower::Service;

use super::{AuthorizationStats, Denied, ResponseFuture, connection::Narrowed, layer::PolicySource};
use crate::{ConnectionInfo, PeerIdentity};

/// The service [`AuthorizationLayer`](super::AuthorizationLayer) makes.
#[derive(Clone, Debug)]
pub struct Authorization<S> {
    pub(super) inner: S,
    pub(super) policy: PolicySource,
    pub(super) stats: Arc<AuthorizationStats>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authorization<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let peer = request.extensions().get::<PeerIdentity>().map(PeerIdentity::id);
        let port = request.extensions().get::<ConnectionInfo>().map(|info| info.local_addr.port());
        match check(&self.policy, &self.stats, &request, peer, port, &Narrowed::None) {
            None => ResponseFuture::allowed(self.inner.call(request)),
            Some(denied) => ResponseFuture::denied(denied),
        }
    }
}

/// Authorizes `request` by `peer`, accepted on `port`: `None` lets it through, otherwise the
/// response that refuses it (marked [`Denied`]). The one path of every authorization decision,
/// for the layer and for the server's per-connection check (which passes its narrowed rules).
pub(super) fn check<ReqBody, ResBody: Default>(
    source: &PolicySource,
    stats: &AuthorizationStats,
    request: &Request<ReqBody>,
    peer: Option<&mesh_core::SpiffeId>,
    port: Option<u16>,
    narrowed: &Narrowed,
) -> Option<Response<ResBody>> {
    let headers = Headers(request.headers());
    let mut call = Call::new(peer, request.method().as_str(), request.uri().path(), &headers);
    if let Some(port) = port {
        call = call.with_port(port);
    }
    let (decision, mode) = match source {
        PolicySource::Fixed(policy) => (narrowed.evaluate_fixed(policy, &call), policy.mode),
        PolicySource::Watch(watch) => match watch.borrow().as_ref() {
            Some(policy) => (narrowed.evaluate_latest(policy, policy, &call), policy.mode),
            None => (AuthorizationDecision::Allow { rule: 0 }, AuthorizationMode::Enforce),
        },
        PolicySource::Discovery(watch) => match watch.current() {
            Some(snapshot) => match &snapshot.policies().authorization {
                Some(policy) => (narrowed.evaluate_latest(&snapshot, policy, &call), policy.mode),
                None if peer.is_some() => (AuthorizationDecision::Allow { rule: 0 }, AuthorizationMode::Enforce),
                None => (AuthorizationDecision::Deny { rule: None }, AuthorizationMode::Enforce),
            },
            None => (AuthorizationDecision::Deny { rule: None }, AuthorizationMode::Enforce),
        },
    };
    let AuthorizationDecision::Deny { rule } = decision else {
        stats.record_allowed();
        return None;
    };
    let caller = peer.map_or("an unauthenticated caller", |p| p.as_str());
    let why = match (source, rule) {
        (_, Some(i)) => format!("rule {i} denies it"),
        (PolicySource::Discovery(watch), None) if watch.current().is_none() => {
            format!("discovery has no snapshot of {} yet, so no policy", watch.service())
        }
        (_, None) => "no rule allows it".to_owned(),
    };
    if mode == AuthorizationMode::DryRun {
        stats.record_would_deny();
        crate::metrics::authz_denial(true);
        tracing::warn!(
            target: "mesh::authz",
            caller, method = %request.method(), path = request.uri().path(), %why,
            "dry run: would deny",
        );
        return None;
    }
    stats.record_denied();
    crate::metrics::authz_denial(false);
    tracing::info!(
        target: "mesh::authz",
        caller, method = %request.method(), path = request.uri().path(), %why,
        "denied",
    );
    let mut response = if crate::grpc::is_grpc(request.headers()) {
        // gRPC clients read the outcome from `grpc-status`, not the HTTP status: a 403 would
        // surface as a vague UNKNOWN or UNIMPLEMENTED instead of PERMISSION_DENIED.
        let message = format!("{caller} may not call {}: {why}", request.uri().path());
        crate::grpc::status_response(crate::grpc::code::PERMISSION_DENIED, &message)
    } else {
        let mut response = Response::new(ResBody::default());
        *response.status_mut() = StatusCode::FORBIDDEN;
        response
    };
    response.extensions_mut().insert(Denied);
    Some(response)
}

/// A request's headers as authorization rules read them.
struct Headers<'a>(&'a HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn value(&self, name: &HeaderName) -> Option<Cow<'_, [u8]>> {
        let mut values = self.0.get_all(name.as_str()).iter();
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first.as_bytes())),
            Some(second) => {
                let mut joined = [first.as_bytes(), b",", second.as_bytes()].concat();
                for more in values {
                    joined.push(b',');
                    joined.extend_from_slice(more.as_bytes());
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}
