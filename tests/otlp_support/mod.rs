//! An OTLP/gRPC trace receiver on 127.0.0.1:0, for the tests that read exported spans back.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use mesh::tower::server::{Server, ServerHandle};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::sync::mpsc;

/// The receiving end of OTLP: every exported span, in arrival order.
struct Collector(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The OTLP receiver, plaintext like a local collector, and the spans it receives.
pub async fn start_collector() -> (ServerHandle, mpsc::UnboundedReceiver<Span>) {
    let (spans_tx, spans_rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = Server::builder()
        .plaintext()
        .build()
        .unwrap()
        .spawn(listener, TraceServiceServer::new(Collector(spans_tx)))
        .unwrap();
    (collector, spans_rx)
}

pub fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
        Some(AnyValue { value: Some(Value::StringValue(s)) }) => Some(s.clone()),
        Some(AnyValue { value: Some(Value::IntValue(i)) }) => Some(i.to_string()),
        Some(AnyValue { value: Some(Value::BoolValue(b)) }) => Some(b.to_string()),
        _ => None,
    })
}
