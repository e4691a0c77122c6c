//! A real SPIRE for the tests: a spire-server (sqlite datastore, join-token node attestation, its
//! own self-signed CA held in memory) and spire-agents (join token, the `unix` workload attestor)
//! on sockets under a temporary directory, driven through their command-line clients as an
//! operator would.
//!
//! The binaries come from `MESH_SPIRE_SERVER` and `MESH_SPIRE_AGENT` (`.ci/peers.sh` builds SPIRE
//! v1.13.3 and exports them). Without them the tests are skipped, unless `MESH_INTEROP=1`, which
//! makes that a failure.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod mesh;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::process::{Child, Command};

/// The trust domain of the test SPIRE.
pub const TRUST_DOMAIN: &str = "spire.test";

/// The longest any step waits before the test fails.
pub const WAIT: Duration = Duration::from_secs(90);

/// The two binaries, or `None` (and a note) when the test is to be skipped.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    let found = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file());
    match (found("MESH_SPIRE_SERVER"), found("MESH_SPIRE_AGENT")) {
        (Some(server), Some(agent)) => Some((server, agent)),
        _ if std::env::var("MESH_INTEROP").as_deref() == Ok("1") => panic!(
            "MESH_INTEROP=1 but MESH_SPIRE_SERVER and MESH_SPIRE_AGENT do not both name a file \
             (`source .ci/peers.sh` builds SPIRE and exports them)"
        ),
        _ => {
            eprintln!(
                "MESH_SPIRE_SERVER / MESH_SPIRE_AGENT not set: SPIRE test not run (MESH_INTEROP=1 makes this a failure)"
            );
            None
        }
    }
}

/// A running spire-server and its agents; all are killed on drop.
pub struct Spire {
    dir: tempfile::TempDir,
    server_bin: PathBuf,
    agent_bin: PathBuf,
    server: Child,
    port: u16,
    agents: Vec<Agent>,
}

/// A spire-agent.
pub struct Agent {
    dir: PathBuf,
    child: Option<Child>,
    token: String,
}

impl Agent {
    /// Its Workload API socket, as `SPIFFE_ENDPOINT_SOCKET` names it.
    pub fn socket(&self) -> String {
        format!("unix:{}", self.dir.join("api.sock").display())
    }

    /// The node alias its join tokens map it to: the parent of the entries it serves, the same
    /// across re-attestations.
    pub fn id(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/agent/{}", self.dir.file_name().unwrap().to_string_lossy())
    }
}

/// The uid the `unix` attestor sees for this process (and its children).
pub fn uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Spire {
    /// Starts a spire-server and waits until it answers; `None` when SPIRE is not available
    /// (and `MESH_INTEROP` is not 1).
    pub async fn start() -> Option<Self> {
        let (server_bin, agent_bin) = binaries()?;
        let dir = tempfile::Builder::new().prefix("spire").tempdir().unwrap();
        let port = free_port();
        let root = dir.path();
        std::fs::create_dir_all(root.join("server")).unwrap();
        let config = format!(
            r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{root}/server/api.sock"
    trust_domain = "{TRUST_DOMAIN}"
    data_dir = "{root}/server"
    log_level = "INFO"
    ca_key_type = "ec-p256"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{root}/server/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data = {{}}
    }}
}}
"#,
            root = root.display()
        );
        std::fs::write(root.join("server.conf"), config).unwrap();
        let server = spawn(
            &server_bin,
            &["run", "-config", &root.join("server.conf").display().to_string()],
            &root.join("server.log"),
        );
        let spire = Self { dir, server_bin, agent_bin, server, port, agents: Vec::new() };
        spire.until("spire-server healthy", || async { spire.server_cli(&["healthcheck"]).await.is_ok() }).await;
        Some(spire)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to a file in the test's directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.root().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Runs `spire-server ARGS -socketPath ...`; its stdout, or its stderr as the error.
    pub async fn server_cli(&self, args: &[&str]) -> Result<String, String> {
        let socket = self.root().join("server/api.sock").display().to_string();
        let mut command = Command::new(&self.server_bin);
        command.args(args).args(["-socketPath", &socket]);
        run(command).await
    }

    /// Starts an agent attested with a fresh join token; returns its index.
    pub async fn add_agent(&mut self) -> usize {
        let n = self.agents.len();
        let dir = self.root().join(format!("agent-{n}"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            r#"agent {{
    data_dir = "{dir}/data"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{dir}/api.sock"
    insecure_bootstrap = true
    trust_domain = "{TRUST_DOMAIN}"
    experimental {{
        sync_interval = "1s"
    }}
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{dir}/data"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = true
        }}
    }}
}}
"#,
            dir = dir.display(),
            port = self.port
        );
        std::fs::write(dir.join("agent.conf"), config).unwrap();
        self.agents.push(Agent { dir, child: None, token: String::new() });
        self.start_agent(n).await;
        n
    }

    /// A join token that maps the agent using it to agent `n`'s alias.
    async fn token(&self, n: usize) -> String {
        let alias = self.agents[n].id();
        let out = self.server_cli(&["token", "generate", "-ttl", "600", "-spiffeID", &alias]).await.unwrap();
        let token = out.lines().find_map(|l| l.strip_prefix("Token: "));
        token.unwrap_or_else(|| panic!("token generate printed {out:?}")).trim().to_owned()
    }

    pub fn agent(&self, n: usize) -> &Agent {
        &self.agents[n]
    }

    /// Starts agent `n` with a fresh join token (tokens are single-use: a restarted agent
    /// attests again, and maps to the same alias).
    async fn start_agent(&mut self, n: usize) {
        self.agents[n].token = self.token(n).await;
        let agent = &self.agents[n];
        let config = agent.dir.join("agent.conf").display().to_string();
        let args = ["run", "-config", &config, "-joinToken", &agent.token];
        let child = spawn(&self.agent_bin, &args, &agent.dir.join("agent.log"));
        self.agents[n].child = Some(child);
        let socket = self.agents[n].dir.join("api.sock").display().to_string();
        let agent_bin = self.agent_bin.clone();
        self.until("spire-agent healthy", || {
            let (agent_bin, socket) = (agent_bin.clone(), socket.clone());
            async move {
                let mut command = Command::new(agent_bin);
                command.args(["healthcheck", "-socketPath", &socket]);
                run(command).await.is_ok()
            }
        })
        .await;
    }

    /// Kills agent `n` (SIGKILL: no goodbye on the streams).
    pub async fn kill_agent(&mut self, n: usize) {
        if let Some(mut child) = self.agents[n].child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts agent `n` again.
    pub async fn restart_agent(&mut self, n: usize) {
        self.start_agent(n).await;
    }

    /// A registration entry: `spiffe_id` for workloads of this uid under agent `n`, with SVIDs
    /// living `ttl`. Returns the entry ID.
    pub async fn entry(&self, n: usize, spiffe_id: &str, ttl: Duration, extra: &[&str]) -> String {
        self.entry_selecting(n, spiffe_id, &format!("unix:uid:{}", uid()), ttl, extra).await
    }

    /// A registration entry for workloads `selector` matches (`unix:path:/bin/x`).
    pub async fn entry_selecting(
        &self,
        n: usize,
        spiffe_id: &str,
        selector: &str,
        ttl: Duration,
        extra: &[&str],
    ) -> String {
        let parent = self.agents[n].id();
        let ttl = ttl.as_secs().to_string();
        let mut args = vec!["entry", "create", "-parentID", &parent, "-spiffeID", spiffe_id, "-selector", selector];
        args.extend(["-x509SVIDTTL", &ttl]);
        args.extend(extra);
        let out = self.server_cli(&args).await.unwrap_or_else(|e| panic!("entry create {spiffe_id}: {e}"));
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Entry ID").map(|v| v.trim_start_matches([' ', ':']).trim().to_owned()))
            .unwrap_or_else(|| panic!("no entry ID in {out:?}"))
    }

    /// The IDs of the active, prepared and old local X.509 authorities (`localauthority x509 show`).
    pub async fn authorities(&self) -> Authorities {
        let out = self.server_cli(&["localauthority", "x509", "show"]).await.unwrap();
        let mut found = Authorities::default();
        let mut section = "";
        for line in out.lines() {
            let line = line.trim();
            if line.ends_with("X.509 authority:") {
                section = line;
            } else if let Some(id) = line.strip_prefix("Authority ID: ") {
                let slot = match section {
                    s if s.starts_with("Active") => &mut found.active,
                    s if s.starts_with("Prepared") => &mut found.prepared,
                    _ => &mut found.old,
                };
                *slot = Some(id.trim().to_owned());
            }
        }
        found
    }

    /// Waits (up to [`WAIT`]) until `condition` holds, polling every 100 ms; fails with the logs.
    pub async fn until<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let done = tokio::time::timeout(WAIT, async {
            while !condition().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if done.is_err() {
            panic!("{what}: not within {WAIT:?}\n{}", self.logs());
        }
    }

    /// The tails of the server's and the agents' logs.
    pub fn logs(&self) -> String {
        let mut text = format!("--- spire-server log:\n{}\n", tail(&self.root().join("server.log")));
        for (n, agent) in self.agents.iter().enumerate() {
            text.push_str(&format!("--- spire-agent {n} log:\n{}\n", tail(&agent.dir.join("agent.log"))));
        }
        text
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Authorities {
    pub active: Option<String>,
    pub prepared: Option<String>,
    pub old: Option<String>,
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

async fn run(mut command: Command) -> Result<String, String> {
    let out = tokio::time::timeout(Duration::from_secs(30), command.stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(child) = &mut agent.child {
                let _ = child.start_kill();
            }
        }
        let _ = self.server.start_kill();
    }
}

/// Callers running in a loop until stopped, counting calls and failures.
pub struct Load {
    pub name: &'static str,
    calls: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] did.
#[derive(Debug)]
pub struct LoadReport {
    pub name: &'static str,
    pub calls: u64,
    pub failures: u64,
    pub errors: Vec<String>,
}

impl Load {
    /// `concurrency` tasks each calling `call` in a loop (paced by 2 ms, so the SPIRE processes
    /// keep some of the machine).
    pub fn start<F, Fut>(name: &'static str, concurrency: usize, call: F) -> Self
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send,
    {
        let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (errors, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let tasks = (0..concurrency)
            .map(|_| {
                let (call, calls, failures, errors, stop) =
                    (call.clone(), calls.clone(), failures.clone(), errors.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        match call().await {
                            Ok(()) => calls.fetch_add(1, Ordering::SeqCst),
                            Err(error) => {
                                errors.lock().unwrap().push(error);
                                failures.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Self { name, calls, failures, errors, stop, tasks }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits (up to [`WAIT`]) for `n` more successful calls.
    pub async fn more(&self, n: u64) {
        let target = self.calls() + n;
        let done = tokio::time::timeout(WAIT, async {
            while self.calls() < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "{}: {} calls, not {target}; failures: {:?}",
            self.name,
            self.calls(),
            self.errors.lock().unwrap().iter().take(5).collect::<Vec<_>>()
        );
    }

    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        LoadReport { name: self.name, calls: self.calls(), failures: self.failures.load(Ordering::SeqCst), errors }
    }
}
