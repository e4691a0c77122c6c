//! `mesh-bench client`: the one load generator every configuration is measured with.
//!
//! - closed loop (`h1:N`, `h2:CxS`, `handshake:N`): N tasks each send a request, wait for the
//!   whole response, and send the next; `h2:CxS` spreads C×S tasks over C connections;
//!   `handshake:N` opens a new connection for every request (pools keep nothing idle).
//! - gRPC (`grpc:CxS`, `grpc-rate:R:CxS`): the same two shapes with unary Greeter calls over C
//!   HTTP/2 connections (for `grpc-rate`, C×S schedules share them).
//! - idle (`idle:N`): opens N mTLS connections and holds them; see [`crate::idle`].
//! - fixed rate (`rate:R:N`): N connections share R requests/s, each on its own schedule. A
//!   request's latency is measured from its *intended* send time whenever the connection was
//!   still busy with the previous request then (so a stall counts in full: no coordinated
//!   omission), and from the actual send time otherwise (so the timer's millisecond granularity
//!   is not counted as server latency).
//!
//! It runs on a current-thread runtime, warms up, prints `START`, measures, prints `END`, then
//! prints one JSON line ([`Measurement`]). Between `START` and `END` the parent samples the other
//! processes' CPU; this process measures its own over the same window.

use std::{
    fmt,
    io::Write,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    BoxError,
    cli::ClientArgs,
    procstat,
    sender::{Sender, Shape},
};

/// What the load generator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Closed loop over HTTP/1.1 keep-alive connections.
    H1 { connections: usize },
    /// Closed loop over HTTP/2: `streams` concurrent requests on each of `connections`.
    H2 { connections: usize, streams: usize },
    /// A fixed request rate over HTTP/1.1 keep-alive connections.
    Rate { per_second: u64, connections: usize },
    /// Closed loop, one new connection per request.
    Handshake { concurrency: usize },
    /// Closed loop of unary gRPC calls: `streams` concurrent calls on each of `connections`.
    Grpc { connections: usize, streams: usize },
    /// A fixed rate of unary gRPC calls: `connections` × `streams` schedules over `connections`.
    GrpcRate { per_second: u64, connections: usize, streams: usize },
    /// `connections` HTTP/1.1 connections opened (one request each) and held idle.
    Idle { connections: usize },
}

/// A workload that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad workload {0:?} (h1:CONNS, h2:CONNSxSTREAMS, rate:REQ_PER_S:CONNS, handshake:N, grpc:CONNSxSTREAMS, \
     grpc-rate:REQ_PER_S:CONNSxSTREAMS or idle:CONNS, all above 0)"
)]
pub(crate) struct BadWorkload(String);

impl FromStr for Workload {
    type Err = BadWorkload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadWorkload(s.to_owned());
        let num = |t: &str| t.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(bad);
        let parts: Vec<&str> = s.split(':').collect();
        let pair = |cs: &str| -> Result<(usize, usize), BadWorkload> {
            let (c, s) = cs.split_once('x').ok_or_else(bad)?;
            Ok((num(c)?, num(s)?))
        };
        match parts.as_slice() {
            ["h1", n] => Ok(Workload::H1 { connections: num(n)? }),
            ["h2", cs] => pair(cs).map(|(connections, streams)| Workload::H2 { connections, streams }),
            ["rate", r, n] => Ok(Workload::Rate { per_second: num(r)? as u64, connections: num(n)? }),
            ["handshake", n] => Ok(Workload::Handshake { concurrency: num(n)? }),
            ["grpc", cs] => pair(cs).map(|(connections, streams)| Workload::Grpc { connections, streams }),
            ["grpc-rate", r, cs] => {
                let (connections, streams) = pair(cs)?;
                Ok(Workload::GrpcRate { per_second: num(r)? as u64, connections, streams })
            }
            ["idle", n] => Ok(Workload::Idle { connections: num(n)? }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Workload {
    /// The command-line form (`Workload::from_str` reads it back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::H1 { connections } => write!(f, "h1:{connections}"),
            Workload::H2 { connections, streams } => write!(f, "h2:{connections}x{streams}"),
            Workload::Rate { per_second, connections } => write!(f, "rate:{per_second}:{connections}"),
            Workload::Handshake { concurrency } => write!(f, "handshake:{concurrency}"),
            Workload::Grpc { connections, streams } => write!(f, "grpc:{connections}x{streams}"),
            Workload::GrpcRate { per_second, connections, streams } => {
                write!(f, "grpc-rate:{per_second}:{connections}x{streams}")
            }
            Workload::Idle { connections } => write!(f, "idle:{connections}"),
        }
    }
}

impl Workload {
    /// The key in `summary.json`.
    pub(crate) fn key(&self) -> String {
        match self {
            Workload::H1 { connections } => format!("h1_c{connections}"),
            Workload::H2 { connections, streams } => format!("h2_c{connections}x{streams}"),
            Workload::Rate { per_second, connections } => format!("rate{per_second}_h1_c{connections}"),
            Workload::Handshake { concurrency } => format!("handshake_c{concurrency}"),
            Workload::Grpc { connections, streams } => format!("grpc_c{connections}x{streams}"),
            Workload::GrpcRate { per_second, connections, streams } => {
                format!("rate{per_second}_grpc_c{connections}x{streams}")
            }
            Workload::Idle { connections } => format!("idle_c{connections}"),
        }
    }

    /// Whether the workload sends gRPC calls (only the gRPC configurations run these).
    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self, Workload::Grpc { .. } | Workload::GrpcRate { .. })
    }
}

/// What one client process measured over its window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Measurement {
    /// Requests completed in the window (fixed rate: scheduled in the window and sent).
    pub(crate) requests: u64,
    /// Requests that failed in the window.
    pub(crate) errors: u64,
    /// Fixed rate: requests scheduled in the window but never sent (the path could not keep up).
    pub(crate) dropped: u64,
    /// Length of the window, seconds.
    pub(crate) seconds: f64,
    /// `requests / seconds`.
    pub(crate) rps: f64,
    /// Latency percentiles, microseconds.
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    /// This process's CPU seconds over the window.
    pub(crate) cpu_s: f64,
    /// This process's peak RSS, KiB.
    pub(crate) peak_rss_kib: u64,
    /// The first error seen, if any.
    pub(crate) first_error: Option<String>,
    /// Idle workload: connections this process opened and held (established TCP connections
    /// to the server's ports, counted from `/proc/net/tcp`, after minus before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_connections: Option<u64>,
    /// Idle workload: this process's current RSS (`VmRSS`) while holding them minus before
    /// opening them, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_rss_delta_kib: Option<i64>,
}

/// Runs one workload and prints `START`, `END` and the measurement.
pub(crate) fn main(args: ClientArgs) -> Result<(), BoxError> {
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    if let Workload::Idle { connections } = args.workload {
        // Every request's first poll (which starts its connection) before any I/O completes:
        // otherwise late requests find early connections idle and fewer are opened.
        runtime.event_interval(u32::try_from(connections).unwrap_or(u32::MAX).saturating_add(64));
    }
    let runtime = runtime.enable_all().build()?;
    let measurement = runtime.block_on(async {
        let telemetry = if args.config.is_mesh() { Some(crate::mesh_config::install_telemetry()?) } else { None };
        let measurement = match args.workload {
            Workload::Idle { connections } => crate::idle::run(&args, connections).await?,
            _ => run(&args).await?,
        };
        if let Some(telemetry) = telemetry {
            // Shows the recorder and the trace pipeline saw the run.
            tracing::info!(bytes = telemetry.prometheus.render().len(), "prometheus exposition rendered");
            let (exports, bytes) = telemetry.flush_traces().await?;
            tracing::info!(exports, bytes, "sampled client spans received by the OTLP sink");
        }
        Ok::<_, BoxError>(measurement)
    })?;
    line(&serde_json::to_string(&measurement)?)
}

/// Writes a line to stdout for the parent (`START`, `END`, the JSON line).
pub(crate) fn line(text: &str) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What each task hands back.
struct Tally {
    histogram: Histogram<u64>,
    requests: u64,
    errors: u64,
    dropped: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Result<Self, BoxError> {
        // 1 µs to 60 s, 3 significant digits.
        let histogram = Histogram::new_with_bounds(1, 60_000_000, 3)?;
        Ok(Self { histogram, requests: 0, errors: 0, dropped: 0, first_error: None })
    }

    fn error(&mut self, error: &BoxError) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn merge(&mut self, other: Tally) -> Result<(), BoxError> {
        self.histogram.add(&other.histogram)?;
        self.requests += other.requests;
        self.errors += other.errors;
        self.dropped += other.dropped;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn run(args: &ClientArgs) -> Result<Measurement, BoxError> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let (h2, pooled) = match args.workload {
        Workload::H2 { .. } | Workload::Grpc { .. } | Workload::GrpcRate { .. } => (true, true),
        Workload::Handshake { .. } => (false, false),
        _ => (false, true),
    };
    let shape = Shape { h2, pooled };
    let new_sender = || Sender::new(args.config, &args.certs, &args.ports, shape);
    // One pool per connection wanted; mesh's pool holds one HTTP/2 connection per endpoint.
    let pools = |connections: usize| {
        if args.config.connection_per_endpoint() { (connections / args.ports.len()).max(1) } else { connections }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    match args.workload {
        Workload::H1 { connections: n } | Workload::Handshake { concurrency: n } => {
            let sender = new_sender()?;
            for _ in 0..n {
                tasks.spawn(closed_loop(sender.clone(), phase.clone()));
            }
        }
        Workload::H2 { connections, streams } | Workload::Grpc { connections, streams } => {
            let pools = pools(connections);
            let senders: Vec<Sender> = (0..pools).map(|_| new_sender()).collect::<Result<_, _>>()?;
            for i in 0..connections * streams {
                tasks.spawn(closed_loop(senders[i % pools].clone(), phase.clone()));
            }
        }
        Workload::Rate { per_second, connections: schedules } => {
            let sender = new_sender()?;
            for schedule in Schedule::spread(per_second, schedules, start, measure_from, end) {
                tasks.spawn(fixed_rate(sender.clone(), schedule));
            }
        }
        Workload::GrpcRate { per_second, connections, streams } => {
            let pools = pools(connections);
            let senders: Vec<Sender> = (0..pools).map(|_| new_sender()).collect::<Result<_, _>>()?;
            for (k, schedule) in
                Schedule::spread(per_second, connections * streams, start, measure_from, end).enumerate()
            {
                tasks.spawn(fixed_rate(senders[k % pools].clone(), schedule));
            }
        }
        Workload::Idle { .. } => return Err("the idle workload runs in crate::idle".into()),
    }
    tokio::time::sleep_until(measure_from).await;
    line("START")?;
    let cpu_before = procstat::cpu_seconds(std::process::id())?;
    phase.store(MEASURE, Ordering::SeqCst);
    tokio::time::sleep_until(end).await;
    phase.store(STOP, Ordering::SeqCst);
    let seconds = measure_from.elapsed().as_secs_f64();
    let cpu_after = procstat::cpu_seconds(std::process::id())?;
    line("END")?;
    let mut total = Tally::new()?;
    while let Some(tally) = tasks.join_next().await {
        total.merge(tally??)?;
    }
    let h = &total.histogram;
    let seconds = match args.workload {
        Workload::Rate { .. } | Workload::GrpcRate { .. } => args.duration.as_secs_f64(),
        _ => seconds,
    };
    Ok(Measurement {
        requests: total.requests,
        errors: total.errors,
        dropped: total.dropped,
        seconds,
        rps: total.requests as f64 / seconds,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        cpu_s: cpu_after - cpu_before,
        peak_rss_kib: procstat::peak_rss_kib(std::process::id())?,
        first_error: total.first_error,
        idle_connections: None,
        idle_rss_delta_kib: None,
    })
}

async fn closed_loop(mut sender: Sender, phase: Arc<AtomicU8>) -> Result<Tally, BoxError> {
    let mut tally = Tally::new()?;
    loop {
        let before = phase.load(Ordering::Relaxed);
        if before == STOP {
            return Ok(tally);
        }
        let sent = Instant::now();
        let result = sender.send().await;
        // Count what started and ended inside the window.
        let counted = before == MEASURE && phase.load(Ordering::Relaxed) == MEASURE;
        match result {
            Ok(()) if counted => {
                tally.requests += 1;
                tally.histogram.saturating_record(micros(sent.elapsed()));
            }
            Ok(()) => {}
            Err(error) => {
                if counted {
                    tally.error(&error);
                }
                // Do not spin on a path that refuses everything.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// One connection's share of a fixed rate.
struct Schedule {
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
}

impl Schedule {
    /// `count` schedules sharing `per_second` requests/s, evenly staggered.
    fn spread(
        per_second: u64,
        count: usize,
        start: Instant,
        measure_from: Instant,
        end: Instant,
    ) -> impl Iterator<Item = Schedule> {
        let interval = Duration::from_secs_f64(count as f64 / per_second as f64);
        (0..count).map(move |k| Schedule {
            first: start + Duration::from_secs_f64(k as f64 / per_second as f64),
            interval,
            measure_from,
            end,
        })
    }
}

async fn fixed_rate(mut sender: Sender, schedule: Schedule) -> Result<Tally, BoxError> {
    let mut tally = Tally::new()?;
    // A path far slower than the rate is given the window again to catch up, then cut off.
    let give_up = schedule.end + (schedule.end - schedule.measure_from);
    let mut previous_done = schedule.first;
    let mut intended = schedule.first;
    while intended < schedule.end {
        let now = Instant::now();
        if now > give_up {
            if intended >= schedule.measure_from {
                tally.dropped += 1;
            }
            intended += schedule.interval;
            continue;
        }
        if now < intended {
            tokio::time::sleep_until(intended).await;
        }
        let sent = Instant::now();
        // Busy past the intended time: the wait counts (no coordinated omission).
        let from = if previous_done > intended { intended } else { sent };
        let result = sender.send().await;
        previous_done = Instant::now();
        if intended >= schedule.measure_from {
            match result {
                Ok(()) => {
                    tally.requests += 1;
                    tally.histogram.saturating_record(micros(previous_done - from));
                }
                Err(error) => tally.error(&error),
            }
        }
        intended += schedule.interval;
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_round_trip() {
        for text in ["h1:32", "h2:8x16", "rate:2000:32", "handshake:16", "grpc:8x16", "grpc-rate:2000:8x4", "idle:1000"]
        {
            let workload: Workload = text.parse().expect("valid workload");
            assert_eq!(workload.to_string(), text);
        }
        for bad in ["h1:0", "h2:8", "rate:10", "h3:1", "handshake:-1", "", "grpc:8", "grpc-rate:10:8", "idle:0"] {
            assert!(bad.parse::<Workload>().is_err(), "{bad}");
        }
    }
}
