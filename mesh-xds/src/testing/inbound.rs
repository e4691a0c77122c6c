//! Istio-shaped inbound (server) listeners, as istiod's `grpcgen` generates them for proxyless
//! gRPC servers (`xds.istio.io/grpc/lds/inbound/IP:PORT`): one filter chain, mTLS from
//! certificate provider instance `default` when STRICT, an HTTP connection manager with an inline
//! route configuration of one non-forwarding route, and the RBAC filters (DENY, then ALLOW)
//! before the router; plus the Istio shapes of AuthorizationPolicy rules.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use envoy_types::pb::{
    envoy::{
        config::{
            core::v3::{TransportSocket, transport_socket},
            listener::v3::{Filter, FilterChain, Listener, filter},
            rbac::v3::{Permission, Policy, Principal, Rbac as RbacRules, permission, principal, rbac::Action},
            route::v3::{
                HeaderMatcher, NonForwardingAction, Route, RouteConfiguration, RouteMatch, VirtualHost,
                header_matcher::HeaderMatchSpecifier, route::Action as RouteAction, route_match::PathSpecifier,
            },
        },
        extensions::{
            filters::{
                http::{rbac::v3::Rbac as HttpRbac, router::v3::Router},
                network::http_connection_manager::v3::{
                    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
                },
            },
            transport_sockets::tls::v3::{
                CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
                DownstreamTlsContext, common_tls_context::ValidationContextType,
            },
        },
        r#type::matcher::v3::{PathMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern},
    },
    google::protobuf::BoolValue,
};

use super::resources::{any, istio_tls, socket_address};

/// Istio's `server_listener_resource_name_template`.
pub const TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";

/// The inbound listener name of a server on `addr`.
pub fn inbound_name(addr: SocketAddr) -> String {
    TEMPLATE.replace("%s", &addr.to_string())
}

/// A server's bootstrap: the control plane at `cp`, the template, and a `file_watcher` provider
/// `default` over `certs` (`cert.pem`, `key.pem`, `ca.pem`).
pub fn server_bootstrap(dir: &Path, cp: SocketAddr, certs: &Path) -> PathBuf {
    let json = serde_json::json!({
        "xds_servers": [{"server_uri": cp.to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "sidecar~127.0.0.1~server.default~default.svc.cluster.local", "cluster": "server.default",
                 "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}, "locality": {"zone": "test"}},
        "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": certs.join("cert.pem"), "private_key_file": certs.join("key.pem"),
            "ca_certificate_file": certs.join("ca.pem"), "refresh_interval": "600s"}}},
        "server_listener_resource_name_template": TEMPLATE,
    });
    let path = dir.join("server-bootstrap.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    path
}

/// istiod's inbound listener for a server on `addr`: STRICT mTLS when `mtls`, with `rbac`
/// filters (DENY first, as istiod orders them) before the router.
pub fn inbound_listener(addr: SocketAddr, mtls: bool, rbac: Vec<HttpRbac>) -> Listener {
    let manager = connection_manager(RouteSpecifier::RouteConfig(serve_all()), rbac);
    let tls = mtls.then(|| downstream_tls(true));
    let name = if mtls { "inbound-mtls" } else { "inbound-plaintext" };
    listener_on(&inbound_name(addr), addr, vec![filter_chain(name, &manager, tls.as_ref())])
}

/// istiod's inline route configuration of a server: one non-forwarding route for every path.
pub fn serve_all() -> RouteConfiguration {
    RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(RouteAction::NonForwardingAction(NonForwardingAction {})),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A server's HTTP connection manager: `routes`, then the `rbac` filters in order, then the
/// router.
pub fn connection_manager(routes: RouteSpecifier, rbac: Vec<HttpRbac>) -> HttpConnectionManager {
    let mut http_filters: Vec<HttpFilter> = rbac
        .into_iter()
        .enumerate()
        .map(|(i, config)| HttpFilter {
            name: format!("envoy.filters.http.rbac.{i}"),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
            ..Default::default()
        })
        .collect();
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    });
    HttpConnectionManager {
        stat_prefix: "inbound".into(),
        route_specifier: Some(routes),
        http_filters,
        ..Default::default()
    }
}

/// A filter chain `name` of one HTTP connection manager, over TLS when `tls` is given.
pub fn filter_chain(name: &str, manager: &HttpConnectionManager, tls: Option<&DownstreamTlsContext>) -> FilterChain {
    FilterChain {
        name: name.into(),
        filters: vec![Filter {
            name: "inbound-hcm".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(manager))),
        }],
        transport_socket: tls.map(|tls| TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(tls))),
        }),
        ..Default::default()
    }
}

/// A socket listener `name` on `addr` with `chains`.
pub fn listener_on(name: &str, addr: SocketAddr, chains: Vec<FilterChain>) -> Listener {
    Listener { name: name.into(), address: Some(socket_address(addr)), filter_chains: chains, ..Default::default() }
}

/// A `DownstreamTlsContext` in the current fields only: the certificate from provider instance
/// `certificate`, the roots from `roots`.
pub fn tls_from(certificate: &str, roots: &str, require_client_certificate: bool) -> DownstreamTlsContext {
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
        require_client_certificate: Some(BoolValue { value: require_client_certificate }),
        ..Default::default()
    }
}

/// istiod's `DownstreamTlsContext`: certificate and roots from instance `default`.
pub fn downstream_tls(require_client_certificate: bool) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(istio_tls(None)),
        require_client_certificate: Some(BoolValue { value: require_client_certificate }),
        ..Default::default()
    }
}

/// An RBAC filter with `action` and the named policies; in `shadow_rules` when `dry_run`
/// (Istio's `istio.io/dry-run` annotation).
pub fn rbac(action: Action, policies: Vec<(&str, Policy)>, dry_run: bool) -> HttpRbac {
    let rules = RbacRules {
        action: action as i32,
        policies: policies.into_iter().map(|(n, p)| (n.to_owned(), p)).collect(),
        ..Default::default()
    };
    if dry_run {
        HttpRbac { shadow_rules: Some(rules), shadow_rules_stat_prefix: "istio_dry_run_".into(), ..Default::default() }
    } else {
        HttpRbac { rules: Some(rules), ..Default::default() }
    }
}

fn string(pattern: MatchPattern) -> StringMatcher {
    StringMatcher { match_pattern: Some(pattern), ignore_case: false }
}

/// `from.source.principals` as istiod writes it: `and_ids[or_ids[authenticated ...]]`; a
/// trailing `*` is a prefix.
pub fn principals(ids: &[&str]) -> Principal {
    let one = |id: &str| Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name: Some(string(match id.strip_suffix('*') {
                Some(prefix) => MatchPattern::Prefix(prefix.into()),
                None => MatchPattern::Exact(id.into()),
            })),
        })),
    };
    let or = Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids: ids.iter().map(|i| one(i)).collect() })),
    };
    Principal { identifier: Some(principal::Identifier::AndIds(principal::Set { ids: vec![or] })) }
}

/// `from.source.notPrincipals`: `not_id(or_ids[...])`, inside the `and_ids`.
pub fn principals_except(ids: &[&str], except: &[&str]) -> Principal {
    let Some(principal::Identifier::AndIds(mut and)) = principals(ids).identifier else { unreachable!() };
    let Some(principal::Identifier::AndIds(not)) = principals(except).identifier else { unreachable!() };
    and.ids.push(Principal { identifier: Some(principal::Identifier::NotId(Box::new(not.ids[0].clone()))) });
    Principal { identifier: Some(principal::Identifier::AndIds(and)) }
}

/// Any caller.
pub fn any_principal() -> Principal {
    Principal { identifier: Some(principal::Identifier::Any(true)) }
}

/// Any request.
pub fn any_request() -> Permission {
    Permission { rule: Some(permission::Rule::Any(true)) }
}

/// `to.operation.paths` (a trailing `*` is a prefix) and `methods`, as istiod writes them.
pub fn operation(paths: &[&str], methods: &[&str]) -> Permission {
    let path = |p: &str| Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(string(match p.strip_suffix('*') {
                Some(prefix) => MatchPattern::Prefix(prefix.into()),
                None => MatchPattern::Exact(p.into()),
            }))),
        })),
    };
    let method = |m: &str| Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch(m.into())),
            ..Default::default()
        })),
    };
    let or = |rules: Vec<Permission>| Permission { rule: Some(permission::Rule::OrRules(permission::Set { rules })) };
    let mut and = Vec::new();
    if !paths.is_empty() {
        and.push(or(paths.iter().map(|p| path(p)).collect()));
    }
    if !methods.is_empty() {
        and.push(or(methods.iter().map(|m| method(m)).collect()));
    }
    Permission { rule: Some(permission::Rule::AndRules(permission::Set { rules: and })) }
}

/// A policy.
pub fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy { permissions, principals, ..Default::default() }
}

/// A principal mesh cannot evaluate (a source IP range, `ipBlocks` in Istio).
pub fn source_ip_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::RemoteIp(envoy_types::pb::envoy::config::core::v3::CidrRange {
            address_prefix: "10.0.0.0".into(),
            prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 8 }),
        })),
    }
}

/// A socket listener for Envoy on `addr` sending every request to `cluster` (an Envoy inbound
/// sidecar in front of its app, as istiod's `inbound|PORT||` listeners do), routes inline.
pub fn envoy_inbound_listener(name: &str, addr: SocketAddr, cluster: &str) -> Listener {
    use envoy_types::pb::envoy::config::route::v3::{RouteAction as Forward, route_action::ClusterSpecifier};
    let manager = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: name.into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(RouteAction::Route(Forward {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener_on(
        name,
        addr,
        vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
    )
}
