//! The ADS state machine and the cascade step, driven by the same Istio-shaped resources
//! (`crate::testing`) the integration tests' control plane serves.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use envoy_types::pb::{
    envoy::{
        config::{core::v3::Node, route::v3::route_action::HashPolicy},
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::protobuf::Any,
};
use mesh_core::{
    PathMatch, ServiceName, ServiceSnapshot,
    policy::{LoadBalancerKind, RetryOn},
};
use tokio::time::Instant;

use crate::{
    ads::{AdsState, Handled},
    bootstrap::CertificateProvider,
    cascade::{self, BuildOptions, CascadeError, ClientCascade, ClientUpdate},
    resource::{DecodeContext, ResourceType},
    testing::resources as f,
};

const HOST: &str = "reviews.default.svc.cluster.local";
const LISTENER: &str = "reviews.default.svc.cluster.local:9080";
const SA: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn cluster(subset: &str) -> String {
    f::cluster_name(HOST, 9080, subset)
}

fn providers() -> BTreeMap<String, CertificateProvider> {
    let p = CertificateProvider {
        certificate_file: "c".into(),
        private_key_file: "k".into(),
        ca_certificate_file: "ca".into(),
    };
    BTreeMap::from([("default".to_owned(), p)])
}

fn response(kind: ResourceType, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: kind.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// A client of [`LISTENER`] as the driver runs it: the ADS state on a stream, and one cascade
/// step after every response, fed the usual cascade: v1 90, v2 10.
struct Harness {
    state: AdsState,
    target: ClientCascade,
    options: BuildOptions,
    /// The target's latest news: a snapshot, or why it has none.
    latest: Option<Result<ServiceSnapshot, CascadeError>>,
    providers: BTreeMap<String, CertificateProvider>,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::on(AdsState::new(Node { id: "n".into(), ..Default::default() }, Duration::from_secs(15)))
    }

    fn on(mut state: AdsState) -> Self {
        let now = Instant::now();
        assert!(state.on_stream_start(now).is_empty());
        Self {
            state,
            target: ClientCascade::new(LISTENER.to_owned()),
            options: BuildOptions::default(),
            latest: None,
            providers: providers(),
            now,
        }
    }

    /// One cascade step, as the driver runs it after a response, a watch or a timer; returns the
    /// subscription requests it makes.
    fn step(&mut self) -> Vec<DiscoveryRequest> {
        let service = ServiceName::new("reviews").unwrap();
        let step =
            cascade::step(&mut self.state, [(&service, &mut self.target)], std::iter::empty(), &self.options, self.now);
        for (_, update) in step.clients {
            self.latest = Some(match update {
                ClientUpdate::Snapshot { snapshot, .. } => Ok(*snapshot),
                ClientUpdate::Failed(e) => Err(e),
                ClientUpdate::Invalid(e) => panic!("the cascade made an invalid snapshot: {e}"),
            });
        }
        step.requests
    }

    fn resubscribe(&mut self) -> Vec<DiscoveryRequest> {
        self.step()
    }

    fn handle(&mut self, r: DiscoveryResponse) -> Handled {
        let ctx = DecodeContext { certificate_providers: &self.providers };
        let handled = self.state.on_response(r, &ctx, self.now);
        assert!(handled.applied);
        handled
    }

    fn feed(&mut self, r: DiscoveryResponse) -> Option<String> {
        let handled = self.handle(r);
        self.step();
        handled.nack
    }

    fn full(&mut self) {
        self.resubscribe();
        assert_eq!(
            self.feed(response(ResourceType::Listener, "1", "a", vec![f::any(&f::client_listener(LISTENER))])),
            None
        );
        let rc = f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 90), (&cluster("v2"), 10)]);
        assert_eq!(self.feed(response(ResourceType::RouteConfiguration, "1", "b", vec![f::any(&rc)])), None);
        let clusters =
            vec![f::any(&f::cluster(&cluster("v1"), Some(SA))), f::any(&f::cluster(&cluster("v2"), Some(SA)))];
        assert_eq!(self.feed(response(ResourceType::Cluster, "1", "c", clusters)), None);
        let las = vec![
            f::any(&f::load_assignment(&cluster("v1"), &[addr(1), addr(2)])),
            f::any(&f::load_assignment(&cluster("v2"), &[addr(3)])),
        ];
        assert_eq!(self.feed(response(ResourceType::ClusterLoadAssignment, "1", "d", las)), None);
    }

    /// What the target's watchers hold after a step: its snapshot, or the error they were told.
    fn snapshot(&mut self) -> Result<Option<ServiceSnapshot>, CascadeError> {
        self.step();
        self.latest.clone().transpose()
    }
}

#[test]
fn the_cascade_subscribes_step_by_step_and_builds_a_snapshot() {
    let mut h = Harness::new();
    let requests = h.resubscribe();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].resource_names, [LISTENER]);
    assert_eq!(requests[0].node.as_ref().map(|n| n.id.as_str()), Some("n"));
    assert_eq!((requests[0].version_info.as_str(), requests[0].response_nonce.as_str()), ("", ""));
    h.full();
    let snap = h.snapshot().unwrap().unwrap();
    let names: Vec<&str> = snap.subsets().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["outbound_9080_v1_reviews.default.svc.cluster.local", "outbound_9080_v2_reviews.default.svc.cluster.local"]
    );
    let route = &snap.routes()[0];
    assert_eq!(route.targets.iter().map(|t| t.weight.get()).collect::<Vec<_>>(), [90, 10]);
    assert_eq!(route.timeout, None, "Istio's max_stream_duration 0s means no timeout");
    let retry = route.retry.as_ref().unwrap();
    assert_eq!(retry.max_attempts, 3);
    assert_eq!(
        retry.retry_on,
        [
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GrpcUnavailable,
            RetryOn::GrpcCancelled,
            RetryOn::Status(503)
        ]
    );
    assert!(retry.retry_non_idempotent);
    assert_eq!(snap.endpoints().len(), 3);
    assert!(
        snap.endpoints()
            .iter()
            .all(|e| snap.expected_identity(e).and_then(|i| i.as_exact()).map(|i| i.as_str()) == Some(SA))
    );
    assert_eq!(snap.policies().load_balancer.kind, LoadBalancerKind::RoundRobin);
    assert_eq!(snap.policies().circuit_breaker.as_ref().map(|c| c.max_concurrent), Some(1024));
    // Every type is ACKed with its version.
    for kind in ResourceType::ALL {
        assert_eq!(h.state.get(kind).version, "1", "{kind}");
    }
}

#[test]
fn a_partly_bad_response_uses_the_good_resources_and_nacks_the_bad_by_name() {
    let mut h = Harness::new();
    h.full();
    let mut bad = f::cluster(&cluster("v2"), Some(SA));
    bad.lb_policy = 5; // MAGLEV
    let mut good = f::cluster(&cluster("v1"), Some(SA));
    good.circuit_breakers = Some(envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
        thresholds: vec![envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
            max_requests: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 7 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let handled = h.handle(response(ResourceType::Cluster, "2", "e", vec![f::any(&good), f::any(&bad)]));
    let detail = handled.nack.unwrap();
    assert_eq!(
        detail,
        format!(
            "CDS resource \"{}\": lb_policy: MAGLEV is not supported (ROUND_ROBIN, LEAST_REQUEST, RING_HASH)",
            cluster("v2")
        )
    );
    let status = handled.reply.error_detail.unwrap();
    assert_eq!((status.code, status.message), (3, detail));
    assert_eq!(handled.reply.version_info, "1", "a NACK carries the last accepted version");
    assert_eq!(handled.reply.response_nonce, "e");
    // The good cluster is used; the bad one keeps its last good version.
    let snap = h.snapshot().unwrap().unwrap();
    assert_eq!(snap.policies().circuit_breaker.as_ref().map(|c| c.max_concurrent), Some(7));
    assert_eq!(snap.policies().load_balancer.kind, LoadBalancerKind::RoundRobin);
    assert_eq!(snap.subsets().len(), 2);
}

#[test]
fn a_bad_resource_with_no_good_version_fails_its_target() {
    let mut h = Harness::new();
    h.resubscribe();
    let mut l = f::client_listener(LISTENER);
    l.api_listener = None;
    let nack = h.feed(response(ResourceType::Listener, "1", "a", vec![f::any(&l)])).unwrap();
    assert!(nack.contains("api_listener: missing"), "{nack}");
    let err = h.snapshot().unwrap_err();
    assert!(matches!(&err, CascadeError::Refused(e) if e.name() == LISTENER && e.field() == "api_listener"), "{err}");
}

#[test]
fn lds_and_cds_responses_are_complete_but_rds_and_eds_are_not() {
    let mut h = Harness::new();
    h.full();
    // An EDS response about v1 only leaves v2 alone.
    let la = f::load_assignment(&cluster("v1"), &[addr(1)]);
    assert_eq!(h.feed(response(ResourceType::ClusterLoadAssignment, "2", "e", vec![f::any(&la)])), None);
    assert_eq!(h.snapshot().unwrap().unwrap().endpoints().len(), 2);
    // An LDS response without the listener deletes it...
    assert_eq!(h.feed(response(ResourceType::Listener, "2", "f", vec![])), None);
    let err = h.snapshot().unwrap_err();
    assert_eq!(err, CascadeError::DoesNotExist { kind: ResourceType::Listener, name: LISTENER.into() });
    // ...unless the server has the feature ignore_resource_deletion (gRFC A53).
    let mut h = Harness::on(AdsState::new(Node::default(), Duration::from_secs(15)).ignoring_deletions(true));
    h.full();
    assert_eq!(h.feed(response(ResourceType::Listener, "2", "f", vec![])), None);
    assert!(h.snapshot().unwrap().is_some());
}

#[test]
fn unanswered_resources_do_not_exist_after_the_timeout_and_a_new_stream_starts_over() {
    let mut h = Harness::new();
    h.resubscribe();
    let deadline = h.state.next_deadline().unwrap();
    assert_eq!(deadline, h.now + Duration::from_secs(15));
    assert!(!h.state.expire(deadline - Duration::from_millis(1)));
    assert!(h.state.expire(deadline));
    assert!(matches!(h.snapshot(), Err(CascadeError::DoesNotExist { .. })));
    // A stream failure stops the timers; a new stream asks again, with the accepted versions and no nonce.
    h.state.on_stream_end();
    assert_eq!(h.state.next_deadline(), None);
    let mut h = Harness::new();
    h.full();
    let requests = h.state.on_stream_start(h.now);
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r.version_info == "1" && r.response_nonce.is_empty()));
    assert!(requests[0].node.is_some() && requests[1..].iter().all(|r| r.node.is_none()));
}

#[test]
fn weight_zero_clusters_are_left_out_and_unsubscribed() {
    let mut h = Harness::new();
    h.full();
    let rc = f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 0), (&cluster("v2"), 100)]);
    assert_eq!(h.feed(response(ResourceType::RouteConfiguration, "2", "x", vec![f::any(&rc)])), None);
    assert_eq!(h.state.get(ResourceType::Cluster).wanted.iter().collect::<Vec<_>>(), [&cluster("v2")]);
    let snap = h.snapshot().unwrap().unwrap();
    assert_eq!(snap.endpoints().len(), 1);
    assert_eq!(snap.routes()[0].targets.len(), 1);
}

#[test]
fn virtual_hosts_are_chosen_by_grpc_rules() {
    use crate::resource::route::{RouteConfig, VirtualHost};
    let vh = |d: &[&str]| VirtualHost { domains: d.iter().map(|s| s.to_string()).collect(), routes: vec![] };
    let rc = RouteConfig {
        virtual_hosts: vec![vh(&["*"]), vh(&["reviews.*"]), vh(&["*.cluster.local:9080"]), vh(&["other"])],
    };
    let pick = |host: &str| cascade::virtual_host(&rc, host).map(|v| v.domains[0].clone());
    assert_eq!(pick(LISTENER).as_deref(), Some("*.cluster.local:9080"));
    assert_eq!(pick("reviews.x").as_deref(), Some("reviews.*"));
    assert_eq!(pick("OTHER").as_deref(), Some("other"));
    assert_eq!(pick("ratings").as_deref(), Some("*"));
}

#[test]
#[allow(deprecated)] // prefix_match is what many control planes still send
fn route_matches_translate_with_envoy_semantics() {
    use envoy_types::pb::envoy::config::route::v3::{
        HeaderMatcher, header_matcher::HeaderMatchSpecifier, route_match::PathSpecifier,
    };
    let mut rc = f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 1)]);
    let m = rc.virtual_hosts[0].routes[0].r#match.as_mut().unwrap();
    m.path_specifier = Some(PathSpecifier::Prefix("/helloworld.Greeter/Say".into()));
    m.headers.push(HeaderMatcher {
        name: "x-user".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch("qa-".into())),
        ..Default::default()
    });
    let parsed = crate::resource::route::parse(&rc).unwrap();
    let route = &parsed.virtual_hosts[0].routes[0];
    let path = route.matches.path.as_ref().unwrap();
    assert!(matches!(path, PathMatch::Regex(_)));
    assert!(path.matches("/helloworld.Greeter/SayHello") && !path.matches("/helloworld.Greeter/Other"));
    assert!(
        route.matches.headers[0].matches_value(Some(b"qa-7"))
            && !route.matches.headers[0].matches_value(Some(b"x-qa-7"))
    );

    // invert_match as gRPC reads it: present and not matching.
    let mut inverted = rc.clone();
    inverted.virtual_hosts[0].routes[0].r#match.as_mut().unwrap().headers[0].invert_match = true;
    let parsed = crate::resource::route::parse(&inverted).unwrap();
    let m = &parsed.virtual_hosts[0].routes[0].matches.headers[0];
    assert!(m.matches_value(Some(b"x-qa-7")) && !m.matches_value(Some(b"qa-7")) && !m.matches_value(None));

    // Unsupported, behaviour-changing matchers are refused with the field named.
    let mut bad = rc.clone();
    bad.virtual_hosts[0].routes[0].r#match.as_mut().unwrap().runtime_fraction =
        Some(envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
            default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                numerator: 50,
                denominator: 0,
            }),
            ..Default::default()
        });
    assert_eq!(
        crate::resource::route::parse(&bad).unwrap_err().field,
        "virtual_hosts[0].routes[0].match.runtime_fraction"
    );
}

#[test]
fn retry_timeout_and_hash_policies() {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action,
        route_action::{
            MaxStreamDuration,
            hash_policy::{Header, PolicySpecifier},
        },
    };
    let mut rc = f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 1)]);
    let Some(Action::Route(action)) = &mut rc.virtual_hosts[0].routes[0].action else { unreachable!() };
    action.max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: Some(envoy_types::pb::google::protobuf::Duration { seconds: 5, nanos: 0 }),
        grpc_timeout_header_max: Some(envoy_types::pb::google::protobuf::Duration { seconds: 2, nanos: 0 }),
        ..Default::default()
    });
    action.hash_policy.push(HashPolicy {
        policy_specifier: Some(PolicySpecifier::Header(Header { header_name: "x-user".into(), regex_rewrite: None })),
        terminal: false,
    });
    let retry = action.retry_policy.as_mut().unwrap();
    retry.num_retries = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 9 });
    let parsed = crate::resource::route::parse(&rc).unwrap();
    let route = &parsed.virtual_hosts[0].routes[0];
    assert_eq!(route.timeout, Some(Some(Duration::from_secs(2))), "gRFC A31: grpc_timeout_header_max first");
    assert_eq!(route.retry.as_ref().unwrap().max_attempts, 5, "gRFC A44 caps attempts at 5");
    assert_eq!(route.hash_header.as_ref().map(|h| h.as_str()), Some("x-user"));

    let Some(Action::Route(action)) = &mut rc.virtual_hosts[0].routes[0].action else { unreachable!() };
    // gRFC A44's five gRPC conditions, as gRPC accepts them (istiod sends what a VirtualService's
    // `retryOn` says).
    action.retry_policy.as_mut().unwrap().retry_on = "unavailable,deadline-exceeded,internal".into();
    let parsed = crate::resource::route::parse(&rc).unwrap();
    let retry_on = &parsed.virtual_hosts[0].routes[0].retry.as_ref().unwrap().retry_on;
    assert_eq!(retry_on, &[RetryOn::GrpcUnavailable, RetryOn::GrpcDeadlineExceeded, RetryOn::GrpcInternal]);
}

#[test]
fn faults_from_the_filter_and_per_route_overrides() {
    use envoy_types::pb::envoy::{
        extensions::filters::{
            common::fault::v3::{FaultDelay, fault_delay::FaultDelaySecifier},
            http::fault::v3::{FaultAbort, HttpFault, fault_abort::ErrorType},
        },
        r#type::v3::FractionalPercent,
    };
    use mesh_core::policy::AbortStatus;
    let fault = HttpFault {
        delay: Some(FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 50_000_000,
            })),
            percentage: Some(FractionalPercent { numerator: 2500, denominator: 1 }),
        }),
        abort: Some(FaultAbort {
            error_type: Some(ErrorType::GrpcStatus(14)),
            percentage: Some(FractionalPercent { numerator: 10, denominator: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let parsed = crate::resource::filter::fault(&fault, "f").unwrap();
    assert_eq!(parsed.delay.as_ref().map(|d| (d.duration, d.percent.get())), Some((Duration::from_millis(50), 25.0)));
    assert_eq!(parsed.abort.as_ref().map(|a| (a.status, a.percent.get())), Some((AbortStatus::Grpc(14), 10.0)));
    // gRFC A33: any gRPC status is injected as is (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ...);
    // as in grpc-go, OK and codes past 16 are UNKNOWN, and an abort without a share aborts nothing.
    for (code, injected) in [(8, 8), (4, 4), (0, 2), (17, 2)] {
        let mut other = fault.clone();
        other.abort.as_mut().unwrap().error_type = Some(ErrorType::GrpcStatus(code));
        let parsed = crate::resource::filter::fault(&other, "f").unwrap();
        assert_eq!(parsed.abort.unwrap().status, AbortStatus::Grpc(injected), "gRPC status {code}");
    }
    let mut unshared = fault.clone();
    unshared.abort.as_mut().unwrap().percentage = None;
    assert_eq!(crate::resource::filter::fault(&unshared, "f").unwrap().abort.unwrap().percent.get(), 0.0);
    // grpc-go ignores an abort with a malformed HTTP status.
    unshared.abort.as_mut().unwrap().error_type = Some(ErrorType::HttpStatus(99));
    assert!(crate::resource::filter::fault(&unshared, "f").unwrap().abort.is_none());

    let mut rc = f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 1)]);
    rc.virtual_hosts[0].routes[0].typed_per_filter_config.insert("envoy.filters.http.fault".into(), f::any(&fault));
    let parsed = crate::resource::route::parse(&rc).unwrap();
    assert!(matches!(&parsed.virtual_hosts[0].routes[0].fault, Some(Some(f)) if f.abort.is_some()));
    rc.virtual_hosts[0].routes[0].typed_per_filter_config.insert(
        "envoy.filters.http.rbac".into(),
        Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute".into(),
            value: vec![],
        },
    );
    assert!(crate::resource::route::parse(&rc).unwrap_err().field.contains("envoy.filters.http.rbac"));
}

#[test]
fn clusters_policies_and_security_are_checked() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    let ctx_providers = providers();
    let ctx = DecodeContext { certificate_providers: &ctx_providers };
    let parse = |c: &envoy_types::pb::envoy::config::cluster::v3::Cluster| crate::resource::cluster::parse(c, &ctx);
    let ok = parse(&f::cluster(&cluster("v1"), Some(SA))).unwrap();
    assert_eq!(
        ok.tls.as_ref().map(|t| (t.instance.as_str(), t.identity.as_exact().unwrap().as_str())),
        Some(("default", SA))
    );

    let mut dns = f::cluster(&cluster("v1"), None);
    dns.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
    assert!(parse(&dns).unwrap_err().reason.contains("LOGICAL_DNS clusters are not supported"));

    let mut outlier = f::cluster(&cluster("v1"), None);
    outlier.outlier_detection = Some(Default::default());
    assert_eq!(parse(&outlier).unwrap_err().field, "outlier_detection.enforcing_success_rate");
    outlier.outlier_detection.as_mut().unwrap().enforcing_success_rate =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 0 });
    let o = parse(&outlier).unwrap().outlier_detection.unwrap();
    assert_eq!(
        (o.consecutive_failures, o.base_ejection_time, o.max_ejection_percent.get()),
        (5, Duration::from_secs(30), 10.0)
    );

    // Security: an unknown provider instance, and SANs mesh cannot check, are refused.
    let empty = BTreeMap::new();
    let no_providers = DecodeContext { certificate_providers: &empty };
    let err = crate::resource::cluster::parse(&f::cluster(&cluster("v1"), Some(SA)), &no_providers).unwrap_err();
    assert!(err.reason.contains("\"default\" is not in the bootstrap"), "{}", err.reason);

    // gRFC A29: several SAN matchers, any of which accepts the peer (istiod sends one exact SAN
    // per service account of the cluster's workloads); each StringMatcher kind.
    use envoy_types::pb::envoy::{
        config::core::v3::{TransportSocket, transport_socket::ConfigType},
        extensions::transport_sockets::tls::v3::{UpstreamTlsContext, common_tls_context::ValidationContextType},
        r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher::MatchPattern},
    };
    let with_sans = |sans: Vec<StringMatcher>| {
        let mut common = f::istio_tls(None);
        let Some(ValidationContextType::CombinedValidationContext(combined)) = &mut common.validation_context_type
        else {
            unreachable!()
        };
        #[allow(deprecated)]
        {
            combined.default_validation_context.as_mut().unwrap().match_subject_alt_names = sans;
        }
        let mut c = f::cluster(&cluster("v1"), None);
        let tls = UpstreamTlsContext { common_tls_context: Some(common), ..Default::default() };
        c.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(ConfigType::TypedConfig(f::any(&tls))),
        });
        parse(&c)
    };
    let san = |p: MatchPattern, ignore_case: bool| StringMatcher { match_pattern: Some(p), ignore_case };
    let sans = vec![
        san(MatchPattern::Exact(SA.into()), false),
        san(MatchPattern::Exact("spiffe://cluster.local/ns/default/sa/reviews-v2".into()), false),
        san(MatchPattern::Prefix("SPIFFE://cluster.local/ns/canary/".into()), true),
        san(MatchPattern::Suffix("/sa/ratings".into()), false),
        san(MatchPattern::Contains("/ns/qa/".into()), false),
        san(
            MatchPattern::SafeRegex(RegexMatcher { regex: "spiffe://other\\.org/.*".into(), ..Default::default() }),
            false,
        ),
    ];
    let expected = with_sans(sans.clone()).unwrap().tls.unwrap().identity;
    let accepts = |id: &str| expected.accepts(&id.parse().unwrap());
    for id in [
        SA,
        "spiffe://cluster.local/ns/default/sa/reviews-v2",
        "spiffe://cluster.local/ns/canary/sa/x",
        "spiffe://cluster.local/ns/prod/sa/ratings",
        "spiffe://cluster.local/ns/qa/sa/y",
        "spiffe://other.org/anything",
    ] {
        assert!(accepts(id), "{id} is accepted by {expected}");
    }
    for id in ["spiffe://cluster.local/ns/default/sa/other", "spiffe://cluster.local/ns/prod/sa/ratings-x"] {
        assert!(!accepts(id), "{id} matches none of {expected}");
    }
    // As gRPC: empty prefixes, suffixes and substrings, and regexes that do not compile, are refused.
    let err = with_sans(vec![sans[0].clone(), san(MatchPattern::Prefix(String::new()), false)]).unwrap_err();
    assert_eq!(
        err.field,
        "transport_socket.typed_config.common_tls_context.combined_validation_context.default_validation_context.match_subject_alt_names[1].prefix",
        "{err:?}"
    );
    let bad_regex = san(MatchPattern::SafeRegex(RegexMatcher { regex: "(".into(), ..Default::default() }), false);
    assert!(with_sans(vec![bad_regex]).unwrap_err().field.ends_with("match_subject_alt_names[0].safe_regex.regex"));
    // An exact SAN that is no SPIFFE ID is accepted, as gRPC accepts it; no mesh peer matches it.
    let odd = parse(&f::cluster(&cluster("v1"), Some("not a spiffe id"))).unwrap().tls.unwrap().identity;
    assert!(odd.as_exact().is_none() && !odd.accepts(&SA.parse().unwrap()));
}

#[test]
fn eds_picks_the_first_priority_with_healthy_endpoints() {
    let mut la = f::load_assignment("c", &[addr(1), addr(2)]);
    la.endpoints[0].lb_endpoints[0].health_status = 3; // DRAINING
    la.endpoints[0].lb_endpoints[1].health_status = 2; // UNHEALTHY
    let mut backup = f::load_assignment("c", &[addr(3)]).endpoints.remove(0);
    backup.priority = 1;
    backup.load_balancing_weight = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 3 });
    la.endpoints.push(backup);
    let parsed = crate::resource::endpoint::parse(&la).unwrap();
    assert_eq!(parsed.endpoints, [(addr(3), 3)]);
    la.endpoints[0].lb_endpoints[1].health_status = 0; // UNKNOWN: usable
    assert_eq!(crate::resource::endpoint::parse(&la).unwrap().endpoints, [(addr(2), 1)]);
    // As gRPC's client does, a locality without its name is refused.
    la.endpoints[1].locality = None;
    assert_eq!(crate::resource::endpoint::parse(&la).unwrap_err().field, "endpoints[1].locality");
}

#[test]
fn plaintext_clusters_need_the_users_consent() {
    let mut h = Harness::new();
    h.resubscribe();
    h.feed(response(ResourceType::Listener, "1", "a", vec![f::any(&f::client_listener(LISTENER))]));
    h.feed(response(
        ResourceType::RouteConfiguration,
        "1",
        "b",
        vec![f::any(&f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 1)]))],
    ));
    h.feed(response(ResourceType::Cluster, "1", "c", vec![f::any(&f::cluster(&cluster("v1"), None))]));
    h.feed(response(
        ResourceType::ClusterLoadAssignment,
        "1",
        "d",
        vec![f::any(&f::load_assignment(&cluster("v1"), &[addr(1)]))],
    ));
    let err = h.snapshot().unwrap_err();
    assert!(err.to_string().contains("no UpstreamTlsContext and plaintext is not allowed"), "{err}");
    h.options.allow_plaintext = true;
    let snap = h.snapshot().unwrap().unwrap();
    assert!(snap.endpoints()[0].identity.is_none());
}

#[test]
fn long_cluster_names_get_stable_short_subset_names() {
    let long = format!("outbound|9080|canary|{}", "a".repeat(80));
    let a = cascade::subset_for_cluster(&long);
    assert!(a.as_str().len() <= 63);
    assert_eq!(a, cascade::subset_for_cluster(&long));
    assert_ne!(a, cascade::subset_for_cluster(&format!("{long}b")));
}

#[test]
fn typed_load_balancing_policies_take_the_first_supported() {
    use envoy_types::pb::envoy::{
        config::{
            cluster::v3::{LoadBalancingPolicy, load_balancing_policy::Policy},
            core::v3::TypedExtensionConfig,
        },
        extensions::load_balancing_policies::wrr_locality::v3::WrrLocality,
    };
    let policy = |type_url: &str, value: Vec<u8>| Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: "p".into(),
            typed_config: Some(Any { type_url: type_url.into(), value }),
        }),
    };
    let lb = "type.googleapis.com/envoy.extensions.load_balancing_policies";
    let round_robin = policy(&format!("{lb}.round_robin.v3.RoundRobin"), vec![]);
    let wrr = WrrLocality { endpoint_picking_policy: Some(LoadBalancingPolicy { policies: vec![round_robin] }) };
    let ctx_providers = providers();
    let ctx = DecodeContext { certificate_providers: &ctx_providers };
    let mut c = f::cluster(&cluster("v1"), None);
    c.lb_policy = 2; // RING_HASH, overridden by the typed policy (gRFC A52)
    c.load_balancing_policy = Some(LoadBalancingPolicy {
        policies: vec![
            policy(&format!("{lb}.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"), vec![]),
            policy(&format!("{lb}.wrr_locality.v3.WrrLocality"), f::any(&wrr).value),
        ],
    });
    let parsed = crate::resource::cluster::parse(&c, &ctx).unwrap();
    assert_eq!(parsed.lb, crate::resource::cluster::LbKind::RoundRobin);
    c.load_balancing_policy =
        Some(LoadBalancingPolicy { policies: vec![policy(&format!("{lb}.pick_first.v3.PickFirst"), vec![])] });
    let err = crate::resource::cluster::parse(&c, &ctx).unwrap_err();
    assert_eq!(err.field, "load_balancing_policy.policies");
    assert!(err.reason.contains("PickFirst"), "{}", err.reason);
}

#[test]
fn routes_that_do_not_forward_are_kept_and_unknown_cluster_specifiers_skipped() {
    use envoy_types::pb::envoy::config::{
        core::v3::TypedExtensionConfig,
        route::v3::{
            ClusterSpecifierPlugin, DirectResponseAction, NonForwardingAction, RedirectAction, route::Action,
            route_action::ClusterSpecifier,
        },
    };
    use mesh_core::RouteAction;
    let base = f::route_config(LISTENER, HOST, 9080, &[(&cluster("v1"), 1)]);
    let default_route = base.virtual_hosts[0].routes[0].clone();
    let mut rc = base.clone();
    let actions = [
        Some(Action::Redirect(RedirectAction::default())),
        Some(Action::DirectResponse(DirectResponseAction { status: 503, ..Default::default() })),
        Some(Action::NonForwardingAction(NonForwardingAction::default())),
        None,
    ];
    rc.virtual_hosts[0].routes = actions
        .into_iter()
        .map(|action| envoy_types::pb::envoy::config::route::v3::Route { action, ..default_route.clone() })
        .chain([default_route.clone()])
        .collect();
    // gRFC A28: the resource is accepted; each such route keeps its place and sends nowhere.
    let parsed = crate::resource::route::parse(&rc).unwrap();
    let got: Vec<_> = parsed.virtual_hosts[0].routes.iter().map(|r| (r.action, r.clusters.len())).collect();
    assert_eq!(
        got,
        [
            (RouteAction::Redirect, 0),
            (RouteAction::DirectResponse, 0),
            (RouteAction::NonForwarding, 0),
            (RouteAction::Unsupported, 0),
            (RouteAction::Forward, 1)
        ]
    );

    // A cluster specifier gRPC does not know (cluster_header, none) skips the route.
    let mut skipped = base.clone();
    let mut header_route = default_route.clone();
    let Some(Action::Route(action)) = &mut header_route.action else { unreachable!() };
    action.cluster_specifier = Some(ClusterSpecifier::ClusterHeader("x-cluster".into()));
    let mut unset = header_route.clone();
    let Some(Action::Route(action)) = &mut unset.action else { unreachable!() };
    action.cluster_specifier = None;
    skipped.virtual_hosts[0].routes = vec![header_route, unset, default_route.clone()];
    let parsed = crate::resource::route::parse(&skipped).unwrap();
    assert_eq!(parsed.virtual_hosts[0].routes.len(), 1);
    assert_eq!(parsed.virtual_hosts[0].routes[0].action, RouteAction::Forward);

    // A route of an optional plugin is skipped; a required plugin, or one not declared, refused.
    let mut plugin_route = default_route.clone();
    let Some(Action::Route(action)) = &mut plugin_route.action else { unreachable!() };
    action.cluster_specifier = Some(ClusterSpecifier::ClusterSpecifierPlugin("rls".into()));
    let mut plugins = base.clone();
    plugins.virtual_hosts[0].routes = vec![plugin_route, default_route];
    let err = crate::resource::route::parse(&plugins).unwrap_err();
    assert_eq!(err.field, "virtual_hosts[0].routes[0].route.cluster_specifier_plugin");
    plugins.cluster_specifier_plugins = vec![ClusterSpecifierPlugin {
        extension: Some(TypedExtensionConfig { name: "rls".into(), typed_config: None }),
        is_optional: false,
    }];
    assert_eq!(crate::resource::route::parse(&plugins).unwrap_err().field, "cluster_specifier_plugins[0]");
    plugins.cluster_specifier_plugins[0].is_optional = true;
    let parsed = crate::resource::route::parse(&plugins).unwrap();
    assert_eq!(parsed.virtual_hosts[0].routes.len(), 1);
}
