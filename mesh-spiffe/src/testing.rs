//! A fake Workload API server of ours over a real Unix socket, for what a real SPIRE agent cannot
//! be made to show on cue (several SVIDs, a malformed update, a cut at a chosen moment). The SPIRE
//! tests (`tests/spire_*.rs` of the `mesh` package) cross-check the same behaviour against a real
//! agent.
#![allow(clippy::unwrap_used, unreachable_pub)]

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::Stream;
use mesh_core::identity::dev::{DevCa, DevCert};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::watch;

/// The Workload API's messages and server, generated from `proto/workload.proto` and checked in
/// (see the test at the bottom).
#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications, rust_2018_idioms)]
pub mod pb {
    include!("testing/workload.rs");
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The DER of every certificate in a PEM text, concatenated (as the Workload API sends chains
/// and bundles).
pub fn der_certs(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).flat_map(|c| c.unwrap().to_vec()).collect()
}

/// The PKCS#8 DER of a PEM private key.
pub fn der_key(pem: &str) -> Vec<u8> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap().secret_der().to_vec()
}

/// One SVID entry: the certificate, and the bundle of its trust domain.
pub fn svid(cert: &DevCert, spiffe_id: &str, ca: &DevCa) -> pb::X509svid {
    pb::X509svid {
        spiffe_id: spiffe_id.to_owned(),
        x509_svid: der_certs(&cert.cert_pem),
        x509_svid_key: der_key(&cert.key_pem),
        bundle: der_certs(ca.cert_pem()),
        hint: String::new(),
    }
}

/// A response with these SVIDs and these federated trust domains' bundles.
pub fn response(svids: Vec<pb::X509svid>, federated: &[&DevCa]) -> pb::X509svidResponse {
    pb::X509svidResponse {
        svids,
        federated_bundles: federated
            .iter()
            .map(|ca| (ca.trust_domain().as_str().to_owned(), der_certs(ca.cert_pem())))
            .collect(),
        ..Default::default()
    }
}

/// What the fake agent answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `PermissionDenied: no identity issued`, as SPIRE answers a workload no entry matches.
    Deny,
    /// This response, now and to every stream opened later.
    Send(pb::X509svidResponse),
}

#[derive(Clone)]
struct Service {
    reply: watch::Receiver<Reply>,
    cut: watch::Receiver<u64>,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    denied: Arc<AtomicUsize>,
}

/// Counts a stream open while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<pb::X509svidResponse, tonic::Status>> + Send>>;

impl Service {
    fn stream(&self) -> Responses {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.opened.fetch_add(1, Ordering::SeqCst);
        let state = (self.reply.clone(), self.cut.clone(), true, false, Open(self.open.clone()));
        Box::pin(futures_util::stream::unfold(state, |(mut reply, mut cut, first, done, open)| async move {
            if done {
                return None;
            }
            if !first {
                tokio::select! {
                    changed = reply.changed() => changed.ok()?,
                    _ = cut.changed() => {
                        let status = tonic::Status::unavailable("the agent stopped");
                        return Some((Err(status), (reply, cut, false, true, open)));
                    }
                }
            }
            let item = match reply.borrow_and_update().clone() {
                Reply::Send(response) => Ok(response),
                Reply::Deny => Err(tonic::Status::permission_denied("no identity issued")),
            };
            let done = item.is_err();
            Some((item, (reply, cut, false, done, open)))
        }))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Responses;
    type FetchX509BundlesStream = Pin<Box<dyn Stream<Item = Result<pb::X509BundlesResponse, tonic::Status>> + Send>>;
    type FetchJWTBundlesStream = Pin<Box<dyn Stream<Item = Result<pb::JwtBundlesResponse, tonic::Status>> + Send>>;

    async fn fetch_x509svid(
        &self,
        request: tonic::Request<pb::X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        // The Workload API spec: requests without this header are refused.
        if request.metadata().get("workload.spiffe.io").is_none_or(|v| v != "true") {
            return Err(tonic::Status::invalid_argument("security header missing from request"));
        }
        if matches!(*self.reply.borrow(), Reply::Deny) {
            self.denied.fetch_add(1, Ordering::SeqCst);
            return Err(tonic::Status::permission_denied("no identity issued"));
        }
        Ok(tonic::Response::new(self.stream()))
    }

    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<pb::X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: tonic::Request<pb::JwtsvidRequest>,
    ) -> Result<tonic::Response<pb::JwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: tonic::Request<pb::JwtBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }

    async fn validate_jwtsvid(
        &self,
        _: tonic::Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<pb::ValidateJwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the fake"))
    }
}

/// A fake agent listening on a Unix socket in a temporary directory.
pub struct FakeAgent {
    dir: tempfile::TempDir,
    reply: watch::Sender<Reply>,
    cut: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    denied: Arc<AtomicUsize>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl FakeAgent {
    /// Starts listening, answering `reply`.
    pub fn start(reply: Reply) -> Self {
        let (reply, _) = watch::channel(reply);
        let (cut, _) = watch::channel(0);
        let dir = tempfile::tempdir().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let (opened, denied) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut agent = Self { dir, reply, cut, open, opened, denied, server: None };
        agent.restart();
        agent
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The socket, as `SPIFFE_ENDPOINT_SOCKET` would name it.
    pub fn socket(&self) -> String {
        format!("unix:{}", self.path().display())
    }

    /// Answers `reply` from now on, on open streams and new ones.
    pub fn send(&self, reply: Reply) {
        self.reply.send_replace(reply);
    }

    /// Cuts every open stream with `UNAVAILABLE` and stops listening (the socket file goes).
    pub fn stop(&mut self) {
        self.cut.send_modify(|n| *n += 1);
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let _ = std::fs::remove_file(self.path());
    }

    /// Listens again on the same socket.
    pub fn restart(&mut self) {
        let listener = tokio::net::UnixListener::bind(self.path()).unwrap();
        let service = Service {
            reply: self.reply.subscribe(),
            cut: self.cut.subscribe(),
            open: self.open.clone(),
            opened: self.opened.clone(),
            denied: self.denied.clone(),
        };
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        self.server = Some(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        }));
    }

    /// Streams opened so far.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s, then panics) until `n` streams are open.
    pub async fn wait_open(&self, n: usize) {
        wait_until(&format!("{n} streams open"), || self.open.load(Ordering::SeqCst) == n).await;
    }

    /// Waits (up to 10 s, then panics) until `n` requests were denied.
    pub async fn wait_denied(&self, n: usize) {
        wait_until(&format!("{n} requests denied"), || self.denied.load(Ordering::SeqCst) >= n).await;
    }
}

/// Polls `condition` every 5 ms for up to 10 s; panics then.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never {what}");
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The checked-in code is what `proto/workload.proto` generates; `MESH_REGENERATE_PROTOS=1`
/// rewrites it instead.
#[test]
fn checked_in_code_matches_the_proto() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = protox::compile([root.join("proto/workload.proto")], [root.join("proto")]).unwrap();
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .out_dir(out.path())
        .compile_fds(files)
        .unwrap();
    // The proto has no package: its code lands in `_.rs`.
    let fresh = std::fs::read_to_string(out.path().join("_.rs")).unwrap();
    let path = root.join("src/testing/workload.rs");
    if std::env::var_os("MESH_REGENERATE_PROTOS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(current == fresh, "{} is stale: run `MESH_REGENERATE_PROTOS=1 cargo test -p mesh-spiffe`", path.display());
}
