//! A policy's rules narrowed to one caller once per connection, so each call only checks what
//! depends on the request (paths, methods, headers).

use super::authz::{AuthorizationAction, AuthorizationDecision, AuthorizationPolicy, AuthorizationRule, Call};
use crate::identity::SpiffeId;

/// The rules of one [`AuthorizationPolicy`] that can cover one caller on one port: the rules
/// whose `from`, `not_from`, `ports` and `not_ports` admit them. A server computes it when a
/// connection is accepted ([`AuthorizationPolicy::for_caller`]), since the peer's identity and
/// the port do not change for the connection's life; each call then evaluates only the request
/// conditions of these rules, and a policy that decides by caller alone (the common case) costs
/// nothing per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerRules {
    /// Indices of the rules that can cover the caller, in the policy's order.
    rules: Vec<usize>,
    /// The decision when it does not depend on the request.
    fixed: Option<AuthorizationDecision>,
}

impl AuthorizationPolicy {
    /// This policy's rules that can cover calls by `peer` on `port` (see [`CallerRules`]). Its
    /// [`evaluate_call`](CallerRules::evaluate_call) decides every such call as
    /// [`evaluate_call`](Self::evaluate_call) does.
    ///
    /// ```
    /// use mesh_core::policy::{AuthorizationPolicy, AuthorizationRule, Call, NoHeaders, PrincipalMatch};
    /// let web: mesh_core::SpiffeId = "spiffe://example.org/web".parse()?;
    /// let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![PrincipalMatch::Exact(web.clone())])]);
    /// let rules = policy.for_caller(Some(&web), Some(8080)); // once per connection
    /// let call = Call::new(Some(&web), "GET", "/", &NoHeaders).with_port(8080);
    /// assert_eq!(rules.evaluate_call(&policy, &call), policy.evaluate_call(&call));
    /// # Ok::<_, mesh_core::InvalidSpiffeId>(())
    /// ```
    pub fn for_caller(&self, peer: Option<&SpiffeId>, port: Option<u16>) -> CallerRules {
        let Some(peer) = peer else {
            return CallerRules { rules: Vec::new(), fixed: Some(AuthorizationDecision::Deny { rule: None }) };
        };
        let rules: Vec<usize> = (0..self.rules.len()).filter(|&i| self.rules[i].covers_caller(peer, port)).collect();
        let first = |action| rules.iter().copied().find(|&i| self.rules[i].action == action);
        let fixed = match (first(AuthorizationAction::Deny), first(AuthorizationAction::Allow)) {
            // The first deny rule that can apply decides alone when nothing in the request matters.
            (Some(i), _) if self.rules[i].is_unconditional() => Some(AuthorizationDecision::Deny { rule: Some(i) }),
            (Some(_), _) => None,
            (None, Some(i)) if self.rules[i].is_unconditional() => Some(AuthorizationDecision::Allow { rule: i }),
            (None, Some(_)) => None,
            (None, None) => Some(AuthorizationDecision::Deny { rule: None }),
        };
        CallerRules { rules, fixed }
    }
}

impl CallerRules {
    /// Decides `call` (by the caller and on the port these rules were narrowed to) under
    /// `policy` (the one they came from), as [`AuthorizationPolicy::evaluate_call`] would.
    pub fn evaluate_call(&self, policy: &AuthorizationPolicy, call: &Call<'_>) -> AuthorizationDecision {
        if let Some(decision) = self.fixed {
            return decision;
        }
        let matching = |action| {
            self.rules.iter().copied().find(|&i| {
                let rule = &policy.rules[i];
                rule.action == action && rule.matches_request(call)
            })
        };
        if let Some(i) = matching(AuthorizationAction::Deny) {
            return AuthorizationDecision::Deny { rule: Some(i) };
        }
        match matching(AuthorizationAction::Allow) {
            Some(i) => AuthorizationDecision::Allow { rule: i },
            None => AuthorizationDecision::Deny { rule: None },
        }
    }

    /// The decision for every call, when it does not depend on the request.
    pub fn fixed(&self) -> Option<AuthorizationDecision> {
        self.fixed
    }
}

impl AuthorizationRule {
    /// Whether the caller-level conditions hold for `peer` on `port`.
    pub(super) fn covers_caller(&self, peer: &SpiffeId, port: Option<u16>) -> bool {
        let port = |p: &u16| port == Some(*p);
        (self.from.is_empty() || self.from.iter().any(|p| p.matches(peer)))
            && !self.not_from.iter().any(|p| p.matches(peer))
            && (self.ports.is_empty() || self.ports.iter().any(port))
            && !self.not_ports.iter().any(port)
    }

    /// Whether the request-level conditions hold for `call`.
    pub(super) fn matches_request(&self, call: &Call<'_>) -> bool {
        let header = |h: &crate::matching::HeaderMatch| h.matches_value(call.headers.value(&h.name).as_deref());
        (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(call.path)))
            && !self.not_paths.iter().any(|p| p.matches(call.path))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == call.method))
            && !self.not_methods.iter().any(|m| m.as_str() == call.method)
            && self.headers.iter().all(header)
            && !self.not_headers.iter().any(header)
    }

    /// Whether the rule looks at nothing in the request.
    fn is_unconditional(&self) -> bool {
        self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.headers.is_empty()
            && self.not_headers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::{
        matching::{HeaderMatch, PathMatch},
        name::{HeaderName, Method},
        policy::{NoHeaders, PrincipalMatch, RequestHeaders},
    };

    struct OneHeader(Option<&'static str>);

    impl RequestHeaders for OneHeader {
        fn value(&self, name: &HeaderName) -> Option<Cow<'_, [u8]>> {
            (name.as_str() == "x-team").then_some(())?;
            self.0.map(|v| Cow::Borrowed(v.as_bytes()))
        }
    }

    /// A small deterministic generator (xorshift), so the cases repeat run to run.
    struct Cases(u64);

    impl Cases {
        fn next(&mut self, below: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % below as u64) as usize
        }
    }

    /// Every caller, port and request of random policies is decided the same way narrowed per
    /// caller as by the full evaluation.
    #[test]
    fn narrowed_rules_decide_as_the_full_policy() {
        let ids: Vec<SpiffeId> = ["spiffe://a.org/web", "spiffe://a.org/batch", "spiffe://b.org/web"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let principal = |c: &mut Cases| match c.next(3) {
            0 => PrincipalMatch::Exact(ids[c.next(3)].clone()),
            1 => PrincipalMatch::TrustDomain(["a.org", "b.org"][c.next(2)].parse().unwrap()),
            _ => PrincipalMatch::regex(".*/web").unwrap(),
        };
        let paths = ["/", "/admin/x", "/data"];
        let mut cases = Cases(0x9e37_79b9_7f4a_7c15);
        let mut fixed = 0;
        for _ in 0..400 {
            let c = &mut cases;
            let rules = (0..c.next(4))
                .map(|_| {
                    let from = (0..c.next(3)).map(|_| principal(c)).collect();
                    let mut rule =
                        if c.next(3) == 0 { AuthorizationRule::deny(from) } else { AuthorizationRule::allow(from) };
                    if c.next(3) == 0 {
                        rule.not_from = vec![principal(c)];
                    }
                    if c.next(3) == 0 {
                        rule.paths = vec![PathMatch::prefix("/admin").unwrap()];
                    }
                    if c.next(4) == 0 {
                        rule.methods = vec![Method::get()];
                    }
                    if c.next(4) == 0 {
                        rule.headers = vec![HeaderMatch::exact("x-team".parse().unwrap(), "a")];
                    }
                    if c.next(4) == 0 {
                        rule.ports = vec![8080];
                    }
                    rule
                })
                .collect();
            let policy = AuthorizationPolicy::enforce(rules);
            for peer in ids.iter().map(Some).chain([None]) {
                for port in [Some(8080), Some(9090), None] {
                    let narrowed = policy.for_caller(peer, port);
                    fixed += usize::from(narrowed.fixed().is_some());
                    for path in paths {
                        for method in ["GET", "POST"] {
                            for header in [OneHeader(Some("a")), OneHeader(Some("b")), OneHeader(None)] {
                                let mut call = Call::new(peer, method, path, &header);
                                if let Some(port) = port {
                                    call = call.with_port(port);
                                }
                                assert_eq!(
                                    narrowed.evaluate_call(&policy, &call),
                                    policy.evaluate_call(&call),
                                    "{policy:?} {call:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Both paths were exercised: decisions fixed per caller and decisions per request.
        assert!(fixed > 1000 && fixed < 400 * 12, "{fixed} of {} narrowed sets were fixed", 400 * 12);
        let none = AuthorizationPolicy::enforce(vec![]).for_caller(None, None);
        assert_eq!(
            none.evaluate_call(&AuthorizationPolicy::default(), &Call::new(None, "GET", "/", &NoHeaders)),
            AuthorizationDecision::Deny { rule: None }
        );
    }
}
