//! RDS: virtual hosts, route matches (gRFC A28), weighted clusters, timeouts (A31), retries (A44),
//! per-route fault overrides (A33) and hash policies (A42).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::route::v3::{
            FilterConfig, HeaderMatcher, RetryPolicy as RawRetry, Route as RawRoute, RouteAction as RawAction,
            RouteConfiguration, RouteMatch as RawMatch, VirtualHost as RawVirtualHost,
            header_matcher::HeaderMatchSpecifier,
            route::Action,
            route_action::{ClusterSpecifier, hash_policy::PolicySpecifier},
            route_match::PathSpecifier,
        },
        extensions::filters::http::fault::v3::HttpFault,
        r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
    },
    google::protobuf::Any,
};
use mesh_core::{
    HeaderMatch, HeaderName, PathMatch, RouteAction, RouteMatch,
    policy::{Backoff, Fault, RetryOn, RetryPolicy},
};

use super::{
    field::{FieldError, FieldResult, decode_any, duration},
    filter,
};

/// A checked RouteConfiguration.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteConfig {
    pub(crate) virtual_hosts: Vec<VirtualHost>,
}

/// A checked virtual host.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VirtualHost {
    pub(crate) domains: Vec<String>,
    pub(crate) routes: Vec<XdsRoute>,
}

/// A checked route: what it matches, the clusters it sends to and its policies.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct XdsRoute {
    pub(crate) name: String,
    pub(crate) matches: RouteMatch,
    /// Whether it forwards its requests (to `clusters`) or fails them.
    pub(crate) action: RouteAction,
    /// Clusters and weights; one with weight 1 for a single-cluster route; none for a route that
    /// does not forward.
    pub(crate) clusters: Vec<(String, u32)>,
    pub(crate) retry: Option<RetryPolicy>,
    /// `None`: not set (the listener's applies); `Some(None)`: explicitly unlimited.
    pub(crate) timeout: Option<Option<Duration>>,
    /// The fault filter override of the route or its virtual host: `Some(None)` disables it.
    pub(crate) fault: Option<Option<Fault>>,
    /// The header whose hash picks the endpoint under ring hash.
    pub(crate) hash_header: Option<HeaderName>,
}

pub(crate) fn parse(raw: &RouteConfiguration) -> FieldResult<RouteConfig> {
    if raw.vhds.is_some() {
        return Err(FieldError::new("vhds", "virtual host discovery is not supported"));
    }
    let plugins = plugins(raw)?;
    let virtual_hosts = raw
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| parse_virtual_host(vh, &plugins).map_err(|e| e.within(&format!("virtual_hosts[{i}]"))))
        .collect::<FieldResult<_>>()?;
    Ok(RouteConfig { virtual_hosts })
}

/// The names of the cluster specifier plugins, all of them optional: mesh runs none (gRPC runs
/// RLS's), so a required one is refused, and a route that uses an optional one is skipped, as gRPC
/// skips a route whose optional plugin it does not know.
fn plugins(raw: &RouteConfiguration) -> FieldResult<HashSet<&str>> {
    let mut names = HashSet::new();
    for (i, plugin) in raw.cluster_specifier_plugins.iter().enumerate() {
        let Some(extension) = &plugin.extension else {
            return Err(FieldError::new(format!("cluster_specifier_plugins[{i}].extension"), "missing"));
        };
        if !plugin.is_optional {
            return Err(FieldError::new(
                format!("cluster_specifier_plugins[{i}]"),
                format!("cluster specifier plugin {:?} is not supported and not optional", extension.name),
            ));
        }
        names.insert(extension.name.as_str());
    }
    Ok(names)
}

fn parse_virtual_host(raw: &RawVirtualHost, plugins: &HashSet<&str>) -> FieldResult<VirtualHost> {
    let vh_fault = fault_override(&raw.typed_per_filter_config, "typed_per_filter_config")?;
    let vh_retry = raw.retry_policy.as_ref().map(|r| retry(r).map_err(|e| e.within("retry_policy"))).transpose()?;
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        // gRFC A28: a route with query parameter matchers is skipped, as it could never match;
        // so is one matching a pseudo-header (istiod's `method: {exact: POST}` is `:method`),
        // which gRPC's matchers never see either.
        if r.r#match
            .as_ref()
            .is_some_and(|m| !m.query_parameters.is_empty() || m.headers.iter().any(|h| h.name.starts_with(':')))
        {
            continue;
        }
        let Some(mut route) = parse_route(r, i, plugins).map_err(|e| e.within(&field))? else { continue };
        if route.action.is_forward() {
            route.retry = route.retry.or_else(|| vh_retry.clone());
        }
        route.fault = route.fault.or_else(|| vh_fault.clone());
        routes.push(route);
    }
    Ok(VirtualHost { domains: raw.domains.clone(), routes })
}

/// A route; `None` for one gRPC skips (gRFC A28): a route action with no cluster specifier or
/// one gRPC does not know (`cluster_header`), or an optional plugin's.
///
/// A route whose action is not a route action (a redirect, a direct response, a non-forwarding
/// action, none) is kept, as gRPC keeps it: it still takes the requests it matches, which then
/// fail (`UNAVAILABLE`: "matched route does not have a supported route action type").
fn parse_route(raw: &RawRoute, index: usize, plugins: &HashSet<&str>) -> FieldResult<Option<XdsRoute>> {
    let matches = parse_match(raw.r#match.as_ref().ok_or_else(|| FieldError::new("match", "missing"))?)
        .map_err(|e| e.within("match"))?;
    let mut route = match &raw.action {
        Some(Action::Route(action)) => match parse_action(action, plugins).map_err(|e| e.within("route"))? {
            Some(route) => route,
            None => return Ok(None),
        },
        Some(Action::Redirect(_)) => XdsRoute::not_forwarding(RouteAction::Redirect),
        Some(Action::DirectResponse(_)) => XdsRoute::not_forwarding(RouteAction::DirectResponse),
        Some(Action::NonForwardingAction(_)) => XdsRoute::not_forwarding(RouteAction::NonForwarding),
        Some(Action::FilterAction(_)) | None => XdsRoute::not_forwarding(RouteAction::Unsupported),
    };
    route.name = if raw.name.is_empty() { format!("route-{index}") } else { raw.name.clone() };
    route.matches = matches;
    route.fault = fault_override(&raw.typed_per_filter_config, "typed_per_filter_config")?;
    Ok(Some(route))
}

impl XdsRoute {
    /// A route that sends nowhere: its requests fail.
    fn not_forwarding(action: RouteAction) -> Self {
        Self {
            name: String::new(),
            matches: RouteMatch::default(),
            action,
            clusters: Vec::new(),
            retry: None,
            timeout: None,
            fault: None,
            hash_header: None,
        }
    }
}

fn parse_action(action: &RawAction, plugins: &HashSet<&str>) -> FieldResult<Option<XdsRoute>> {
    let clusters = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => vec![(name.clone(), 1)],
        Some(ClusterSpecifier::Cluster(_)) => return Err(FieldError::new("cluster", "empty")),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut clusters = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                let field = format!("weighted_clusters.clusters[{i}]");
                if !c.typed_per_filter_config.is_empty() {
                    return Err(FieldError::new(
                        format!("{field}.typed_per_filter_config"),
                        "filter overrides per weighted cluster are not supported",
                    ));
                }
                if c.name.is_empty() {
                    return Err(FieldError::new(format!("{field}.name"), "empty (cluster_header is not supported)"));
                }
                clusters.push((c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)));
            }
            let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
            if total == 0 || total > u64::from(u32::MAX) {
                return Err(FieldError::new(
                    "weighted_clusters",
                    format!("the weights add up to {total}: must be 1 to 2^32-1"),
                ));
            }
            clusters
        }
        Some(ClusterSpecifier::ClusterSpecifierPlugin(name)) if plugins.contains(name.as_str()) => return Ok(None),
        Some(ClusterSpecifier::ClusterSpecifierPlugin(name)) => {
            return Err(FieldError::new(
                "cluster_specifier_plugin",
                format!("plugin {name:?} is not in the route configuration's cluster_specifier_plugins"),
            ));
        }
        // gRFC A28: a cluster specifier gRPC does not support, or none, skips the route.
        Some(ClusterSpecifier::ClusterHeader(_) | ClusterSpecifier::InlineClusterSpecifierPlugin(_)) | None => {
            return Ok(None);
        }
    };
    let timeout = match &action.max_stream_duration {
        Some(m) => match m.grpc_timeout_header_max.as_ref().or(m.max_stream_duration.as_ref()) {
            Some(d) => Some(Some(duration(d, "max_stream_duration")?).filter(|d| !d.is_zero())),
            None => None,
        },
        None => None,
    };
    let retry = action.retry_policy.as_ref().map(|r| retry(r).map_err(|e| e.within("retry_policy"))).transpose()?;
    let mut hash_header = None;
    // gRFC A42: hash policies other than a header (source IP, cookie, query parameter; istiod
    // sends `connection_properties` for `useSourceIp`) are skipped, as gRPC skips them.
    for (i, policy) in action.hash_policy.iter().enumerate() {
        let field = format!("hash_policy[{i}]");
        if let Some(PolicySpecifier::Header(h)) = &policy.policy_specifier {
            if h.regex_rewrite.is_some() {
                return Err(FieldError::new(
                    format!("{field}.header.regex_rewrite"),
                    "rewriting the hashed header is not supported",
                ));
            }
            let name = HeaderName::new(&h.header_name)
                .map_err(|e| FieldError::new(format!("{field}.header.header_name"), e.to_string()))?;
            hash_header.get_or_insert(name);
        }
    }
    Ok(Some(XdsRoute {
        name: String::new(),
        matches: RouteMatch::default(),
        action: RouteAction::Forward,
        clusters,
        retry,
        timeout,
        fault: None,
        hash_header,
    }))
}

fn parse_match(m: &RawMatch) -> FieldResult<RouteMatch> {
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let mut out = RouteMatch::default();
    let regex = |pattern: String, field: &str| {
        let pattern = if case_sensitive { pattern } else { format!("(?i){pattern}") };
        PathMatch::regex(&pattern).map_err(|e| FieldError::new(field, e.to_string()))
    };
    let path = match &m.path_specifier {
        // mesh's prefix is segment-wise; a prefix ending in '/' (or empty) means the same thing.
        Some(PathSpecifier::Prefix(p)) if p.is_empty() || p == "/" => None,
        Some(PathSpecifier::Prefix(p)) if case_sensitive && p.starts_with('/') && p.ends_with('/') => {
            Some(PathMatch::prefix(p.clone()).map_err(|e| FieldError::new("prefix", e.to_string()))?)
        }
        Some(PathSpecifier::Prefix(p)) => Some(regex(format!("{}.*", escape(p)), "prefix")?),
        Some(PathSpecifier::Path(p)) if case_sensitive => {
            Some(PathMatch::exact(p.clone()).map_err(|e| FieldError::new("path", e.to_string()))?)
        }
        Some(PathSpecifier::Path(p)) => Some(regex(escape(p), "path")?),
        Some(PathSpecifier::SafeRegex(re)) => Some(regex(re.regex.clone(), "safe_regex.regex")?),
        Some(_) => return Err(FieldError::new("path_specifier", "only prefix, path and safe_regex are supported")),
        None => return Err(FieldError::new("path_specifier", "missing")),
    };
    out.path = path;
    if let Some(fraction) = &m.runtime_fraction {
        let share = fraction
            .default_value
            .as_ref()
            .map(|p| filter::percent(p, "runtime_fraction.default_value"))
            .transpose()?;
        if share.is_some_and(|p| p.get() < 100.0) {
            return Err(FieldError::new(
                "runtime_fraction",
                "matching a fraction of requests is not supported (only 100%)",
            ));
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        out.headers.push(header(h).map_err(|e| e.within(&format!("headers[{i}]")))?);
    }
    if m.grpc.is_some()
        || m.tls_context.is_some()
        || !m.dynamic_metadata.is_empty()
        || !m.filter_state.is_empty()
        || !m.cookies.is_empty()
    {
        return Err(FieldError::new("match", "only path, header and runtime fraction matchers are supported"));
    }
    Ok(out)
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header matcher; `invert_match` as gRPC reads it: the header must be present and its value
/// not match (istiod sends it for a VirtualService's `withoutHeaders`; gRPC, and so mesh, ignore
/// `treat_missing_header_as_empty`).
pub(crate) fn header(h: &HeaderMatcher) -> FieldResult<HeaderMatch> {
    let m = header_value(h)?;
    Ok(if h.invert_match { m.inverted() } else { m })
}

#[allow(deprecated)] // the older matcher fields are what many control planes send
fn header_value(h: &HeaderMatcher) -> FieldResult<HeaderMatch> {
    let name = HeaderName::new(&h.name).map_err(|e| FieldError::new("name", e.to_string()))?;
    let re = |pattern: String| {
        HeaderMatch::regex(name.clone(), &format!("^(?:{pattern})$"))
            .map_err(|e| FieldError::new("regex", e.to_string()))
    };
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::ExactMatch(v)) => Ok(HeaderMatch::exact(name, v.clone())),
        Some(HeaderMatchSpecifier::PresentMatch(true)) => Ok(HeaderMatch::present(name)),
        Some(HeaderMatchSpecifier::PresentMatch(false)) => {
            Err(FieldError::new("present_match", "matching an absent header is not supported"))
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => re(r.regex.clone()),
        Some(HeaderMatchSpecifier::PrefixMatch(p)) => re(format!("{}.*", escape(p))),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => re(format!(".*{}", escape(s))),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => re(format!(".*{}.*", escape(s))),
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_match(&name, m).map_err(|e| e.within("string_match")),
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            Err(FieldError::new("range_match", "range matches are not supported"))
        }
        None => Ok(HeaderMatch::present(name)),
    }
}

fn string_match(name: &HeaderName, m: &StringMatcher) -> FieldResult<HeaderMatch> {
    let case = if m.ignore_case { "(?i)" } else { "" };
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) if !m.ignore_case => return Ok(HeaderMatch::exact(name.clone(), v.clone())),
        Some(MatchPattern::Exact(v)) => escape(v),
        Some(MatchPattern::Prefix(p)) => format!("{}.*", escape(p)),
        Some(MatchPattern::Suffix(s)) => format!(".*{}", escape(s)),
        Some(MatchPattern::Contains(s)) => format!(".*{}.*", escape(s)),
        Some(MatchPattern::SafeRegex(r)) => r.regex.clone(),
        Some(MatchPattern::Custom(_)) => {
            return Err(FieldError::new("custom", "custom string matchers are not supported"));
        }
        None => return Err(FieldError::new("match_pattern", "missing")),
    };
    HeaderMatch::regex(name.clone(), &format!("{case}^(?:{pattern})$"))
        .map_err(|e| FieldError::new("regex", e.to_string()))
}

/// A route's retry policy (gRFC A44), plus the conditions mesh retries on that gRPC does not:
/// `connect-failure`, `refused-stream`/`reset`, `5xx`, `gateway-error` and `retriable-status-codes`
/// (Istio's default policy names them).
fn retry(raw: &RawRetry) -> FieldResult<RetryPolicy> {
    let mut policy = RetryPolicy::default();
    policy.retry_on.clear();
    policy.retry_non_idempotent = true;
    for condition in raw.retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let on = match condition {
            "unavailable" => vec![RetryOn::GrpcUnavailable],
            "cancelled" => vec![RetryOn::GrpcCancelled],
            "resource-exhausted" => vec![RetryOn::GrpcResourceExhausted],
            "connect-failure" => vec![RetryOn::ConnectFailure],
            "refused-stream" | "reset" => vec![RetryOn::Reset],
            "5xx" => vec![RetryOn::ServerError],
            "gateway-error" => vec![RetryOn::GatewayError],
            "retriable-status-codes" => raw.retriable_status_codes.iter().map(|c| RetryOn::Status(*c as u16)).collect(),
            "deadline-exceeded" => vec![RetryOn::GrpcDeadlineExceeded],
            "internal" => vec![RetryOn::GrpcInternal],
            // gRFC A44: other conditions are ignored.
            _ => Vec::new(),
        };
        for on in on {
            if !policy.retry_on.contains(&on) {
                policy.retry_on.push(on);
            }
        }
    }
    // gRFC A44: num_retries defaults to 1, and attempts are capped at 5.
    let retries = raw.num_retries.as_ref().map_or(1, |n| n.value);
    policy.max_attempts = retries.saturating_add(1).min(5);
    if let Some(backoff) = &raw.retry_back_off {
        let base =
            backoff.base_interval.as_ref().ok_or_else(|| FieldError::new("retry_back_off.base_interval", "missing"))?;
        let base = duration(base, "retry_back_off.base_interval")?;
        if base.is_zero() {
            return Err(FieldError::new("retry_back_off.base_interval", "must be longer than zero"));
        }
        let max = match &backoff.max_interval {
            Some(m) => duration(m, "retry_back_off.max_interval")?,
            None => base * 10,
        };
        if max < base {
            return Err(FieldError::new("retry_back_off.max_interval", "shorter than base_interval"));
        }
        policy.backoff = Backoff { base, max };
    }
    if let Some(t) = &raw.per_try_timeout {
        policy.per_try_timeout = Some(duration(t, "per_try_timeout")?).filter(|d| !d.is_zero());
    }
    if raw.retry_priority.is_some() {
        return Err(FieldError::new("retry_priority", "retry priorities are not supported"));
    }
    for (i, p) in raw.retry_host_predicate.iter().enumerate() {
        // mesh's retries always avoid the endpoints that failed the request already.
        if p.name != "envoy.retry_host_predicates.previous_hosts" {
            return Err(FieldError::new(
                format!("retry_host_predicate[{i}]"),
                format!("{:?} is not supported (only previous_hosts)", p.name),
            ));
        }
    }
    policy.validate().map_err(|e| FieldError::new(e.field, e.reason))?;
    Ok(policy)
}

/// The fault filter's override in a `typed_per_filter_config` map.
fn fault_override(configs: &HashMap<String, Any>, field: &str) -> FieldResult<Option<Option<Fault>>> {
    let mut out = None;
    for (name, any) in configs {
        let field = format!("{field}[{name:?}]");
        let (any, optional, disabled) = if any.type_url == "type.googleapis.com/envoy.config.route.v3.FilterConfig" {
            let wrapper: FilterConfig = decode_any(any, &field)?;
            let Some(inner) = wrapper.config else { continue };
            (inner, wrapper.is_optional, wrapper.disabled)
        } else {
            (any.clone(), false, false)
        };
        match any.type_url.as_str() {
            filter::FAULT if disabled => out = Some(None),
            filter::FAULT => {
                let config: HttpFault = decode_any(&any, &field)?;
                out = Some(Some(filter::fault(&config, &field)?));
            }
            _ if optional || disabled => {}
            other => return Err(FieldError::new(field, format!("override of type {other} is not supported"))),
        }
    }
    Ok(out)
}
