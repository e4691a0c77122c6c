//! An OTLP/gRPC receiver of traces and metrics on 127.0.0.1:0, for the tests that read exported
//! spans and metrics back.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use mesh::tower::server::{Server, ServerHandle};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::sync::mpsc;

/// The receiving end of OTLP: every exported span, in arrival order, and every metrics export.
struct Collector {
    spans: mpsc::UnboundedSender<Span>,
    metrics: mpsc::UnboundedSender<ExportMetricsServiceRequest>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.spans.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let _ = self.metrics.send(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// What the receiver received: spans one by one, metrics one export (one request) at a time.
pub struct Received {
    pub spans: mpsc::UnboundedReceiver<Span>,
    pub metrics: mpsc::UnboundedReceiver<ExportMetricsServiceRequest>,
}

/// The OTLP receiver of traces and metrics, plaintext like a local collector, on one port.
pub async fn start_otlp_collector() -> (ServerHandle, Received) {
    let (spans, spans_rx) = mpsc::unbounded_channel();
    let (metrics, metrics_rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = std::sync::Arc::new(Collector { spans, metrics });
    let services = tonic::service::Routes::new(TraceServiceServer::from_arc(collector.clone()))
        .add_service(MetricsServiceServer::from_arc(collector));
    let handle = Server::builder().plaintext().build().unwrap().spawn(listener, services).unwrap();
    (handle, Received { spans: spans_rx, metrics: metrics_rx })
}

/// The OTLP receiver and the spans it receives (its metrics are dropped).
pub async fn start_collector() -> (ServerHandle, mpsc::UnboundedReceiver<Span>) {
    let (handle, received) = start_otlp_collector().await;
    (handle, received.spans)
}

pub fn attr(span: &Span, key: &str) -> Option<String> {
    value_of(&span.attributes, key)
}

/// The value of `key` among OTLP attributes, as text.
pub fn value_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
        Some(AnyValue { value: Some(Value::StringValue(s)) }) => Some(s.clone()),
        Some(AnyValue { value: Some(Value::IntValue(i)) }) => Some(i.to_string()),
        Some(AnyValue { value: Some(Value::BoolValue(b)) }) => Some(b.to_string()),
        _ => None,
    })
}
