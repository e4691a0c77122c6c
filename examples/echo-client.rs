//! Calls `echo-server` once through mesh's client stack, over mutual TLS, and prints the answer.
//!
//! ```text
//! cargo run --example echo-client -- --connect ADDR --ca FILE --cert FILE --key FILE --expect SPIFFE_ID
//! cargo run --example echo-client -- --connect ADDR --workload-api SOCKET --expect SPIFFE_ID
//! ```
//!
//! With `--workload-api SOCKET` (`unix:/run/spire/agent.sock`; `SPIFFE_ENDPOINT_SOCKET` when no
//! identity flag is given) the client's SVID and trust bundles come from the SPIFFE Workload API
//! (a SPIRE agent) instead of files. No SVID within 10 s is an error (exit 1), never a plaintext
//! request.
//!
//! The client presents `--cert`/`--key`, and accepts the server only if its certificate chains to
//! `--ca` and carries exactly the SPIFFE ID `--expect` names: the server is looked up as service
//! `echo` in a static discovery holding one endpoint, ADDR (`IP:PORT`, or `localhost:PORT`), whose
//! expected identity is `--expect`, as a discovery file's `identity:` would say.
//!
//! Prints the response body (the client's own SPIFFE ID, as the server saw it) to stdout and exits
//! 0 on a 2xx answer. Exits 1 on any other status (printed to stderr), and on a connection or
//! identity failure, printed to stderr with its whole chain of causes. Exits 2 on bad usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/identity.rs"]
mod identity;

use std::net::{Ipv4Addr, SocketAddr};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery, identity::tls::PeerRejected},
    tower::{PeerIdentity, client::MeshClient},
};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: echo-client --connect ADDR (--ca FILE --cert FILE --key FILE | --workload-api SOCKET) --expect SPIFFE_ID";

struct Args {
    connect: SocketAddr,
    identity: identity::IdentityArgs,
    expect: SpiffeId,
}

fn parse_args() -> Result<Args, String> {
    let (mut connect, mut identity, mut expect) = (None, identity::IdentityFlags::default(), None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        if identity.take(&arg, &mut value)? {
            continue;
        }
        match arg.as_str() {
            "--connect" => connect = Some(parse_addr(&value("--connect")?)?),
            "--expect" => {
                let id = value("--expect")?;
                expect = Some(SpiffeId::new(&id).map_err(|e| format!("--expect: {e}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args {
        connect: connect.ok_or("--connect ADDR is required (the address echo-server printed)")?,
        identity: identity.finish("client")?,
        expect: expect.ok_or("--expect SPIFFE_ID is required (the identity the server must prove)")?,
    })
}

/// `IP:PORT`, or `localhost:PORT` for 127.0.0.1. Discovery holds addresses, not host names.
fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    if let Some(port) = addr.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    Err(format!("--connect: {addr:?} is not IP:PORT (127.0.0.1:8443, [::1]:8443) or localhost:PORT"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("echo-client: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            report(&*error);
            std::process::exit(1);
        }
    }
}

/// Prints an error and every cause under it, then what the identity check said, if it failed.
fn report(error: &(dyn std::error::Error + 'static)) {
    eprintln!("echo-client: {error}");
    let (mut last, mut source) = (error.to_string(), error.source());
    while let Some(cause) = source {
        // Many errors repeat their cause in their own message; print each text once.
        let text = cause.to_string();
        if !last.ends_with(&text) {
            eprintln!("  caused by: {text}");
        }
        (last, source) = (text, cause.source());
    }
    if let Some(rejected) = PeerRejected::find(error) {
        eprintln!("identity check failed: {rejected}");
        return;
    }
    match tls_error(error) {
        Some(rustls::Error::InvalidCertificate(why)) => {
            eprintln!("identity check failed: the server's certificate does not verify against --ca ({why:?})");
        }
        // In TLS 1.3 the server checks the client's certificate after the client is done, so its
        // refusal arrives as an alert, often on the first request.
        Some(rustls::Error::AlertReceived(alert)) => eprintln!(
            "the server ended the connection with TLS alert {alert:?}: most likely it refused this client's \
             certificate (another CA, expired, or a trust domain it does not trust); its handshake counts say why"
        ),
        _ => {}
    }
}

/// The rustls error in `error`'s chain, looking inside `io::Error`s as TLS stacks wrap it.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|e| e as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// Whether the server answered with a 2xx.
async fn run(args: Args) -> Result<bool, Error> {
    let identity = args.identity.load().await?;

    let service: ServiceName = "echo".parse()?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(service.clone())
            .identity(args.expect.clone())
            .endpoint(Endpoint::new(args.connect))
            .build()?,
    );
    let client = MeshClient::builder(discovery, service).identity(identity).build::<Empty<bytes::Bytes>>()?;

    let request = http::Request::get("/").body(Empty::new())?;
    let response = client.oneshot(request).await?;
    let status = response.status();
    let server = response.extensions().get::<PeerIdentity>().map(|p| p.id().to_string());
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body);
    if status.is_success() {
        println!("{body}");
        return Ok(true);
    }
    let server = server.unwrap_or_else(|| args.expect.to_string());
    eprintln!("echo-client: {server} at {} answered {status}", args.connect);
    if !body.is_empty() {
        eprintln!("{body}");
    }
    Ok(false)
}
