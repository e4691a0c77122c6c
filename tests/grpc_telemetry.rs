//! gRPC calls through `MeshChannel` to a `GrpcServer`, both with telemetry: the spans carry the
//! RPC semantic conventions (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`)
//! and the request metrics the gRPC code, for a call that works and one that is denied.
#![allow(clippy::unwrap_used)]

mod grpc_support;
mod support;

use std::sync::{Arc, Mutex};

use grpc_support::{Options, greeter, hello, pb::greeter_client::GreeterClient, serve};
use mesh::{
    core::{
        ServiceSnapshot, StaticDiscovery,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tonic::MeshChannel,
    tower::{
        authz::AuthorizationLayer,
        metrics as names,
        telemetry::{SPAN_TARGET, TelemetryLayer},
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{Fields, Visitor};
use support::{backend_id, identity};
use tracing_subscriber::{Layer, layer::SubscriberExt, registry::LookupSpan};

/// Keeps the fields of every closed mesh request span.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Fields>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().target() == SPAN_TARGET {
            let mut fields = Fields::new();
            attrs.record(&mut Visitor(&mut fields));
            ctx.span(id).unwrap().extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(fields) = ctx.span(id).unwrap().extensions_mut().get_mut::<Fields>() {
            values.record(&mut Visitor(fields));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(fields) = ctx.span(&id).unwrap().extensions_mut().remove::<Fields>() {
            self.0.lock().unwrap().push(fields);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_attributes_on_spans_and_grpc_codes_in_metrics() {
    let spans = Spans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone())).unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let frontend = PrincipalMatch::Exact("spiffe://example.org/frontend".parse().unwrap());
    let policy = AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![frontend])]);
    let options = Options {
        authorization: Some(AuthorizationLayer::new(policy)),
        telemetry: Some(TelemetryLayer::server(greeter()).version("v1".parse().unwrap())),
        ..Options::default()
    };
    let backend = serve(identity("/backend"), options).await;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(greeter()).identity(backend_id()).endpoint(backend.endpoint("v1")).build().unwrap(),
    );
    let channel =
        |caller: &str| MeshChannel::builder(discovery.clone(), greeter()).identity(identity(caller)).build().unwrap();

    GreeterClient::new(channel("/frontend")).say_hello(hello("ok")).await.unwrap();
    let denied = GreeterClient::new(channel("/batch")).say_hello(hello("no")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // Client spans close when the application drops the response; server spans once sent.
    let closed = loop {
        let closed = spans.0.lock().unwrap().clone();
        if closed.len() >= 4 {
            break closed;
        }
        tokio::task::yield_now().await;
    };
    let find = |kind: &str, code: &str| {
        closed
            .iter()
            .find(|f| f["otel.kind"] == kind && f.get("rpc.grpc.status_code").map(String::as_str) == Some(code))
            .unwrap_or_else(|| panic!("no {kind} span with code {code}: {closed:#?}"))
    };
    for kind in ["client", "server"] {
        for code in ["0", "7"] {
            let span = find(kind, code);
            assert_eq!(span["rpc.system"], "grpc");
            assert_eq!(span["rpc.service"], "helloworld.Greeter");
            assert_eq!(span["rpc.method"], "SayHello");
            assert_eq!(span["otel.name"], "helloworld.Greeter/SayHello");
            assert_eq!(span["http.request.method"], "POST");
            assert_eq!(span["mesh.service"], "greeter");
        }
    }
    // A denied call is an error for the caller, not a server failure.
    assert_eq!(find("client", "7").get("otel.status_code").map(String::as_str), Some("error"));
    assert_eq!(find("client", "7")["error.type"], "PERMISSION_DENIED");
    assert_eq!(find("server", "7").get("otel.status_code"), None);
    assert_eq!(find("server", "7")["mesh.peer_identity"], "spiffe://example.org/batch");
    assert_eq!(find("client", "0")["mesh.peer_identity"], "spiffe://example.org/backend");

    // One snapshot: taking one resets what it read.
    let snapshot = snapshotter.snapshot().into_vec();
    let count = |direction: &str, code: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                let labels: Vec<_> = key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
                key.key().name() == names::REQUESTS
                    && labels.contains(&("direction".into(), direction.into()))
                    && labels.contains(&("grpc_code".into(), code.into()))
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    assert_eq!((count("outbound", "OK"), count("outbound", "PERMISSION_DENIED")), (1, 1));
    assert_eq!((count("inbound", "OK"), count("inbound", "PERMISSION_DENIED")), (1, 1));
    backend.handle.shutdown().await.unwrap();
}
