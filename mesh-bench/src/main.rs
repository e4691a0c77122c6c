//! `mesh-bench`: mesh side by side with bare hyper, bare hyper + rustls mTLS, and nginx / haproxy
//! sidecar pairs, with one Rust load generator for every configuration.
//!
//! ```text
//! mesh-bench run [--quick] [--rounds N] [--configs a,b,..] [--out DIR] [--no-pin]
//! mesh-bench server --config NAME --certs DIR
//! mesh-bench client --config NAME --certs DIR --ports P[,P..] --workload W --warmup S --duration S
//! mesh-bench merge-instructions --summary FILE (--per-request FILE [--method TEXT] | --skipped REASON)
//! mesh-bench certs --out DIR
//! ```
//!
//! `run` is the whole benchmark: it writes certificates, then for each round and each
//! configuration (interleaved: A B C A B C ...) starts the server (and the proxies) pinned to one
//! core and a client process per workload pinned to the other, samples every process's CPU time
//! and peak RSS over the measured window, and writes `DIR/summary.json` and a table on stdout.
//! `server` and `client` are the child processes it starts; `merge-instructions` adds the
//! instruction counts of `bench/per-request.sh` to the summary; `docs/benchmarks.md` says more.

mod certs;
mod cli;
mod configs;
mod goals;
mod grpc;
mod hello;
mod idle;
mod instructions;
mod loadgen;
mod measurement;
mod mesh_config;
mod otlp_sink;
mod perfstat;
mod plumbing;
mod procstat;
mod report;
mod run;
mod sender;
mod server;
mod sidecars;
mod tls;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("mesh-bench: {error}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let outcome = match command {
        cli::Command::Help => {
            plumbing::println_out(cli::USAGE);
            Ok(())
        }
        cli::Command::Certs { out } => certs::write(&out).map(|_| ()),
        cli::Command::Server(args) => server::main(args),
        cli::Command::Client(args) => loadgen::main(args),
        cli::Command::Run(args) => run::main(args),
        cli::Command::MergeInstructions(args) => instructions::merge(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mesh-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
