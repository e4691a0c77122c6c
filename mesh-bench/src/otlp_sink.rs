//! A stand-in OpenTelemetry collector: an OTLP/gRPC `TraceService` on loopback that decodes every
//! export and counts the spans, so the `mesh` configuration's traces go through the real exporter
//! pipeline (batch processor, tonic, protobuf) and are really received.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use mesh_tower::server::{Server, ServerHandle};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

use crate::BoxError;

struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| r.scope_spans.iter()).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running sink: its address and the spans received so far.
pub(crate) struct OtlpSink {
    pub(crate) handle: ServerHandle,
    pub(crate) spans: Arc<AtomicU64>,
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink").field("spans", &self.spans.load(Ordering::Relaxed)).finish()
    }
}

/// Starts the sink on 127.0.0.1 (call on a tokio runtime).
pub(crate) fn start() -> Result<OtlpSink, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let spans = Arc::new(AtomicU64::new(0));
    let handle =
        Server::builder().plaintext().build()?.spawn(listener, TraceServiceServer::new(Sink(spans.clone())))?;
    Ok(OtlpSink { handle, spans })
}
