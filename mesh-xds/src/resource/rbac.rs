//! The RBAC HTTP filter (gRFC A41), as istiod writes it from Istio `AuthorizationPolicy`,
//! translated exactly into mesh's authorization rules, or refused.
//!
//! A policy matches when one of its permissions and one of its principals match. Each policy is
//! rewritten as an OR of conjunctions (negations pushed down to the conditions), and each
//! conjunction becomes one [`AuthorizationRule`]: at most one positive condition each on the
//! caller, the path, the method and the port, any number of header conditions, and any number of
//! negated ones (`not_from`, `not_paths`, ...). What does not fit that shape, or that mesh cannot
//! evaluate (source IPs, metadata, CEL conditions, pseudo-headers other than `:method`), is an
//! error naming the field: the listener is NACKed, never approximated.

use envoy_types::pb::envoy::{
    config::{
        rbac::v3::{
            Permission, Policy, Principal, Rbac as RbacRules, permission::Rule, principal::Identifier,
            rbac::Action as RawAction,
        },
        route::v3::{HeaderMatcher, header_matcher::HeaderMatchSpecifier},
    },
    extensions::filters::http::rbac::v3::Rbac as HttpRbac,
    r#type::matcher::v3::{PathMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern},
};
use mesh_core::{
    HeaderMatch, Method, PathMatch, SpiffeId,
    policy::{AuthorizationAction, AuthorizationRule, PrincipalMatch},
};

use super::{
    field::{FieldError, FieldResult},
    route,
};

/// The type URL of the RBAC filter's config.
pub(crate) const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The most conjunctions one policy may expand to (a product of large OR lists would otherwise
/// make the rule list huge).
const MAX_TERMS: usize = 1024;

/// One RBAC filter, translated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RbacFilter {
    /// Allow (the rules list who may call) or deny (who may not).
    pub(crate) action: AuthorizationAction,
    /// The rules, each with `action`.
    pub(crate) rules: Vec<AuthorizationRule>,
    /// The rules came as `shadow_rules` (Istio's `istio.io/dry-run` policies): log, do not deny.
    pub(crate) dry_run: bool,
}

/// One condition of a conjunction.
#[derive(Clone, Debug, PartialEq)]
enum Atom {
    Principal(PrincipalMatch),
    Path(PathMatch),
    Method(Method),
    Header(HeaderMatch),
    Port(u16),
}

/// A condition, or its negation.
#[derive(Clone, Debug, PartialEq)]
struct Literal {
    atom: Atom,
    negated: bool,
}

/// An OR of ANDs: `vec![]` is false, `vec![vec![]]` is true.
type Dnf = Vec<Vec<Literal>>;

fn truth(value: bool) -> Dnf {
    if value { vec![Vec::new()] } else { Vec::new() }
}

fn or(mut a: Dnf, b: Dnf, field: &str) -> FieldResult<Dnf> {
    a.extend(b);
    if a.len() > MAX_TERMS {
        return Err(FieldError::new(field, format!("expands to more than {MAX_TERMS} rules")));
    }
    Ok(a)
}

fn and(a: Dnf, b: Dnf, field: &str) -> FieldResult<Dnf> {
    if a.len().saturating_mul(b.len()) > MAX_TERMS {
        return Err(FieldError::new(field, format!("expands to more than {MAX_TERMS} rules")));
    }
    Ok(a.iter().flat_map(|x| b.iter().map(move |y| x.iter().chain(y).cloned().collect())).collect())
}

/// Combines `items` with AND (or with OR when `negated`, De Morgan), each item negated as asked.
fn combine<T>(
    items: &[T],
    conjunction: bool,
    negated: bool,
    field: &str,
    each: impl Fn(&T, bool, &str) -> FieldResult<Dnf>,
) -> FieldResult<Dnf> {
    let as_and = conjunction != negated;
    let mut acc = truth(as_and);
    for (i, item) in items.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let next = each(item, negated, &field)?;
        acc = if as_and { and(acc, next, &field)? } else { or(acc, next, &field)? };
    }
    Ok(acc)
}

fn atom(atom: Atom, negated: bool) -> Dnf {
    vec![vec![Literal { atom, negated }]]
}

/// Translates one RBAC filter config; `None` when it has no rules at all (a filter that does
/// nothing, as Envoy reads it).
pub(crate) fn parse(config: &HttpRbac) -> FieldResult<Option<RbacFilter>> {
    if config.matcher.is_some() || config.shadow_matcher.is_some() {
        return Err(FieldError::new("matcher", "matcher trees are not supported: use rules"));
    }
    let (rules, dry_run, field) = match (&config.rules, &config.shadow_rules) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "shadow_rules",
                "enforced rules and shadow rules in one filter: mesh runs a policy either enforced or dry-run",
            ));
        }
        (Some(rules), None) => (rules, false, "rules"),
        (None, Some(shadow)) => (shadow, true, "shadow_rules"),
        (None, None) => return Ok(None),
    };
    let (action, rules) = parse_rules(rules).map_err(|e| e.within(field))?;
    Ok(Some(RbacFilter { action, rules, dry_run }))
}

fn parse_rules(rbac: &RbacRules) -> FieldResult<(AuthorizationAction, Vec<AuthorizationRule>)> {
    let action = match RawAction::try_from(rbac.action) {
        Ok(RawAction::Allow) => AuthorizationAction::Allow,
        Ok(RawAction::Deny) => AuthorizationAction::Deny,
        Ok(RawAction::Log) => {
            return Err(FieldError::new("action", "LOG is not supported (ALLOW and DENY are)"));
        }
        Err(_) => return Err(FieldError::new("action", format!("unknown action {}", rbac.action))),
    };
    if rbac.audit_logging_options.is_some() {
        return Err(FieldError::new("audit_logging_options", "audit logging is not supported"));
    }
    // Sorted by name, so the same policies always give the same rules.
    let mut names: Vec<&String> = rbac.policies.keys().collect();
    names.sort();
    let mut rules = Vec::new();
    for name in names {
        let field = format!("policies[{name:?}]");
        let policy = &rbac.policies[name];
        for term in policy_terms(policy).map_err(|e| e.within(&field))? {
            if let Some(rule) = rule(action, term).map_err(|e| e.within(&field))? {
                rules.push(rule);
            }
        }
    }
    Ok((action, rules))
}

fn policy_terms(policy: &Policy) -> FieldResult<Dnf> {
    if policy.condition.is_some() || policy.checked_condition.is_some() || policy.cel_config.is_some() {
        return Err(FieldError::new("condition", "CEL conditions are not supported"));
    }
    let permissions = combine(&policy.permissions, false, false, "permissions", permission)?;
    let principals = combine(&policy.principals, false, false, "principals", principal)?;
    and(permissions, principals, "permissions")
}

#[allow(deprecated)] // `metadata` is deprecated but still a rule a control plane may send
fn permission(p: &Permission, negated: bool, field: &str) -> FieldResult<Dnf> {
    let unsupported = |name: &str, what: &str| {
        Err(FieldError::new(format!("{field}.{name}"), format!("{what} is not supported in permissions")))
    };
    match &p.rule {
        Some(Rule::AndRules(set)) => {
            combine(&set.rules, true, negated, &format!("{field}.and_rules.rules"), permission)
        }
        Some(Rule::OrRules(set)) => combine(&set.rules, false, negated, &format!("{field}.or_rules.rules"), permission),
        Some(Rule::NotRule(inner)) => permission(inner, !negated, &format!("{field}.not_rule")),
        Some(Rule::Any(true)) => Ok(truth(!negated)),
        Some(Rule::Any(false)) => Err(FieldError::new(format!("{field}.any"), "must be true")),
        Some(Rule::Header(h)) => {
            header_atom(h).map(|a| atom(a, negated)).map_err(|e| e.within(&format!("{field}.header")))
        }
        Some(Rule::UrlPath(p)) => {
            path(p).map(|a| atom(Atom::Path(a), negated)).map_err(|e| e.within(&format!("{field}.url_path")))
        }
        Some(Rule::DestinationPort(port)) => match u16::try_from(*port) {
            Ok(port) => Ok(atom(Atom::Port(port), negated)),
            Err(_) => Err(FieldError::new(format!("{field}.destination_port"), format!("{port} is not a port"))),
        },
        Some(Rule::DestinationIp(_)) => unsupported("destination_ip", "a destination IP"),
        Some(Rule::DestinationPortRange(_)) => unsupported("destination_port_range", "a port range"),
        Some(Rule::Metadata(_)) => unsupported("metadata", "metadata"),
        Some(Rule::RequestedServerName(_)) => unsupported("requested_server_name", "the TLS server name"),
        Some(Rule::Matcher(_)) => unsupported("matcher", "an extension matcher"),
        Some(Rule::UriTemplate(_)) => unsupported("uri_template", "a URI template"),
        Some(Rule::SourcedMetadata(_)) => unsupported("sourced_metadata", "metadata"),
        None => Err(FieldError::new(format!("{field}.rule"), "missing")),
    }
}

#[allow(deprecated)] // `source_ip` and `metadata` are deprecated but still sent
fn principal(p: &Principal, negated: bool, field: &str) -> FieldResult<Dnf> {
    let unsupported = |name: &str, what: &str| {
        Err(FieldError::new(format!("{field}.{name}"), format!("{what} is not supported in principals")))
    };
    match &p.identifier {
        Some(Identifier::AndIds(set)) => combine(&set.ids, true, negated, &format!("{field}.and_ids.ids"), principal),
        Some(Identifier::OrIds(set)) => combine(&set.ids, false, negated, &format!("{field}.or_ids.ids"), principal),
        Some(Identifier::NotId(inner)) => principal(inner, !negated, &format!("{field}.not_id")),
        Some(Identifier::Any(true)) => Ok(truth(!negated)),
        Some(Identifier::Any(false)) => Err(FieldError::new(format!("{field}.any"), "must be true")),
        // Every caller of a listener with RBAC presented a verified certificate (the listener
        // requires mTLS), so `authenticated` without a name is every caller.
        Some(Identifier::Authenticated(a)) => match &a.principal_name {
            None => Ok(truth(!negated)),
            Some(m) => principal_name(m)
                .map(|p| atom(Atom::Principal(p), negated))
                .map_err(|e| e.within(&format!("{field}.authenticated.principal_name"))),
        },
        Some(Identifier::SourceIp(_)) => unsupported("source_ip", "a source IP"),
        Some(Identifier::DirectRemoteIp(_)) => unsupported("direct_remote_ip", "a source IP"),
        Some(Identifier::RemoteIp(_)) => unsupported("remote_ip", "a source IP"),
        Some(Identifier::Header(_)) => unsupported("header", "a header (request principals)"),
        Some(Identifier::UrlPath(_)) => unsupported("url_path", "a path"),
        Some(Identifier::Metadata(_)) => unsupported("metadata", "metadata"),
        Some(Identifier::FilterState(_)) => unsupported("filter_state", "filter state"),
        Some(Identifier::SourcedMetadata(_)) => unsupported("sourced_metadata", "metadata"),
        Some(Identifier::Custom(_)) => unsupported("custom", "a custom principal"),
        None => Err(FieldError::new(format!("{field}.identifier"), "missing")),
    }
}

/// The pattern of a string matcher, as a regex over the whole string (`None` for an exact,
/// case-sensitive match, which the caller handles without a regex).
fn pattern(m: &StringMatcher) -> FieldResult<Option<String>> {
    let case = if m.ignore_case { "(?i)" } else { "" };
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(_)) if !m.ignore_case => return Ok(None),
        Some(MatchPattern::Exact(v)) => route::escape(v),
        Some(MatchPattern::Prefix(p)) => format!("{}.*", route::escape(p)),
        Some(MatchPattern::Suffix(s)) => format!(".*{}", route::escape(s)),
        Some(MatchPattern::Contains(s)) => format!(".*{}.*", route::escape(s)),
        Some(MatchPattern::SafeRegex(r)) => format!("(?:{})", r.regex),
        Some(MatchPattern::Custom(_)) => {
            return Err(FieldError::new("custom", "custom string matchers are not supported"));
        }
        None => return Err(FieldError::new("match_pattern", "missing")),
    };
    Ok(Some(format!("{case}{pattern}")))
}

/// The peer's URI SAN (its SPIFFE ID, the only SAN a mesh peer has) against a string matcher.
fn principal_name(m: &StringMatcher) -> FieldResult<PrincipalMatch> {
    match (pattern(m)?, &m.match_pattern) {
        (None, Some(MatchPattern::Exact(id))) => match id.parse::<SpiffeId>() {
            Ok(spiffe) if spiffe.as_str() == id => Ok(PrincipalMatch::Exact(spiffe)),
            // Not a SPIFFE ID as written: compare the string as it is.
            _ => PrincipalMatch::regex(&route::escape(id)).map_err(|e| FieldError::new("exact", e.to_string())),
        },
        (Some(p), _) => PrincipalMatch::regex(&p).map_err(|e| FieldError::new("match_pattern", e.to_string())),
        (None, _) => Err(FieldError::new("match_pattern", "missing")),
    }
}

fn path(p: &PathMatcher) -> FieldResult<PathMatch> {
    let Some(path_matcher::Rule::Path(m)) = &p.rule else {
        return Err(FieldError::new("path", "missing"));
    };
    match (pattern(m).map_err(|e| e.within("path"))?, &m.match_pattern) {
        (None, Some(MatchPattern::Exact(exact))) if exact.starts_with('/') => {
            PathMatch::exact(exact.clone()).map_err(|e| FieldError::new("path.exact", e.to_string()))
        }
        (None, Some(MatchPattern::Exact(exact))) => {
            PathMatch::regex(&route::escape(exact)).map_err(|e| FieldError::new("path.exact", e.to_string()))
        }
        (Some(p), _) => PathMatch::regex(&p).map_err(|e| FieldError::new("path", e.to_string())),
        (None, _) => Err(FieldError::new("path.match_pattern", "missing")),
    }
}

#[allow(deprecated)] // `exact_match` is what istiod sends for methods
fn header_atom(h: &HeaderMatcher) -> FieldResult<Atom> {
    if h.treat_missing_header_as_empty {
        return Err(FieldError::new("treat_missing_header_as_empty", "is not supported"));
    }
    if h.name == ":method" {
        if h.invert_match {
            return Err(FieldError::new("invert_match", "inverted header matches are not supported"));
        }
        let exact = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(v)) => v,
            Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(v)),
                ignore_case: false,
            })) => v,
            _ => return Err(FieldError::new("name", ":method is supported with an exact match only")),
        };
        return Method::new(exact).map(Atom::Method).map_err(|e| FieldError::new("exact_match", e.to_string()));
    }
    if h.name.starts_with(':') || h.name.eq_ignore_ascii_case("host") {
        return Err(FieldError::new(
            "name",
            format!("{:?} is not supported (of the pseudo-headers, :method is)", h.name),
        ));
    }
    route::header(h).map(Atom::Header)
}

/// One conjunction as a rule; `None` if it can never hold (a condition and its negation).
fn rule(action: AuthorizationAction, term: Vec<Literal>) -> FieldResult<Option<AuthorizationRule>> {
    let mut rule = match action {
        AuthorizationAction::Allow => AuthorizationRule::allow(Vec::new()),
        _ => AuthorizationRule::deny(Vec::new()),
    };
    for Literal { atom, negated } in &term {
        if !negated && term.iter().any(|l| l.negated && &l.atom == atom) {
            return Ok(None);
        }
        let one = |kind: &str, len: usize| {
            if len > 0 {
                Err(FieldError::new(
                    if kind == "caller" { "principals" } else { "permissions" },
                    format!("two conditions on the {kind} that must both hold: mesh rules match one {kind} each"),
                ))
            } else {
                Ok(())
            }
        };
        match (atom, negated) {
            (Atom::Principal(p), false) if !rule.from.contains(p) => {
                one("caller", rule.from.len())?;
                rule.from.push(p.clone());
            }
            (Atom::Path(p), false) if !rule.paths.contains(p) => {
                one("path", rule.paths.len())?;
                rule.paths.push(p.clone());
            }
            (Atom::Method(m), false) if !rule.methods.contains(m) => {
                one("method", rule.methods.len())?;
                rule.methods.push(m.clone());
            }
            (Atom::Port(p), false) if !rule.ports.contains(p) => {
                one("port", rule.ports.len())?;
                rule.ports.push(*p);
            }
            (Atom::Header(h), false) if !rule.headers.contains(h) => rule.headers.push(h.clone()),
            (Atom::Principal(p), true) => rule.not_from.push(p.clone()),
            (Atom::Path(p), true) => rule.not_paths.push(p.clone()),
            (Atom::Method(m), true) => rule.not_methods.push(m.clone()),
            (Atom::Port(p), true) => rule.not_ports.push(*p),
            (Atom::Header(h), true) => rule.not_headers.push(h.clone()),
            (_, false) => {} // the same condition twice
        }
    }
    Ok(Some(rule))
}

#[cfg(test)]
mod tests;
