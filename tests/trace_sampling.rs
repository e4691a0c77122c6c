//! Head sampling over real sockets: with a pipeline that samples no new trace, a two-hop call
//! (test client -> a -> b, mesh over mTLS) builds no span anywhere, yet carries one trace id
//! through every hop with the `sampled` flag off, and its baggage; a call that continues a
//! caller's sampled trace is recorded whole at every hop (parent-based), under the caller's trace.
#![allow(clippy::unwrap_used)]

mod otlp_support;
mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

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
use opentelemetry::{
    baggage::BaggageExt,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_proto::tonic::trace::v1::Span;
use otlp_support::{attr, start_collector};
use support::identity;
use tower::ServiceExt;

type Body = Full<Bytes>;

fn service(name: &str) -> ServiceName {
    name.parse().unwrap()
}

/// What each hop's handler saw: the `traceparent` it was sent, and the baggage in its context.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

fn record(seen: &Seen, hop: &str, request: &http::Request<hyper::body::Incoming>) {
    let traceparent = request.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
    let tenant = opentelemetry::Context::current().baggage().get("tenant").map(|v| v.to_string());
    seen.lock().unwrap().push((hop.to_owned(), traceparent.unwrap_or_default(), tenant));
}

fn start_b(listener: tokio::net::TcpListener, seen: Seen) -> ServerHandle {
    let app = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        record(&seen, "b", &request);
        async { Ok::<_, Infallible>(http::Response::new(Body::from("b"))) }
    });
    Server::builder()
        .identity(identity("/b"))
        .telemetry(TelemetryLayer::server(service("b")))
        .build()
        .unwrap()
        .spawn(listener, app)
        .unwrap()
}

fn start_a(listener: tokio::net::TcpListener, to_b: MeshClient<Body>, seen: Seen) -> ServerHandle {
    let app = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        record(&seen, "a", &request);
        let to_b = to_b.clone();
        async move {
            let response = to_b.oneshot(http::Request::get("/b").body(Body::default()).unwrap()).await?;
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, mesh::tower::BoxError>(http::Response::new(Full::new(body)))
        }
    });
    Server::builder()
        .identity(identity("/a"))
        .telemetry(TelemetryLayer::server(service("a")))
        .build()
        .unwrap()
        .spawn(listener, app)
        .unwrap()
}

/// `00-TRACE-SPAN-FLAGS` as its three fields.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_carry_the_trace_without_spans() {
    let (collector, mut spans_rx) = start_collector().await;
    let telemetry = OtlpConfig::new(service("tests"))
        .endpoint(format!("http://{}", collector.local_addr()))
        .sample_ratio(0.0)
        .build()
        .unwrap();
    telemetry.install().unwrap();

    let discovery = StaticDiscovery::new();
    let (listener_a, listener_b) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    for (name, addr) in [("a", listener_a.local_addr().unwrap()), ("b", listener_b.local_addr().unwrap())] {
        discovery.set(
            ServiceSnapshot::builder(service(name))
                .identity(format!("spiffe://example.org/{name}").parse().unwrap())
                .endpoint(Endpoint::new(addr).with_label("version", "v1").unwrap())
                .subset(Subset::version("v1").unwrap())
                .route(
                    Route::new(RouteName::new("all").unwrap())
                        .with_match(RouteMatch::any().path(PathMatch::prefix("/").unwrap()))
                        .with_target("v1".parse().unwrap(), Weight::new(1).unwrap()),
                )
                .build()
                .unwrap(),
        );
    }
    let seen = Seen::default();
    let b = start_b(listener_b, seen.clone());
    let to_b = MeshClient::builder(discovery.clone(), service("b")).identity(identity("/a")).build().unwrap();
    let a = start_a(listener_a, to_b, seen.clone());
    let to_a = MeshClient::builder(discovery, service("a")).identity(identity("/web")).build().unwrap();
    let call = |cx: opentelemetry::Context| {
        let to_a = to_a.clone();
        async move {
            let _attached = cx.attach();
            let response = to_a.oneshot(http::Request::get("/a").body(Body::default()).unwrap()).await.unwrap();
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "b");
        }
    };

    // 1. A new trace, not sampled (ratio 0): one trace id through both hops, flag off, a new
    //    span id at each hop, the baggage carried on.
    call(opentelemetry::Context::current_with_baggage([opentelemetry::KeyValue::new("tenant", "acme")])).await;
    let hops = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(hops.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let (trace_a, span_a, flags_a) = fields(&hops[0].1);
    let (trace_b, span_b, flags_b) = fields(&hops[1].1);
    assert_eq!(trace_a, trace_b, "one trace through both hops");
    assert_ne!(trace_a, "0".repeat(32));
    assert_ne!(span_a, span_b, "each hop has its own span id");
    assert_eq!((flags_a.as_str(), flags_b.as_str()), ("00", "00"), "not sampled");
    assert!(hops.iter().all(|h| h.2.as_deref() == Some("acme")), "baggage reaches both hops: {hops:?}");

    // 2. A caller's sampled trace: every hop records it, whatever the ratio.
    let caller = SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    call(opentelemetry::Context::new().with_remote_span_context(caller.clone())).await;
    let hops = std::mem::take(&mut *seen.lock().unwrap());
    for (hop, traceparent, _) in &hops {
        let (trace, _, flags) = fields(traceparent);
        assert_eq!((trace.as_str(), flags.as_str()), ("4bf92f3577b34da6a3ce929d0e0e4736", "01"), "{hop}");
    }

    // Four spans (web -> a, a, a -> b, b), all in the caller's trace: none of call 1.
    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while spans.len() < 4 {
        telemetry.flush().await.unwrap();
        match tokio::time::timeout_at(deadline, spans_rx.recv()).await {
            Ok(Some(span)) => spans.push(span),
            _ => panic!("only {} spans arrived: {spans:#?}", spans.len()),
        }
    }
    telemetry.shutdown().await.unwrap();
    while let Ok(span) = spans_rx.try_recv() {
        spans.push(span);
    }
    assert_eq!(spans.len(), 4, "only the sampled call's spans: {spans:#?}");
    let caller_trace = caller.trace_id().to_bytes().to_vec();
    assert!(spans.iter().all(|s| s.trace_id == caller_trace), "{spans:#?}");
    let client_to_a = spans
        .iter()
        .find(|s| attr(s, "mesh.service").as_deref() == Some("a") && s.parent_span_id == caller.span_id().to_bytes())
        .expect("the first client span is a child of the caller's span");
    assert_eq!(attr(client_to_a, "mesh.route").as_deref(), Some("all"));
    for handle in [a, b, collector] {
        handle.shutdown().await.unwrap();
    }
}
