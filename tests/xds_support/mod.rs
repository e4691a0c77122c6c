//! The xDS tests' support: the test control plane, its bootstrap files and the Istio-shaped
//! resources from `mesh_xds::testing` (their one home, shared with mesh-xds's unit tests and the
//! fuzz targets' seeds), plus what only these tests need: a real Envoy ([`envoy`]), a raw HTTP
//! client ([`http`]), and the lookup of the peers we did not write ([`peer`]).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod envoy;
pub mod http;

use std::path::{Path, PathBuf};

pub use mesh_xds::testing::*;

/// The program of a peer, or why there is none: a failure under `MESH_INTEROP=1`, else a skip.
pub fn peer(env: &str, default: &str, what: &str) -> Option<PathBuf> {
    let path =
        std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default));
    if path.exists() {
        return Some(path);
    }
    let why = format!("{what} not found at {} (set {env})", path.display());
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why}; source .ci/xds-interop-setup.sh");
    }
    eprintln!("skipping: {why}; source .ci/xds-interop-setup.sh to run it");
    None
}
