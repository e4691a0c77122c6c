//! Subsets, routes and how requests match them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DnsName, HeaderName, InvalidName, Labels, Method, RouteName, SubsetName, Weight};
use crate::policy::RetryPolicy;

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

/// How a route matches the request path. Paths start with `/`.
///
/// In files: `path: { prefix: /api }` or `path: { exact: /healthz }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PathMatchRepr", into = "PathMatchRepr")]
#[non_exhaustive]
pub enum PathMatch {
    /// The path equals this string.
    Exact(String),
    /// The path starts with this string, compared segment by segment: `/api` takes `/api` and
    /// `/api/users` but not `/apis`.
    Prefix(String),
    /// The whole path matches this regular expression (as xDS's `safe_regex` does).
    Regex(HeaderRegex),
}

/// A path match that is not one path starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path match {input:?}: {reason}")]
pub struct InvalidPathMatch {
    input: String,
    reason: &'static str,
}

impl PathMatch {
    /// An exact path.
    pub fn exact(path: impl Into<String>) -> Result<Self, InvalidPathMatch> {
        check_path(path.into()).map(Self::Exact)
    }

    /// A path prefix, matched segment by segment.
    pub fn prefix(prefix: impl Into<String>) -> Result<Self, InvalidPathMatch> {
        check_path(prefix.into()).map(Self::Prefix)
    }

    /// A regular expression the whole path must match (it is anchored at both ends).
    ///
    /// ```
    /// use mesh_core::PathMatch;
    /// let say = PathMatch::regex("/helloworld\\.Greeter/Say.*")?;
    /// assert!(say.matches("/helloworld.Greeter/SayHello"));
    /// assert!(!say.matches("/x/helloworld.Greeter/SayHello"));
    /// # Ok::<_, mesh_core::InvalidRegex>(())
    /// ```
    pub fn regex(pattern: &str) -> Result<Self, InvalidRegex> {
        HeaderRegex::new(&format!("^(?:{pattern})$")).map(Self::Regex)
    }

    /// Whether `path` (without the query) matches.
    ///
    /// ```
    /// use mesh_core::PathMatch;
    /// let api = PathMatch::prefix("/api")?;
    /// assert!(api.matches("/api") && api.matches("/api/users"));
    /// assert!(!api.matches("/apis"));
    /// # Ok::<_, mesh_core::InvalidPathMatch>(())
    /// ```
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                match path.strip_prefix(prefix) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
                    None => false,
                }
            }
            Self::Regex(re) => re.0.is_match(path),
        }
    }
}

fn check_path(path: String) -> Result<String, InvalidPathMatch> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(InvalidPathMatch { input: path, reason: "a path starts with '/'" })
    }
}

/// The file form of a path match: a map with exactly one of `exact`, `prefix` and `regex`. (A
/// map rather than an enum so that YAML and JSON read the same, without YAML tags.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatchRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// Stored anchored (`^(?:…)$`), as [`PathMatch::regex`] compiles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<PathMatchRepr> for PathMatch {
    type Error = InvalidPathMatch;
    fn try_from(repr: PathMatchRepr) -> Result<Self, Self::Error> {
        match (repr.exact, repr.prefix, repr.regex) {
            (Some(p), None, None) => Self::exact(p),
            (None, Some(p), None) => Self::prefix(p),
            (None, None, Some(re)) => {
                let anchored = re.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(&re);
                Self::regex(anchored).map_err(|_| InvalidPathMatch { input: re, reason: "the regex does not compile" })
            }
            _ => Err(InvalidPathMatch {
                input: String::new(),
                reason: "write exactly one of `exact`, `prefix` and `regex`",
            }),
        }
    }
}

impl From<PathMatch> for PathMatchRepr {
    fn from(m: PathMatch) -> Self {
        match m {
            PathMatch::Exact(p) => Self { exact: Some(p), prefix: None, regex: None },
            PathMatch::Prefix(p) => Self { exact: None, prefix: Some(p), regex: None },
            PathMatch::Regex(re) => Self { exact: None, prefix: None, regex: Some(re.as_str().to_owned()) },
        }
    }
}

/// A condition on one request header.
///
/// In files: `{ name: x-canary, exact: "1" }`, `{ name: x-debug, present: true }` or
/// `{ name: x-user, regex: "^qa-" }` (a regex matches anywhere unless anchored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HeaderMatchRepr", into = "HeaderMatchRepr")]
pub struct HeaderMatch {
    /// The header's name.
    pub name: HeaderName,
    /// What its value must be.
    pub value: HeaderValueMatch,
}

impl HeaderMatch {
    /// The header equals `value`.
    pub fn exact(name: HeaderName, value: impl Into<String>) -> Self {
        Self { name, value: HeaderValueMatch::Exact(value.into()) }
    }

    /// The header is present, whatever its value.
    pub fn present(name: HeaderName) -> Self {
        Self { name, value: HeaderValueMatch::Present }
    }

    /// The header matches `regex`.
    pub fn regex(name: HeaderName, regex: &str) -> Result<Self, InvalidRegex> {
        Ok(Self { name, value: HeaderValueMatch::Regex(HeaderRegex::new(regex)?) })
    }

    /// The header is present and `inner` does not match its value (an absent header matches
    /// neither, as in gRPC's `invert_match`).
    pub fn inverted(self) -> Self {
        Self { name: self.name, value: HeaderValueMatch::Not(Box::new(self.value)) }
    }

    /// Whether `value` (the header's value, if present) satisfies the match.
    pub fn matches_value(&self, value: Option<&[u8]>) -> bool {
        value.is_some_and(|v| self.value.matches(v))
    }
}

impl HeaderValueMatch {
    /// Whether a present header's value `v` satisfies the match.
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(exact) => exact.as_bytes() == v,
            Self::Regex(re) => std::str::from_utf8(v).is_ok_and(|v| re.0.is_match(v)),
            Self::Not(inner) => !inner.matches(v),
        }
    }
}

/// A compiled regular expression for a header match; equal when the patterns are equal.
#[derive(Clone, Debug)]
pub struct HeaderRegex(regex::Regex);

/// A header match regex that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regex {pattern:?}: {reason}")]
pub struct InvalidRegex {
    pattern: String,
    reason: String,
}

impl HeaderRegex {
    /// Compiles `pattern` (size-limited, so a file cannot make the matcher huge).
    pub fn new(pattern: &str) -> Result<Self, InvalidRegex> {
        regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map(Self)
            .map_err(|e| InvalidRegex { pattern: pattern.to_owned(), reason: e.to_string() })
    }

    /// The pattern.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the regex matches `text` (anywhere, unless the pattern is anchored).
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for HeaderRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeaderRegex {}

/// What a header's value must be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValueMatch {
    /// Exactly this value.
    Exact(String),
    /// Any value.
    Present,
    /// A value the regex matches.
    Regex(HeaderRegex),
    /// A value the inner match does not match (the header must be present). In files:
    /// `invert: true` beside the match.
    Not(Box<HeaderValueMatch>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatchRepr {
    name: HeaderName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    present: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    invert: bool,
}

impl TryFrom<HeaderMatchRepr> for HeaderMatch {
    type Error = String;
    fn try_from(repr: HeaderMatchRepr) -> Result<Self, Self::Error> {
        let value = match (repr.exact, repr.present, repr.regex) {
            (Some(v), false, None) => HeaderValueMatch::Exact(v),
            (None, true, None) => HeaderValueMatch::Present,
            (None, false, Some(re)) => HeaderValueMatch::Regex(HeaderRegex::new(&re).map_err(|e| e.to_string())?),
            _ => {
                return Err(format!(
                    "header {}: write exactly one of `exact: VALUE`, `present: true` and `regex: PATTERN`",
                    repr.name
                ));
            }
        };
        let m = Self { name: repr.name, value };
        Ok(if repr.invert { m.inverted() } else { m })
    }
}

impl From<HeaderMatch> for HeaderMatchRepr {
    fn from(m: HeaderMatch) -> Self {
        let repr = |name, exact, present, regex, invert| Self { name, exact, present, regex, invert };
        let (value, invert) = match m.value {
            HeaderValueMatch::Not(inner) => (*inner, true),
            value => (value, false),
        };
        match value {
            HeaderValueMatch::Exact(v) => repr(m.name, Some(v), false, None, invert),
            HeaderValueMatch::Present => repr(m.name, None, true, None, invert),
            HeaderValueMatch::Regex(re) => repr(m.name, None, false, Some(re.as_str().to_owned()), invert),
            // A double inversion is the match itself.
            HeaderValueMatch::Not(inner) => Self::from(HeaderMatch { name: m.name, value: *inner }),
        }
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
    fn path_regex_matches_the_whole_path_and_round_trips() {
        let m = PathMatch::regex("/a/[0-9]+").unwrap();
        assert!(m.matches("/a/12") && !m.matches("/a/12/b") && !m.matches("/x/a/1"));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<PathMatch>(&json).unwrap(), m);
        assert!(serde_json::from_str::<PathMatch>(r#"{"regex": "("}"#).is_err());
        assert!(serde_json::from_str::<PathMatch>(r#"{"regex": "/a", "prefix": "/"}"#).is_err());
    }
}
