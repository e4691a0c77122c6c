//! Calls `helloworld.Greeter/SayHello` through a `MeshChannel`, over mutual TLS, and prints the
//! replies: the other half of `greeter-server` (or of any gRPC server with a SPIFFE certificate).
//!
//! ```text
//! cargo run --example greeter-client -- --connect ADDR --ca FILE --cert FILE --key FILE --expect SPIFFE_ID [--name NAME] [--requests N]
//! cargo run --example greeter-client -- --connect ADDR --workload-api SOCKET --expect SPIFFE_ID [--name NAME] [--requests N]
//! ```
//!
//! With `--workload-api SOCKET` (`unix:/run/spire/agent.sock`; `SPIFFE_ENDPOINT_SOCKET` when no
//! identity flag is given) the SVID and trust bundles come from the SPIFFE Workload API (a SPIRE
//! agent) instead of files; no SVID within 10 s is an error (exit 1), never a plaintext call.
//!
//! The client presents `--cert`/`--key` and accepts the server only if its certificate chains to
//! `--ca` and carries exactly the SPIFFE ID `--expect` names: the server is looked up as service
//! `greeter` in a static discovery holding one endpoint, ADDR (`IP:PORT` or `localhost:PORT`),
//! whose expected identity is `--expect`. The generated `GreeterClient` runs over the whole mesh
//! client stack, so the call gets the mesh's retries, deadline and error mapping.
//!
//! Sends `--requests` calls (default 1) with `--name` (default `world`), one after the other, and
//! prints each reply's message on its own line. Exits 0 if all succeeded; on the first failure,
//! prints `greeter-client: CODE: MESSAGE` to stderr (`PermissionDenied: ...` when the server's
//! `--allow` leaves this client out, `Unavailable: ... but spiffe://... was expected` when the
//! server is not who `--expect` says) and exits 1. Exits 2 on bad usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/identity.rs"]
mod identity;

use std::net::{Ipv4Addr, SocketAddr};

use mesh::{
    core::{Endpoint, ServiceName, ServiceSnapshot, SpiffeId, StaticDiscovery},
    tonic::MeshChannel,
};

/// The code generated from `examples/proto/helloworld/helloworld.proto` (by `build.rs`).
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}

use pb::{HelloRequest, greeter_client::GreeterClient};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: greeter-client --connect ADDR (--ca FILE --cert FILE --key FILE | --workload-api SOCKET) \
                     --expect SPIFFE_ID [--name NAME] [--requests N]";

struct Args {
    connect: SocketAddr,
    identity: identity::IdentityArgs,
    expect: SpiffeId,
    name: String,
    requests: u32,
}

fn parse_args() -> Result<Args, String> {
    let (mut connect, mut identity, mut expect) = (None, identity::IdentityFlags::default(), None);
    let (mut name, mut requests) = ("world".to_owned(), 1);
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
            "--name" => name = value("--name")?,
            "--requests" => {
                let n = value("--requests")?;
                requests = n.parse().map_err(|_| format!("--requests: {n:?} is not a count"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args {
        connect: connect.ok_or("--connect ADDR is required (the address greeter-server printed)")?,
        identity: identity.finish("client")?,
        expect: expect.ok_or("--expect SPIFFE_ID is required (the identity the server must prove)")?,
        name,
        requests,
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
    Err(format!("--connect: {addr:?} is not IP:PORT (127.0.0.1:50051, [::1]:50051) or localhost:PORT"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("greeter-client: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(args).await {
        match error.downcast_ref::<tonic::Status>() {
            Some(status) => eprintln!("greeter-client: {:?}: {}", status.code(), status.message()),
            None => eprintln!("greeter-client: {error}"),
        }
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let identity = args.identity.load().await?;

    let service: ServiceName = "greeter".parse()?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(service.clone())
            .identity(args.expect.clone())
            .endpoint(Endpoint::new(args.connect))
            .build()?,
    );
    let channel = MeshChannel::builder(discovery, service).identity(identity).build()?;
    let mut client = GreeterClient::new(channel);
    for _ in 0..args.requests {
        let reply = client.say_hello(HelloRequest { name: args.name.clone() }).await?;
        println!("{}", reply.into_inner().message);
    }
    Ok(())
}
