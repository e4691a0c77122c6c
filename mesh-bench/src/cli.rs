//! Command-line parsing: typed arguments, and a clear message for bad input.

use std::{path::PathBuf, str::FromStr, time::Duration};

use crate::{configs::Config, workload::Workload};

/// What `--help` prints.
pub(crate) const USAGE: &str = "\
usage:
  mesh-bench run [--quick] [--rounds N] [--out DIR] [--no-pin] [--no-counters]
                 [--configs bare,bare-mtls,mesh,sidecar-nginx,sidecar-haproxy,sidecar-envoy,grpc-tonic,grpc-mesh]
      the whole benchmark; writes DIR/summary.json (default target/bench) and prints a table;
      --no-counters: no perf stat (syscalls, context switches) attached to the processes
  mesh-bench server --config NAME --certs DIR
      (a child of `run`) serves the hello handler; prints `LISTENING port[,port..]`
  mesh-bench client --config NAME --certs DIR --ports P[,P..] --workload W [--warmup SECS] [--duration SECS]
      (a child of `run`) one workload; prints START, END and a JSON line
      W: h1:CONNS | h2:CONNSxSTREAMS | rate:REQ_PER_S:CONNS | handshake:CONCURRENCY | idle:CONNS
         | grpc:CONNSxSTREAMS | grpc-rate:REQ_PER_S:CONNSxSTREAMS (grpc workloads: grpc-* configs only)
      idle: after START and after END waits for the parent on stdin (a line, then end of input)
  mesh-bench merge-instructions --summary FILE (--per-request FILE [--method TEXT] | --skipped REASON)
      puts bench/per-request.sh's instruction counts (its JSON) into summary.json, with their
      ratios and goals; --skipped records why there are none (the ratios stay null)
  mesh-bench certs --out DIR
      writes the development CA and the server and client certificates";

/// A command-line mistake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// A required flag is absent.
    #[error("{0} is required")]
    Required(&'static str),
    /// A value that does not parse.
    #[error("{flag}: {value:?} is not {expected}")]
    Invalid { flag: &'static str, value: String, expected: &'static str },
    /// An unknown flag or subcommand.
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

/// The subcommands.
#[derive(Debug)]
pub(crate) enum Command {
    Help,
    Certs { out: PathBuf },
    Server(ServerArgs),
    Client(ClientArgs),
    Run(RunArgs),
    MergeInstructions(MergeArgs),
}

/// `mesh-bench merge-instructions`.
#[derive(Debug, Clone)]
pub(crate) struct MergeArgs {
    pub(crate) summary: PathBuf,
    pub(crate) per_request: Option<PathBuf>,
    pub(crate) method: Option<String>,
    pub(crate) skipped: Option<String>,
}

/// `mesh-bench server`.
#[derive(Debug, Clone)]
pub(crate) struct ServerArgs {
    pub(crate) config: Config,
    pub(crate) certs: PathBuf,
}

/// `mesh-bench client`.
#[derive(Debug, Clone)]
pub(crate) struct ClientArgs {
    pub(crate) config: Config,
    pub(crate) certs: PathBuf,
    pub(crate) ports: Vec<u16>,
    pub(crate) workload: Workload,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

/// `mesh-bench run`.
#[derive(Debug, Clone)]
pub(crate) struct RunArgs {
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
    pub(crate) configs: Vec<Config>,
    pub(crate) out: PathBuf,
    pub(crate) pin: bool,
    /// Count syscalls and context switches with `perf stat` where the kernel can.
    pub(crate) counters: bool,
}

fn parse_value<T: FromStr>(flag: &'static str, value: String, expected: &'static str) -> Result<T, CliError> {
    value.parse().map_err(|_| CliError::Invalid { flag, value, expected })
}

fn seconds(flag: &'static str, value: String) -> Result<Duration, CliError> {
    let secs: f64 = parse_value(flag, value.clone(), "a number of seconds")?;
    Duration::try_from_secs_f64(secs).map_err(|_| CliError::Invalid { flag, value, expected: "a number of seconds" })
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let mut it = args.into_iter();
    let Some(sub) = it.next() else { return Ok(Command::Help) };
    let (mut config, mut certs, mut out, mut ports, mut workload) = (None, None, None, None, None);
    let (mut warmup, mut duration) = (Duration::from_secs(1), Duration::from_secs(5));
    let (mut quick, mut rounds, mut configs, mut pin) = (false, 3usize, Config::ALL.to_vec(), true);
    let mut counters = true;
    let (mut summary, mut per_request, mut method, mut skipped) = (None, None, None, None);
    while let Some(arg) = it.next() {
        let mut value = |flag: &'static str| it.next().ok_or(CliError::MissingValue(flag));
        match arg.as_str() {
            "--config" => config = Some(parse_value("--config", value("--config")?, "a configuration name")?),
            "--certs" => certs = Some(PathBuf::from(value("--certs")?)),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--ports" => {
                let text = value("--ports")?;
                let parsed: Result<Vec<u16>, _> = text.split(',').map(str::parse).collect();
                ports = Some(parsed.map_err(|_| CliError::Invalid {
                    flag: "--ports",
                    value: text,
                    expected: "a comma-separated list of ports",
                })?);
            }
            "--workload" => {
                workload = Some(parse_value("--workload", value("--workload")?, "a workload (see --help)")?)
            }
            "--warmup" => warmup = seconds("--warmup", value("--warmup")?)?,
            "--duration" => duration = seconds("--duration", value("--duration")?)?,
            "--quick" => quick = true,
            "--no-pin" => pin = false,
            "--no-counters" => counters = false,
            "--rounds" => {
                rounds = parse_value("--rounds", value("--rounds")?, "a number of rounds (1 or more)")?;
                if rounds == 0 {
                    return Err(CliError::Invalid { flag: "--rounds", value: "0".into(), expected: "1 or more" });
                }
            }
            "--configs" => {
                let text = value("--configs")?;
                configs = text
                    .split(',')
                    .map(|name| parse_value("--configs", name.to_owned(), "a configuration name"))
                    .collect::<Result<_, _>>()?;
            }
            "--summary" => summary = Some(PathBuf::from(value("--summary")?)),
            "--per-request" => per_request = Some(PathBuf::from(value("--per-request")?)),
            "--method" => method = Some(value("--method")?),
            "--skipped" => skipped = Some(value("--skipped")?),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(CliError::Unknown(other.to_owned())),
        }
    }
    match sub.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "certs" => Ok(Command::Certs { out: out.ok_or(CliError::Required("--out"))? }),
        "server" => Ok(Command::Server(ServerArgs {
            config: config.ok_or(CliError::Required("--config"))?,
            certs: certs.ok_or(CliError::Required("--certs"))?,
        })),
        "client" => Ok(Command::Client(ClientArgs {
            config: config.ok_or(CliError::Required("--config"))?,
            certs: certs.ok_or(CliError::Required("--certs"))?,
            ports: ports.ok_or(CliError::Required("--ports"))?,
            workload: workload.ok_or(CliError::Required("--workload"))?,
            warmup,
            duration,
        })),
        "run" => Ok(Command::Run(RunArgs {
            quick,
            rounds,
            configs,
            out: out.unwrap_or_else(|| PathBuf::from("target/bench")),
            pin,
            counters,
        })),
        "merge-instructions" => {
            if per_request.is_some() == skipped.is_some() {
                return Err(CliError::Required("exactly one of --per-request and --skipped"));
            }
            Ok(Command::MergeInstructions(MergeArgs {
                summary: summary.ok_or(CliError::Required("--summary"))?,
                per_request,
                method,
                skipped,
            }))
        }
        other => Err(CliError::Unknown(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Command, CliError> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(args("run --rounds 0"), Err(CliError::Invalid { .. })));
        assert!(matches!(args("run --configs bare,nope"), Err(CliError::Invalid { .. })));
        assert!(matches!(args("client --config bare"), Err(CliError::Required("--certs"))));
        assert!(matches!(args("server --config"), Err(CliError::MissingValue("--config"))));
        assert!(matches!(args("frobnicate"), Err(CliError::Unknown(_))));
        assert!(matches!(args("client --workload h3:1"), Err(CliError::Invalid { .. })));
        assert!(matches!(args("client --duration -1"), Err(CliError::Invalid { .. })));
        assert!(matches!(args("merge-instructions --summary s.json"), Err(CliError::Required(_))));
        assert!(matches!(
            args("merge-instructions --summary s.json --per-request p.json --skipped no"),
            Err(CliError::Required(_))
        ));
        assert!(matches!(args("merge-instructions --per-request p.json"), Err(CliError::Required("--summary"))));
    }

    #[test]
    fn run_defaults() {
        let Ok(Command::Run(run)) = args("run --quick") else { panic!("run parses") };
        assert!(run.quick && run.pin);
        assert_eq!((run.rounds, run.configs.len()), (3, 8), "every configuration, sidecar-envoy and gRPC included");
        assert!(run.configs.contains(&Config::GrpcTonic) && run.configs.contains(&Config::GrpcMesh));
    }

    #[test]
    fn merge_instructions_parses() {
        let Ok(Command::MergeInstructions(merge)) = args("merge-instructions --summary s.json --skipped flag") else {
            panic!("merge-instructions parses")
        };
        assert_eq!((merge.skipped.as_deref(), merge.per_request), (Some("flag"), None));
    }
}
