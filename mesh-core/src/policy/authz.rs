use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::InvalidPolicy;
use crate::{
    identity::{SpiffeId, TrustDomain},
    matching::{HeaderMatch, HeaderRegex, InvalidRegex, PathMatch},
    name::{HeaderName, Method},
};

/// Who may call a service. Once a policy is configured, a call that no `allow` rule matches is
/// denied, and a `deny` rule wins over any `allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationPolicy {
    /// Enforce decisions, or only log and count them.
    pub mode: AuthorizationMode,
    /// The rules.
    pub rules: Vec<AuthorizationRule>,
}

impl AuthorizationPolicy {
    /// A policy enforcing `rules`.
    pub fn enforce(rules: Vec<AuthorizationRule>) -> Self {
        Self { mode: AuthorizationMode::Enforce, rules }
    }

    /// A policy that only reports what `rules` would deny.
    pub fn dry_run(rules: Vec<AuthorizationRule>) -> Self {
        Self { mode: AuthorizationMode::DryRun, rules }
    }

    /// Decides a call, the one way a policy is evaluated: a matching `deny` rule denies;
    /// otherwise a matching `allow` rule allows; otherwise the call is denied (default deny). A
    /// rule looks at everything the [`Call`] carries: the caller, method, path, headers and the
    /// port the server accepted the connection on. A caller without an identity (`None`: a
    /// plaintext connection) matches no rule, so it is always denied. The mode is not applied
    /// here: the caller decides what a denial does.
    ///
    /// ```
    /// use mesh_core::policy::{AuthorizationPolicy, AuthorizationRule, Call, NoHeaders, PrincipalMatch};
    /// let web: mesh_core::SpiffeId = "spiffe://example.org/web".parse()?;
    /// let batch: mesh_core::SpiffeId = "spiffe://example.org/batch".parse()?;
    /// let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![PrincipalMatch::Exact(web.clone())])]);
    /// assert!(policy.evaluate_call(&Call::new(Some(&web), "GET", "/", &NoHeaders)).is_allowed());
    /// assert!(!policy.evaluate_call(&Call::new(Some(&batch), "GET", "/", &NoHeaders)).is_allowed());
    /// # Ok::<_, mesh_core::InvalidSpiffeId>(())
    /// ```
    pub fn evaluate_call(&self, call: &Call<'_>) -> AuthorizationDecision {
        let Some(peer) = call.peer else {
            return AuthorizationDecision::Deny { rule: None };
        };
        let matching =
            |action| self.rules.iter().position(|rule| rule.action == action && rule.matches_call(peer, call));
        if let Some(i) = matching(AuthorizationAction::Deny) {
            return AuthorizationDecision::Deny { rule: Some(i) };
        }
        match matching(AuthorizationAction::Allow) {
            Some(i) => AuthorizationDecision::Allow { rule: i },
            None => AuthorizationDecision::Deny { rule: None },
        }
    }

    /// Checks the policy.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        for (i, rule) in self.rules.iter().enumerate() {
            for (list, principals) in [("from", &rule.from), ("not_from", &rule.not_from)] {
                for (j, p) in principals.iter().enumerate() {
                    if let PrincipalMatch::PathPrefix { prefix, .. } = p
                        && !prefix.starts_with('/')
                    {
                        return Err(InvalidPolicy::new(
                            format!("rules[{i}].{list}[{j}].prefix"),
                            "a SPIFFE path prefix starts with '/'",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether an authorization policy denies calls or only reports what it would deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthorizationMode {
    /// Denied calls are refused.
    #[default]
    Enforce,
    /// Denied calls are logged and counted, then let through: for rolling out a new policy.
    DryRun,
}

/// One authorization rule: the callers, paths and methods it covers, and what it decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationRule {
    /// Allow or deny.
    pub action: AuthorizationAction,
    /// The callers; empty covers every authenticated caller.
    #[serde(default)]
    pub from: Vec<PrincipalMatch>,
    /// The request paths; empty covers every path.
    #[serde(default)]
    pub paths: Vec<PathMatch>,
    /// The methods; empty covers every method.
    #[serde(default)]
    pub methods: Vec<Method>,
    /// Callers the rule does not cover, whatever `from` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_from: Vec<PrincipalMatch>,
    /// Paths the rule does not cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<PathMatch>,
    /// Methods the rule does not cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<Method>,
    /// Conditions on request headers, all of which must hold (an absent header holds none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Header conditions none of which may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_headers: Vec<HeaderMatch>,
    /// The ports (the server's, where it accepted the connection); empty covers every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Ports the rule does not cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
}

/// What an authorization rule may look at in one call: for
/// [`AuthorizationPolicy::evaluate_call`].
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Call<'a> {
    /// The caller's SPIFFE ID, `None` on a plaintext connection.
    pub peer: Option<&'a SpiffeId>,
    /// The request method.
    pub method: &'a str,
    /// The request path, without the query.
    pub path: &'a str,
    /// The port the server accepted the connection on, if known.
    pub port: Option<u16>,
    /// The request headers.
    pub headers: &'a dyn RequestHeaders,
}

impl<'a> Call<'a> {
    /// A call by `peer` of `method` on `path`, with the given headers and no port.
    pub fn new(peer: Option<&'a SpiffeId>, method: &'a str, path: &'a str, headers: &'a dyn RequestHeaders) -> Self {
        Self { peer, method, path, port: None, headers }
    }

    /// The same call, accepted on `port`.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("peer", &self.peer)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Request headers as an authorization rule reads them (mesh-core knows no HTTP library; the
/// server side implements this for its header map).
pub trait RequestHeaders {
    /// The value of header `name`; several values joined with `,`, as Envoy's RBAC joins them.
    fn value(&self, name: &HeaderName) -> Option<Cow<'_, [u8]>>;
}

/// No headers at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHeaders;

impl RequestHeaders for NoHeaders {
    fn value(&self, _name: &HeaderName) -> Option<Cow<'_, [u8]>> {
        None
    }
}

/// The outcome of [`AuthorizationPolicy::evaluate_call`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorizationDecision {
    /// Allowed by the rule at this index.
    Allow {
        /// The index of the allowing rule.
        rule: usize,
    },
    /// Denied by the `deny` rule at this index, or by default (`None`: no `allow` rule matched).
    Deny {
        /// The index of the denying rule, if one denied explicitly.
        rule: Option<usize>,
    },
}

impl AuthorizationDecision {
    /// Whether the call may proceed.
    pub fn is_allowed(self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

impl AuthorizationRule {
    /// Whether the rule covers this call by `peer`: its caller-level conditions (narrowed once
    /// per connection by [`CallerRules`](super::CallerRules)) and its request-level ones.
    fn matches_call(&self, peer: &SpiffeId, call: &Call<'_>) -> bool {
        self.covers_caller(peer, call.port) && self.matches_request(call)
    }

    /// A rule that allows the callers in `from` everywhere.
    pub fn allow(from: Vec<PrincipalMatch>) -> Self {
        Self::new(AuthorizationAction::Allow, from)
    }

    /// A rule that denies the callers in `from` everywhere.
    pub fn deny(from: Vec<PrincipalMatch>) -> Self {
        Self::new(AuthorizationAction::Deny, from)
    }

    fn new(action: AuthorizationAction, from: Vec<PrincipalMatch>) -> Self {
        Self {
            action,
            from,
            paths: Vec::new(),
            methods: Vec::new(),
            not_from: Vec::new(),
            not_paths: Vec::new(),
            not_methods: Vec::new(),
            headers: Vec::new(),
            not_headers: Vec::new(),
            ports: Vec::new(),
            not_ports: Vec::new(),
        }
    }
}

/// What a rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationAction {
    /// Let the call through.
    Allow,
    /// Refuse the call.
    Deny,
}

/// Which callers a rule covers, by SPIFFE ID.
///
/// In files, a map with one key: `{ exact: spiffe://example.org/web }`,
/// `{ trust_domain: example.org }`, `{ path_prefix: { trust_domain: example.org, prefix: /ns/prod } }`
/// or `{ regex: "spiffe://example.org/ns/prod/.*" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PrincipalMatchRepr", into = "PrincipalMatchRepr")]
#[non_exhaustive]
pub enum PrincipalMatch {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID in this trust domain.
    TrustDomain(TrustDomain),
    /// IDs in `trust_domain` whose path starts with `prefix`, segment by segment.
    PathPrefix {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The path prefix, starting with `/`.
        prefix: String,
    },
    /// IDs the regular expression matches as a whole (`spiffe://example.org/ns/prod/.*`): how
    /// string prefixes, suffixes and patterns on the peer's URI SAN are written.
    Regex(HeaderRegex),
}

/// The file form: a map with exactly one key (a map rather than an enum so that YAML and JSON
/// read the same, without YAML tags).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalMatchRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<SpiffeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trust_domain: Option<TrustDomain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_prefix: Option<PathPrefixRepr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathPrefixRepr {
    trust_domain: TrustDomain,
    prefix: String,
}

impl TryFrom<PrincipalMatchRepr> for PrincipalMatch {
    type Error = String;
    fn try_from(repr: PrincipalMatchRepr) -> Result<Self, Self::Error> {
        match (repr.exact, repr.trust_domain, repr.path_prefix, repr.regex) {
            (Some(id), None, None, None) => Ok(Self::Exact(id)),
            (None, Some(td), None, None) => Ok(Self::TrustDomain(td)),
            (None, None, Some(p), None) => Ok(Self::PathPrefix { trust_domain: p.trust_domain, prefix: p.prefix }),
            (None, None, None, Some(re)) => Self::regex(&re).map_err(|e| e.to_string()),
            _ => Err("write exactly one of `exact`, `trust_domain`, `path_prefix` and `regex`".to_owned()),
        }
    }
}

impl From<PrincipalMatch> for PrincipalMatchRepr {
    fn from(m: PrincipalMatch) -> Self {
        let mut repr = Self { exact: None, trust_domain: None, path_prefix: None, regex: None };
        match m {
            PrincipalMatch::Exact(id) => repr.exact = Some(id),
            PrincipalMatch::TrustDomain(td) => repr.trust_domain = Some(td),
            PrincipalMatch::PathPrefix { trust_domain, prefix } => {
                repr.path_prefix = Some(PathPrefixRepr { trust_domain, prefix })
            }
            PrincipalMatch::Regex(re) => repr.regex = Some(unanchored(re.as_str()).to_owned()),
        }
        repr
    }
}

/// The pattern as written, without the anchors [`PrincipalMatch::regex`] adds.
fn unanchored(pattern: &str) -> &str {
    pattern.strip_prefix("^(?:").and_then(|p| p.strip_suffix(")$")).unwrap_or(pattern)
}

impl PrincipalMatch {
    /// IDs that `pattern` matches as a whole (it is anchored at both ends).
    ///
    /// ```
    /// use mesh_core::policy::PrincipalMatch;
    /// let prod = PrincipalMatch::regex("spiffe://example\\.org/ns/prod/.*")?;
    /// assert!(prod.matches(&"spiffe://example.org/ns/prod/sa/web".parse()?));
    /// assert!(!prod.matches(&"spiffe://example.org/ns/dev/sa/web".parse()?));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn regex(pattern: &str) -> Result<Self, InvalidRegex> {
        HeaderRegex::new(&format!("^(?:{pattern})$")).map(Self::Regex)
    }

    /// Whether `id` is covered.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(exact) => exact == id,
            Self::TrustDomain(td) => id.trust_domain_name() == td.as_str(),
            Self::PathPrefix { trust_domain, prefix } => {
                id.trust_domain_name() == trust_domain.as_str() && {
                    let prefix = prefix.trim_end_matches('/');
                    id.path().strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }
            }
            Self::Regex(re) => re.is_match(id.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_matching() {
        let id: SpiffeId = "spiffe://example.org/ns/prod/sa/web".parse().unwrap();
        assert!(PrincipalMatch::Exact(id.clone()).matches(&id));
        assert!(PrincipalMatch::TrustDomain("example.org".parse().unwrap()).matches(&id));
        assert!(!PrincipalMatch::TrustDomain("example.com".parse().unwrap()).matches(&id));
        let prefix =
            |p: &str| PrincipalMatch::PathPrefix { trust_domain: "example.org".parse().unwrap(), prefix: p.into() };
        assert!(prefix("/ns/prod").matches(&id));
        assert!(!prefix("/ns/pro").matches(&id));
        let policy: AuthorizationPolicy = serde_json::from_str(
            r#"{"mode":"dry_run","rules":[{"action":"allow","from":[{"path_prefix":{"trust_domain":"example.org","prefix":"ns"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(policy.validate().unwrap_err().field, "rules[0].from[0].prefix");
    }

    #[test]
    fn deny_wins_and_default_denies() {
        let web: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let batch: SpiffeId = "spiffe://example.org/batch".parse().unwrap();
        let td = PrincipalMatch::TrustDomain("example.org".parse().unwrap());
        let mut deny_batch_admin = AuthorizationRule::deny(vec![PrincipalMatch::Exact(batch.clone())]);
        deny_batch_admin.paths = vec![PathMatch::prefix("/admin").unwrap()];
        let mut allow_gets = AuthorizationRule::allow(vec![td]);
        allow_gets.methods = vec![Method::get()];
        let policy = AuthorizationPolicy::enforce(vec![deny_batch_admin, allow_gets]);
        assert_eq!(
            policy.evaluate_call(&Call::new(Some(&web), "GET", "/admin", &NoHeaders)),
            AuthorizationDecision::Allow { rule: 1 }
        );
        assert_eq!(
            policy.evaluate_call(&Call::new(Some(&batch), "GET", "/admin/x", &NoHeaders)),
            AuthorizationDecision::Deny { rule: Some(0) }
        );
        assert_eq!(
            policy.evaluate_call(&Call::new(Some(&batch), "GET", "/data", &NoHeaders)),
            AuthorizationDecision::Allow { rule: 1 }
        );
        assert_eq!(
            policy.evaluate_call(&Call::new(Some(&web), "POST", "/data", &NoHeaders)),
            AuthorizationDecision::Deny { rule: None }
        );
        assert_eq!(
            policy.evaluate_call(&Call::new(None, "GET", "/data", &NoHeaders)),
            AuthorizationDecision::Deny { rule: None }
        );
        let other: SpiffeId = "spiffe://other.org/web".parse().unwrap();
        assert!(!policy.evaluate_call(&Call::new(Some(&other), "GET", "/", &NoHeaders)).is_allowed());
    }

    struct Headers(Vec<(&'static str, &'static str)>);

    impl RequestHeaders for Headers {
        fn value(&self, name: &HeaderName) -> Option<Cow<'_, [u8]>> {
            self.0.iter().find(|(n, _)| *n == name.as_str()).map(|(_, v)| Cow::Borrowed(v.as_bytes()))
        }
    }

    #[test]
    fn negations_headers_ports_and_regex_principals() {
        let web: SpiffeId = "spiffe://example.org/ns/prod/sa/web".parse().unwrap();
        let batch: SpiffeId = "spiffe://example.org/ns/prod/sa/batch".parse().unwrap();
        let mut rule =
            AuthorizationRule::allow(vec![PrincipalMatch::regex("spiffe://example\\.org/ns/prod/.*").unwrap()]);
        rule.not_from = vec![PrincipalMatch::Exact(batch.clone())];
        rule.not_paths = vec![PathMatch::prefix("/admin").unwrap()];
        rule.headers = vec![HeaderMatch::exact("x-team".parse().unwrap(), "a")];
        rule.not_headers = vec![HeaderMatch::present("x-debug".parse().unwrap())];
        rule.ports = vec![8080];
        let policy = AuthorizationPolicy::enforce(vec![rule]);
        let team = Headers(vec![("x-team", "a")]);
        let call = |peer, path, headers: &'static Headers| Call::new(Some(peer), "GET", path, headers).with_port(8080);
        let team: &'static Headers = Box::leak(Box::new(team));
        let debug: &'static Headers = Box::leak(Box::new(Headers(vec![("x-team", "a"), ("x-debug", "1")])));
        let none: &'static Headers = Box::leak(Box::new(Headers(vec![])));
        assert!(policy.evaluate_call(&call(&web, "/data", team)).is_allowed());
        assert!(!policy.evaluate_call(&call(&batch, "/data", team)).is_allowed());
        assert!(!policy.evaluate_call(&call(&web, "/admin/x", team)).is_allowed());
        assert!(!policy.evaluate_call(&call(&web, "/data", debug)).is_allowed());
        assert!(!policy.evaluate_call(&call(&web, "/data", none)).is_allowed());
        assert!(!policy.evaluate_call(&Call::new(Some(&web), "GET", "/data", team).with_port(9090)).is_allowed());
        // Without headers and port (the old entry point) header and port conditions never hold.
        assert!(!policy.evaluate_call(&Call::new(Some(&web), "GET", "/data", &NoHeaders)).is_allowed());
        let other: SpiffeId = "spiffe://example.org/ns/prod2/sa/web".parse().unwrap();
        assert!(!policy.evaluate_call(&call(&other, "/data", team)).is_allowed());
        let json = serde_json::to_string(&policy).unwrap();
        let back: AuthorizationPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy, "{json}");
    }
}
