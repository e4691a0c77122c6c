//! A service's whole configuration at one moment.

use std::{collections::HashSet, fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

use super::{Endpoint, Route, Subset};
use crate::{
    identity::{ExpectedIdentity, SpiffeId},
    name::{ServiceName, SubsetName},
    policy::ServicePolicies,
};

/// A service's configuration as plain data: what a file holds, and what
/// [`StaticDiscovery::update`](crate::StaticDiscovery::update) lets code edit. A
/// [`ServiceSnapshot`] is a checked, versioned `ServiceSpec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceSpec {
    /// The identity every endpoint of the service must present, unless an endpoint names its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ExpectedIdentity>,
    /// The service's endpoints. Addresses are unique.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Named groups of endpoints that routes send traffic to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Routes, tried in order; with none, every request goes to every endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Service-wide policies.
    #[serde(default)]
    pub policies: ServicePolicies,
}

/// A snapshot that breaks a rule: which service, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration of service {service}: {field}: {reason}")]
pub struct InvalidSnapshot {
    service: String,
    field: String,
    reason: String,
}

impl InvalidSnapshot {
    /// The path of the offending field, such as `routes[0].targets[1].subset`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// What [`ServiceSpec::check`] finds: a field path and a reason.
struct Violation(String, String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl ServiceSpec {
    fn check(&self) -> Result<(), Violation> {
        let fail = |field: String, reason: String| Err(Violation(field, reason));
        let mut addresses = HashSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if !addresses.insert(ep.address) {
                return fail(format!("endpoints[{i}].address"), format!("{} is listed twice", ep.address));
            }
        }
        let mut subsets = HashSet::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            if !subsets.insert(&subset.name) {
                return fail(
                    format!("subsets[{i}].name"),
                    format!("subset {:?} is defined twice", subset.name.as_str()),
                );
            }
            if subset.dns.is_some() && !subset.labels.is_empty() {
                return fail(
                    format!("subsets[{i}].labels"),
                    "a subset that names `dns` takes its endpoints from DNS and cannot also select by labels".into(),
                );
            }
            match (&subset.dns, subset.port) {
                (None, Some(_)) => {
                    return fail(
                        format!("subsets[{i}].port"),
                        "`port` applies to the addresses of `dns`; name one".into(),
                    );
                }
                (Some(_), Some(0)) => return fail(format!("subsets[{i}].port"), "port 0 cannot be dialled".into()),
                _ => {}
            }
        }
        let mut routes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            if !routes.insert(&route.name) {
                return fail(format!("routes[{i}].name"), format!("route {:?} is defined twice", route.name.as_str()));
            }
            let mut targeted = HashSet::new();
            for (j, target) in route.targets.iter().enumerate() {
                if !subsets.contains(&target.subset) {
                    return fail(
                        format!("routes[{i}].targets[{j}].subset"),
                        format!("unknown subset {:?} (define it under `subsets`)", target.subset.as_str()),
                    );
                }
                if !targeted.insert(&target.subset) {
                    return fail(
                        format!("routes[{i}].targets[{j}].subset"),
                        format!("subset {:?} is targeted twice", target.subset.as_str()),
                    );
                }
            }
            if !route.action.is_forward() && !route.targets.is_empty() {
                return fail(
                    format!("routes[{i}].targets"),
                    format!("a route whose action is {} sends nowhere: it takes no targets", route.action),
                );
            }
            if !route.targets.is_empty() && route.targets.iter().all(|t| t.weight.is_zero()) {
                return fail(format!("routes[{i}].targets"), "every weight is 0, so no request could be sent".into());
            }
            if let Some(retry) = &route.retry {
                retry.validate().map_err(|e| Violation(format!("routes[{i}].retry.{}", e.field), e.reason))?;
            }
            if let Some(mirror) = &route.mirror
                && !subsets.contains(&mirror.subset)
            {
                return fail(
                    format!("routes[{i}].mirror.subset"),
                    format!("unknown subset {:?} (define it under `subsets`)", mirror.subset.as_str()),
                );
            }
            if let Some(fault) = &route.fault {
                fault.validate().map_err(|e| Violation(format!("routes[{i}].fault.{}", e.field), e.reason))?;
            }
            if route.timeout == Some(Duration::ZERO) {
                return fail(format!("routes[{i}].timeout"), "a timeout must be longer than zero".into());
            }
        }
        self.policies.validate().map_err(|e| Violation(format!("policies.{}", e.field), e.reason))
    }
}

/// A service's checked configuration at one moment, as a [`Discovery`](crate::Discovery) backend
/// publishes it.
///
/// Snapshots are immutable and shared as `Arc<ServiceSnapshot>`; a change is a new snapshot with a
/// higher [`version`](Self::version). Every snapshot is whole (not a delta), so a reader that
/// skips versions misses nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSnapshot {
    name: ServiceName,
    version: u64,
    spec: ServiceSpec,
}

impl ServiceSnapshot {
    /// Checks `spec` and makes it the snapshot of service `name`.
    ///
    /// The version is 0 until a publisher stamps it.
    pub fn new(name: ServiceName, spec: ServiceSpec) -> Result<Self, InvalidSnapshot> {
        spec.check().map_err(|Violation(field, reason)| InvalidSnapshot {
            service: name.to_string(),
            field,
            reason,
        })?;
        Ok(Self { name, version: 0, spec })
    }

    /// Builds a snapshot in code.
    pub fn builder(name: ServiceName) -> ServiceSnapshotBuilder {
        ServiceSnapshotBuilder { name, spec: ServiceSpec::default() }
    }

    /// The service.
    pub fn name(&self) -> &ServiceName {
        &self.name
    }

    /// Increases with every change published for this service (0 before publication).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.spec.endpoints
    }

    /// The subsets.
    pub fn subsets(&self) -> &[Subset] {
        &self.spec.subsets
    }

    /// A subset by name.
    pub fn subset(&self, name: &SubsetName) -> Option<&Subset> {
        self.spec.subsets.iter().find(|s| &s.name == name)
    }

    /// The endpoints of a subset.
    ///
    /// A subset that names a DNS name ([`Subset::dns`]) has none here: its endpoints are known
    /// only once a [`ComposedDiscovery`](crate::discovery::ComposedDiscovery) resolved the name, and
    /// its snapshots list them under an ordinary subset instead.
    pub fn subset_endpoints<'a>(&'a self, subset: &'a Subset) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let by_labels = subset.dns.is_none();
        self.spec.endpoints.iter().filter(move |ep| by_labels && ep.labels.matches(&subset.labels))
    }

    /// The routes, in match order.
    pub fn routes(&self) -> &[Route] {
        &self.spec.routes
    }

    /// The service-wide policies.
    pub fn policies(&self) -> &ServicePolicies {
        &self.spec.policies
    }

    /// The identity `endpoint` must present: its own, else the service's.
    pub fn expected_identity<'a>(&'a self, endpoint: &'a Endpoint) -> Option<&'a ExpectedIdentity> {
        endpoint.identity.as_ref().or(self.spec.identity.as_ref())
    }

    /// The configuration as plain data.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Stamps the version; only publishers do this, so versions stay monotonic.
    pub(crate) fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }
}

/// Builds a [`ServiceSnapshot`] in code. See [`ServiceSnapshot::builder`].
#[derive(Clone, Debug)]
pub struct ServiceSnapshotBuilder {
    name: ServiceName,
    spec: ServiceSpec,
}

impl ServiceSnapshotBuilder {
    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.spec.endpoints.push(endpoint);
        self
    }

    /// Adds endpoints.
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        self.spec.endpoints.extend(endpoints);
        self
    }

    /// Adds a subset.
    pub fn subset(mut self, subset: Subset) -> Self {
        self.spec.subsets.push(subset);
        self
    }

    /// Adds a route after those already added.
    pub fn route(mut self, route: Route) -> Self {
        self.spec.routes.push(route);
        self
    }

    /// Sets the identity the service's endpoints must present.
    pub fn identity(mut self, identity: SpiffeId) -> Self {
        self.spec.identity = Some(identity.into());
        self
    }

    /// Sets the service-wide policies.
    pub fn policies(mut self, policies: ServicePolicies) -> Self {
        self.spec.policies = policies;
        self
    }

    /// Sets how the endpoints of each subset share its traffic.
    pub fn load_balancer(mut self, load_balancer: crate::policy::LoadBalancer) -> Self {
        self.spec.policies.load_balancer = load_balancer;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<ServiceSnapshot, InvalidSnapshot> {
        ServiceSnapshot::new(self.name, self.spec)
    }
}

/// A `ServiceSpec` checked while it is deserialized, so a file's errors carry their position.
pub(crate) struct CheckedSpec(pub(crate) ServiceSpec);

impl<'de> Deserialize<'de> for CheckedSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spec = ServiceSpec::deserialize(deserializer)?;
        spec.check().map_err(serde::de::Error::custom)?;
        Ok(Self(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Weight, name::RouteName};

    fn name() -> ServiceName {
        "reviews".parse().unwrap()
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(([127, 0, 0, 1], port).into())
    }

    #[test]
    fn builds_and_queries() {
        let v2 = Subset::version("v2").unwrap();
        let snap = ServiceSnapshot::builder(name())
            .endpoint(ep(1).with_label("version", "v1").unwrap())
            .endpoint(ep(2).with_label("version", "v2").unwrap())
            .subset(v2.clone())
            .route(Route::new(RouteName::new("all").unwrap()).with_target(v2.name.clone(), Weight::new(1).unwrap()))
            .build()
            .unwrap();
        assert_eq!(snap.version(), 0);
        assert_eq!(snap.subset_endpoints(&v2).count(), 1);
        assert_eq!(snap.subset(&v2.name), Some(&v2));
    }

    #[test]
    fn rejects_inconsistent_specs_naming_the_field() {
        let err = ServiceSnapshot::builder(name()).endpoint(ep(1)).endpoint(ep(1)).build().unwrap_err();
        assert_eq!(err.field(), "endpoints[1].address");

        let err = ServiceSnapshot::builder(name())
            .route(Route::new(RouteName::new("r").unwrap()).with_target("v3".parse().unwrap(), Weight::new(1).unwrap()))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "routes[0].targets[0].subset");
        assert!(err.to_string().contains("unknown subset \"v3\""), "{err}");

        let err = ServiceSnapshot::builder(name())
            .subset(Subset::version("v1").unwrap())
            .route(Route::new(RouteName::new("r").unwrap()).with_target("v1".parse().unwrap(), Weight::ZERO))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "routes[0].targets");

        let err = ServiceSnapshot::builder(name())
            .subset(Subset::version("v1").unwrap())
            .route(
                Route::new(RouteName::new("r").unwrap())
                    .with_action(crate::RouteAction::Redirect)
                    .with_target("v1".parse().unwrap(), Weight::new(1).unwrap()),
            )
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "routes[0].targets");
        assert!(err.to_string().contains("action is redirect"), "{err}");

        let err = ServiceSnapshot::builder(name())
            .route(Route::new(RouteName::new("r").unwrap()).with_timeout(Duration::ZERO))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "routes[0].timeout");
    }

    #[test]
    fn dns_subsets_are_checked_and_select_nothing_by_themselves() {
        let yaml = "{endpoints: [{address: 127.0.0.1:1}], subsets: [{name: v1, dns: reviews-v1.test, port: 80}]}";
        let spec = serde_norway::from_str::<CheckedSpec>(yaml).unwrap().0;
        let snap = ServiceSnapshot::new(name(), spec).unwrap();
        let v1 = &snap.subsets()[0];
        assert_eq!(v1.dns_target().unwrap().to_string(), "reviews-v1.test (A/AAAA, port 80)");
        assert_eq!(snap.subset_endpoints(v1).count(), 0, "a DNS subset does not select by (empty) labels");

        for (bad, field) in [
            ("{subsets: [{name: v1, dns: a.test, labels: {version: v1}}]}", "subsets[0].labels"),
            ("{subsets: [{name: v1, port: 80}]}", "subsets[0].port"),
            ("{subsets: [{name: v1, dns: a.test, port: 0}]}", "subsets[0].port"),
        ] {
            let err = serde_norway::from_str::<CheckedSpec>(bad).err().unwrap();
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
        let err = serde_norway::from_str::<CheckedSpec>("{subsets: [{name: v1, dns: 'a..test'}]}").err().unwrap();
        assert!(err.to_string().contains("invalid DNS name"), "{err}");
    }

    #[test]
    fn checked_spec_fails_while_deserializing() {
        let json = r#"{"endpoints":[{"address":"127.0.0.1:1"},{"address":"127.0.0.1:1"}]}"#;
        let err = serde_json::from_str::<CheckedSpec>(json).err().unwrap();
        assert!(err.to_string().contains("endpoints[1].address"), "{err}");
        let err = serde_json::from_str::<ServiceSpec>(r#"{"endpoint":[]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `endpoint`"), "{err}");
    }
}
