//! Real backends on 127.0.0.1:0 for the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Request, Response};
use hyper::body::Incoming;
use mesh::{
    core::{
        Endpoint, IdentitySource, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery,
        identity::dev::DevCa,
        policy::{RetryOn, RetryPolicy},
    },
    tower::{
        client::{ClientConfig, MeshClient},
        server::{Server, ServerHandle},
    },
};
use tokio::sync::{Notify, Semaphore, watch};

/// One development CA per test binary, for `spiffe://example.org`.
pub fn ca() -> &'static DevCa {
    static CA: std::sync::OnceLock<DevCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| DevCa::new("example.org".parse().unwrap()).unwrap())
}

/// A fixed identity `spiffe://example.org<path>` from the test CA.
pub fn identity(path: &str) -> IdentitySource {
    IdentitySource::fixed(ca().identity(path).unwrap())
}

/// The identity every test backend presents.
pub fn backend_id() -> SpiffeId {
    "spiffe://example.org/backend".parse().unwrap()
}

/// A client of `reviews`, whose endpoints `addrs` present [`backend_id`], with the default retry
/// policy and resets too (a connection cut by loss or a partition is not processed).
pub fn retrying_client(
    addrs: &[SocketAddr],
    identity: IdentitySource,
    config: ClientConfig,
) -> MeshClient<http_body_util::Empty<bytes::Bytes>> {
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoints(addrs.iter().map(|a| Endpoint::new(*a)))
            .build()
            .unwrap(),
    );
    discovery
        .update(&name, |spec| {
            let mut retry = RetryPolicy::default();
            retry.retry_on.push(RetryOn::Reset);
            spec.policies.retry = Some(retry);
        })
        .unwrap();
    MeshClient::builder(discovery, name).identity(identity).config(config).build().unwrap()
}

/// A backend that answers every request with its name, and counts them.
pub struct Backend {
    pub name: &'static str,
    pub handle: ServerHandle,
    hits: watch::Receiver<usize>,
}

impl Backend {
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    pub fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until the backend has answered more than `n` requests in all.
    pub async fn wait_for_hits_above(&self, n: usize) {
        let mut hits = self.hits.clone();
        hits.wait_for(|h| *h > n).await.expect("backend stopped");
    }
}

/// Holds requests until released, and tells when they arrive.
#[derive(Clone)]
pub struct Gate {
    pub arrived: Arc<Semaphore>,
    release: Arc<Notify>,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    pub fn new() -> Self {
        Self { arrived: Arc::new(Semaphore::new(0)), release: Arc::default(), open: Arc::default() }
    }

    pub async fn wait_arrivals(&self, n: u32) {
        self.arrived.acquire_many(n).await.expect("gate closed").forget();
    }

    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        self.release.notify_waiters();
    }
}

pub async fn backend(name: &'static str) -> Backend {
    start(name, None, None).await
}

pub async fn gated_backend(name: &'static str, gate: Gate) -> Backend {
    start(name, Some(gate), None).await
}

/// A backend that answers after `delay` (a slow endpoint).
pub async fn slow_backend(name: &'static str, delay: std::time::Duration) -> Backend {
    start(name, None, Some(delay)).await
}

async fn start(name: &'static str, gate: Option<Gate>, delay: Option<std::time::Duration>) -> Backend {
    let (count, hits) = watch::channel(0usize);
    let count = Arc::new(count);
    let service = tower::service_fn(move |_req: Request<Incoming>| {
        let (count, gate) = (count.clone(), gate.clone());
        async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(gate) = gate {
                let released = gate.release.notified();
                gate.arrived.add_permits(1);
                if !gate.open.load(std::sync::atomic::Ordering::SeqCst) {
                    released.await;
                }
            }
            count.send_modify(|n| *n += 1);
            Ok::<_, Infallible>(Response::new(name.to_string()))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = Server::builder().identity(identity("/backend")).build().expect("server");
    let handle = server.spawn(listener, service).expect("spawn");
    Backend { name, handle, hits }
}

/// A plaintext backend (an explicit opt-out), returning its address.
pub async fn plaintext_backend(name: &'static str) -> SocketAddr {
    let service = tower::service_fn(move |_req: Request<Incoming>| async move {
        Ok::<_, Infallible>(Response::new(name.to_string()))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let handle = Server::builder().plaintext().build().expect("server").spawn(listener, service).expect("spawn");
    let addr = handle.local_addr();
    // Runs until the test process ends.
    std::mem::forget(handle);
    addr
}

/// The path of an example binary: `cargo test` builds the examples next to the test binaries,
/// in target/<profile>/examples.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The fields of a `tracing` span or event, as strings.
pub type Fields = std::collections::BTreeMap<String, String>;

/// Records `tracing` fields into [`Fields`].
pub struct Visitor<'a>(pub &'a mut Fields);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}
