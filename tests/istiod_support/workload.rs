//! Workloads as Istio sees them: certificates for `spiffe://cluster.local/ns/NS/sa/SA` in the
//! files istio-agent writes (`cert-chain.pem`, `key.pem`, `root-cert.pem`), the bootstrap it
//! writes for proxyless gRPC, mesh gRPC servers on their own loopback address, and the Istio YAML
//! that declares them (ServiceEntry + WorkloadEntry).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use mesh::core::{IdentitySource, identity::dev::DevCa};

pub(crate) use crate::grpc_support as grpc;

/// The mesh's CA: trust domain `cluster.local`, as istiod expects. One per test binary.
pub fn ca() -> &'static DevCa {
    static CA: std::sync::OnceLock<DevCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| DevCa::new("cluster.local".parse().unwrap()).unwrap())
}

/// `spiffe://cluster.local/ns/NS/sa/SA`.
pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

/// An identity for service account `sa` of `ns`.
pub fn identity(ns: &str, sa: &str) -> IdentitySource {
    IdentitySource::fixed(ca().identity(&format!("/ns/{ns}/sa/{sa}")).unwrap())
}

/// Writes istio-agent's certificate files for `ns/sa` into `dir`.
pub fn write_certs(dir: &Path, ns: &str, sa: &str) {
    let cert = ca().issue(&format!("/ns/{ns}/sa/{sa}")).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("root-cert.pem"), ca().cert_pem()).unwrap();
}

/// What a node says about itself in its bootstrap.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The pod-like name (`NAME` in `sidecar~IP~NAME.NS~NS.svc.cluster.local`).
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub service_account: String,
    pub labels: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn new(name: &str, ip: IpAddr, service_account: &str) -> Self {
        Self {
            name: name.into(),
            namespace: "default".into(),
            ip,
            service_account: service_account.into(),
            labels: vec![("app".into(), name.into())],
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    /// The node id istio-agent gives a sidecar: `sidecar~IP~NAME.NS~NS.svc.cluster.local`.
    pub fn id(&self) -> String {
        format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", self.ip, self.name, ns = self.namespace)
    }
}

/// Writes the bootstrap istio-agent writes for proxyless gRPC (its `grpcxds` package), pointing at
/// `xds` (the recording proxy in front of istiod), with the workload's certificates in `dir`.
/// Returns the bootstrap's path.
pub fn bootstrap(dir: &Path, xds: SocketAddr, node: &NodeSpec) -> PathBuf {
    let certs = dir.join("certs");
    write_certs(&certs, &node.namespace, &node.service_account);
    let labels: serde_json::Map<String, serde_json::Value> =
        node.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let json = serde_json::json!({
        "xds_servers": [{"server_uri": xds.to_string(), "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {
            "id": node.id(),
            "locality": {},
            "metadata": {
                "GENERATOR": "grpc",
                "NAMESPACE": node.namespace,
                "INSTANCE_IPS": node.ip.to_string(),
                "SERVICE_ACCOUNT": node.service_account,
                "LABELS": labels,
                "CLUSTER_ID": "Kubernetes",
                "ISTIO_VERSION": "1.29.0",
            },
        },
        "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": certs.join("cert-chain.pem"), "private_key_file": certs.join("key.pem"),
            "ca_certificate_file": certs.join("root-cert.pem"), "refresh_interval": "900s"}}},
        "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
    });
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    path
}

/// A mesh gRPC backend (Greeter and Counter) on `ip:0`, presenting `ns/sa`'s identity, answering
/// "hello NAME from VERSION, you are CALLER".
pub async fn backend(ip: IpAddr, sa: &str, version: &'static str, behaviour: grpc::Behaviour) -> grpc::GrpcBackend {
    grpc::serve_on(
        SocketAddr::new(ip, 0),
        identity("default", sa),
        grpc::Options { version, behaviour, ..Default::default() },
    )
    .await
}

/// A loopback address of its own for workload `n` (127.0.0.10 + n): istiod tells workloads
/// apart by address.
pub fn workload_ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + n])
}

/// The ServiceEntry of a mesh-internal gRPC service `HOST` on `port` (named `grpc`), whose
/// endpoints are the WorkloadEntries labelled `app: APP`.
pub fn service_entry(name: &str, host: &str, port: u16, app: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: grpc, protocol: GRPC}}]
  workloadSelector: {{labels: {{app: {app}}}}}
"
    )
}

/// A WorkloadEntry at `addr` for `app`, version `version`, service account `sa`.
pub fn workload_entry(name: &str, app: &str, version: &str, addr: SocketAddr, sa: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: default}}
spec:
  address: {ip}
  ports: {{grpc: {port}}}
  labels: {{app: {app}, version: {version}}}
  serviceAccount: {sa}
",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// Shared handle to the backends of a test, so closures can read them.
pub type Backends = Arc<Vec<grpc::GrpcBackend>>;
