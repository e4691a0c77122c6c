//! An mTLS server that answers every request with the caller's SPIFFE ID: the other half of
//! `echo-client`, and a target for curl.
//!
//! ```text
//! cargo run --example echo-server -- --listen ADDR --ca FILE --cert FILE --key FILE [--allow SPIFFE_ID]...
//! cargo run --example echo-server -- --listen ADDR --workload-api SOCKET [--allow SPIFFE_ID]...
//! ```
//!
//! The server presents `--cert`/`--key`, requires a client certificate chained to `--ca` that
//! carries a SPIFFE ID of the server's own trust domain (read from `--cert`), and answers `200`
//! with that ID as the body. The three files are watched: rewrite them (`gen-certs` does, or a
//! SPIRE agent, or cert-manager) and the next handshake uses the new ones.
//!
//! With `--workload-api SOCKET` (`unix:/run/spire/agent.sock`; `SPIFFE_ENDPOINT_SOCKET` when no
//! identity flag is given) the SVID and trust bundles come from the SPIFFE Workload API of a SPIRE
//! agent instead, and every SVID it pushes is used by the next handshake. If the agent gives no
//! SVID within 10 s (no registration entry matches this process, say) the server exits 1 and says
//! why; it never serves without mTLS.
//!
//! With `--allow` (repeatable), only the callers named are answered; any other gets `403`.
//! Without it, every caller that completes the handshake is answered.
//!
//! The first line on stdout is `listening on ADDR`, with the port actually bound (ADDR may end in
//! `:0`). Refused handshakes are reported on stderr as they happen (`RUST_LOG=mesh_tower=debug`
//! shows the details). Ctrl-C or SIGTERM drains the server and prints the handshake counts.
//!
//! Exits 2 on bad usage, 1 if the identity cannot be had or the address cannot be bound.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/identity.rs"]
mod identity;

use std::{
    convert::Infallible,
    io::Write,
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::body::Incoming;
use mesh::{
    core::{
        SpiffeId,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tower::{
        ConnectionInfo, HandshakeCounts, PeerIdentity,
        authz::{AuthorizationLayer, AuthorizationStats},
        server::Server,
    },
};
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: echo-server --listen ADDR (--ca FILE --cert FILE --key FILE | --workload-api SOCKET) \
                     [--allow SPIFFE_ID]...";

struct Args {
    listen: String,
    identity: identity::IdentityArgs,
    allow: Vec<SpiffeId>,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut identity, mut allow) = (None, identity::IdentityFlags::default(), Vec::new());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        if identity.take(&arg, &mut value)? {
            continue;
        }
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
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
        listen: listen.ok_or("--listen ADDR is required (127.0.0.1:8443, or 127.0.0.1:0 for any free port)")?,
        identity: identity.finish("server")?,
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

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("echo-server: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(args).await {
        eprintln!("echo-server: {error}");
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mesh_core::identity=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let identity = args.identity.load().await?;
    let me = identity.current().credentials().spiffe_id().clone();

    // With --allow: enforce a policy allowing exactly those callers; anyone else gets 403.
    let authz = (!args.allow.is_empty()).then(|| {
        let from = args.allow.iter().cloned().map(PrincipalMatch::Exact).collect();
        AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(from)]))
    });
    let stats = authz.as_ref().map(AuthorizationLayer::stats);
    let echo = ServiceBuilder::new().option_layer(authz).service_fn(|req: Request<Incoming>| async move {
        let caller = req.extensions().get::<PeerIdentity>().map(|p| p.id().to_string()).unwrap_or_default();
        Ok::<_, Infallible>(Response::new(caller))
    });
    // Logs each request with its outcome, 403s included.
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let echo = echo.clone();
        async move {
            let caller = req.extensions().get::<PeerIdentity>().map_or("?".to_owned(), |p| p.id().to_string());
            let from = req.extensions().get::<ConnectionInfo>().map(|c| c.remote_addr);
            let line = format!("{} {} from {caller} ({})", req.method(), req.uri().path(), addr(from));
            let response = echo.oneshot(req).await?;
            eprintln!("{line}: {}", response.status());
            Ok::<_, Infallible>(response)
        }
    });

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let server = Server::builder().identity(identity.clone()).drain_timeout(Duration::from_secs(5)).build()?;
    let handle = server.spawn(listener, service)?;
    out!("listening on {}", handle.local_addr());
    out!("serving as {me} (trust domain {}, {})", me.trust_domain(), args.identity.bundle());
    if args.allow.is_empty() {
        out!("authorization: none; every caller of trust domain {} that completes mTLS is answered", me.trust_domain());
    } else {
        let allowed: Vec<String> = args.allow.iter().map(ToString::to_string).collect();
        out!("authorization: enforce; allowing only {} (others get 403)", allowed.join(", "));
    }

    // Report refused handshakes and identity renewals as they happen, until asked to stop.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut changes = identity.changes();
    let mut seen = HandshakeCounts::default();
    let started = Instant::now();
    let signal = loop {
        tokio::select! {
            signal = &mut shutdown => break signal,
            counts = handle.wait_for_handshakes(|c| c.failed != seen.failed) => {
                for (why, n) in &counts.failed {
                    let new = n - seen.failed(*why);
                    if new > 0 {
                        eprintln!("mTLS handshake refused: {why} (x{new}; RUST_LOG=mesh_tower=debug shows who and why)");
                    }
                }
                seen = counts;
            }
            change = changes.next() => {
                let current = identity.current();
                let (id, serial) = (current.credentials().spiffe_id(), current.credentials().serial());
                match change {
                    None => eprintln!("identity renewed: now {id}, certificate serial {serial}"),
                    Some(error) => eprintln!("identity renewal refused, keeping {id} (serial {serial}): {error}"),
                }
            }
        }
    };
    match &signal {
        Ok(name) => eprintln!("{name}: draining (up to 5 s)"),
        Err(error) => eprintln!("echo-server: cannot wait for Ctrl-C ({error}); shutting down"),
    }
    handle.shutdown().await?;
    out!("{}", summary(&server.handshake_counts(), stats.as_deref(), started.elapsed()));
    signal.map(|_| ()).map_err(Into::into)
}

fn addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "?".to_owned(), |a| a.to_string())
}

fn summary(counts: &HandshakeCounts, authz: Option<&AuthorizationStats>, uptime: Duration) -> String {
    let mut line = format!(
        "handshakes after {:.1} s: {} succeeded, {} failed",
        uptime.as_secs_f64(),
        counts.succeeded,
        counts.total_failed()
    );
    if !counts.failed.is_empty() {
        let reasons: Vec<String> = counts.failed.iter().map(|(why, n)| format!("{why}: {n}")).collect();
        line.push_str(&format!(" ({})", reasons.join(", ")));
    }
    if let Some(stats) = authz {
        line.push_str(&format!("; requests allowed: {}, denied: {}", stats.allowed(), stats.denied()));
    }
    line
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
