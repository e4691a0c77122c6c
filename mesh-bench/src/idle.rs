//! The idle workload (`idle:N`): memory per idle mTLS connection, client and server side.
//!
//! The client builds its sender (HTTP/1.1, pooled: hyper-util + rustls for `bare-mtls`, the whole
//! mesh client for `mesh`, whose pool keeps every idle connection: `pool_max_idle_per_endpoint`
//! is unbounded by default), sends one request (so both processes have done their one-time
//! set-up), then:
//!
//! 1. measures its own current RSS (`VmRSS`) and the established connections to the server's
//!    ports, prints `START` and waits for a line on stdin (the parent samples the server's RSS,
//!    then writes one);
//! 2. sends N requests at once: every request finds the pool empty and starts a connection
//!    (the runtime polls every task once before it looks at I/O: see `loadgen::main`;
//!    hyper-util finishes and pools a connection whose request was served by another, so N
//!    connections are opened and each completes its handshake), waits for every response, for
//!    N more established connections to the server's ports (some connect only after a SYN
//!    retransmission) and until its own CPU is quiet (no handshake still running);
//! 3. measures its RSS and connections again, prints `END`, and waits for stdin to close while
//!    holding every connection open (the parent waits for the server's CPU to be quiet, samples
//!    its RSS, then closes the client's stdin);
//! 4. prints the JSON line, with the connections opened (`idle_connections`, the established TCP
//!    connections to the server's ports after minus before) and its RSS delta.
//!
//! Per connection = RSS delta / connections opened, on each side.

use std::{
    io::{BufRead, BufReader},
    time::Duration,
};

use crate::{
    cli::ClientArgs,
    measurement::Measurement,
    plumbing::{BoxError, line},
    procstat::{self, TooFewFiles},
    sender::{Sender, Shape},
};

/// Open files the idle workload needs beyond its connections (the runtime, the mesh's telemetry
/// pipeline, certificates being read).
const SPARE_FILES: u64 = 64;

/// A process is quiet when it used less than one clock tick of CPU in this window.
pub(crate) const QUIET_WINDOW: Duration = Duration::from_millis(200);
/// How long to wait for quiet before sampling anyway.
pub(crate) const QUIET_LIMIT: Duration = Duration::from_secs(10);

/// Runs `idle:connections` (see the module documentation).
pub(crate) async fn run(args: &ClientArgs, connections: usize) -> Result<Measurement, BoxError> {
    let needed = connections as u64 + SPARE_FILES;
    let limit = procstat::raise_open_files()?;
    if limit < needed {
        return Err(TooFewFiles { needed, limit }.into());
    }
    let me = std::process::id();
    // The blocking thread (and its allocator arena) the waits below use exists before the
    // baseline, so neither counts as connections' memory.
    tokio::task::spawn_blocking(move || procstat::rss_kib(me)).await??;
    let sender = Sender::new(args.config, &args.certs, &args.ports, Shape { h2: false, pooled: true })?;
    sender.clone().send().await?;
    let (rss_before, open_before) = (procstat::rss_kib(me)?, procstat::established_to(&args.ports)?);
    line("START")?;
    wait_for_parent(false).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut sender = sender.clone();
        tasks.spawn(async move { sender.send().await });
    }
    let (mut requests, mut errors, mut first_error) = (0, 0, None);
    while let Some(outcome) = tasks.join_next().await {
        match outcome? {
            Ok(()) => requests += 1,
            Err(error) => {
                errors += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    // Connections whose request another connection served finish in the background, some after
    // a SYN retransmission (a full accept queue drops SYNs): wait for all of them, then for quiet.
    let (ports, target) = (args.ports.clone(), open_before + connections);
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + QUIET_LIMIT;
        while procstat::established_to(&ports).is_ok_and(|open| open < target) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        procstat::wait_quiet(&[me], QUIET_WINDOW, QUIET_LIMIT);
    })
    .await?;
    let (rss_after, open_after) = (procstat::rss_kib(me)?, procstat::established_to(&args.ports)?);
    if open_after < open_before + connections {
        tracing::warn!(opened = open_after.saturating_sub(open_before), connections, "fewer connections than asked");
    }
    line("END")?;
    wait_for_parent(true).await?;
    drop(sender);
    Ok(Measurement {
        requests,
        errors,
        first_error,
        idle_connections: Some(open_after.saturating_sub(open_before) as u64),
        idle_rss_delta_kib: Some(rss_after as i64 - rss_before as i64),
        cpu_s: 0.0,
        peak_rss_kib: procstat::peak_rss_kib(me)?,
        ..Measurement::default()
    })
}

/// Blocks (off the runtime's thread, so the connections' tasks keep running) until the parent
/// writes a line (`to_eof == false`) or closes stdin (`to_eof == true`).
async fn wait_for_parent(to_eof: bool) -> Result<(), BoxError> {
    tokio::task::spawn_blocking(move || {
        let mut stdin = BufReader::new(std::io::stdin().lock());
        let mut text = String::new();
        loop {
            text.clear();
            if stdin.read_line(&mut text)? == 0 || !to_eof {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await??;
    Ok(())
}
