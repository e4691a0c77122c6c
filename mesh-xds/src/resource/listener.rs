//! LDS: the client's Listener, an `api_listener` holding an HTTP connection manager (gRFC A27).

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::listener::v3::Listener as RawListener,
    extensions::filters::{
        http::fault::v3::HttpFault,
        network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter::ConfigType,
        },
    },
};
use mesh_core::policy::Fault;

use super::{
    field::{FieldError, FieldResult, decode_any, duration},
    filter, route,
};

/// A checked client Listener.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Listener {
    /// Where the routes come from.
    pub(crate) routes: RouteSource,
    /// The fault filter's config, if the filter chain has one.
    pub(crate) fault: Option<Fault>,
    /// `common_http_protocol_options.max_stream_duration` (gRFC A31), the default route timeout.
    pub(crate) max_stream_duration: Option<Duration>,
}

/// An RDS name, or the routes inline.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RouteSource {
    Rds(String),
    Inline(route::RouteConfig),
}

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

pub(crate) fn parse(raw: &RawListener) -> FieldResult<Listener> {
    let api = raw
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or_else(|| FieldError::new("api_listener", "missing: a client listener is an API listener"))?;
    if api.type_url != HCM {
        return Err(FieldError::new("api_listener.api_listener", format!("expected {HCM}, got {}", api.type_url)));
    }
    let hcm: HttpConnectionManager = decode_any(api, "api_listener.api_listener")?;
    parse_hcm(&hcm).map_err(|e| e.within("api_listener.api_listener"))
}

fn parse_hcm(hcm: &HttpConnectionManager) -> FieldResult<Listener> {
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            if let Some(source) = &rds.config_source
                && source.config_source_specifier.as_ref().is_some_and(|s| !is_ads_or_self(s))
            {
                return Err(FieldError::new("rds.config_source", "only ADS and self config sources are supported"));
            }
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(inline)) => {
            RouteSource::Inline(route::parse(inline).map_err(|e| e.within("route_config"))?)
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(FieldError::new("scoped_routes", "scoped routes are not supported"));
        }
        None => return Err(FieldError::new("route_specifier", "missing: rds or route_config")),
    };
    let mut fault = None;
    let last = hcm.http_filters.len().checked_sub(1);
    let mut router = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let field = format!("http_filters[{i}]");
        let typed = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(FieldError::new(
                    format!("{field}.config_discovery"),
                    "filter config discovery is not supported",
                ));
            }
            None => {
                return Err(FieldError::new(
                    format!("{field}.typed_config"),
                    format!("filter {:?} has no config", f.name),
                ));
            }
        };
        match typed.type_url.as_str() {
            filter::ROUTER if Some(i) == last => router = true,
            filter::ROUTER => {
                return Err(FieldError::new(field, "the router filter must be the last filter"));
            }
            filter::FAULT => {
                let config: HttpFault = decode_any(typed, &format!("{field}.typed_config"))?;
                fault = Some(filter::fault(&config, &format!("{field}.typed_config"))?);
            }
            _ if f.is_optional => {}
            other => {
                return Err(FieldError::new(
                    format!("{field}.typed_config"),
                    format!("filter {:?} of type {other} is not supported on the client and is not optional", f.name),
                ));
            }
        }
    }
    if !router {
        return Err(FieldError::new("http_filters", "the last filter must be the router"));
    }
    let max_stream_duration =
        match hcm.common_http_protocol_options.as_ref().and_then(|o| o.max_stream_duration.as_ref()) {
            Some(d) => Some(duration(d, "common_http_protocol_options.max_stream_duration")?).filter(|d| !d.is_zero()),
            None => None,
        };
    Ok(Listener { routes, fault, max_stream_duration })
}

fn is_ads_or_self(s: &envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier) -> bool {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as S;
    matches!(s, S::Ads(_) | S::Self_(_))
}
