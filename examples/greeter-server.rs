//! The standard gRPC `helloworld.Greeter` served on the mesh, over mutual TLS: the other half of
//! `greeter-client`, and a target for any gRPC stack (grpcurl, Python's grpcio, Go, Java).
//!
//! ```text
//! cargo run --example greeter-server -- --listen ADDR --ca FILE --cert FILE --key FILE [--version NAME] [--allow SPIFFE_ID]...
//! cargo run --example greeter-server -- --listen ADDR --workload-api SOCKET [--version NAME] [--allow SPIFFE_ID]...
//! ```
//!
//! With `--workload-api SOCKET` (`unix:/run/spire/agent.sock`; `SPIFFE_ENDPOINT_SOCKET` when no
//! identity flag is given) the SVID and trust bundles come from the SPIFFE Workload API (a SPIRE
//! agent) instead of files, each renewal used by the next handshake; no SVID within 10 s is an
//! error (exit 1), never a plaintext server.
//!
//! The server presents `--cert`/`--key` and requires a client certificate chained to `--ca` that
//! carries a SPIFFE ID of the server's own trust domain. `SayHello` answers
//! `hello NAME from VERSION, you are CALLER_SPIFFE_ID` (`--version` defaults to `v1`).
//!
//! With `--allow` (repeatable), only the callers named may call; any other gets
//! `PERMISSION_DENIED`. Without it, every caller that completes the handshake is answered. A
//! caller's `grpc-timeout` is enforced: past it, the handler stops and the caller gets
//! `DEADLINE_EXCEEDED`.
//!
//! The first line on stdout is `listening on ADDR`, with the port actually bound (ADDR may end in
//! `:0`). Each call is logged on stderr. Ctrl-C or SIGTERM drains the server (`GOAWAY`, calls in
//! flight finish) and prints the handshake and authorization counts.
//!
//! Exits 2 on bad usage, 1 if the identity cannot be had or the address cannot be bound.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/identity.rs"]
mod identity;

use std::{io::Write, time::Duration};

use mesh::{
    core::{
        SpiffeId,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tonic::{GrpcServer, PeerIdentityExt},
    tower::{authz::AuthorizationLayer, server::Server, telemetry::TelemetryLayer},
};
use tonic::{Request, Response, Status};

/// The code generated from `examples/proto/helloworld/helloworld.proto` (by `build.rs`).
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}

use pb::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: greeter-server --listen ADDR (--ca FILE --cert FILE --key FILE | --workload-api SOCKET) \
                     [--version NAME] [--allow SPIFFE_ID]...";

struct Args {
    listen: String,
    identity: identity::IdentityArgs,
    version: String,
    allow: Vec<SpiffeId>,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut identity, mut version, mut allow) =
        (None, identity::IdentityFlags::default(), None, Vec::new());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        if identity.take(&arg, &mut value)? {
            continue;
        }
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
            "--version" => version = Some(value("--version")?),
            "--allow" => {
                let id = value("--allow")?;
                allow.push(SpiffeId::new(&id).map_err(|e| format!("--allow: {e}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen ADDR is required (127.0.0.1:50051, or 127.0.0.1:0 for any free port)")?,
        identity: identity.finish("server")?,
        version: version.unwrap_or_else(|| "v1".to_owned()),
        allow,
    })
}

/// Writes a line to stdout, ignoring a closed pipe (a script may stop reading after the port).
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

struct Hello {
    version: String,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // The mTLS server verified the caller's SPIFFE ID; tonic hands it over in the extensions.
        let caller = request.peer_identity().map_or_else(|| "?".to_owned(), |p| p.id().to_string());
        let name = &request.get_ref().name;
        eprintln!("SayHello from {caller}: name {name:?}");
        let message = format!("hello {name} from {}, you are {caller}", self.version);
        Ok(Response::new(HelloReply { message }))
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("greeter-server: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(args).await {
        eprintln!("greeter-server: {error}");
        let (mut last, mut source) = (error.to_string(), error.source());
        while let Some(cause) = source {
            // Many errors repeat their cause in their own message; print each text once.
            let text = cause.to_string();
            if !last.ends_with(&text) {
                eprintln!("  caused by: {text}");
            }
            (last, source) = (text, cause.source());
        }
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mesh_core::identity=error,mesh::authz=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let identity = args.identity.load().await?;
    let me = identity.current().credentials().spiffe_id().clone();

    let server = Server::builder().identity(identity).drain_timeout(Duration::from_secs(5)).build()?;
    // Spans and request metrics for every call, denied ones included.
    let mut telemetry = TelemetryLayer::server("greeter".parse()?);
    if let Ok(version) = args.version.parse() {
        telemetry = telemetry.version(version);
    }
    let mut grpc = GrpcServer::new(server.clone()).telemetry(telemetry);
    let mut stats = None;
    if !args.allow.is_empty() {
        let from = args.allow.iter().cloned().map(PrincipalMatch::Exact).collect();
        let layer = AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(from)]));
        stats = Some(layer.stats());
        grpc = grpc.authorization(layer);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let handle = grpc.spawn(listener, GreeterServer::new(Hello { version: args.version.clone() }))?;
    out!("listening on {}", handle.local_addr());
    out!("serving helloworld.Greeter {} as {me}", args.version);
    if args.allow.is_empty() {
        out!("authorization: none; every caller of trust domain {} that completes mTLS is answered", me.trust_domain());
    } else {
        let allowed: Vec<String> = args.allow.iter().map(ToString::to_string).collect();
        out!("authorization: enforce; allowing only {} (others get PERMISSION_DENIED)", allowed.join(", "));
    }

    let signal = shutdown_signal().await;
    match &signal {
        Ok(name) => eprintln!("{name}: draining (up to 5 s)"),
        Err(error) => eprintln!("greeter-server: cannot wait for Ctrl-C ({error}); shutting down"),
    }
    handle.shutdown().await?;
    let counts = server.handshake_counts();
    let mut line = format!("handshakes: {} succeeded, {} failed", counts.succeeded, counts.total_failed());
    if let Some(stats) = stats {
        line.push_str(&format!("; calls allowed: {}, denied: {}", stats.allowed(), stats.denied()));
    }
    out!("{line}");
    signal.map(|_| ()).map_err(Into::into)
}

/// Ctrl-C, or SIGTERM on unix; returns the signal's name.
async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.map(|()| "Ctrl-C"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
}
