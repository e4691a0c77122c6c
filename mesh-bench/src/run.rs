//! `mesh-bench run`: every configuration, interleaved round by round, each in its own processes.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use crate::{
    cli::RunArgs,
    configs::Config,
    measurement::Measurement,
    perfstat,
    plumbing::BoxError,
    procstat::{self, Usage},
    report::{self, PathCounters, Record},
    sidecars,
    workload::Workload,
};

/// A child process that misbehaved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChildError {
    /// It ended or printed something else where a line was expected.
    #[error("{what}: expected {expected}, got {got:?} (see {log})")]
    Unexpected { what: String, expected: &'static str, got: String, log: String },
}

/// The workloads and their timing.
struct Plan {
    warmup: Duration,
    duration: Duration,
    workloads: Vec<Workload>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let mut workloads = vec![Workload::H1 { connections: 32 }];
        if !quick {
            workloads.push(Workload::H1 { connections: 256 });
        }
        workloads.push(Workload::H2 { connections: 8, streams: 16 });
        workloads.push(Workload::Rate { per_second: 2_000, connections: 32 });
        if !quick {
            workloads.push(Workload::Rate { per_second: 20_000, connections: 32 });
        }
        workloads.push(Workload::Handshake { concurrency: 16 });
        workloads.push(Workload::Idle { connections: 1_000 });
        workloads.push(Workload::Grpc { connections: 8, streams: 16 });
        workloads.push(Workload::GrpcRate { per_second: 2_000, connections: 8, streams: 4 });
        let (warmup, duration) = if quick {
            (Duration::from_millis(250), Duration::from_secs(1))
        } else {
            (Duration::from_secs(2), Duration::from_secs(10))
        };
        Plan { warmup, duration, workloads }
    }

    /// The gRPC configurations run the gRPC workloads, the others the HTTP ones; handshakes and
    /// idle connections are measured where they are mTLS (and on `bare`, for reference).
    fn workloads(&self, config: Config) -> impl Iterator<Item = Workload> + '_ {
        self.workloads.iter().copied().filter(move |w| match w {
            Workload::Handshake { .. } | Workload::Idle { .. } => config.handshakes() || config == Config::Bare,
            _ => w.is_grpc() == config.is_grpc(),
        })
    }
}

/// `taskset -c CORE` when pinning is on and possible.
fn pin_prefix(pin: bool, core: usize) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have_taskset = Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if pin && cores >= 2 && have_taskset { vec!["taskset".into(), "-c".into(), core.to_string()] } else { Vec::new() }
}

fn command(prefix: &[String], exe: &Path) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(exe);
            command
        }
        None => Command::new(exe),
    }
}

fn log_file(path: &Path) -> Result<File, BoxError> {
    Ok(OpenOptions::new().create(true).append(true).open(path)?)
}

fn read_line(
    reader: &mut BufReader<ChildStdout>,
    what: &str,
    expected: &'static str,
    log: &Path,
) -> Result<String, BoxError> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let got = line.trim_end().to_owned();
    if got.is_empty() {
        return Err(ChildError::Unexpected { what: what.into(), expected, got, log: log.display().to_string() }.into());
    }
    Ok(got)
}

/// A server process, killed on drop.
struct ServerProcess {
    child: Child,
    ports: Vec<u16>,
}

impl ServerProcess {
    fn start(exe: &Path, pin: &[String], config: Config, certs: &Path, log: &Path) -> Result<Self, BoxError> {
        let mut child = command(pin, exe)
            .args(["server", "--config", config.name(), "--certs"])
            .arg(certs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(log)?)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the server's stdout is not piped")?;
        let mut server = ServerProcess { child, ports: Vec::new() };
        let line = read_line(&mut BufReader::new(stdout), "server", "LISTENING port,..", log)?;
        let unexpected = || ChildError::Unexpected {
            what: "server".into(),
            expected: "LISTENING port,..",
            got: line.clone(),
            log: log.display().to_string(),
        };
        let ports = line.strip_prefix("LISTENING ").ok_or_else(unexpected)?;
        server.ports = ports.split(',').map(str::parse).collect::<Result<_, _>>().map_err(|_| unexpected())?;
        Ok(server)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one run needs to start processes.
struct Context {
    exe: PathBuf,
    certs: PathBuf,
    out: PathBuf,
    client_pin: Vec<String>,
    server_pin: Vec<String>,
    plan: Plan,
    /// Whether `perf stat` counts syscalls and context switches here ([`perfstat::probe`]).
    counters: bool,
}

/// Where a client process sends, and the processes sampled while it runs.
struct Target {
    ports: Vec<u16>,
    server_pids: Vec<u32>,
    proxy_pids: Vec<u32>,
}

/// What one client process's window measured.
struct ClientRun {
    server: Usage,
    proxies: Usage,
    client: Measurement,
    /// Idle workload: the server's RSS delta.
    idle_rss_delta: Option<i64>,
    /// Syscalls and context switches of each side, when the kernel counts them.
    counters: Option<PathCounters>,
}

/// Counters attached to the client, the server and the proxies over one window.
struct AttachedCounters {
    client: perfstat::Attached,
    server: perfstat::Attached,
    proxies: Option<perfstat::Attached>,
}

impl AttachedCounters {
    fn start(cx: &Context, what: &str, client: u32, target: &Target) -> Option<Self> {
        if !cx.counters {
            return None;
        }
        let file = |side: &str| cx.out.join("logs").join(format!("{what}-{side}.perf").replace(' ', "-"));
        let proxies = (!target.proxy_pids.is_empty())
            .then(|| perfstat::Attached::start(&target.proxy_pids, &file("proxies")).ok())
            .flatten();
        Some(Self {
            client: perfstat::Attached::start(&[client], &file("client")).ok()?,
            server: perfstat::Attached::start(&target.server_pids, &file("server")).ok()?,
            proxies,
        })
    }

    fn stop(self) -> Option<PathCounters> {
        let proxies = match self.proxies {
            Some(proxies) => Some(proxies.stop()?),
            None => None,
        };
        Some(PathCounters { client: self.client.stop()?, server: self.server.stop()?, proxies })
    }
}

/// One client process running `workload`: the server's and proxies' usage over its window, its
/// measurement, and (idle workload) the server's RSS delta.
fn run_client(cx: &Context, config: Config, workload: Workload, target: &Target) -> Result<ClientRun, BoxError> {
    let log = cx.out.join("logs").join(format!("{config}-client.log"));
    let ports_arg: Vec<String> = target.ports.iter().map(u16::to_string).collect();
    let (server_pids, proxy_pids) = (&target.server_pids, &target.proxy_pids);
    let mut child = command(&cx.client_pin, &cx.exe)
        .args(["client", "--config", config.name(), "--certs"])
        .arg(&cx.certs)
        .args(["--ports", &ports_arg.join(","), "--workload", &workload.to_string()])
        .args(["--warmup", &cx.plan.warmup.as_secs_f64().to_string()])
        .args(["--duration", &cx.plan.duration.as_secs_f64().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file(&log)?)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("the client's stdout is not piped")?;
    // Only the idle workload reads stdin: it waits there while this process samples the server.
    let mut stdin = child.stdin.take().filter(|_| matches!(workload, Workload::Idle { .. }));
    let mut reader = BufReader::new(stdout);
    let what = format!("{config} client {workload}");
    let client_pid = child.id();
    let outcome = (|| -> Result<ClientRun, BoxError> {
        read_line(&mut reader, &what, "START", &log)?;
        let attached = AttachedCounters::start(cx, &format!("{config}-{workload}"), client_pid, target);
        let (server_before, proxies_before) = (procstat::sample(server_pids), procstat::sample(proxy_pids));
        if let Some(stdin) = stdin.as_mut() {
            stdin.write_all(b"sampled\n")?;
            stdin.flush()?;
        }
        read_line(&mut reader, &what, "END", &log)?;
        let counters = attached.and_then(AttachedCounters::stop);
        if stdin.is_some() {
            // Handshakes the server has not finished yet would be missed.
            procstat::wait_quiet(server_pids, crate::idle::QUIET_WINDOW, crate::idle::QUIET_LIMIT);
        }
        let (server_after, proxies_after) = (procstat::sample(server_pids), procstat::sample(proxy_pids));
        let idle_rss_delta = stdin.is_some().then(|| server_after.rss_kib as i64 - server_before.rss_kib as i64);
        // Closing stdin lets an idle client close its connections.
        drop(stdin.take());
        let measurement: Measurement = serde_json::from_str(&read_line(&mut reader, &what, "a JSON line", &log)?)?;
        let delta = |before: Usage, after: Usage| Usage {
            cpu_s: after.cpu_s - before.cpu_s,
            peak_rss_kib: after.peak_rss_kib,
            rss_kib: after.rss_kib,
        };
        Ok(ClientRun {
            server: delta(server_before, server_after),
            proxies: delta(proxies_before, proxies_after),
            client: measurement,
            idle_rss_delta,
            counters,
        })
    })();
    drop(stdin);
    let _ = child.wait();
    outcome
}

/// Runs every workload of `config` once: one server (and proxy pair), one client per workload
/// (the idle workload: its own server too).
fn run_config(cx: &Context, config: Config, round: usize) -> Result<Vec<Record>, BoxError> {
    let logs = cx.out.join("logs");
    let server_log = logs.join(format!("{config}-server.log"));
    let server = ServerProcess::start(&cx.exe, &cx.server_pin, config.server(), &cx.certs, &server_log)?;
    let pair = match config {
        Config::SidecarNginx | Config::SidecarHaproxy | Config::SidecarEnvoy => {
            let dir = cx.out.join("sidecars").join(config.name());
            let app = server.ports.first().copied().ok_or("the server listens on no port")?;
            Some(sidecars::Pair::start(config, &dir, &cx.certs, app, &cx.server_pin)?)
        }
        _ => None,
    };
    let ports = pair.as_ref().map_or(server.ports.clone(), |p| p.ports.clone());
    let proxy_pids = pair.as_ref().map(sidecars::Pair::pids).unwrap_or_default();
    let server_pids = [server.child.id()];
    let mut records = Vec::new();
    for workload in cx.plan.workloads(config) {
        // The idle workload gets a server of its own: memory that earlier workloads freed would
        // otherwise be reused by its connections and hide part of their cost.
        let fresh = match workload {
            Workload::Idle { .. } if pair.is_none() => {
                Some(ServerProcess::start(&cx.exe, &cx.server_pin, config.server(), &cx.certs, &server_log)?)
            }
            _ => None,
        };
        let target = match &fresh {
            Some(fresh) => {
                Target { ports: fresh.ports.clone(), server_pids: vec![fresh.child.id()], proxy_pids: Vec::new() }
            }
            None => Target { ports: ports.clone(), server_pids: server_pids.to_vec(), proxy_pids: proxy_pids.clone() },
        };
        let ClientRun { server: server_usage, proxies, client, idle_rss_delta, counters } =
            run_client(cx, config, workload, &target)?;
        if client.errors > 0 {
            eprintln!(
                "mesh-bench: {config} {workload}: {} errors (first: {})",
                client.errors,
                client.first_error.as_deref().unwrap_or("?")
            );
        }
        records.push(Record {
            config,
            workload: workload.key(),
            round,
            client,
            server: server_usage,
            server_idle_rss_delta_kib: idle_rss_delta,
            proxies: pair.as_ref().map(|_| proxies),
            counters,
        });
    }
    Ok(records)
}

/// The whole benchmark.
pub(crate) fn main(args: RunArgs) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(args.out.join("logs"))?;
    let out = args.out.canonicalize()?;
    let certs = crate::certs::write(&out.join("certs"))?;
    let mut configs = Vec::new();
    for config in &args.configs {
        if config.is_sidecar()
            && let Err(error) = sidecars::installed(*config)
        {
            eprintln!("mesh-bench: skipping {config}: {error}");
            continue;
        }
        configs.push(*config);
    }
    let counters = if args.counters { perfstat::probe() } else { Err("turned off (--no-counters)".to_owned()) };
    if let Err(why) = &counters {
        eprintln!("mesh-bench: syscalls and context switches not counted: {why}");
    }
    let cx = Context {
        counters: counters.is_ok(),
        exe,
        certs,
        out: out.clone(),
        client_pin: pin_prefix(args.pin, 0),
        server_pin: pin_prefix(args.pin, 1),
        plan: Plan::new(args.quick),
    };
    let load_before = report::loadavg();
    let started = std::time::Instant::now();
    let mut records = Vec::new();
    for round in 0..args.rounds {
        for config in &configs {
            eprintln!("mesh-bench: round {}/{} {config}", round + 1, args.rounds);
            records.extend(run_config(&cx, *config, round)?);
        }
    }
    let meta = report::Meta {
        mode: if args.quick { "quick" } else { "full" },
        rounds: args.rounds,
        warmup_s: cx.plan.warmup.as_secs_f64(),
        duration_s: cx.plan.duration.as_secs_f64(),
        pinned: !cx.client_pin.is_empty(),
        wall_s: started.elapsed().as_secs_f64(),
        loadavg_before: load_before,
        loadavg_after: report::loadavg(),
        counters: match &counters {
            Ok(()) => "measured: perf stat -e raw_syscalls:sys_enter,context-switches attached to each process over \
                       the measured window (all its threads at the start of the window)"
                .to_owned(),
            Err(why) => format!("not measured: {why}"),
        },
    };
    let summary = report::summarize(&records, meta);
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    report::print_table(&summary);
    crate::plumbing::println_out(&format!("\nwrote {}", path.display()));
    Ok(())
}
