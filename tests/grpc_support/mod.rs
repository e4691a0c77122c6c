//! gRPC servers on 127.0.0.1:0 for tests/grpc*.rs: the standard Greeter and a streaming Counter,
//! served by one mesh gRPC server with real mTLS.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures_util::Stream;
use http::Request;
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName},
    tonic::{GrpcServer, PeerIdentityExt},
    tower::{
        authz::AuthorizationLayer,
        server::{Server, ServerHandle},
    },
};
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;
use tower::Service;

pub mod pb {
    include!("../../examples/proto/gen/helloworld.rs");
}

pub mod testing {
    include!("../../examples/proto/gen/mesh.testing.rs");
}

use pb::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};
use testing::{
    CountReply, CountRequest,
    counter_server::{Counter, CounterServer},
};

/// How a test greeter behaves.
#[derive(Clone, Default)]
pub enum Behaviour {
    /// Answers at once.
    #[default]
    Answer,
    /// The first attempt of every call fails with UNAVAILABLE; retries (which carry
    /// `grpc-previous-rpc-attempts`) are answered.
    FailFirstAttempts,
    /// Every call fails with UNAVAILABLE and a pushback that asks the client not to retry.
    RefuseRetries,
    /// Never answers; says on the channel when the handler is dropped (the caller gave up).
    Hang(mpsc::UnboundedSender<&'static str>),
    /// Every call fails with INTERNAL.
    Internal,
    /// 30% of calls (the 2nd, 5th and 8th of every ten reaching this server, never two in a
    /// row) fail with UNAVAILABLE.
    FailThirtyPercent,
    /// Answers after a delay.
    Delay(std::time::Duration),
}

/// What a test server saw.
#[derive(Default)]
pub struct Seen {
    /// Calls that reached the Greeter, attempts included.
    pub calls: AtomicUsize,
    /// The `grpc-previous-rpc-attempts` of each call that carried one.
    pub previous_attempts: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct TestGreeter {
    version: &'static str,
    behaviour: Behaviour,
    seen: Arc<Seen>,
}

struct Dropped(mpsc::UnboundedSender<&'static str>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send("the handler was dropped");
    }
}

#[tonic::async_trait]
impl Greeter for TestGreeter {
    async fn say_hello(&self, request: tonic::Request<HelloRequest>) -> Result<tonic::Response<HelloReply>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let previous = request.metadata().get("grpc-previous-rpc-attempts").map(|v| v.to_str().unwrap().to_owned());
        if let Some(previous) = &previous {
            self.seen.previous_attempts.lock().unwrap().push(previous.clone());
        }
        match &self.behaviour {
            Behaviour::Answer => {}
            Behaviour::FailFirstAttempts if previous.is_none() => {
                return Err(Status::unavailable("first attempts fail in this test"));
            }
            Behaviour::FailFirstAttempts => {}
            Behaviour::RefuseRetries => {
                let mut status = Status::unavailable("overloaded; do not retry");
                status.metadata_mut().insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
                return Err(status);
            }
            Behaviour::Internal => return Err(Status::internal("this canary is broken")),
            Behaviour::FailThirtyPercent => {
                if matches!(self.seen.calls.load(Ordering::SeqCst) % 10, 2 | 5 | 8) {
                    return Err(Status::unavailable("this canary fails 30% of calls"));
                }
            }
            Behaviour::Delay(delay) => tokio::time::sleep(*delay).await,
            Behaviour::Hang(tx) => {
                let _guard = Dropped(tx.clone());
                std::future::pending::<()>().await;
            }
        }
        let caller = request.peer_identity().map(|p| p.id().to_string()).unwrap_or_default();
        let message = format!("hello {} from {}, you are {caller}", request.get_ref().name, self.version);
        Ok(tonic::Response::new(HelloReply { message }))
    }
}

/// Streams `count` replies; with a gate, each reply after the first waits for a permit.
#[derive(Clone)]
struct TestCounter {
    version: &'static str,
    gate: Option<Arc<Semaphore>>,
}

type CountStream = Pin<Box<dyn Stream<Item = Result<CountReply, Status>> + Send>>;

#[tonic::async_trait]
impl Counter for TestCounter {
    type CountStream = CountStream;

    async fn count(&self, request: tonic::Request<CountRequest>) -> Result<tonic::Response<CountStream>, Status> {
        let caller = request.peer_identity().map(|p| p.id().to_string()).unwrap_or_default();
        let (count, version, gate) = (request.get_ref().count, self.version, self.gate.clone());
        let stream = futures_util::stream::unfold(1u32, move |n| {
            let (caller, gate) = (caller.clone(), gate.clone());
            async move {
                if n > count {
                    return None;
                }
                if let (Some(gate), true) = (&gate, n > 1) {
                    gate.acquire().await.unwrap().forget();
                }
                let message = format!("{n} from {version} to {caller}");
                Some((Ok(CountReply { number: n, message }), n + 1))
            }
        });
        Ok(tonic::Response::new(Box::pin(stream) as CountStream))
    }
}

/// A test server: Greeter and Counter on one port, as the mesh serves them.
pub struct GrpcBackend {
    pub handle: ServerHandle,
    pub seen: Arc<Seen>,
}

impl GrpcBackend {
    pub fn endpoint(&self, version: &str) -> Endpoint {
        Endpoint::new(self.handle.local_addr()).with_label("version", version).unwrap()
    }
}

/// Options for [`serve`].
#[derive(Clone, Default)]
pub struct Options {
    pub version: &'static str,
    pub behaviour: Behaviour,
    pub authorization: Option<AuthorizationLayer>,
    pub gate: Option<Arc<Semaphore>>,
    pub telemetry: Option<mesh::tower::telemetry::TelemetryLayer>,
}

/// Starts a server presenting `identity` (usually the test backend's).
pub async fn serve(identity: IdentitySource, options: Options) -> GrpcBackend {
    serve_on("127.0.0.1:0".parse().unwrap(), identity, options).await
}

/// [`serve`] on `addr` (a loopback address of the workload's own, for istiod's tests).
pub async fn serve_on(addr: std::net::SocketAddr, identity: IdentitySource, options: Options) -> GrpcBackend {
    let server = Server::builder().identity(identity).build().unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    serve_with(server, listener, options)
}

/// The test services on `listener`, with `server`'s connection settings (an xDS-configured
/// server's, for instance).
pub fn serve_with(server: Server, listener: tokio::net::TcpListener, options: Options) -> GrpcBackend {
    let seen = Arc::new(Seen::default());
    let version = if options.version.is_empty() { "v1" } else { options.version };
    let greeter = GreeterServer::new(TestGreeter { version, behaviour: options.behaviour, seen: seen.clone() });
    let counter = CounterServer::new(TestCounter { version, gate: options.gate });
    // Two services on one port; a tonic `Routes` does the same (with tonic's `router` feature).
    let both = tower::service_fn(move |request: Request<mesh::tonic::RequestBody>| {
        let (mut greeter, mut counter) = (greeter.clone(), counter.clone());
        async move {
            if request.uri().path() == "/helloworld.Greeter/SayHelloAgain" {
                // A second method on the same messages, for path-routing checks.
                let (mut parts, body) = request.into_parts();
                parts.uri = http::Uri::from_static("/helloworld.Greeter/SayHello");
                greeter.call(Request::from_parts(parts, body)).await
            } else if request.uri().path().starts_with("/helloworld.Greeter/") {
                greeter.call(request).await
            } else {
                counter.call(request).await
            }
        }
    });
    let mut grpc = GrpcServer::new(server);
    if let Some(layer) = options.authorization {
        grpc = grpc.authorization(layer);
    }
    if let Some(layer) = options.telemetry {
        grpc = grpc.telemetry(layer);
    }
    let handle = grpc.spawn(listener, both).unwrap();
    GrpcBackend { handle, seen }
}

pub fn greeter() -> ServiceName {
    "greeter".parse().unwrap()
}

pub fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

/// A metric point's attribute set, as the tests write one: `[("grpc.method", "...")]`.
pub fn attrs(items: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The bytes of a `HelloRequest { name }` on the wire (field 1, a short string), as A66's sizes
/// count them.
pub fn request_bytes(name: &str) -> u64 {
    2 + name.len() as u64
}
