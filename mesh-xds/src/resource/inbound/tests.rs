use std::collections::BTreeMap;

use envoy_types::pb::envoy::{
    config::{
        listener::v3::{FilterChain, Listener},
        rbac::v3::rbac::Action,
        route::v3::{RouteAction, route::Action as Act, route_action::ClusterSpecifier},
    },
    extensions::{
        filters::{
            http::rbac::v3::Rbac as HttpRbac,
            network::http_connection_manager::v3::{
                HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
            },
        },
        transport_sockets::tls::v3::DownstreamTlsContext,
    },
};
use mesh_core::policy::{AuthorizationAction, AuthorizationMode};

use super::*;
use crate::{bootstrap::CertificateProvider, testing::inbound as i};

const ADDR: &str = "127.0.0.1:8080";

fn providers() -> BTreeMap<String, CertificateProvider> {
    let p = CertificateProvider {
        certificate_file: "cert.pem".into(),
        private_key_file: "key.pem".into(),
        ca_certificate_file: "ca.pem".into(),
    };
    [("default".to_owned(), p.clone()), ("roots".to_owned(), p)].into()
}

fn chain(manager: &HttpConnectionManager, tls: Option<&DownstreamTlsContext>) -> FilterChain {
    i::filter_chain("chain", manager, tls)
}

fn listener(chains: Vec<FilterChain>) -> Listener {
    i::listener_on(&format!("inbound/{ADDR}"), ADDR.parse().unwrap(), chains)
}

/// An RBAC filter with one policy that matches every request of every caller.
fn rbac(action: Action, shadow: bool) -> HttpRbac {
    i::rbac(action, vec![("p", i::policy(vec![i::any_request()], vec![i::any_principal()]))], shadow)
}

fn parsed(l: &Listener) -> FieldResult<InboundConfig> {
    let providers = providers();
    parse(l, &DecodeContext { certificate_providers: &providers })
}

fn refused(l: &Listener) -> String {
    let e = parsed(l).unwrap_err();
    format!("{}: {}", e.field, e.reason)
}

fn inline() -> RouteSpecifier {
    RouteSpecifier::RouteConfig(i::serve_all())
}

#[test]
fn strict_mtls_with_deny_then_allow() {
    let strict = i::tls_from("default", "roots", true);
    let l = listener(vec![chain(
        &i::connection_manager(inline(), vec![rbac(Action::Deny, false), rbac(Action::Allow, false)]),
        Some(&strict),
    )]);
    assert!(is_inbound(&l));
    let config = parsed(&l).unwrap();
    assert_eq!(config.address, ADDR.parse().unwrap());
    let tls = config.tls.unwrap();
    assert_eq!((tls.certificate_instance.as_str(), tls.ca_instance.as_str()), ("default", "roots"));
    let policy = config.authorization.unwrap();
    assert_eq!(policy.mode, AuthorizationMode::Enforce);
    let actions: Vec<_> = policy.rules.iter().map(|r| r.action).collect();
    assert_eq!(actions, [AuthorizationAction::Deny, AuthorizationAction::Allow]);

    // DENY alone: what no deny rule matches is allowed.
    let l = listener(vec![chain(&i::connection_manager(inline(), vec![rbac(Action::Deny, false)]), Some(&strict))]);
    let policy = parsed(&l).unwrap().authorization.unwrap();
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(policy.rules[1], AuthorizationRule::allow(Vec::new()));

    // Shadow rules only: a dry run.
    let l = listener(vec![chain(&i::connection_manager(inline(), vec![rbac(Action::Allow, true)]), Some(&strict))]);
    assert_eq!(parsed(&l).unwrap().authorization.unwrap().mode, AuthorizationMode::DryRun);

    // Plaintext, no RBAC: served in plaintext, no policy.
    let l = listener(vec![chain(&i::connection_manager(inline(), vec![]), None)]);
    let config = parsed(&l).unwrap();
    assert!(config.tls.is_none() && config.authorization.is_none());
}

#[test]
fn what_a_server_cannot_honour_is_refused() {
    let strict = i::tls_from("default", "default", true);
    let plain = i::connection_manager(inline(), vec![]);

    let e = refused(&listener(vec![chain(&plain, Some(&strict)), chain(&plain, None)]));
    assert!(e.starts_with("filter_chains: mesh serves one filter chain"), "{e}");

    let e = refused(&listener(vec![chain(&i::connection_manager(inline(), vec![rbac(Action::Allow, false)]), None)]));
    assert!(e.contains("transport_socket") && e.contains("RBAC needs mTLS"), "{e}");

    let e = refused(&listener(vec![chain(&plain, Some(&i::tls_from("default", "default", false)))]));
    assert!(e.contains("require_client_certificate"), "{e}");

    let e = refused(&listener(vec![chain(&plain, Some(&i::tls_from("missing", "default", true)))]));
    assert!(e.contains("\"missing\" is not in the bootstrap"), "{e}");

    let rds = RouteSpecifier::Rds(Rds { route_config_name: "inbound".into(), ..Default::default() });
    let e = refused(&listener(vec![chain(&i::connection_manager(rds, vec![]), Some(&strict))]));
    assert!(e.contains("rds") && e.contains("inline"), "{e}");

    let mut forward = i::serve_all();
    forward.virtual_hosts[0].routes[0].action = Some(Act::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster("elsewhere".into())),
        ..Default::default()
    }));
    let e = refused(&listener(vec![chain(
        &i::connection_manager(RouteSpecifier::RouteConfig(forward), vec![]),
        Some(&strict),
    )]));
    assert!(e.contains("routes[0].action") && e.contains("non_forwarding_action"), "{e}");

    let e = refused(&listener(vec![chain(
        &i::connection_manager(inline(), vec![rbac(Action::Allow, false), rbac(Action::Allow, false)]),
        Some(&strict),
    )]));
    assert!(e.contains("two ALLOW RBAC filters"), "{e}");

    let e = refused(&listener(vec![chain(
        &i::connection_manager(inline(), vec![rbac(Action::Deny, false), rbac(Action::Allow, true)]),
        Some(&strict),
    )]));
    assert!(e.contains("enforced and shadow"), "{e}");

    let mut no_address = listener(vec![chain(&plain, Some(&strict))]);
    no_address.address = None;
    assert!(refused(&no_address).starts_with("address.socket_address: missing"));
}
