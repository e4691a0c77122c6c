//! A real istiod (`pilot-discovery`) for tests/istiod_*.rs, run without Kubernetes: no registry
//! (`--registries=`), configuration from a folder of Istio YAML (`--configDir`), plaintext xDS on
//! loopback. One per test binary; the configuration is edited live on disk.
//!
//! Between istiod and its clients sits a recording ADS proxy (`ads.rs`), so every check can
//! wait for a client's ACK, read its NACKs and list what istiod sent. `workload.rs` writes the
//! certificates (`spiffe://cluster.local/ns/NS/sa/SA`) and the bootstrap istio-agent writes for
//! proxyless gRPC; `grpcio.rs` drives grpcio's own xDS client.
//!
//! `MESH_ISTIOD` names the binary (`.ci/peers.sh` exports it). Without it the tests skip with the
//! reason, unless `MESH_INTEROP=1`: then they fail.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod ads;
pub mod grpcio;
pub mod pair;
pub mod workload;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A peer's program from `env`, or why there is none (a failure under `MESH_INTEROP=1`).
pub fn peer(env: &str, what: &str, setup: &str) -> Option<PathBuf> {
    match std::env::var_os(env).map(PathBuf::from) {
        Some(path) if path.exists() => return Some(path),
        Some(path) => report_missing(&format!("{what} not found at {} ({env})", path.display()), setup),
        None => report_missing(&format!("{env} is not set ({what})"), setup),
    }
    None
}

fn report_missing(why: &str, setup: &str) {
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why}; {setup}");
    }
    eprintln!("skipping: {why}; {setup} to run it");
}

/// istiod's binary and grpcio's Python, or `None` (skip) when either is missing.
pub fn peers() -> Option<(PathBuf, PathBuf)> {
    let istiod = peer("MESH_ISTIOD", "istiod (pilot-discovery)", "source .ci/peers.sh");
    let python = peer("MESH_XDS_PYTHON", "a python with grpcio", "source .ci/xds-interop-setup.sh");
    Some((istiod?, python?))
}

/// A free port on loopback (the kernel's pick; istiod is told it by flag).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running istiod.
pub struct Istiod {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    /// Plaintext xDS (`--grpcAddr`).
    pub grpc: SocketAddr,
    /// HTTP: `/ready`, `/debug/*` (`--httpAddr`).
    pub http: SocketAddr,
    /// The flags it was started with, for the report.
    pub args: Vec<String>,
}

impl Istiod {
    /// The flags that run istiod without Kubernetes.
    fn flags(dir: &Path, grpc: SocketAddr, http: SocketAddr, monitoring: SocketAddr) -> Vec<String> {
        vec![
            "discovery".into(),
            "--registries=".into(),
            format!("--configDir={}", dir.join("config").display()),
            format!("--meshConfig={}", dir.join("mesh.yaml").display()),
            format!("--networksConfig={}", dir.join("networks.yaml").display()),
            format!("--grpcAddr={grpc}"),
            format!("--httpAddr={http}"),
            format!("--monitoringAddr={monitoring}"),
            "--secureGRPCAddr=".into(),
            "--httpsAddr=".into(),
            "--domain=cluster.local".into(),
            "--ctrlz_address=127.0.0.1".into(),
            "--ctrlz_port=0".into(),
            "--log_output_level=default:info".into(),
        ]
    }

    /// Starts istiod with the YAML files of `initial` (name, content) and waits until it is ready.
    pub async fn start(binary: &Path, initial: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), "trustDomain: cluster.local\nrootNamespace: istio-system\n")
            .unwrap();
        std::fs::write(dir.path().join("networks.yaml"), "networks: {}\n").unwrap();
        for (name, yaml) in initial {
            std::fs::write(dir.path().join("config").join(format!("{name}.yaml")), yaml).unwrap();
        }
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let (grpc, http, monitoring) = (addr(free_port()), addr(free_port()), addr(free_port()));
        let args = Self::flags(dir.path(), grpc, http, monitoring);
        let mut child = tokio::process::Command::new(binary)
            .args(&args)
            .current_dir(dir.path())
            .env("POD_NAMESPACE", "istio-system")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let log_path = dir.path().join("istiod.log");
        for stream in [
            Box::pin(child.stdout.take().unwrap()) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
            Box::pin(child.stderr.take().unwrap()),
        ] {
            let (ready_tx, log_path) = (ready_tx.clone(), log_path.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // istiod's own readiness (`/ready`) waits for the sidecar injector and the
                    // config validation webhook, which only exist with Kubernetes; this line is
                    // where its xDS server starts serving a synced configuration.
                    if line.contains("marking server ready") {
                        ready_tx.send_replace(true);
                    }
                    let _ = std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes());
                }
            });
        }
        let mut istiod = Self { child, dir, grpc, http, args };
        tokio::select! {
            waited = tokio::time::timeout(Duration::from_secs(120), ready.wait_for(|r| *r)) => {
                assert!(waited.is_ok(), "istiod not ready in 120 s; its log:\n{}", istiod.log_tail(60));
            }
            status = istiod.child.wait() => {
                panic!("istiod exited ({status:?}) before it was ready; its log:\n{}", istiod.log_tail(60));
            }
        }
        istiod
    }

    /// The last `lines` lines of istiod's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("istiod.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The configuration folder.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Writes (or replaces) `NAME.yaml` atomically (istiod reloads the folder on a change, and
    /// would skip a half-written file).
    pub fn apply(&self, name: &str, yaml: &str) {
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_dir().join(format!("{name}.yaml"))).unwrap();
    }

    /// Removes `NAME.yaml`.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.config_dir().join(format!("{name}.yaml")));
    }

    /// Removes every file of the configuration folder.
    pub fn clear(&self) {
        for entry in std::fs::read_dir(self.config_dir()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }

    /// GETs one of istiod's debug pages (`/debug/syncz`, `/debug/configz`, ...).
    pub async fn debug(&self, path: &str) -> String {
        http_get(self.http, path).await.map(|(_, body)| body).unwrap_or_default()
    }

    /// Stops istiod (also done on drop).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A minimal HTTP/1.0 GET: (status, body), or `None` when nothing answers.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: istiod\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}
