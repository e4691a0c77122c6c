//! Real network faults for the `netfault_*` tests: backends (and the xDS control plane) live in
//! network namespaces of their own, joined to the test's namespace by veth pairs, and faults are
//! kernel rules inside those namespaces: iptables `DROP` (a blackholed host), `REJECT` (a refused
//! port) and random drop (`-m statistic`: packet loss). Latency and jitter come from [`Relay`], a
//! seeded delaying TCP relay in the test process (`tc netem` needs the `sch_netem` module, which
//! CI's kernel lacks).
//!
//! Needs root, `ip` (iproute2) and `iptables`. Where they are missing the tests skip, saying why,
//! unless `MESH_NETFAULTS=1`, where they fail. Everything a test creates is named
//! `mnf-<pid>-<n>` (namespaces) or `mnf<pid>r<n>` (links) and is deleted when the [`Lab`] is
//! dropped, failed test included; a [`Lab`] first removes what a crashed run left behind.
//! Addresses are `198.18.<n>.1` (the test's side) and `198.18.<n>.2` (the namespace), from the
//! range reserved for network tests (RFC 2544); no traffic leaves the machine.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, watch},
};

const PREFIX: &str = "mnf";

/// Runs a command; panics with its output when it fails.
fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn succeeds(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().is_ok_and(|o| o.status.success())
}

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().next() == Some("0"))));
    if uid != Some(true) {
        return Some("not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        if !succeeds(&["sh", "-c", &format!("command -v {tool}")]) {
            return Some(format!("`{tool}` not found (Debian package {package})"));
        }
    }
    let probe = format!("{PREFIX}-{}-probe", std::process::id());
    if !succeeds(&["ip", "netns", "add", &probe]) {
        return Some("`ip netns add` is refused here (no network namespaces)".into());
    }
    let statistic = succeeds(&[
        "ip",
        "netns",
        "exec",
        &probe,
        "iptables",
        "-A",
        "INPUT",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.5",
        "-j",
        "DROP",
    ]);
    let _ = succeeds(&["ip", "netns", "del", &probe]);
    if !statistic {
        return Some("iptables cannot use `-m statistic` in a namespace".into());
    }
    None
}

/// Deletes the namespaces of runs whose process is gone (a crashed run's leftovers; deleting a
/// namespace deletes its end of the veth pair, and so the pair).
fn sweep() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(&format!("{PREFIX}-")).and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = succeeds(&["ip", "netns", "del", name]);
        }
    }
}

/// The namespaces of one test; dropped, it deletes them all.
pub struct Lab {
    hosts: Mutex<Vec<String>>,
}

impl Lab {
    /// A lab, or `None` (with the reason printed) where the kernel or the tools are missing and
    /// `MESH_NETFAULTS` is not `1`.
    pub fn new(test: &str) -> Option<Lab> {
        static MISSING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if let Some(reason) = MISSING.get_or_init(missing) {
            assert!(
                std::env::var("MESH_NETFAULTS").as_deref() != Ok("1"),
                "{test}: MESH_NETFAULTS=1 but network faults cannot be injected here: {reason}"
            );
            eprintln!("{test}: skipped: {reason} (set MESH_NETFAULTS=1 to make this a failure)");
            return None;
        }
        sweep();
        Some(Lab { hosts: Mutex::default() })
    }

    /// A new host: a namespace with a veth pair to this one, `198.18.<n>.2` inside.
    pub fn host(&self) -> Host {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 255, "too many hosts in one test process");
        self.make(n)
    }

    /// Deletes `host` at once (its kernel forgets every connection, no reset is sent) and makes
    /// a new, empty host with the same names and address: a machine that died and was replaced.
    pub fn replace(&self, host: Host) -> Host {
        // The link first (at once, where the namespace's teardown is asynchronous): nothing of the
        // old host can reach the wire again.
        run(&["ip", "link", "del", &format!("{PREFIX}{}r{}", std::process::id(), host.n)]);
        run(&["ip", "netns", "del", &host.ns]);
        self.hosts.lock().unwrap().retain(|ns| *ns != host.ns);
        self.make(host.n)
    }

    fn make(&self, n: u32) -> Host {
        let pid = std::process::id();
        let ns = format!("{PREFIX}-{pid}-{n}");
        let (outer, inner) = (format!("{PREFIX}{pid}r{n}"), format!("{PREFIX}{pid}n{n}"));
        let (gateway, addr) = (Ipv4Addr::new(198, 18, n as u8, 1), Ipv4Addr::new(198, 18, n as u8, 2));
        run(&["ip", "netns", "add", &ns]);
        self.hosts.lock().unwrap().push(ns.clone());
        run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns]);
        run(&["ip", "addr", "add", &format!("{gateway}/24"), "dev", &outer]);
        run(&["ip", "link", "set", &outer, "up"]);
        run(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inner]);
        run(&["ip", "-n", &ns, "link", "set", &inner, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // Both ends carry traffic before the host is used: a SYN sent earlier is lost, and
        // retransmitted only a second later.
        let up = |args: &[&str]| {
            Command::new("ip").args(args).output().is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                text.contains("state UP") && !text.contains("NO-CARRIER")
            })
        };
        let ready = std::time::Instant::now();
        while !(up(&["link", "show", &outer]) && up(&["-n", &ns, "link", "show", &inner])) {
            assert!(ready.elapsed() < Duration::from_secs(30), "the veth pair {outer}/{inner} never came up");
            std::thread::sleep(Duration::from_millis(10));
        }
        Host { ns, inner, addr, n }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            if !succeeds(&["ip", "netns", "del", &ns]) {
                eprintln!("could not delete network namespace {ns}");
            }
        }
    }
}

/// A host in its own namespace, and the faults its link can be given.
pub struct Host {
    pub ns: String,
    inner: String,
    pub addr: Ipv4Addr,
    n: u32,
}

impl Host {
    /// A listener on this host's address (port 0: any), made inside its namespace, for the test's
    /// own runtime: the socket stays in the namespace whichever thread uses it.
    pub fn listen(&self) -> tokio::net::TcpListener {
        self.listen_on(0)
    }

    /// A listener on `port` of this host's address.
    pub fn listen_on(&self, port: u16) -> tokio::net::TcpListener {
        let (path, addr) = (format!("/var/run/netns/{}", self.ns), SocketAddr::from((self.addr, port)));
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        })
        .join()
        .unwrap();
        tokio::net::TcpListener::from_std(listener).unwrap()
    }

    fn iptables(&self, args: &[&str]) {
        let mut command = vec!["ip", "netns", "exec", &self.ns, "iptables", "-w"];
        command.extend_from_slice(args);
        run(&command);
    }

    /// Drops every packet to and from the host: connections stay open, nothing gets through.
    pub fn blackhole(&self) {
        self.iptables(&["-A", "INPUT", "-i", &self.inner, "-j", "DROP"]);
        self.iptables(&["-A", "OUTPUT", "-o", &self.inner, "-j", "DROP"]);
    }

    /// Drops each packet, both ways, with probability `p`.
    pub fn loss(&self, p: f64) {
        let p = format!("{p}");
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let args =
                [chain, dir, &self.inner, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"];
            self.iptables(&[&["-A"][..], &args[..]].concat());
        }
    }

    /// Refuses new TCP connections to `port` with a reset.
    pub fn reject(&self, port: u16) {
        let port = port.to_string();
        self.iptables(&[
            "-A",
            "INPUT",
            "-i",
            &self.inner,
            "-p",
            "tcp",
            "--dport",
            &port,
            "--syn",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]);
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        self.iptables(&["-F"]);
    }
}

/// A backend answering every request with its name and counting them.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    hits: watch::Receiver<usize>,
    _handle: mesh::tower::server::ServerHandle,
}

impl Backend {
    pub fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until the backend has answered more than `n` requests in all.
    pub async fn wait_for_hits_above(&self, n: usize) {
        let mut hits = self.hits.clone();
        hits.wait_for(|h| *h > n).await.expect("backend stopped");
    }
}

/// A mesh server (mTLS, `identity`) on `listener`, answering with `name`.
pub fn backend(name: &'static str, listener: tokio::net::TcpListener, identity: mesh::core::IdentitySource) -> Backend {
    let (count, hits) = watch::channel(0usize);
    let count = Arc::new(count);
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let count = count.clone();
        async move {
            count.send_modify(|n| *n += 1);
            Ok::<_, Infallible>(http::Response::new(name.to_string()))
        }
    });
    let server = mesh::tower::server::Server::builder().identity(identity).build().unwrap();
    let handle = server.spawn(listener, service).unwrap();
    Backend { name, addr: handle.local_addr(), hits, _handle: handle }
}

/// A splitmix64 sequence: the relay's seeded delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A TCP relay on 127.0.0.1 that delays every chunk, both ways, by `base ± jitter` (uniform,
/// seeded), keeping order: latency and jitter without `netem`.
pub struct Relay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr, base: Duration, jitter: Duration, seed: u64) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rng = Arc::new(Mutex::new(Rng(seed)));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rng = rng.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let delay = move || {
                        let span = jitter.as_micros() as u64 * 2 + 1;
                        let offset = rng.lock().unwrap().next() % span;
                        (base + Duration::from_micros(offset)).saturating_sub(jitter)
                    };
                    tokio::join!(pipe(cr, sw, delay.clone()), pipe(sr, cw, delay));
                });
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk delivered `delay()` after it was read, in order.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: impl Fn() -> Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut last = tokio::time::Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // Never before the previous chunk: a relay reorders nothing.
                    last = last.max(tokio::time::Instant::now() + delay());
                    if tx.send((last, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

/// What a [`Traffic`] run saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub requests: usize,
    pub failed: usize,
    pub max_latency: Duration,
    /// Up to ten failures, as their `Display`.
    pub errors: Vec<String>,
    /// Successful requests per backend name.
    pub per_backend: std::collections::BTreeMap<String, usize>,
}

impl Summary {
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { (self.requests - self.failed) as f64 / self.requests as f64 }
    }
}

type Client = mesh::tower::client::MeshClient<http_body_util::Empty<bytes::Bytes>>;

/// Callers that send `GET /` in a loop until stopped.
pub struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<()>>,
    summary: Arc<Mutex<Summary>>,
    done: watch::Receiver<usize>,
}

impl Traffic {
    pub fn start(client: &Client, callers: usize) -> Traffic {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let summary = Arc::new(Mutex::new(Summary::default()));
        let (done_tx, done) = watch::channel(0usize);
        let done_tx = Arc::new(done_tx);
        let callers = (0..callers)
            .map(|_| {
                let (client, stop, summary, done_tx) = (client.clone(), stop.clone(), summary.clone(), done_tx.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get("/").body(http_body_util::Empty::new()).unwrap();
                        let sent = tokio::time::Instant::now();
                        let outcome = match client.clone().oneshot(request).await {
                            Ok(response) if response.status() == 200 => match response.into_body().collect().await {
                                Ok(body) => Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                                Err(e) => Err(format!("body: {e}")),
                            },
                            Ok(response) => Err(format!("status {}", response.status())),
                            Err(error) => Err(error.to_string()),
                        };
                        let latency = sent.elapsed();
                        let mut s = summary.lock().unwrap();
                        s.requests += 1;
                        s.max_latency = s.max_latency.max(latency);
                        match outcome {
                            Ok(name) => *s.per_backend.entry(name).or_default() += 1,
                            Err(error) => {
                                s.failed += 1;
                                if s.errors.len() < 10 {
                                    s.errors.push(error);
                                }
                            }
                        }
                        drop(s);
                        done_tx.send_modify(|n| *n += 1);
                    }
                })
            })
            .collect();
        Traffic { stop, callers, summary, done }
    }

    /// Waits until `n` more requests have completed (a hang guard of two minutes fails the test).
    pub async fn more(&self, n: usize) {
        let mut done = self.done.clone();
        let target = *done.borrow() + n;
        tokio::time::timeout(Duration::from_secs(120), done.wait_for(|d| *d >= target))
            .await
            .expect("traffic stalled")
            .unwrap();
    }

    /// A copy of the counts so far.
    pub fn so_far(&self) -> Summary {
        let s = self.summary.lock().unwrap();
        Summary {
            requests: s.requests,
            failed: s.failed,
            max_latency: s.max_latency,
            errors: s.errors.clone(),
            per_backend: s.per_backend.clone(),
        }
    }

    /// Stops the callers (each finishes its request) and returns what they saw.
    pub async fn stop(mut self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        for caller in std::mem::take(&mut self.callers) {
            caller.await.unwrap();
        }
        self.so_far()
    }
}
