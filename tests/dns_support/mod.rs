//! A real DNS server for the DNS discovery tests: dnsmasq (Debian's `dnsmasq-base`), run in the
//! foreground on a free loopback port, answering only from files this helper writes.
//!
//! Address records come from a hosts file that dnsmasq re-reads on SIGHUP; SRV records come from
//! its command line (`--srv-host`), so changing them is a restart on the same port. Names under
//! `mesh.test` that the files do not list get NXDOMAIN (`--local=/mesh.test/`).
//!
//! Without dnsmasq the tests skip with the reason, unless `MESH_INTEROP=1`: then they fail.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use mesh::tower::server::{Server, ServerHandle};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};
use tokio::sync::watch;

/// How long dnsmasq may take to start.
const START: Duration = Duration::from_secs(30);

/// The dnsmasq program, or why there is none (a failure under `MESH_INTEROP=1`).
pub fn dnsmasq_program() -> Option<PathBuf> {
    let found = std::env::var_os("MESH_DNSMASQ").map(PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join("dnsmasq"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = "dnsmasq is not installed (Debian: apt-get install dnsmasq-base)";
        if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
            panic!("MESH_INTEROP=1 but {why}");
        }
        eprintln!("{why}: DNS test not run (set MESH_INTEROP=1 to make this a failure)");
    }
    found
}

/// A running dnsmasq.
pub struct Dnsmasq {
    program: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    srv: Vec<String>,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` (hosts-file lines: `127.0.0.11 reviews-v1.mesh.test`) and `srv`
    /// (`--srv-host` values: `_http._tcp.reviews.mesh.test,a.mesh.test,8080,0,1`). `None` when
    /// dnsmasq is missing (and `MESH_INTEROP` is not 1).
    pub fn start(hosts: &str, srv: &[String]) -> Option<Self> {
        let program = dnsmasq_program()?;
        let dir = tempfile::tempdir().unwrap();
        let mut dnsmasq = Self { program, dir, port: 0, srv: srv.to_vec(), child: None };
        dnsmasq.write_hosts(hosts);
        let mut last = String::new();
        for _ in 0..5 {
            dnsmasq.port = free_port();
            match dnsmasq.spawn() {
                Ok(()) => return Some(dnsmasq),
                // Another process took the port between our probe and dnsmasq's bind.
                Err(why) => last = why,
            }
        }
        panic!("dnsmasq did not start: {last}");
    }

    /// Where to send queries.
    pub fn nameserver(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Writes the address records without telling dnsmasq (for a stopped server).
    pub fn write_hosts(&self, hosts: &str) {
        let tmp = self.dir.path().join("hosts.tmp");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, self.hosts_path()).unwrap();
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new(&self.program);
        command
            .arg("--no-daemon") // foreground, logs to stderr, keeps our user
            .arg("--conf-file=/dev/null")
            .arg(format!("--port={}", self.port))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts"])
            .arg("--local=/mesh.test/")
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .args(["--local-ttl=1", "--cache-size=0"]);
        for srv in &self.srv {
            command.arg(format!("--srv-host={srv}"));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        // dnsmasq says "started" once it listens, or why it could not.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(START) {
                Ok(line) if line.contains("started, version") => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(said.join("\n"));
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
        Ok(())
    }

    /// Replaces the address records and has dnsmasq re-read them (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        self.write_hosts(hosts);
        let pid = self.child.as_ref().expect("dnsmasq is running").id();
        // The shell's own `kill`: no procps needed.
        let status = Command::new("sh").args(["-c", "kill -HUP \"$0\"", &pid.to_string()]).status().unwrap();
        assert!(status.success(), "SIGHUP to dnsmasq failed");
    }

    /// Stops the server: queries go unanswered.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with these SRV records.
    pub fn restart(&mut self, srv: &[String]) {
        self.stop();
        self.srv = srv.to_vec();
        self.spawn().unwrap_or_else(|why| panic!("dnsmasq did not restart on port {}: {why}", self.port));
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that is free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A backend on a given loopback address (a "pod"), answering with its name over mTLS as
/// `spiffe://example.org/backend`, counting its requests.
pub struct Pod {
    pub name: &'static str,
    pub handle: ServerHandle,
    hits: watch::Receiver<usize>,
}

impl Pod {
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    pub fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until the pod has answered more than `n` requests in all.
    pub async fn wait_for_hits_above(&self, n: usize) {
        let mut hits = self.hits.clone();
        hits.wait_for(|h| *h > n).await.expect("pod stopped");
    }
}

/// Starts a pod on `listener`.
pub fn pod(name: &'static str, listener: tokio::net::TcpListener) -> Pod {
    let (count, hits) = watch::channel(0usize);
    let count = std::sync::Arc::new(count);
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let count = count.clone();
        async move {
            count.send_modify(|n| *n += 1);
            Ok::<_, std::convert::Infallible>(http::Response::new(name.to_string()))
        }
    });
    let server = Server::builder().identity(crate::support::identity("/backend")).build().expect("server");
    Pod { name, handle: server.spawn(listener, service).expect("spawn"), hits }
}

/// Listeners on each of `ips`, all on one port (as pods behind a headless Service share theirs).
pub async fn listeners_on_one_port(ips: &[[u8; 4]]) -> (u16, Vec<tokio::net::TcpListener>) {
    'retry: for _ in 0..20 {
        let first = tokio::net::TcpListener::bind(SocketAddr::from((ips[0], 0))).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind(SocketAddr::from((*ip, port))).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'retry,
            }
        }
        return (port, listeners);
    }
    panic!("no port was free on all of {ips:?}");
}
