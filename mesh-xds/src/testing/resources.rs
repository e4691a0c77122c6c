//! Istio-shaped xDS resources, as istiod's `grpcgen` generates them for proxyless gRPC clients:
//! listener `HOST:PORT` holding an HTTP connection manager that names the route configuration of
//! the same name over ADS, a virtual host for the service, routes with `weighted_clusters` over
//! `outbound|PORT|SUBSET|HOST` clusters and Istio's default retry policy, EDS clusters whose TLS
//! context names certificate provider instances in both the current and the deprecated fields,
//! and one locality per cluster.

use std::net::SocketAddr;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster,
                cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
            },
            core::v3::{
                Address, AggregatedConfigSource, ConfigSource, Locality, SocketAddress, TransportSocket, address,
                config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, transport_socket,
            },
            endpoint::v3::{
                ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
            },
            listener::v3::{ApiListener, Filter, FilterChain, Listener, filter},
            route::v3::{
                Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
                retry_policy::{RetryHostPredicate, retry_host_predicate},
                route::Action,
                route_action::{ClusterSpecifier, MaxStreamDuration},
                route_match::PathSpecifier,
                weighted_cluster::ClusterWeight,
            },
        },
        extensions::{
            filters::{
                http::{fault::v3::HttpFault, router::v3::Router},
                network::http_connection_manager::v3::{
                    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier, http_filter,
                },
            },
            retry::host::previous_hosts::v3::PreviousHostsPredicate,
            transport_sockets::tls::v3::{
                CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
                common_tls_context::{
                    CertificateProviderInstance, CombinedCertificateValidationContext, ValidationContextType,
                },
            },
        },
        r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
    },
    google::protobuf::{Any, Duration, UInt32Value},
};
use prost::{Message, Name};

pub fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: 2, // V3
        ..Default::default()
    }
}

/// Istio's cluster name for a subset of a service port.
pub fn cluster_name(host: &str, port: u16, subset: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

fn hcm(route_config_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "outbound".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config_name.into(),
        })),
        // istiod's grpcgen: the fault filter (empty; routes override it), then the router.
        http_filters: vec![
            HttpFilter {
                name: "envoy.filters.http.fault".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(&HttpFault::default()))),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// The client listener `HOST:PORT` (an API listener), routes from RDS `HOST:PORT`.
pub fn client_listener(name: &str) -> Listener {
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener { api_listener: Some(any(&hcm(name))) }),
        ..Default::default()
    }
}

/// A socket listener for Envoy on `addr`, with the same routes (RDS `route_config_name`).
pub fn envoy_listener(name: &str, addr: SocketAddr, route_config_name: &str) -> Listener {
    let mut manager = hcm(route_config_name);
    manager.codec_type = 0; // AUTO
    Listener {
        name: name.into(),
        address: Some(socket_address(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A socket address.
pub fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// Istio's default retry policy.
pub fn istio_retry() -> envoy_types::pb::envoy::config::route::v3::RetryPolicy {
    envoy_types::pb::envoy::config::route::v3::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(&PreviousHostsPredicate::default()))),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// Route configuration `name` for service `host:port`: one default route splitting over
/// `clusters` by weight (a single cluster when there is one).
pub fn route_config(name: &str, host: &str, port: u16, clusters: &[(&str, u32)]) -> RouteConfiguration {
    let cluster_specifier = if clusters.len() == 1 {
        ClusterSpecifier::Cluster(clusters[0].0.into())
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(c, w)| ClusterWeight {
                    name: (*c).into(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let zero = Duration { seconds: 0, nanos: 0 };
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{host}:{port}"),
            domains: vec![host.into(), format!("{host}:{port}")],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(cluster_specifier),
                    retry_policy: Some(istio_retry()),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: Some(zero),
                        grpc_timeout_header_max: Some(zero),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An EDS cluster; with `tls`, an `UpstreamTlsContext` naming provider instance `default` for
/// both the certificate and the roots (in the current and the deprecated fields, as istiod does)
/// and expecting `spiffe_id`.
pub fn cluster(name: &str, tls: Option<&str>) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: name.into() }),
        connect_timeout: Some(Duration { seconds: 10, nanos: 0 }),
        lb_policy: 0, // ROUND_ROBIN
        // gRPC upstreams speak HTTP/2 (what Istio sets for gRPC ports; Envoy reads it, gRPC and mesh
        // always use HTTP/2).
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&http2()),
        )]
        .into(),
        transport_socket: tls.map(|spiffe_id| TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&upstream_tls(spiffe_id)))),
        }),
        ..Default::default()
    }
}

fn http2() -> envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions,
        http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
    };
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
        })),
        ..Default::default()
    }
}

fn upstream_tls(spiffe_id: &str) -> UpstreamTlsContext {
    UpstreamTlsContext { common_tls_context: Some(istio_tls(Some(spiffe_id))), ..Default::default() }
}

/// istiod's `CommonTlsContext`: the certificate and the roots (`ROOTCA`) from provider instance
/// `default`, named in both the current and the deprecated fields; the peer must present
/// `spiffe_id` when given.
pub fn istio_tls(spiffe_id: Option<&str>) -> CommonTlsContext {
    let instance = |certificate_name: &str| CertificateProviderInstance {
        instance_name: "default".into(),
        certificate_name: certificate_name.into(),
    };
    let plugin = |certificate_name: &str| CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: certificate_name.into(),
    };
    let match_subject_alt_names = spiffe_id
        .map(|id| StringMatcher { match_pattern: Some(MatchPattern::Exact(id.into())), ..Default::default() })
        .into_iter()
        .collect();
    CommonTlsContext {
        tls_certificate_provider_instance: Some(plugin("default")),
        tls_certificate_certificate_provider_instance: Some(instance("default")),
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    ca_certificate_provider_instance: Some(plugin("ROOTCA")),
                    match_subject_alt_names,
                    ..Default::default()
                }),
                validation_context_certificate_provider_instance: Some(instance("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The endpoints of cluster `name`, in one locality of weight 1.
pub fn load_assignment(name: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality { region: "test".into(), zone: "test-a".into(), sub_zone: String::new() }),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            lb_endpoints: endpoints
                .iter()
                .map(|addr| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(*addr)),
                        ..Default::default()
                    })),
                    health_status: 1, // HEALTHY
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
