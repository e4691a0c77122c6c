use std::collections::BTreeMap;

use envoy_types::pb::{
    envoy::{
        config::{
            core::v3::{
                Address, SocketAddress, TransportSocket, address, socket_address::PortSpecifier, transport_socket,
            },
            listener::v3::{Filter, FilterChain, Listener, filter},
            rbac::v3::{Permission, Policy, Principal, Rbac as RbacRules, permission, principal, rbac::Action},
            route::v3::{
                NonForwardingAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
                route::Action as Act, route_action::ClusterSpecifier, route_match::PathSpecifier,
            },
        },
        extensions::{
            filters::{
                http::{rbac::v3::Rbac as HttpRbac, router::v3::Router},
                network::http_connection_manager::v3::{
                    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier, http_filter,
                },
            },
            transport_sockets::tls::v3::{
                CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
                DownstreamTlsContext, common_tls_context::ValidationContextType,
            },
        },
    },
    google::protobuf::{Any, BoolValue},
};
use mesh_core::policy::{AuthorizationAction, AuthorizationMode};
use prost::{Message, Name};

use super::*;
use crate::bootstrap::CertificateProvider;

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

const ADDR: &str = "127.0.0.1:8080";

fn providers() -> BTreeMap<String, CertificateProvider> {
    let p = CertificateProvider {
        certificate_file: "cert.pem".into(),
        private_key_file: "key.pem".into(),
        ca_certificate_file: "ca.pem".into(),
    };
    [("default".to_owned(), p.clone()), ("roots".to_owned(), p)].into()
}

fn tls(certificate: &str, roots: &str, require: bool) -> DownstreamTlsContext {
    let plugin =
        |name: &str| CertificateProviderPluginInstance { instance_name: name.into(), certificate_name: String::new() };
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(plugin(certificate)),
            validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                ca_certificate_provider_instance: Some(plugin(roots)),
                ..Default::default()
            })),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: require }),
        ..Default::default()
    }
}

fn serve_all() -> RouteConfiguration {
    RouteConfiguration {
        virtual_hosts: vec![VirtualHost {
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Act::NonForwardingAction(NonForwardingAction {})),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn hcm(routes: RouteSpecifier, rbac: Vec<HttpRbac>) -> HttpConnectionManager {
    let mut http_filters: Vec<HttpFilter> = rbac
        .iter()
        .map(|r| HttpFilter {
            name: "rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(r))),
            ..Default::default()
        })
        .collect();
    http_filters.push(HttpFilter {
        name: "router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    });
    HttpConnectionManager { route_specifier: Some(routes), http_filters, ..Default::default() }
}

fn chain(manager: &HttpConnectionManager, tls: Option<&DownstreamTlsContext>) -> FilterChain {
    FilterChain {
        filters: vec![Filter { name: "hcm".into(), config_type: Some(filter::ConfigType::TypedConfig(any(manager))) }],
        transport_socket: tls.map(|t| TransportSocket {
            name: "tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(t))),
        }),
        ..Default::default()
    }
}

fn listener(chains: Vec<FilterChain>) -> Listener {
    let addr: SocketAddr = ADDR.parse().unwrap();
    Listener {
        name: format!("inbound/{ADDR}"),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
                ..Default::default()
            })),
        }),
        filter_chains: chains,
        ..Default::default()
    }
}

fn rbac(action: Action, shadow: bool) -> HttpRbac {
    let policy = Policy {
        permissions: vec![Permission { rule: Some(permission::Rule::Any(true)) }],
        principals: vec![Principal { identifier: Some(principal::Identifier::Any(true)) }],
        ..Default::default()
    };
    let rules = RbacRules { action: action as i32, policies: [("p".to_owned(), policy)].into(), ..Default::default() };
    if shadow {
        HttpRbac { shadow_rules: Some(rules), ..Default::default() }
    } else {
        HttpRbac { rules: Some(rules), ..Default::default() }
    }
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
    RouteSpecifier::RouteConfig(serve_all())
}

#[test]
fn strict_mtls_with_deny_then_allow() {
    let strict = tls("default", "roots", true);
    let l = listener(vec![chain(
        &hcm(inline(), vec![rbac(Action::Deny, false), rbac(Action::Allow, false)]),
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
    let l = listener(vec![chain(&hcm(inline(), vec![rbac(Action::Deny, false)]), Some(&strict))]);
    let policy = parsed(&l).unwrap().authorization.unwrap();
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(policy.rules[1], AuthorizationRule::allow(Vec::new()));

    // Shadow rules only: a dry run.
    let l = listener(vec![chain(&hcm(inline(), vec![rbac(Action::Allow, true)]), Some(&strict))]);
    assert_eq!(parsed(&l).unwrap().authorization.unwrap().mode, AuthorizationMode::DryRun);

    // Plaintext, no RBAC: served in plaintext, no policy.
    let l = listener(vec![chain(&hcm(inline(), vec![]), None)]);
    let config = parsed(&l).unwrap();
    assert!(config.tls.is_none() && config.authorization.is_none());
}

#[test]
fn what_a_server_cannot_honour_is_refused() {
    let strict = tls("default", "default", true);
    let plain = hcm(inline(), vec![]);

    let e = refused(&listener(vec![chain(&plain, Some(&strict)), chain(&plain, None)]));
    assert!(e.starts_with("filter_chains: mesh serves one filter chain"), "{e}");

    let e = refused(&listener(vec![chain(&hcm(inline(), vec![rbac(Action::Allow, false)]), None)]));
    assert!(e.contains("transport_socket") && e.contains("RBAC needs mTLS"), "{e}");

    let e = refused(&listener(vec![chain(&plain, Some(&tls("default", "default", false)))]));
    assert!(e.contains("require_client_certificate"), "{e}");

    let e = refused(&listener(vec![chain(&plain, Some(&tls("missing", "default", true)))]));
    assert!(e.contains("\"missing\" is not in the bootstrap"), "{e}");

    let rds = RouteSpecifier::Rds(Rds { route_config_name: "inbound".into(), ..Default::default() });
    let e = refused(&listener(vec![chain(&hcm(rds, vec![]), Some(&strict))]));
    assert!(e.contains("rds") && e.contains("inline"), "{e}");

    let mut forward = serve_all();
    forward.virtual_hosts[0].routes[0].action = Some(Act::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster("elsewhere".into())),
        ..Default::default()
    }));
    let e = refused(&listener(vec![chain(&hcm(RouteSpecifier::RouteConfig(forward), vec![]), Some(&strict))]));
    assert!(e.contains("routes[0].action") && e.contains("non_forwarding_action"), "{e}");

    let e = refused(&listener(vec![chain(
        &hcm(inline(), vec![rbac(Action::Allow, false), rbac(Action::Allow, false)]),
        Some(&strict),
    )]));
    assert!(e.contains("two ALLOW RBAC filters"), "{e}");

    let e = refused(&listener(vec![chain(
        &hcm(inline(), vec![rbac(Action::Deny, false), rbac(Action::Allow, true)]),
        Some(&strict),
    )]));
    assert!(e.contains("enforced and shadow"), "{e}");

    let mut no_address = listener(vec![chain(&plain, Some(&strict))]);
    no_address.address = None;
    assert!(refused(&no_address).starts_with("address.socket_address: missing"));
}
