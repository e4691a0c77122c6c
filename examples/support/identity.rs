//! Where the mTLS examples (echo-*, greeter-*) take their identity from: PEM files
//! (`--ca/--cert/--key`, watched) or the SPIFFE Workload API (`--workload-api SOCKET`, or
//! `SPIFFE_ENDPOINT_SOCKET` when neither is given). Shared so all four read the flags alike.
//!
//! The examples use `mesh_spiffe` directly (a dev-dependency); an application enables the facade's
//! `spiffe` feature and writes `mesh::spiffe::WorkloadApi`.

use std::path::PathBuf;

use mesh::core::{Credentials, IdentityFiles, IdentitySource};

/// The identity flags as given.
#[derive(Default)]
pub(crate) struct IdentityFlags {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    workload_api: Option<String>,
}

/// Where the identity comes from.
pub(crate) enum IdentityArgs {
    /// PEM files, watched.
    Files { ca: PathBuf, cert: PathBuf, key: PathBuf },
    /// The Workload API at this socket.
    WorkloadApi(String),
}

impl IdentityFlags {
    /// Takes `flag` (reading its value with `value`) if it is an identity flag.
    pub(crate) fn take(
        &mut self,
        flag: &str,
        value: impl FnOnce(&str) -> Result<String, String>,
    ) -> Result<bool, String> {
        match flag {
            "--ca" => self.ca = Some(PathBuf::from(value(flag)?)),
            "--cert" => self.cert = Some(PathBuf::from(value(flag)?)),
            "--key" => self.key = Some(PathBuf::from(value(flag)?)),
            "--workload-api" => self.workload_api = Some(value(flag)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Files or a socket; `role` ("server", "client") words the errors.
    pub(crate) fn finish(self, role: &str) -> Result<IdentityArgs, String> {
        let files = self.ca.is_some() || self.cert.is_some() || self.key.is_some();
        match (self.workload_api, files) {
            (Some(_), true) => Err("--workload-api replaces --ca/--cert/--key: give one or the other".to_owned()),
            (Some(socket), false) => Ok(IdentityArgs::WorkloadApi(socket)),
            (None, false) if std::env::var_os(mesh_spiffe::SPIFFE_ENDPOINT_SOCKET).is_some() => {
                Ok(IdentityArgs::WorkloadApi(std::env::var(mesh_spiffe::SPIFFE_ENDPOINT_SOCKET).unwrap_or_default()))
            }
            (None, _) => Ok(IdentityArgs::Files {
                ca: self.ca.ok_or("--ca FILE is required (the trust bundle: ca.pem), or --workload-api SOCKET")?,
                cert: self.cert.ok_or_else(|| format!("--cert FILE is required (the {role}'s certificate)"))?,
                key: self.key.ok_or_else(|| format!("--key FILE is required (the {role}'s private key)"))?,
            }),
        }
    }
}

impl IdentityArgs {
    /// The identity source: the files (the bundle's trust domain is the workload's own, as its
    /// certificate names it), or the Workload API's first SVID, awaited up to 10 s.
    pub(crate) async fn load(&self) -> Result<IdentitySource, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Self::Files { ca, cert, key } => {
                let trust_domain = Credentials::from_pem_files(cert, key)?.spiffe_id().trust_domain();
                Ok(IdentitySource::from_files(IdentityFiles::new(cert, key, ca, trust_domain))?)
            }
            Self::WorkloadApi(socket) => Ok(mesh_spiffe::WorkloadApi::new(socket)?.connect().await?),
        }
    }

    /// Where the trust bundle comes from, for the startup lines.
    #[allow(dead_code)] // used by echo-server only
    pub(crate) fn bundle(&self) -> String {
        match self {
            Self::Files { ca, .. } => format!("bundle {}", ca.display()),
            Self::WorkloadApi(socket) => format!("SVID and bundle from the Workload API at {socket}"),
        }
    }
}
