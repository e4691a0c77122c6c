use envoy_types::pb::envoy::{
    config::{
        core::v3::CidrRange,
        rbac::v3::{Permission, Principal, Rbac as RbacRules, permission, principal, rbac::Action},
        route::v3::{HeaderMatcher, header_matcher::HeaderMatchSpecifier},
    },
    extensions::filters::http::rbac::v3::Rbac as HttpRbac,
    r#type::matcher::v3::{PathMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern},
};
use mesh_core::{
    SpiffeId,
    policy::{AuthorizationAction, AuthorizationPolicy, Call, NoHeaders},
};

use super::*;
use crate::testing::inbound::{policy, rbac as filter};

fn string(pattern: MatchPattern) -> StringMatcher {
    StringMatcher { match_pattern: Some(pattern), ignore_case: false }
}

fn id(pattern: MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name: Some(string(pattern)),
        })),
    }
}

fn or_ids(ids: Vec<Principal>) -> Principal {
    Principal { identifier: Some(principal::Identifier::OrIds(principal::Set { ids })) }
}

fn and_ids(ids: Vec<Principal>) -> Principal {
    Principal { identifier: Some(principal::Identifier::AndIds(principal::Set { ids })) }
}

fn not_id(p: Principal) -> Principal {
    Principal { identifier: Some(principal::Identifier::NotId(Box::new(p))) }
}

fn or_rules(rules: Vec<Permission>) -> Permission {
    Permission { rule: Some(permission::Rule::OrRules(permission::Set { rules })) }
}

fn and_rules(rules: Vec<Permission>) -> Permission {
    Permission { rule: Some(permission::Rule::AndRules(permission::Set { rules })) }
}

fn url_prefix(p: &str) -> Permission {
    Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(string(MatchPattern::Prefix(p.into())))),
        })),
    }
}

#[allow(deprecated)]
fn header(name: &str, exact: &str) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch(exact.into())),
            ..Default::default()
        })),
    }
}

fn allowed(rbac: &RbacFilter, peer: &str, method: &str, path: &str, port: u16) -> bool {
    let peer: SpiffeId = peer.parse().unwrap();
    let mut rules = rbac.rules.clone();
    if rbac.action == AuthorizationAction::Deny {
        rules.push(AuthorizationRule::allow(Vec::new()));
    }
    let policy = AuthorizationPolicy::enforce(rules);
    policy.evaluate_call(&Call::new(Some(&peer), method, path, &NoHeaders).with_port(port)).is_allowed()
}

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";
const FOREIGN: &str = "spiffe://cluster.local/ns/prod/sa/sleep";

/// The shape istiod gives an ALLOW AuthorizationPolicy with `from.source.principals`,
/// `to.operation.paths` (a `*` suffix: a string prefix) and `methods`.
#[test]
fn istio_allow_policy() {
    let p = policy(
        vec![and_rules(vec![
            or_rules(vec![url_prefix("/helloworld.Greeter/")]),
            or_rules(vec![header(":method", "POST")]),
        ])],
        vec![and_ids(vec![or_ids(vec![id(MatchPattern::Exact(SLEEP.into()))])])],
    );
    let rbac = parse(&filter(Action::Allow, vec![("ns[default]-policy[allow]-rule[0]", p)], false)).unwrap().unwrap();
    assert_eq!(rbac.rules.len(), 1, "{:?}", rbac.rules);
    assert!(!rbac.dry_run);
    assert!(allowed(&rbac, SLEEP, "POST", "/helloworld.Greeter/SayHello", 80));
    assert!(!allowed(&rbac, OTHER, "POST", "/helloworld.Greeter/SayHello", 80));
    assert!(!allowed(&rbac, SLEEP, "GET", "/helloworld.Greeter/SayHello", 80));
    assert!(!allowed(&rbac, SLEEP, "POST", "/other.Service/Call", 80));
    // A string prefix, as Envoy reads it: not segment by segment.
    assert!(allowed(&rbac, SLEEP, "POST", "/helloworld.Greeter/X/y", 80));
}

/// `notPrincipals` and namespace prefixes, in a DENY policy, with ports.
#[test]
fn istio_deny_policy_with_negation_and_ports() {
    let p = policy(
        vec![and_rules(vec![or_rules(vec![Permission { rule: Some(permission::Rule::DestinationPort(8080)) }])])],
        vec![and_ids(vec![
            or_ids(vec![id(MatchPattern::Prefix("spiffe://cluster.local/ns/default/".into()))]),
            not_id(or_ids(vec![id(MatchPattern::Exact(SLEEP.into()))])),
        ])],
    );
    let rbac = parse(&filter(Action::Deny, vec![("deny", p)], false)).unwrap().unwrap();
    assert_eq!(rbac.action, AuthorizationAction::Deny);
    assert!(!allowed(&rbac, OTHER, "GET", "/", 8080), "in the namespace, not excepted: denied");
    assert!(allowed(&rbac, SLEEP, "GET", "/", 8080), "excepted by not_id");
    assert!(allowed(&rbac, FOREIGN, "GET", "/", 8080), "outside the prefix");
    assert!(allowed(&rbac, OTHER, "GET", "/", 9090), "another port");
}

/// NOT(a AND b) = NOT a OR NOT b: two rules, each with one negated condition.
#[test]
fn de_morgan() {
    let p = policy(
        vec![Permission {
            rule: Some(permission::Rule::NotRule(Box::new(and_rules(vec![
                url_prefix("/admin"),
                header(":method", "DELETE"),
            ])))),
        }],
        vec![Principal { identifier: Some(principal::Identifier::Any(true)) }],
    );
    let rbac = parse(&filter(Action::Allow, vec![("p", p)], false)).unwrap().unwrap();
    assert_eq!(rbac.rules.len(), 2);
    assert!(allowed(&rbac, OTHER, "GET", "/admin", 80));
    assert!(allowed(&rbac, OTHER, "DELETE", "/data", 80));
    assert!(!allowed(&rbac, OTHER, "DELETE", "/admin/x", 80));
}

#[test]
fn shadow_rules_are_a_dry_run() {
    let p = policy(
        vec![Permission { rule: Some(permission::Rule::Any(true)) }],
        vec![id(MatchPattern::Exact(SLEEP.into()))],
    );
    let rbac = parse(&filter(Action::Allow, vec![("p", p)], true)).unwrap().unwrap();
    assert!(rbac.dry_run);
    assert!(parse(&HttpRbac::default()).unwrap().is_none(), "no rules: the filter does nothing");
}

#[test]
fn what_cannot_be_translated_is_refused() {
    let any = || vec![Permission { rule: Some(permission::Rule::Any(true)) }];
    let sleep = || vec![id(MatchPattern::Exact(SLEEP.into()))];
    let refused = |rbac: HttpRbac| {
        let e = parse(&rbac).unwrap_err();
        format!("{}: {}", e.field, e.reason)
    };

    let ip = Principal { identifier: Some(principal::Identifier::RemoteIp(CidrRange::default())) };
    let e = refused(filter(Action::Allow, vec![("p", policy(any(), vec![ip]))], false));
    assert!(e.contains("principals[0].remote_ip") && e.contains("not supported"), "{e}");

    let e = refused(filter(Action::Log, vec![("p", policy(any(), sleep()))], false));
    assert!(e.contains("rules.action") && e.contains("LOG"), "{e}");

    let e = refused(filter(Action::Allow, vec![("p", policy(vec![header(":authority", "x")], sleep()))], false));
    assert!(e.contains(":authority"), "{e}");

    let two_paths = and_rules(vec![url_prefix("/a"), url_prefix("/b")]);
    let e = refused(filter(Action::Allow, vec![("p", policy(vec![two_paths], sleep()))], false));
    assert!(e.contains("two conditions on the path"), "{e}");

    let mut cel = policy(any(), sleep());
    cel.condition = Some(Default::default());
    let e = refused(filter(Action::Allow, vec![("p", cel)], false));
    assert!(e.contains("condition") && e.contains("CEL"), "{e}");

    let both =
        HttpRbac { rules: Some(RbacRules::default()), shadow_rules: Some(RbacRules::default()), ..Default::default() };
    assert!(refused(both).contains("shadow_rules"));
}
