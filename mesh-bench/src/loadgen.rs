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
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::{
    cli::ClientArgs,
    measurement::Measurement,
    plumbing::{BoxError, line},
    procstat,
    sender::{Sender, Shape},
    workload::Workload,
};

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
