//! mesh and grpcio side by side: two clients of the same istiod (each its own node, both through
//! the recording proxy), calling the same target, so every check compares their outcomes and what
//! each ACKed or NACKed.

use std::{collections::BTreeMap, path::Path, time::Duration};

use envoy_types::pb::google::protobuf::Any;
use mesh::{
    tonic::MeshChannel,
    tower::client::ClientConfig,
    xds::{Bootstrap, XdsDiscovery},
};

use super::{
    ads::{AdsRecorder, Client},
    grpcio::{Calls, Grpcio, Outcome, mesh_round},
    workload::{NodeSpec, bootstrap},
};

/// The node names of the two clients.
pub const MESH: &str = "mesh-client";
pub const GRPCIO: &str = "grpcio-client";

/// How long a client may take to ACK what istiod pushed.
pub const PUSH: Duration = Duration::from_secs(60);

pub struct Pair {
    pub xds: XdsDiscovery,
    pub channel: MeshChannel,
    pub grpcio: Grpcio,
    pub mesh_node: String,
    pub grpcio_node: String,
    pub target: String,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Both clients for `xds:///TARGET`, as service account `sa` of `default`, through `recorder`.
    pub fn start(recorder: &AdsRecorder, python: &Path, target: &str, sa: &str) -> Self {
        Self::start_with(recorder, python, target, sa, |b| b)
    }

    /// [`start`](Self::start) as nodes of their own (`mesh-SUFFIX`, `grpcio-SUFFIX`), so what
    /// istiod sends them is recorded apart from earlier clients'.
    pub fn start_named(recorder: &AdsRecorder, python: &Path, target: &str, sa: &str, suffix: &str) -> Self {
        let names = (format!("mesh-{suffix}"), format!("grpcio-{suffix}"));
        Self::start_as(recorder, python, target, sa, names, |b| b)
    }

    /// [`start`](Self::start), with the discovery builder adjusted by `configure`.
    pub fn start_with(
        recorder: &AdsRecorder,
        python: &Path,
        target: &str,
        sa: &str,
        configure: impl FnOnce(mesh::xds::XdsDiscoveryBuilder) -> mesh::xds::XdsDiscoveryBuilder,
    ) -> Self {
        Self::start_as(recorder, python, target, sa, (MESH.into(), GRPCIO.into()), configure)
    }

    fn start_as(
        recorder: &AdsRecorder,
        python: &Path,
        target: &str,
        sa: &str,
        (mesh_name, grpcio_name): (String, String),
        configure: impl FnOnce(mesh::xds::XdsDiscoveryBuilder) -> mesh::xds::XdsDiscoveryBuilder,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let (mesh_spec, grpcio_spec) = (NodeSpec::new(&mesh_name, ip, sa), NodeSpec::new(&grpcio_name, ip, sa));
        let mesh_dir = dir.path().join("mesh");
        let grpcio_dir = dir.path().join("grpcio");
        std::fs::create_dir_all(&mesh_dir).unwrap();
        std::fs::create_dir_all(&grpcio_dir).unwrap();
        let mesh_bootstrap = bootstrap(&mesh_dir, recorder.addr, &mesh_spec);
        let grpcio_bootstrap = bootstrap(&grpcio_dir, recorder.addr, &grpcio_spec);
        let xds =
            configure(XdsDiscovery::builder(Bootstrap::from_file(&mesh_bootstrap).unwrap()).seed(7)).build().unwrap();
        let service = xds.target(target).unwrap();
        let mut config = ClientConfig::default();
        config.seed = Some(11);
        let channel = MeshChannel::builder(xds.clone(), service)
            .identity(xds.identity("default").unwrap())
            .config(config)
            .build()
            .unwrap();
        let grpcio = Grpcio::spawn(python, target, &grpcio_bootstrap);
        Self {
            xds,
            channel,
            grpcio,
            mesh_node: mesh_spec.id(),
            grpcio_node: grpcio_spec.id(),
            target: target.into(),
            _dir: dir,
        }
    }

    /// The same calls through both: (mesh, grpcio).
    pub async fn round(&mut self, calls: &Calls) -> (Outcome, Outcome) {
        let (mesh, grpcio) = tokio::join!(mesh_round(&self.channel, calls), self.grpcio.round(calls));
        (mesh, grpcio)
    }

    /// After an ACK, calls until a round of 20 satisfies `pred` in each client (at most 50 rounds):
    /// a client may ACK a resource a moment before its picker uses it (grpcio does; mesh applies
    /// a resource before it ACKs). Returns the rounds each needed.
    pub async fn settle(&mut self, what: &str, pred: impl Fn(&Outcome) -> bool) -> (usize, usize) {
        let calls = Calls::new(20).fail_fast().timeout(Duration::from_secs(5));
        let mut needed = (None, None);
        for round in 1..=50 {
            if needed.0.is_none() && pred(&mesh_round(&self.channel, &calls).await) {
                needed.0 = Some(round);
            }
            if needed.1.is_none() && pred(&self.grpcio.round(&calls).await) {
                needed.1 = Some(round);
            }
            if let (Some(m), Some(g)) = needed {
                return (m, g);
            }
        }
        panic!("{what}: not reached in 50 rounds of 20 calls (mesh after {:?}, grpcio after {:?})", needed.0, needed.1);
    }

    /// Waits until both clients answered every response of `type_url` istiod sent and the
    /// resources each last ACKed satisfy `pred`.
    pub async fn wait_acked(
        &self,
        recorder: &AdsRecorder,
        type_url: &str,
        what: &str,
        pred: impl Fn(&BTreeMap<String, Any>) -> bool + Copy,
    ) -> (Client, Client) {
        let check = move |c: &Client| c.settled() && pred(&c.acked(type_url));
        let mesh = recorder.wait(&self.mesh_node, what, PUSH, check).await;
        let grpcio = recorder.wait(&self.grpcio_node, what, PUSH, check).await;
        (mesh, grpcio)
    }

    /// Waits until both clients answered everything istiod sent so far.
    pub async fn wait_settled(&self, recorder: &AdsRecorder) -> (Client, Client) {
        let check = |c: &Client| c.responses() > 0 && c.settled();
        let mesh = recorder.wait(&self.mesh_node, "answering every response", PUSH, check).await;
        let grpcio = recorder.wait(&self.grpcio_node, "answering every response", PUSH, check).await;
        (mesh, grpcio)
    }
}
