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

impl AuthorizationRule {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
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
}
