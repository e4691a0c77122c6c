//! gRPC's interop test server (`grpc.testing.TestService`) on mesh's `GrpcServer`, so any gRPC
//! interop client (grpc-go's, grpc-java's, C-core's) can run the cross-language test cases
//! against mesh's server stack.
//!
//! ```text
//! cargo run --example interop-server -- [--port N] [--host ADDR] [--use_tls --ca FILE --cert FILE --key FILE]
//! ```
//!
//! The flags are gRPC's interop server's (`--port`, default 10000, 0 for any free port;
//! `--use_tls`; `--tls_cert_file` and `--tls_key_file` as other names of `--cert` and `--key`),
//! plus mesh's: `--host` (the address to bind, default `0.0.0.0`), and with `--use_tls` the SPIFFE
//! identity the server presents: `--cert`/`--key` and the trust bundle `--ca`. mesh's server only
//! speaks mutual TLS: with `--use_tls` a caller must present a certificate chained to `--ca`
//! with a SPIFFE ID of the server's trust domain; a client that presents none (gRPC's interop
//! clients have no flag for one) is refused in the handshake. Without `--use_tls`, plaintext.
//!
//! The first line on stdout is `listening on ADDR`, with the port actually bound. SIGTERM or
//! Ctrl-C drains the server. Exits 2 on bad usage, 1 if the identity files cannot be used or the
//! address cannot be bound.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{io::Write, path::PathBuf, time::Duration};

use mesh::{
    core::{Credentials, IdentityFiles, IdentitySource},
    tonic::GrpcServer,
    tower::server::Server,
};

#[path = "support/interop_flags.rs"]
mod flags;
#[path = "support/interop_service.rs"]
mod service;

use flags::Flags;
use service::{EchoMetadata, InteropService, pb::test_service_server::TestServiceServer};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: interop-server [--port N] [--host ADDR] [--use_tls --ca FILE --cert FILE --key FILE]";

struct Args {
    host: String,
    port: u16,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn parse_args() -> Result<Args, String> {
    let (mut host, mut port, mut use_tls) = ("0.0.0.0".to_owned(), 10000, false);
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        let (name, inline) = flag?;
        match name.as_str() {
            "port" => port = flags.number("port", inline)?,
            "host" => host = flags.value("host", inline)?,
            "use_tls" => use_tls = Flags::boolean("use_tls", inline)?,
            "ca" => ca = Some(PathBuf::from(flags.value("ca", inline)?)),
            "cert" | "tls_cert_file" => cert = Some(PathBuf::from(flags.value(&name, inline)?)),
            "key" | "tls_key_file" => key = Some(PathBuf::from(flags.value(&name, inline)?)),
            "use_alts" => {
                if Flags::boolean("use_alts", inline)? {
                    return Err("ALTS is not supported: use --use_tls (SPIFFE mutual TLS)".into());
                }
            }
            "h" | "help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag --{other} (try --help)")),
        }
    }
    let tls = match (use_tls, ca, cert, key) {
        (false, None, None, None) => None,
        (true, Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        (false, ..) => return Err("--ca, --cert and --key go with --use_tls".into()),
        (true, ..) => {
            return Err("--use_tls needs the server's SPIFFE identity: --ca FILE --cert FILE --key FILE \
                        (mesh serves mutual TLS only)"
                .into());
        }
    };
    Ok(Args { host, port, tls })
}

/// Writes a line to stdout, ignoring a closed pipe (a harness may stop reading after the port).
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("interop-server: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(args).await {
        eprintln!("interop-server: {error}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mesh_core::identity=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();

    let (server, me) = match &args.tls {
        None => (Server::builder().plaintext(), None),
        Some((ca, cert, key)) => {
            let me = Credentials::from_pem_files(cert, key)?.spiffe_id().clone();
            let identity = IdentitySource::from_files(IdentityFiles::new(cert, key, ca, me.trust_domain()))?;
            (Server::builder().identity(identity), Some(me))
        }
    };
    let server = server.drain_timeout(Duration::from_secs(5)).build()?;
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let service = InteropService { ends: None, server_id: "mesh-interop-server".to_owned() };
    let handle = GrpcServer::new(server.clone()).spawn(listener, EchoMetadata::new(TestServiceServer::new(service)))?;
    out!("listening on {}", handle.local_addr());
    match me {
        Some(me) => out!("serving grpc.testing.TestService over mutual TLS as {me}"),
        None => out!("serving grpc.testing.TestService in plaintext"),
    }

    let signal = shutdown_signal().await;
    if let Err(error) = &signal {
        eprintln!("interop-server: cannot wait for a signal ({error}); shutting down");
    }
    handle.shutdown().await?;
    let counts = server.handshake_counts();
    out!("handshakes: {} succeeded, {} failed", counts.succeeded, counts.total_failed());
    signal.map_err(Into::into)
}

/// Ctrl-C, or SIGTERM on unix.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
