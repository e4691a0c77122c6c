//! A stand-in OpenTelemetry collector: an OTLP/gRPC endpoint on loopback that takes every export
//! and answers it as a collector does, so the `mesh` configuration's traces go through the real
//! exporter pipeline (batch processor, protobuf encoding, tonic over HTTP/2) and are really sent.
//!
//! It runs inside the measured process, so it does as little as a receiver can: it reads each
//! export's bytes and counts them without decoding them. Decoding (a real collector's work, in
//! its own process) cost the benchmark's processes ~2k instructions per request at 1% sampling.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh_tower::server::{Server, ServerHandle};

use crate::plumbing::BoxError;

/// What the sink received.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Export calls.
    pub(crate) exports: AtomicU64,
    /// Their gRPC message bytes.
    pub(crate) bytes: AtomicU64,
}

/// A running sink: its address and what it received so far.
#[derive(Debug)]
pub(crate) struct OtlpSink {
    pub(crate) handle: ServerHandle,
    pub(crate) received: Arc<Received>,
}

/// The answer to an export: an empty `ExportTraceServiceResponse` (a 5-byte gRPC frame of length
/// zero), then `grpc-status: 0` in the trailers.
#[derive(Default)]
struct ExportOk {
    sent: u8,
}

impl Body for ExportOk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.sent += 1;
        Poll::Ready(match self.sent {
            1 => Some(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))),
            2 => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(trailers)))
            }
            _ => None,
        })
    }
}

/// Starts the sink on 127.0.0.1 (call on a tokio runtime).
pub(crate) fn start() -> Result<OtlpSink, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let received = Arc::new(Received::default());
    let counts = received.clone();
    let service = tower::service_fn(move |request: Request<Incoming>| {
        let counts = counts.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            counts.exports.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            let mut response = Response::new(ExportOk::default());
            response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            Ok::<_, BoxError>(response)
        }
    });
    let handle = Server::builder().plaintext().build()?.spawn(listener, service)?;
    Ok(OtlpSink { handle, received })
}
