//! gRPC's interop test client, driving a `MeshChannel`: runs one of the cross-language interop
//! test cases against any `grpc.testing.TestService` server (grpc-go's, grpc-java's, C-core's, or
//! mesh's own `interop-server`), through the whole mesh client stack.
//!
//! ```text
//! cargo run --example interop-client -- --server_host HOST --server_port PORT --test_case CASE
//!     [--use_tls --ca FILE --cert FILE --key FILE --expect SPIFFE_ID]
//! ```
//!
//! The flags are gRPC's interop client's: `--server_host` (default `localhost`), `--server_port`
//! (default 10000), `--test_case` (default `large_unary`; `--help` lists the cases), `--use_tls`,
//! `--ca_file` (another name of `--ca`), `--use_test_ca` and `--server_host_override`, and
//! `--soak_iterations` (default 10) for `rpc_soak` and `channel_soak`. Plus mesh's, for SPIFFE
//! mutual TLS: the client presents `--cert`/`--key` and accepts the server only if its
//! certificate chains to `--ca` and carries exactly the SPIFFE ID `--expect`. mesh checks a
//! server by its SPIFFE ID, never by a host name: `--server_host_override` and `--use_test_ca`
//! are accepted so that gRPC's harnesses can pass them, and change nothing (the trust bundle is
//! always `--ca`, the name checked always `--expect`).
//!
//! The server is looked up as service `interop` in a static discovery holding one endpoint, the
//! first address `--server_host` resolves to. Prints `CASE passed` and exits 0 when the case
//! passes; prints `interop-client: CASE failed: WHY` to stderr and exits 1 when it fails (or
//! takes longer than a minute). Exits 2 on bad usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mesh::{
    core::{
        Credentials, Endpoint, IdentityFiles, IdentitySource, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery,
    },
    tonic::MeshChannel,
};

#[path = "support/interop_cases.rs"]
mod cases;
#[path = "support/interop_flags.rs"]
mod flags;
#[path = "support/interop_service.rs"]
#[allow(dead_code)]
mod service;

use cases::{CASES, Error};
use flags::Flags;

const USAGE: &str = "usage: interop-client [--server_host HOST] [--server_port PORT] [--test_case CASE] \
                     [--use_tls --ca FILE --cert FILE --key FILE --expect SPIFFE_ID] [--soak_iterations N]";

/// How long one case may take before it counts as failed.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    expect: SpiffeId,
}

struct Args {
    host: String,
    port: u16,
    case: String,
    tls: Option<Tls>,
    soak_iterations: u32,
}

fn parse_args() -> Result<Args, String> {
    let (mut host, mut port, mut case) = ("localhost".to_owned(), 10000, "large_unary".to_owned());
    let (mut use_tls, mut soak_iterations) = (false, 10);
    let (mut ca, mut cert, mut key, mut expect) = (None, None, None, None);
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        let (name, inline) = flag?;
        match name.as_str() {
            "server_host" => host = flags.value("server_host", inline)?,
            "server_port" => port = flags.number("server_port", inline)?,
            "test_case" => case = flags.value("test_case", inline)?,
            "use_tls" => use_tls = Flags::boolean("use_tls", inline)?,
            "use_test_ca" => {
                Flags::boolean("use_test_ca", inline)?;
            }
            "server_host_override" => {
                flags.value("server_host_override", inline)?;
            }
            "ca" | "ca_file" => ca = Some(PathBuf::from(flags.value(&name, inline)?)),
            "cert" => cert = Some(PathBuf::from(flags.value("cert", inline)?)),
            "key" => key = Some(PathBuf::from(flags.value("key", inline)?)),
            "expect" => {
                let id = flags.value("expect", inline)?;
                expect = Some(SpiffeId::new(&id).map_err(|e| format!("--expect: {e}"))?);
            }
            "soak_iterations" => soak_iterations = flags.number("soak_iterations", inline)?,
            "h" | "help" => {
                println!("{USAGE}\ntest cases: {}", CASES.join(", "));
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag --{other} (try --help)")),
        }
    }
    if !CASES.contains(&case.as_str()) {
        return Err(format!("--test_case {case:?} is not one this client runs: {}", CASES.join(", ")));
    }
    let tls = match (use_tls, ca, cert, key, expect) {
        (false, None, None, None, None) => None,
        (true, Some(ca), Some(cert), Some(key), Some(expect)) => Some(Tls { ca, cert, key, expect }),
        (false, ..) => return Err("--ca, --cert, --key and --expect go with --use_tls".into()),
        (true, ..) => {
            return Err("--use_tls needs --ca FILE (or --ca_file), --cert FILE, --key FILE and --expect SPIFFE_ID: \
                        mesh's client presents its own SPIFFE certificate and checks the server's SPIFFE ID"
                .into());
        }
    };
    Ok(Args { host, port, case, tls, soak_iterations })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("interop-client: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let case = args.case.clone();
    match tokio::time::timeout(CASE_TIMEOUT, run(args)).await {
        Ok(Ok(())) => println!("{case} passed"),
        Ok(Err(error)) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("interop-client: {case} failed: {:?}: {}", status.code(), status.message()),
                None => eprintln!("interop-client: {case} failed: {error}"),
            }
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("interop-client: {case} failed: not done after {CASE_TIMEOUT:?}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot resolve --server_host {}: {e}", args.host))?
        .next()
        .ok_or_else(|| format!("--server_host {} resolves to no address", args.host))?;
    let identity = match &args.tls {
        None => None,
        Some(tls) => {
            let credentials = Credentials::from_pem_files(&tls.cert, &tls.key)?;
            let trust_domain = credentials.spiffe_id().trust_domain();
            Some(IdentitySource::from_files(IdentityFiles::new(&tls.cert, &tls.key, &tls.ca, trust_domain))?)
        }
    };
    let expect = args.tls.as_ref().map(|tls| tls.expect.clone());
    let new_channel = move || -> Result<MeshChannel, Error> {
        let service: ServiceName = "interop".parse()?;
        let mut snapshot = ServiceSnapshot::builder(service.clone()).endpoint(Endpoint::new(addr));
        if let Some(expect) = &expect {
            snapshot = snapshot.identity(expect.clone());
        }
        let discovery = StaticDiscovery::new();
        discovery.set(snapshot.build()?);
        let builder = MeshChannel::builder(discovery, service);
        let builder = match &identity {
            Some(identity) => builder.identity(identity.clone()),
            None => builder.plaintext(),
        };
        Ok(builder.build()?)
    };
    let channel = new_channel()?;
    cases::run(&args.case, &channel, &new_channel, args.soak_iterations).await
}
