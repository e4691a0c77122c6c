//! Subsets, routes and how requests match them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Labels, Weight};
use crate::{
    matching::{HeaderMatch, PathMatch},
    name::{DnsName, InvalidName, Method, RouteName, SubsetName},
    policy::RetryPolicy,
};

/// A named group of a service's endpoints, selected by labels: `v2` = endpoints labelled
/// `version: v2`. Routes send traffic to subsets.
///
/// A subset may instead name a DNS name ([`dns`](Self::dns)) whose records list its endpoints, as
/// a Kubernetes headless Service publishes its pods. Such a subset selects no endpoint by itself:
/// a [`ComposedDiscovery`](crate::discovery::ComposedDiscovery) resolves the name and publishes
/// the endpoints in its place. In files:
///
/// ```yaml
/// subsets:
///   - { name: v1, dns: reviews-v1.default.svc.cluster.local, port: 9080 }   # A/AAAA records
///   - { name: v2, dns: _http._tcp.reviews-v2.default.svc.cluster.local }    # SRV records
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Subset {
    /// The subset's name, which routes refer to.
    pub name: SubsetName,
    /// The labels an endpoint must carry to belong to the subset. Empty selects every endpoint.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// A DNS name whose records are the subset's endpoints: with [`port`](Self::port), its A and
    /// AAAA records, each at that port; without, its SRV records (ports and weights from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsName>,
    /// The port of the addresses that [`dns`](Self::dns)'s A/AAAA records give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Where a subset's endpoints are looked up: a DNS name, and the port when the name has address
/// records rather than SRV records. See [`Subset::dns`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsTarget {
    /// The name looked up.
    pub name: DnsName,
    /// `Some`: look up A/AAAA records and use this port; `None`: look up SRV records.
    pub port: Option<u16>,
}

impl DnsTarget {
    /// The A/AAAA records of `name`, each address at `port`.
    pub fn addresses(name: DnsName, port: u16) -> Self {
        Self { name, port: Some(port) }
    }

    /// The SRV records of `name` (such as `_grpc._tcp.reviews.default.svc.cluster.local`).
    pub fn srv(name: DnsName) -> Self {
        Self { name, port: None }
    }
}

impl std::fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{} (A/AAAA, port {port})", self.name),
            None => write!(f, "{} (SRV)", self.name),
        }
    }
}

impl Subset {
    /// A subset of the endpoints whose labels include `labels`.
    pub fn new(name: SubsetName, labels: Labels) -> Self {
        Self { name, labels, dns: None, port: None }
    }

    /// A subset whose endpoints are what `target` resolves to in DNS.
    ///
    /// ```
    /// use mesh_core::{DnsTarget, Subset};
    /// let v1 = Subset::from_dns("v1".parse()?, DnsTarget::addresses("reviews-v1.default.svc.cluster.local".parse()?, 9080));
    /// assert_eq!(v1.dns_target().unwrap().port, Some(9080));
    /// # Ok::<_, mesh_core::InvalidName>(())
    /// ```
    pub fn from_dns(name: SubsetName, target: DnsTarget) -> Self {
        Self { name, labels: Labels::new(), dns: Some(target.name), port: target.port }
    }

    /// Where the subset's endpoints are looked up, when it names a DNS name.
    pub fn dns_target(&self) -> Option<DnsTarget> {
        self.dns.clone().map(|name| DnsTarget { name, port: self.port })
    }

    /// The common case: the endpoints labelled `version: <name>`.
    ///
    /// ```
    /// let v2 = mesh_core::Subset::version("v2")?;
    /// assert_eq!(v2.labels.get("version"), Some("v2"));
    /// # Ok::<_, mesh_core::InvalidName>(())
    /// ```
    pub fn version(version: &str) -> Result<Self, InvalidName> {
        let name = SubsetName::new(version)?;
        let mut labels = Labels::new();
        // A valid subset name is always a valid label value (same characters, same length cap).
        labels.insert("version", version).unwrap_or_else(|e| unreachable!("{e}"));
        Ok(Self { name, labels, dns: None, port: None })
    }
}

/// A rule for a share of a service's traffic: which requests it matches, where they go, and the
/// policies they get.
///
/// Routes are tried in order and the first match wins; a route with an empty [`RouteMatch`]
/// matches every request and is a natural last, default route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Route {
    /// The route's name, as metrics and traces show it.
    pub name: RouteName,
    /// Which requests the route takes. Every condition must hold.
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    /// What the route does with its requests: forward them (the default), or, for an action a
    /// control plane configured that a gRPC client does not perform, fail them.
    #[serde(default, skip_serializing_if = "RouteAction::is_forward")]
    pub action: RouteAction,
    /// Where the requests go, by weight. Empty means every endpoint of the service.
    #[serde(default)]
    pub targets: Vec<WeightedTarget>,
    /// How the route retries failed requests; `None` falls back to the service's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The time a request may take, retries included; `None` falls back to the service's policy.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// A copy of a share of the route's requests, sent to a shadow subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Faults injected into a share of the route's requests before they leave the client (for
    /// chaos testing in staging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::policy::Fault>,
}

/// Traffic mirroring: a copy of `percent` of a route's requests goes to `subset`, fire and forget.
/// The copy's response, errors and latency never reach the caller; copies carry the header
/// `x-mesh-mirror: 1` so the shadow can tell.
///
/// In files: `mirror: { subset: v2-shadow, percent: 10 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The shadow subset.
    pub subset: SubsetName,
    /// The share of the route's requests copied.
    pub percent: crate::policy::Percentage,
}

impl Route {
    /// A route that matches every request and spreads it over every endpoint.
    pub fn new(name: RouteName) -> Self {
        Self {
            name,
            matches: RouteMatch::default(),
            action: RouteAction::Forward,
            targets: Vec::new(),
            retry: None,
            timeout: None,
            mirror: None,
            fault: None,
        }
    }

    /// Sets what the route matches.
    pub fn with_match(mut self, matches: RouteMatch) -> Self {
        self.matches = matches;
        self
    }

    /// Sets what the route does with its requests.
    pub fn with_action(mut self, action: RouteAction) -> Self {
        self.action = action;
        self
    }

    /// Adds a weighted target.
    pub fn with_target(mut self, subset: SubsetName, weight: Weight) -> Self {
        self.targets.push(WeightedTarget { subset, weight });
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Injects `fault` into the route's requests.
    pub fn with_fault(mut self, fault: crate::policy::Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Mirrors `percent` of the route's requests to `subset`.
    pub fn with_mirror(mut self, subset: SubsetName, percent: crate::policy::Percentage) -> Self {
        self.mirror = Some(Mirror { subset, percent });
        self
    }
}

/// What a [`Route`] does with the requests it takes.
///
/// Only [`Forward`](Self::Forward) sends them anywhere. The others stand for what an xDS control
/// plane may configure on a route that a gRPC client does not perform (gRFC A28): as gRPC does,
/// mesh keeps the route, so the requests it matches are not taken by a later route, and fails
/// those requests at once (`UNAVAILABLE` on gRPC, 503 as an HTTP response), while every other
/// route of the configuration keeps working. In files: `action: redirect`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RouteAction {
    /// Send the requests to the route's targets.
    #[default]
    Forward,
    /// An HTTP redirect (Envoy's `redirect`, a VirtualService's `redirect`): not followed.
    Redirect,
    /// An answer made up by the proxy (Envoy's `direct_response`, a VirtualService's
    /// `directResponse`): not given.
    DirectResponse,
    /// Envoy's `non_forwarding_action`, meant for a server's inbound routes.
    NonForwarding,
    /// Any other action, or none.
    Unsupported,
}

impl RouteAction {
    /// Whether the route forwards its requests.
    pub fn is_forward(&self) -> bool {
        matches!(self, Self::Forward)
    }

    /// The action's name, as files spell it (`direct_response`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Redirect => "redirect",
            Self::DirectResponse => "direct_response",
            Self::NonForwarding => "non_forwarding",
            Self::Unsupported => "unsupported",
        }
    }
}

impl std::fmt::Display for RouteAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subset and its share of a route's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// The subset the share goes to.
    pub subset: SubsetName,
    /// The share, relative to the route's other targets.
    pub weight: Weight,
}

/// The conditions a request must meet to take a route; all of them must hold, and an empty match
/// takes every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    /// Matches every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Requires the path.
    pub fn path(mut self, path: PathMatch) -> Self {
        self.path = Some(path);
        self
    }

    /// Requires the method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Requires a header.
    pub fn header(mut self, header: HeaderMatch) -> Self {
        self.headers.push(header);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inverted_header_match_needs_the_header() {
        let m = HeaderMatch::exact("end-user".parse().unwrap(), "jason").inverted();
        assert!(m.matches_value(Some(b"ada")));
        assert!(!m.matches_value(Some(b"jason")));
        assert!(!m.matches_value(None), "an absent header matches no inverted match (gRPC)");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"name":"end-user","exact":"jason","invert":true}"#);
        assert_eq!(serde_json::from_str::<HeaderMatch>(&json).unwrap(), m);
    }

    #[test]
    fn path_prefix_is_segment_wise() {
        let p = PathMatch::prefix("/api/").unwrap();
        assert!(p.matches("/api"));
        assert!(p.matches("/api/x"));
        assert!(!p.matches("/apix"));
        assert!(PathMatch::prefix("/").unwrap().matches("/anything"));
        assert!(PathMatch::exact("/a").unwrap().matches("/a"));
        assert!(!PathMatch::exact("/a").unwrap().matches("/a/b"));
        assert!(PathMatch::prefix("api").is_err());
    }

    #[test]
    fn route_serde() {
        let route: Route = serde_json::from_str(
            r#"{"name":"r","match":{"path":{"prefix":"/api"},"method":"GET",
               "headers":[{"name":"X-Canary","exact":"1"},{"name":"x-a","present":true}]},
               "targets":[{"subset":"v1","weight":90},{"subset":"v2","weight":10}],"timeout":"2s"}"#,
        )
        .unwrap();
        assert_eq!(route.matches.headers[0].name.as_str(), "x-canary");
        assert_eq!(route.timeout, Some(Duration::from_secs(2)));
        assert_eq!(route.targets[1].weight.get(), 10);
        let back: Route = serde_json::from_str(&serde_json::to_string(&route).unwrap()).unwrap();
        assert_eq!(back, route);
        let err = serde_json::from_str::<Route>(r#"{"name":"r","match":{"path":{"prefix":"api"}}}"#).unwrap_err();
        assert!(err.to_string().contains("starts with '/'"), "{err}");
        let err = serde_json::from_str::<PathMatch>(r#"{"prefix":"/a","exact":"/a"}"#).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let err = serde_json::from_str::<HeaderMatch>(r#"{"name":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn a_route_action_other_than_forward_round_trips() {
        let route: Route = serde_json::from_str(r#"{"name":"old","action":"redirect"}"#).unwrap();
        assert_eq!(route.action, RouteAction::Redirect);
        let json = serde_json::to_string(&route).unwrap();
        assert!(json.contains(r#""action":"redirect""#), "{json}");
        assert_eq!(serde_json::from_str::<Route>(&json).unwrap(), route);
        let forward: Route = serde_json::from_str(r#"{"name":"r"}"#).unwrap();
        assert!(forward.action.is_forward());
        assert!(!serde_json::to_string(&forward).unwrap().contains("action"));
        let err = serde_json::from_str::<Route>(r#"{"name":"r","action":"teleport"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn path_regex_matches_the_whole_path_and_round_trips() {
        let m = PathMatch::regex("/a/[0-9]+").unwrap();
        assert!(m.matches("/a/12") && !m.matches("/a/12/b") && !m.matches("/x/a/1"));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<PathMatch>(&json).unwrap(), m);
        assert!(serde_json::from_str::<PathMatch>(r#"{"regex": "("}"#).is_err());
        assert!(serde_json::from_str::<PathMatch>(r#"{"regex": "/a", "prefix": "/"}"#).is_err());
    }
}
