//! The workloads of `mesh-bench client` (`h1:32`, `h2:8x16`, `grpc-rate:2000:8x4`, ...): what the
//! command line names, the run plans and the load generator runs.

use std::{fmt, str::FromStr};

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
