//! CPU time, memory and connections of processes, from `/proc` (Linux).

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

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &'static str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {field} in /proc/{pid}/status")))
}

/// Peak resident set size of `pid` (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Current resident set size of `pid` (`VmRSS`), in KiB.
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Established TCP connections (IPv4, this network namespace) whose remote end is 127.0.0.1 on
/// one of `ports`: the client ends of connections to a server listening there.
pub(crate) fn established_to(ports: &[u16]) -> io::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table.lines().skip(1).filter(|line| connects_to(line, ports)).count())
}

/// Whether one `/proc/net/tcp` row is an established connection to 127.0.0.1:`port`.
fn connects_to(row: &str, ports: &[u16]) -> bool {
    let fields: Vec<&str> = row.split_whitespace().collect();
    // sl local_address rem_address st ...; addresses are HEX_IP:HEX_PORT, 127.0.0.1 is 0100007F.
    let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else { return false };
    let Some((ip, port)) = remote.split_once(':') else { return false };
    *state == "01" && ip == "0100007F" && u16::from_str_radix(port, 16).is_ok_and(|p| ports.contains(&p))
}

/// The process's open-file limit is too low for the connections it must hold.
#[derive(Debug, thiserror::Error)]
#[error("need {needed} open files but the limit is {limit} (the hard limit, ulimit -Hn, caps it)")]
pub(crate) struct TooFewFiles {
    pub(crate) needed: u64,
    pub(crate) limit: u64,
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it), so it
/// can hold the idle workload's connections; returns the limit now in force.
pub(crate) fn raise_open_files() -> io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    }
    Ok(limit.maximum.unwrap_or(u64::MAX))
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

/// CPU seconds and RSS summed over a group of processes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// User plus system CPU seconds.
    pub(crate) cpu_s: f64,
    /// Sum of the processes' peak RSS, KiB.
    pub(crate) peak_rss_kib: u64,
    /// Sum of the processes' current RSS, KiB.
    pub(crate) rss_kib: u64,
}

/// Samples `pids` (processes that ended count as zero).
pub(crate) fn sample(pids: &[u32]) -> Usage {
    pids.iter().fold(Usage::default(), |usage, pid| Usage {
        cpu_s: usage.cpu_s + cpu_seconds(*pid).unwrap_or(0.0),
        peak_rss_kib: usage.peak_rss_kib + peak_rss_kib(*pid).unwrap_or(0),
        rss_kib: usage.rss_kib + rss_kib(*pid).unwrap_or(0),
    })
}

/// Waits until `pids` have used less than one clock tick of CPU over `window` (at most
/// `limit`): whatever they were doing (handshakes still in flight) is done.
pub(crate) fn wait_quiet(pids: &[u32], window: std::time::Duration, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut before = sample(pids).cpu_s;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(window);
        let now = sample(pids).cpu_s;
        if now - before < 1.0 / TICKS_PER_SECOND {
            return;
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok());
        assert!(peak_rss_kib(me).is_ok_and(|kib| kib > 0));
        assert!(rss_kib(me).is_ok_and(|kib| kib > 0));
        assert_eq!(with_children(me)[0], me);
    }

    #[test]
    fn counts_established_connections_to_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let before = established_to(&[port]).expect("read /proc/net/tcp");
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _accepted = (listener.accept().expect("accept"), listener.accept().expect("accept"));
        assert_eq!(established_to(&[port]).expect("read /proc/net/tcp") - before, 2);
        // The server ends (local port = `port`) are not counted, nor other ports.
        assert!(!connects_to("0: 0100007F:1F90 0100007F:D431 01 0", &[8080]));
        assert!(connects_to("0: 0100007F:D431 0100007F:1F90 01 0", &[8080]));
        assert!(!connects_to("0: 0100007F:D431 0100007F:1F90 06 0", &[8080]), "TIME_WAIT");
    }
}
