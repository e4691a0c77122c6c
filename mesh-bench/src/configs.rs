//! The configurations compared: what sits between the load generator and the hello handler (or,
//! for the gRPC pair, the Greeter's echo handler).

use std::{fmt, str::FromStr};

/// One path a request can take from the load generator to the hello handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Config {
    /// hyper-util client -> hyper server, plaintext: the physical limit of the stack.
    Bare,
    /// The same with hand-wired tokio-rustls mutual TLS on both sides (TLS 1.3, ring, no
    /// session resumption, like mesh).
    BareMtls,
    /// mesh's whole client stack -> mesh's server with authorization.
    Mesh,
    /// plaintext client -> nginx -> mTLS -> nginx -> plaintext hyper server.
    SidecarNginx,
    /// plaintext client -> haproxy -> mTLS (h2) -> haproxy -> plaintext hyper server.
    SidecarHaproxy,
    /// plaintext client -> Envoy -> SPIFFE mTLS (h2) -> Envoy -> plaintext hyper server: Istio's
    /// data plane, one worker each.
    SidecarEnvoy,
    /// tonic's `Channel` over hand-wired rustls mTLS -> tonic's `Server` behind a hand-wired
    /// rustls acceptor: plain tonic, the gRPC anchor.
    GrpcTonic,
    /// `mesh_tonic::MeshChannel` -> `mesh_tonic::GrpcServer`, set up like `mesh`.
    GrpcMesh,
}

impl Config {
    /// Every configuration, in the order runs interleave them.
    pub(crate) const ALL: [Config; 8] = [
        Config::Bare,
        Config::BareMtls,
        Config::Mesh,
        Config::SidecarNginx,
        Config::SidecarHaproxy,
        Config::SidecarEnvoy,
        Config::GrpcTonic,
        Config::GrpcMesh,
    ];

    /// The name used on the command line and in `summary.json`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::BareMtls => "bare-mtls",
            Config::Mesh => "mesh",
            Config::SidecarNginx => "sidecar-nginx",
            Config::SidecarHaproxy => "sidecar-haproxy",
            Config::SidecarEnvoy => "sidecar-envoy",
            Config::GrpcTonic => "grpc-tonic",
            Config::GrpcMesh => "grpc-mesh",
        }
    }

    /// Whether a proxy pair sits on the path.
    pub(crate) fn is_sidecar(self) -> bool {
        matches!(self, Config::SidecarNginx | Config::SidecarHaproxy | Config::SidecarEnvoy)
    }

    /// Whether requests are gRPC calls (the `grpc:` workloads) rather than `GET /hello`.
    pub(crate) fn is_grpc(self) -> bool {
        matches!(self, Config::GrpcTonic | Config::GrpcMesh)
    }

    /// Whether the client opens one HTTP/2 connection per server endpoint (mesh's pool), so
    /// fewer client pools give the same number of connections.
    pub(crate) fn connection_per_endpoint(self) -> bool {
        matches!(self, Config::Mesh | Config::GrpcMesh)
    }

    /// Whether the client and server run mesh (and install its telemetry).
    pub(crate) fn is_mesh(self) -> bool {
        matches!(self, Config::Mesh | Config::GrpcMesh)
    }

    /// What the server process behind the path serves (sidecars front a bare plaintext server).
    pub(crate) fn server(self) -> Config {
        if self.is_sidecar() { Config::Bare } else { self }
    }

    /// Whether "one new connection per request" measures mutual TLS handshakes on this path
    /// (sidecars keep their mTLS connections pooled, so there it would not).
    pub(crate) fn handshakes(self) -> bool {
        matches!(self, Config::BareMtls | Config::Mesh)
    }
}

/// A configuration name that does not exist.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown configuration {0:?} (bare, bare-mtls, mesh, sidecar-nginx, sidecar-haproxy, sidecar-envoy, grpc-tonic, grpc-mesh)"
)]
pub(crate) struct UnknownConfig(String);

impl FromStr for Config {
    type Err = UnknownConfig;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| UnknownConfig(s.to_owned()))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
