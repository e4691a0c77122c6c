//! Syscalls and context switches of the processes on the path, from the kernel's counters
//! (`perf stat -e raw_syscalls:sys_enter,context-switches -p PID..`, attached over exactly the
//! measured window). Where `perf` is missing or the kernel does not offer the counters, the
//! summary says so (`counters.status`) and the figures are null; nothing is estimated.
//!
//! The tracepoint counter adds a little kernel work to every syscall of a counted process, the
//! same for every configuration, so the figures compare; the throughput of a run is measured
//! with the counters attached.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The events counted, in the order `perf stat -x,` prints them.
const EVENTS: &str = "raw_syscalls:sys_enter,context-switches";

/// What the kernel counted for a group of processes over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counters {
    /// System calls entered.
    pub(crate) syscalls: f64,
    /// Context switches (voluntary and involuntary).
    pub(crate) context_switches: f64,
}

/// Whether the counters can be read on this machine: `Ok(())`, or why not (perf missing, the
/// kernel without tracepoints, `perf_event_paranoid` too strict), checked once per run.
pub(crate) fn probe() -> Result<(), String> {
    let output = Command::new("perf")
        .args(["stat", "-x,", "-e", EVENTS, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|error| format!("perf cannot be run ({error})"))?;
    let text = String::from_utf8_lossy(&output.stderr);
    let counters = parse(&text);
    match counters {
        Some(_) if output.status.success() => Ok(()),
        _ => Err(format!("perf stat -e {EVENTS} does not count here: {}", text.trim().replace('\n', "; "))),
    }
}

/// A `perf stat` attached to some processes until [`Attached::stop`].
pub(crate) struct Attached {
    child: Child,
    out: PathBuf,
}

impl Attached {
    /// Starts counting `pids` (every thread they have now), writing to `out`.
    pub(crate) fn start(pids: &[u32], out: &Path) -> std::io::Result<Self> {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", EVENTS, "-o"])
            .arg(out)
            .args(["-p", &list.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self { child, out: out.to_owned() })
    }

    /// Stops counting (SIGINT: perf prints its counts and exits) and reads the counts.
    pub(crate) fn stop(mut self) -> Option<Counters> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).ok()?)?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT).ok()?;
        self.child.wait().ok()?;
        parse(&std::fs::read_to_string(&self.out).ok()?)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `perf stat -x,` output: `value,unit,event,...` lines; `None` unless both events were
/// counted.
fn parse(text: &str) -> Option<Counters> {
    let (mut syscalls, mut context_switches) = (None, None);
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        match event.trim() {
            "raw_syscalls:sys_enter" => syscalls = Some(value),
            "context-switches" | "cs" => context_switches = Some(value),
            _ => {}
        }
    }
    Some(Counters { syscalls: syscalls?, context_switches: context_switches? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_stat_csv() {
        let text = "# started on Tue Dec  1 22:50:31 2026\n\n\
                    1234,,raw_syscalls:sys_enter,4000000,100.00,,\n\
                    56,,context-switches,4000000,100.00,0.014,K/sec\n";
        assert_eq!(parse(text), Some(Counters { syscalls: 1234.0, context_switches: 56.0 }));
        let unsupported = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n12,,context-switches,1,100.00,,\n";
        assert_eq!(parse(unsupported), None, "a counter the kernel lacks is not a zero");
    }
}
