//! CPU time and peak memory of processes, from `/proc` (Linux).

use std::io;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds `pid` (all its threads) used so far.
pub(crate) fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields = after_comm(&stat)?;
    // Fields after the command name start at field 3 (state); utime and stime are 14 and 15.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(|| bad(&stat));
    Ok((tick(11)? + tick(12)?) as f64 / TICKS_PER_SECOND)
}

/// The parent of `pid`.
fn parent(pid: u32) -> io::Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields = after_comm(&stat)?;
    fields.get(1).and_then(|f| f.parse().ok()).ok_or_else(|| bad(&stat))
}

fn after_comm(stat: &str) -> io::Result<Vec<&str>> {
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(|| bad(stat))?;
    Ok(rest.split_whitespace().collect())
}

fn bad(stat: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc stat line: {stat:?}"))
}

/// Peak resident set size of `pid` (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmHWM in /proc/<pid>/status"))
}

/// `pid` and its direct children (nginx's master and workers).
pub(crate) fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if parent(child).is_ok_and(|p| p == pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// CPU seconds and peak RSS summed over a group of processes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// User plus system CPU seconds.
    pub(crate) cpu_s: f64,
    /// Sum of the processes' peak RSS, KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Samples `pids` (processes that ended count as zero).
pub(crate) fn sample(pids: &[u32]) -> Usage {
    pids.iter().fold(Usage::default(), |usage, pid| Usage {
        cpu_s: usage.cpu_s + cpu_seconds(*pid).unwrap_or(0.0),
        peak_rss_kib: usage.peak_rss_kib + peak_rss_kib(*pid).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok());
        assert!(peak_rss_kib(me).is_ok_and(|kib| kib > 0));
        assert_eq!(with_children(me)[0], me);
    }
}
