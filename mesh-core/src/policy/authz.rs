use serde::{Deserialize, Serialize};

use super::InvalidPolicy;
use crate::{Method, PathMatch, SpiffeId, TrustDomain};

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

    /// Decides a call: a matching `deny` rule denies; otherwise a matching `allow` rule allows;
    /// otherwise the call is denied (default deny). A caller without an identity (`None`: a
    /// plaintext connection) matches no rule, so it is always denied. The mode is not applied here:
    /// the caller of `evaluate` decides what a denial does.
    ///
    /// ```
    /// use mesh_core::policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch};
    /// let web: mesh_core::SpiffeId = "spiffe://example.org/web".parse()?;
    /// let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![PrincipalMatch::Exact(web.clone())])]);
    /// assert!(policy.evaluate(Some(&web), "GET", "/").is_allowed());
    /// assert!(!policy.evaluate(Some(&"spiffe://example.org/batch".parse()?), "GET", "/").is_allowed());
    /// # Ok::<_, mesh_core::InvalidSpiffeId>(())
    /// ```
    pub fn evaluate(&self, peer: Option<&SpiffeId>, method: &str, path: &str) -> AuthorizationDecision {
        let Some(peer) = peer else {
            return AuthorizationDecision::Deny { rule: None };
        };
        let matching =
            |action| self.rules.iter().position(|rule| rule.action == action && rule.matches(peer, method, path));
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
            for (j, p) in rule.from.iter().enumerate() {
                if let PrincipalMatch::PathPrefix { prefix, .. } = p
                    && !prefix.starts_with('/')
                {
                    return Err(InvalidPolicy::new(
                        format!("rules[{i}].from[{j}].prefix"),
                        "a SPIFFE path prefix starts with '/'",
                    ));
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
}

/// The outcome of [`AuthorizationPolicy::evaluate`].
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
    /// Whether the rule covers this call.
    pub fn matches(&self, peer: &SpiffeId, method: &str, path: &str) -> bool {
        (self.from.is_empty() || self.from.iter().any(|p| p.matches(peer)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == method))
    }

    /// A rule that allows the callers in `from` everywhere.
    pub fn allow(from: Vec<PrincipalMatch>) -> Self {
        Self { action: AuthorizationAction::Allow, from, paths: Vec::new(), methods: Vec::new() }
    }

    /// A rule that denies the callers in `from` everywhere.
    pub fn deny(from: Vec<PrincipalMatch>) -> Self {
        Self { action: AuthorizationAction::Deny, from, paths: Vec::new(), methods: Vec::new() }
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
/// `{ trust_domain: example.org }` or `{ path_prefix: { trust_domain: example.org, prefix: /ns/prod } }`.
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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathPrefixRepr {
    trust_domain: TrustDomain,
    prefix: String,
}

impl TryFrom<PrincipalMatchRepr> for PrincipalMatch {
    type Error = &'static str;
    fn try_from(repr: PrincipalMatchRepr) -> Result<Self, Self::Error> {
        match (repr.exact, repr.trust_domain, repr.path_prefix) {
            (Some(id), None, None) => Ok(Self::Exact(id)),
            (None, Some(td), None) => Ok(Self::TrustDomain(td)),
            (None, None, Some(p)) => Ok(Self::PathPrefix { trust_domain: p.trust_domain, prefix: p.prefix }),
            _ => Err("write exactly one of `exact`, `trust_domain` and `path_prefix`"),
        }
    }
}

impl From<PrincipalMatch> for PrincipalMatchRepr {
    fn from(m: PrincipalMatch) -> Self {
        let mut repr = Self { exact: None, trust_domain: None, path_prefix: None };
        match m {
            PrincipalMatch::Exact(id) => repr.exact = Some(id),
            PrincipalMatch::TrustDomain(td) => repr.trust_domain = Some(td),
            PrincipalMatch::PathPrefix { trust_domain, prefix } => {
                repr.path_prefix = Some(PathPrefixRepr { trust_domain, prefix })
            }
        }
        repr
    }
}

impl PrincipalMatch {
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
        assert_eq!(policy.evaluate(Some(&web), "GET", "/admin"), AuthorizationDecision::Allow { rule: 1 });
        assert_eq!(policy.evaluate(Some(&batch), "GET", "/admin/x"), AuthorizationDecision::Deny { rule: Some(0) });
        assert_eq!(policy.evaluate(Some(&batch), "GET", "/data"), AuthorizationDecision::Allow { rule: 1 });
        assert_eq!(policy.evaluate(Some(&web), "POST", "/data"), AuthorizationDecision::Deny { rule: None });
        assert_eq!(policy.evaluate(None, "GET", "/data"), AuthorizationDecision::Deny { rule: None });
        let other: SpiffeId = "spiffe://other.org/web".parse().unwrap();
        assert!(!policy.evaluate(Some(&other), "GET", "/").is_allowed());
    }
}
