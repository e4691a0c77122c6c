//! A two-hop call (test client -> service a -> service b, all through mesh over mTLS) exported
//! over OTLP/gRPC to a TraceService receiver started here, read back as one trace. Service a's
//! handler calls b with the mesh client and copies no header.
#![allow(clippy::unwrap_used)]

mod otlp_support;
mod support;

use std::{collections::HashMap, convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh::{
    core::{
        Endpoint, PathMatch, Route, RouteMatch, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery, Subset,
        Weight,
    },
    tower::{
        client::MeshClient,
        server::{Server, ServerHandle},
        telemetry::{TelemetryLayer, otlp::OtlpConfig},
    },
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use otlp_support::{attr, start_collector};
use support::{example, identity};
use tower::ServiceExt;

fn service(name: &str) -> ServiceName {
    name.parse().unwrap()
}

type Body = Full<Bytes>;

/// `b`: answers with the baggage it received (`tenant`), or 503 on `/b/fail`.
fn start_b(listener: tokio::net::TcpListener) -> ServerHandle {
    let app = tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
        let tenant = opentelemetry::Context::current().baggage().get("tenant").map(|v| v.to_string());
        let mut response = http::Response::new(format!("b saw tenant={}", tenant.unwrap_or_default()));
        if request.uri().path() == "/b/fail" {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        Ok::<_, Infallible>(response)
    });
    let telemetry = TelemetryLayer::server(service("b")).version("v1".parse().unwrap());
    Server::builder().identity(identity("/b")).telemetry(telemetry).build().unwrap().spawn(listener, app).unwrap()
}

/// `a`: calls `b` with the mesh client, the way an application would, and relays what it said.
fn start_a(listener: tokio::net::TcpListener, to_b: MeshClient<Body>) -> ServerHandle {
    let app = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let to_b = to_b.clone();
        async move {
            let path = if request.uri().path() == "/a/fail" { "/b/fail" } else { "/b/items" };
            let response = to_b.oneshot(http::Request::get(path).body(Body::default()).unwrap()).await?;
            let status = if response.status().is_success() { 200 } else { 502 };
            let body = response.into_body().collect().await?.to_bytes();
            let mut relayed = http::Response::new(Full::new(body));
            *relayed.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, mesh::tower::BoxError>(relayed)
        }
    });
    let telemetry = TelemetryLayer::server(service("a"));
    Server::builder().identity(identity("/a")).telemetry(telemetry).build().unwrap().spawn(listener, app).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_form_one_trace() {
    let (collector, mut spans_rx) = start_collector().await;
    let telemetry =
        OtlpConfig::new(service("tests")).endpoint(format!("http://{}", collector.local_addr())).build().unwrap();
    telemetry.install().unwrap();

    let discovery = StaticDiscovery::new();
    let (listener_a, listener_b) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (addr_a, addr_b) = (listener_a.local_addr().unwrap(), listener_b.local_addr().unwrap());
    let route = |name: &str, prefix: &str| {
        Route::new(RouteName::new(name).unwrap())
            .with_match(RouteMatch::any().path(PathMatch::prefix(prefix).unwrap()))
            .with_target("v1".parse().unwrap(), Weight::new(1).unwrap())
    };
    for (name, addr, prefix) in [("a", addr_a, "/a"), ("b", addr_b, "/b")] {
        discovery.set(
            ServiceSnapshot::builder(service(name))
                .identity(format!("spiffe://example.org/{name}").parse().unwrap())
                .endpoint(Endpoint::new(addr).with_label("version", "v1").unwrap())
                .subset(Subset::version("v1").unwrap())
                .route(route(&format!("{name}-route"), prefix))
                .build()
                .unwrap(),
        );
    }
    let b = start_b(listener_b);
    let to_b = MeshClient::builder(discovery.clone(), service("b")).identity(identity("/a")).build().unwrap();
    let a = start_a(listener_a, to_b);
    let to_a = MeshClient::builder(discovery, service("a")).identity(identity("/web")).build().unwrap();

    // The caller puts baggage in its OpenTelemetry context; it must reach b through a.
    let call = |path: &'static str| {
        let to_a = to_a.clone();
        async move {
            let cx = opentelemetry::Context::current_with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]);
            let _attached = cx.attach();
            let response = to_a.oneshot(http::Request::get(path).body(Body::default()).unwrap());
            let response = response.await.unwrap();
            let status = response.status();
            (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
        }
    };
    let (status, body) = call("/a/start").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "b saw tenant=acme"));

    // Four spans per call: web -> a (client), a (server), a -> b (client), b (server).
    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while spans.len() < 4 {
        telemetry.flush().await.unwrap();
        match tokio::time::timeout_at(deadline, spans_rx.recv()).await {
            Ok(Some(span)) => spans.push(span),
            _ => panic!("only {} spans arrived: {spans:#?}", spans.len()),
        }
    }
    let trace = spans[0].trace_id.clone();
    assert!(spans.iter().all(|s| s.trace_id == trace), "one trace: {spans:#?}");
    let find = |kind: SpanKind, service: &str| {
        spans
            .iter()
            .find(|s| s.kind == kind as i32 && attr(s, "mesh.service").as_deref() == Some(service))
            .unwrap_or_else(|| panic!("no {kind:?} span of {service}: {spans:#?}"))
    };
    let (web_to_a, a_server, a_to_b, b_server) = (
        find(SpanKind::Client, "a"),
        find(SpanKind::Server, "a"),
        find(SpanKind::Client, "b"),
        find(SpanKind::Server, "b"),
    );
    assert!(web_to_a.parent_span_id.is_empty(), "the caller's span is the root");
    assert_eq!(a_server.parent_span_id, web_to_a.span_id, "a's server span is a child of the caller's");
    assert_eq!(a_to_b.parent_span_id, a_server.span_id, "a's call to b is a child of a's server span");
    assert_eq!(b_server.parent_span_id, a_to_b.span_id, "b's server span is a child of a's call");

    for span in [web_to_a, a_server, a_to_b, b_server] {
        assert_eq!(attr(span, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(span, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(span, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(span.name, "GET");
        assert_ne!(span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    }
    let expect = |span: &Span, pairs: &[(&str, String)]| {
        for (key, value) in pairs {
            assert_eq!(attr(span, key).as_ref(), Some(value), "{key} of {span:#?}");
        }
    };
    expect(
        web_to_a,
        &[
            ("url.path", "/a/start".into()),
            ("mesh.route", "a-route".into()),
            ("mesh.subset", "v1".into()),
            ("mesh.endpoint", addr_a.to_string()),
            ("mesh.attempts", "1".into()),
            ("mesh.peer_identity", "spiffe://example.org/a".into()),
            ("server.port", addr_a.port().to_string()),
        ],
    );
    expect(a_server, &[("url.path", "/a/start".into()), ("mesh.peer_identity", "spiffe://example.org/web".into())]);
    expect(
        a_to_b,
        &[
            ("url.path", "/b/items".into()),
            ("mesh.route", "b-route".into()),
            ("mesh.endpoint", addr_b.to_string()),
            ("mesh.peer_identity", "spiffe://example.org/b".into()),
        ],
    );
    expect(b_server, &[("mesh.peer_identity", "spiffe://example.org/a".into()), ("mesh.subset", "v1".into())]);

    // A failure deep down: b answers 503, a answers 502; the spans say so.
    let (status, _) = call("/a/fail").await;
    assert_eq!(status.as_u16(), 502);
    let mut failed: HashMap<(i32, String), Span> = HashMap::new();
    while failed.len() < 4 {
        telemetry.flush().await.unwrap();
        match tokio::time::timeout_at(deadline, spans_rx.recv()).await {
            Ok(Some(span)) => {
                failed.insert((span.kind, attr(&span, "mesh.service").unwrap_or_default()), span);
            }
            _ => panic!("only {} spans of the failed call arrived: {failed:#?}", failed.len()),
        }
    }
    let error = StatusCode::Error as i32;
    for ((kind, service), span) in &failed {
        assert_ne!(span.trace_id, trace, "a new call is a new trace");
        let code = attr(span, "http.response.status_code");
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(error), "{kind} {service}: {span:#?}");
        assert!(code.as_deref() == Some("502") || code.as_deref() == Some("503"), "{span:#?}");
        assert!(attr(span, "error.type").is_some(), "{span:#?}");
    }

    telemetry.shutdown().await.unwrap();
    for handle in [a, b, collector] {
        handle.shutdown().await.unwrap();
    }
}

/// The canary example with `--otlp`: its client and server spans reach the receiver before it
/// exits, paired into traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_example_exports_over_otlp() {
    let (collector, mut spans_rx) = start_collector().await;
    let endpoint = format!("http://{}", collector.local_addr());
    let output = tokio::process::Command::new(example("canary"))
        .args(["--requests", "40", "--concurrency", "4", "--json", "--otlp", &endpoint])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let last = String::from_utf8(output.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(summary["requests"], 40);
    assert_eq!(
        summary["golden"]["v1"]["requests"].as_u64().unwrap() + summary["golden"]["v2"]["requests"].as_u64().unwrap(),
        40
    );

    // The example has exited: whatever it flushed has arrived.
    let mut spans = Vec::new();
    while let Ok(span) = spans_rx.try_recv() {
        spans.push(span);
    }
    let clients: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Server as i32).collect();
    assert_eq!(clients.len(), 40, "one client span per request");
    assert_eq!(servers.len(), 40, "one server span per attempt (no failures, so no retries)");
    for server in servers {
        let parent =
            clients.iter().find(|c| c.span_id == server.parent_span_id).expect("each server span has its client");
        assert_eq!(parent.trace_id, server.trace_id);
        assert_eq!(attr(server, "mesh.subset"), attr(parent, "mesh.subset"));
    }
    collector.shutdown().await.unwrap();
}
