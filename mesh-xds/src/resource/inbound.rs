//! LDS for servers (gRFC A36): the inbound Listener of a server's address, with one filter chain
//! whose transport socket says mTLS or plaintext and whose HTTP connection manager carries the
//! RBAC filters (gRFC A41).

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::{
    config::{
        core::v3::{address::Address as AddressKind, socket_address::PortSpecifier},
        listener::v3::{FilterChain, Listener as RawListener, filter::ConfigType as FilterConfig},
        route::v3::{RouteConfiguration, route::Action, route_match::PathSpecifier},
    },
    extensions::filters::{
        http::rbac::v3::Rbac as HttpRbac,
        network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter::ConfigType,
        },
    },
};
use mesh_core::policy::{AuthorizationAction, AuthorizationPolicy, AuthorizationRule};

use super::{
    field::{DecodeContext, FieldError, FieldResult, decode_any},
    filter,
    rbac::{self, RbacFilter},
    security::{self, ServerTls},
};

/// A checked server Listener.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct InboundConfig {
    /// The address the listener is for.
    pub(crate) address: SocketAddr,
    /// mTLS, or plaintext (`None`).
    pub(crate) tls: Option<ServerTls>,
    /// The RBAC filters as one policy; `None` without RBAC filters (every caller is served).
    pub(crate) authorization: Option<AuthorizationPolicy>,
}

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const DOWNSTREAM_TLS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// Whether `raw` is a server listener (an address and filter chains, no API listener).
pub(crate) fn is_inbound(raw: &RawListener) -> bool {
    raw.api_listener.is_none()
        && (raw.address.is_some() || !raw.filter_chains.is_empty() || raw.default_filter_chain.is_some())
}

pub(crate) fn parse(raw: &RawListener, ctx: &DecodeContext<'_>) -> FieldResult<InboundConfig> {
    let address = address(raw)?;
    if raw.use_original_dst.as_ref().is_some_and(|b| b.value) {
        return Err(FieldError::new("use_original_dst", "is not supported"));
    }
    if raw.filter_chain_matcher.is_some() {
        return Err(FieldError::new("filter_chain_matcher", "is not supported: send one filter chain"));
    }
    let (chain, field) = match (raw.filter_chains.as_slice(), &raw.default_filter_chain) {
        ([one], None) => (one, "filter_chains[0]"),
        ([], Some(default)) => (default, "default_filter_chain"),
        _ => {
            return Err(FieldError::new(
                "filter_chains",
                "mesh serves one filter chain per listener: send exactly one (or only a default_filter_chain)",
            ));
        }
    };
    let (tls, authorization) = parse_chain(chain, address, ctx).map_err(|e| e.within(field))?;
    Ok(InboundConfig { address, tls, authorization })
}

fn address(raw: &RawListener) -> FieldResult<SocketAddr> {
    let Some(AddressKind::SocketAddress(socket)) = raw.address.as_ref().and_then(|a| a.address.as_ref()) else {
        return Err(FieldError::new("address.socket_address", "missing: a server listener has an IP and a port"));
    };
    let ip: IpAddr = socket
        .address
        .parse()
        .map_err(|_| FieldError::new("address.socket_address.address", format!("{:?} is not an IP", socket.address)))?;
    let port = match socket.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p)
            .map_err(|_| FieldError::new("address.socket_address.port_value", format!("{p} is not a port")))?,
        _ => return Err(FieldError::new("address.socket_address.port_value", "missing")),
    };
    Ok(SocketAddr::new(ip, port))
}

fn parse_chain(
    chain: &FilterChain,
    address: SocketAddr,
    ctx: &DecodeContext<'_>,
) -> FieldResult<(Option<ServerTls>, Option<AuthorizationPolicy>)> {
    if let Some(m) = &chain.filter_chain_match {
        let only_port = m.destination_port.as_ref().is_none_or(|p| p.value == u32::from(address.port()))
            && m.prefix_ranges.is_empty()
            && m.direct_source_prefix_ranges.is_empty()
            && m.source_prefix_ranges.is_empty()
            && m.source_ports.is_empty()
            && m.source_type == 0
            && m.server_names.is_empty()
            && m.application_protocols.is_empty()
            && m.address_suffix.is_empty()
            && m.suffix_len.is_none()
            && matches!(m.transport_protocol.as_str(), "" | "raw_buffer");
        if !only_port {
            return Err(FieldError::new(
                "filter_chain_match",
                "only an empty match (or the listener's own destination_port) is supported",
            ));
        }
    }
    let tls = match &chain.transport_socket {
        None => None,
        Some(socket) => {
            let any = match &socket.config_type {
                Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) => any,
                None => return Err(FieldError::new("transport_socket.typed_config", "missing")),
            };
            if any.type_url != DOWNSTREAM_TLS {
                return Err(FieldError::new(
                    "transport_socket.typed_config",
                    format!("expected {DOWNSTREAM_TLS}, got {}", any.type_url),
                ));
            }
            Some(security::parse_downstream(any, ctx).map_err(|e| e.within("transport_socket.typed_config"))?)
        }
    };
    let hcm = match chain.filters.as_slice() {
        [one] => match &one.config_type {
            Some(FilterConfig::TypedConfig(any)) if any.type_url == HCM => {
                decode_any::<HttpConnectionManager>(any, "filters[0].typed_config")?
            }
            _ => {
                return Err(FieldError::new(
                    "filters[0].typed_config",
                    "the only filter must be an HTTP connection manager",
                ));
            }
        },
        _ => return Err(FieldError::new("filters", "expected exactly one filter, the HTTP connection manager")),
    };
    let authorization = parse_hcm(&hcm).map_err(|e| e.within("filters[0].typed_config"))?;
    if authorization.is_some() && tls.is_none() {
        return Err(FieldError::new(
            "transport_socket",
            "RBAC filters on a plaintext filter chain: mesh authorizes callers by their certificates, so RBAC needs mTLS",
        ));
    }
    Ok((tls, authorization))
}

/// The HTTP filters (RBAC, then the router) as one policy, after checking the routes.
fn parse_hcm(hcm: &HttpConnectionManager) -> FieldResult<Option<AuthorizationPolicy>> {
    match &hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => check_routes(rc).map_err(|e| e.within("route_config"))?,
        Some(RouteSpecifier::Rds(_)) => {
            return Err(FieldError::new("rds", "server routes over RDS are not supported: send them inline"));
        }
        _ => return Err(FieldError::new("route_config", "missing")),
    }
    let mut filters = Vec::new();
    let last = hcm.http_filters.len().checked_sub(1);
    let mut router = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let field = format!("http_filters[{i}]");
        let Some(ConfigType::TypedConfig(typed)) = &f.config_type else {
            return Err(FieldError::new(format!("{field}.typed_config"), format!("filter {:?} has no config", f.name)));
        };
        match typed.type_url.as_str() {
            filter::ROUTER if Some(i) == last => router = true,
            filter::ROUTER => return Err(FieldError::new(field, "the router filter must be the last filter")),
            rbac::RBAC => {
                let config: HttpRbac = decode_any(typed, &format!("{field}.typed_config"))?;
                if let Some(rbac) = rbac::parse(&config).map_err(|e| e.within(&format!("{field}.typed_config")))? {
                    filters.push(rbac);
                }
            }
            _ if f.is_optional => {}
            other => {
                return Err(FieldError::new(
                    format!("{field}.typed_config"),
                    format!("filter {:?} of type {other} is not supported on a server and is not optional", f.name),
                ));
            }
        }
    }
    if !router {
        return Err(FieldError::new("http_filters", "the last filter must be the router"));
    }
    combine(filters)
}

/// The RBAC filters of a chain as one mesh policy: a call passes only if every filter lets it
/// through, so DENY filters' rules come first (a matching deny rule wins) and the one ALLOW
/// filter's rules decide the rest; without an ALLOW filter, what no deny rule matches is allowed.
fn combine(filters: Vec<RbacFilter>) -> FieldResult<Option<AuthorizationPolicy>> {
    let Some(dry_run) = filters.first().map(|f| f.dry_run) else { return Ok(None) };
    if filters.iter().any(|f| f.dry_run != dry_run) {
        return Err(FieldError::new(
            "http_filters",
            "enforced and shadow (dry-run) RBAC filters together: mesh runs the policy either enforced or dry-run",
        ));
    }
    let mut deny = Vec::new();
    let mut allow: Option<Vec<AuthorizationRule>> = None;
    for f in filters {
        match f.action {
            AuthorizationAction::Allow if allow.is_some() => {
                return Err(FieldError::new(
                    "http_filters",
                    "two ALLOW RBAC filters (a call would need both): mesh takes one ALLOW filter",
                ));
            }
            AuthorizationAction::Allow => allow = Some(f.rules),
            _ => deny.extend(f.rules),
        }
    }
    let mut rules = deny;
    rules.extend(allow.unwrap_or_else(|| vec![AuthorizationRule::allow(Vec::new())]));
    Ok(Some(if dry_run { AuthorizationPolicy::dry_run(rules) } else { AuthorizationPolicy::enforce(rules) }))
}

/// Server routes only decide whether a request is served (gRFC A36's non-forwarding action):
/// mesh serves every request, so each virtual host must send every request to a non-forwarding
/// action, and per-route filter overrides are refused.
fn check_routes(rc: &RouteConfiguration) -> FieldResult<()> {
    if rc.virtual_hosts.is_empty() {
        return Err(FieldError::new("virtual_hosts", "empty: no request would be served"));
    }
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let field = format!("virtual_hosts[{i}]");
        if !vh.typed_per_filter_config.is_empty() {
            return Err(FieldError::new(format!("{field}.typed_per_filter_config"), "is not supported"));
        }
        let mut catch_all = false;
        for (j, r) in vh.routes.iter().enumerate() {
            let field = format!("{field}.routes[{j}]");
            if !matches!(r.action, Some(Action::NonForwardingAction(_))) {
                return Err(FieldError::new(format!("{field}.action"), "a server route must be non_forwarding_action"));
            }
            if !r.typed_per_filter_config.is_empty() {
                return Err(FieldError::new(format!("{field}.typed_per_filter_config"), "is not supported"));
            }
            let m = r.r#match.as_ref();
            let everything = m.is_some_and(|m| {
                matches!(&m.path_specifier, Some(PathSpecifier::Prefix(p)) if p.is_empty() || p == "/")
                    && m.headers.is_empty()
                    && m.query_parameters.is_empty()
                    && m.runtime_fraction.is_none()
                    && m.grpc.is_none()
                    && m.tls_context.is_none()
                    && m.dynamic_metadata.is_empty()
            });
            catch_all |= everything;
        }
        if !catch_all {
            return Err(FieldError::new(
                format!("{field}.routes"),
                "no route for every request (prefix \"/\"): mesh serves every request",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
