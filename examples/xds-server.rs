//! A server configured only by an xDS control plane (gRFC A36): its inbound Listener says whether
//! connections use mTLS (and with which certificate provider instance) and who may call what
//! (RBAC, gRFC A41). It serves two things on one port:
//!
//! - `helloworld.Greeter/SayHello`, answering `hello NAME from VERSION, you are CALLER`;
//! - any other path (HTTP/1.1 or HTTP/2): the echo handler, answering `CALLER VERSION`, where
//!   CALLER is the caller's SPIFFE ID (`anonymous` on a plaintext connection).
//!
//! ```text
//! cargo run --features xds --example xds-server -- --bootstrap FILE --listen ADDR [--version V]
//! ```
//!
//! The Listener is the bootstrap's `server_listener_resource_name_template` with `%s` replaced
//! by the bound `IP:port` (Istio: `xds.istio.io/grpc/lds/inbound/10.0.0.7:8080`). Until the
//! control plane sends it, connections are closed (the server never serves plaintext on its own).
//! A Listener that is NACKed or removed later leaves the last good configuration in force;
//! changes apply to new connections (TLS) and to the next request (RBAC).
//!
//! The first line on stdout is `listening on ADDR`, with the port actually bound. Each applied
//! configuration and each refusal is reported on stderr. Ctrl-C or SIGTERM drains the server and
//! prints the handshake and authorization counts. Exits 2 on bad usage, 1 if the bootstrap cannot
//! be used or the address cannot be bound.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{convert::Infallible, io::Write, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh::{
    tonic::PeerIdentityExt,
    tower::{PeerIdentity, authz::AuthorizationLayer, server::Server},
    xds::{Bootstrap, XdsDiscovery},
};

/// The code generated from `examples/proto/helloworld/helloworld.proto`.
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}

use pb::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: xds-server --bootstrap FILE --listen ADDR [--version V]";

struct Args {
    bootstrap: PathBuf,
    listen: String,
    version: String,
}

fn parse_args() -> Result<Args, String> {
    let (mut bootstrap, mut listen, mut version) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--bootstrap" => bootstrap = Some(PathBuf::from(value("--bootstrap")?)),
            "--listen" => listen = Some(value("--listen")?),
            "--version" => version = Some(value("--version")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args {
        bootstrap: bootstrap
            .ok_or("--bootstrap FILE is required (a gRFC A27 bootstrap with a server listener template)")?,
        listen: listen.ok_or("--listen ADDR is required (127.0.0.1:8080, or 127.0.0.1:0 for any free port)")?,
        version: version.unwrap_or_else(|| "v1".to_owned()),
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
    version: Arc<str>,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let caller = request.peer_identity().map_or_else(|| "anonymous".to_owned(), |p| p.id().to_string());
        let message = format!("hello {} from {}, you are {caller}", request.get_ref().name, self.version);
        Ok(tonic::Response::new(HelloReply { message }))
    }
}

/// The Greeter for its paths, the echo handler for every other.
async fn route(
    request: Request<Incoming>,
    mut greeter: GreeterServer<Hello>,
    version: Arc<str>,
) -> Result<Response<tonic::body::Body>, Infallible> {
    if request.uri().path().starts_with("/helloworld.Greeter/") {
        return tower::Service::call(&mut greeter, request).await;
    }
    let caller =
        request.extensions().get::<PeerIdentity>().map_or_else(|| "anonymous".to_owned(), |p| p.id().to_string());
    Ok(Response::new(tonic::body::Body::new(Full::new(Bytes::from(format!("{caller} {version}"))))))
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("xds-server: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(args).await {
        eprintln!("xds-server: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            eprintln!("  caused by: {cause}");
            source = cause.source();
        }
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mesh_core::identity=error,mesh::authz=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();

    let bootstrap = Bootstrap::from_file(&args.bootstrap)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let xds = XdsDiscovery::builder(bootstrap).build()?;
    let inbound = xds.inbound(addr)?;
    let authorization = AuthorizationLayer::from_watch(inbound.authorization());
    let stats = authorization.stats();
    let server = Server::builder()
        .security_from(inbound.security())
        .authorization(authorization)
        .drain_timeout(Duration::from_secs(5))
        .build()?;
    let version: Arc<str> = args.version.as_str().into();
    let greeter = GreeterServer::new(Hello { version: version.clone() });
    let service = tower::service_fn(move |request| route(request, greeter.clone(), version.clone()));
    let handle = server.spawn(listener, service)?;
    out!("listening on {addr}");
    out!("serving helloworld.Greeter and echo {}, configured by listener {}", args.version, inbound.name());

    // Say what the control plane does to this server, as it happens.
    let mut status = inbound.status();
    let reporter = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            match &now.last_error {
                Some(error) => eprintln!("xds-server: keeping the last good configuration: {error}"),
                None => eprintln!("xds-server: configuration {} applied", now.applied),
            }
        }
    });

    let signal = shutdown_signal().await;
    match &signal {
        Ok(name) => eprintln!("{name}: draining (up to 5 s)"),
        Err(error) => eprintln!("xds-server: cannot wait for Ctrl-C ({error}); shutting down"),
    }
    reporter.abort();
    let counts = handle.handshake_counts();
    handle.shutdown().await?;
    out!(
        "handshakes: {} succeeded, {} failed; calls allowed: {}, denied: {}, would deny (dry run): {}",
        counts.succeeded,
        counts.total_failed(),
        stats.allowed(),
        stats.denied(),
        stats.would_deny()
    );
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
