//! Calls `helloworld.Greeter/SayHello` on a service whose routes and split come from a discovery
//! file and whose pods come from DNS, as a Kubernetes headless Service publishes them: the file's
//! subsets name DNS names instead of listing endpoints.
//!
//! ```text
//! cargo run --features dns --example dns-client -- --nameserver ADDR --config FILE --requests N [--json]
//!     (--ca FILE --cert FILE --key FILE | --plaintext) [--service NAME] [--concurrency C]
//! ```
//!
//! FILE is a discovery file (YAML, or JSON if it ends in `.json`) such as:
//!
//! ```yaml
//! services:
//!   greeter:
//!     identity: spiffe://example.org/server
//!     subsets:
//!       - { name: v1, dns: _grpc._tcp.greeter-v1.default.svc.cluster.local }   # SRV: ports, weights
//!       - { name: v2, dns: greeter-v2.default.svc.cluster.local, port: 50051 }  # A/AAAA at a port
//!     routes:
//!       - name: canary
//!         targets: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
//! ```
//!
//! `--nameserver` is the DNS server asked (`IP:PORT`; `system` for the system's resolver
//! configuration). `--service` picks the service when the file has several. The client presents
//! `--cert`/`--key` and accepts a pod only if its certificate chains to `--ca` and carries the
//! service's `identity` from the file (DNS gives addresses only); `--plaintext` opts out of mTLS.
//!
//! Sends N calls, C at a time (default 4), and prints the calls per subset and per endpoint, or
//! with `--json` a last line `{"requests":N,"errors":N,"subsets":{"v1":N,...},"endpoints":{"ADDR":N,...}}`
//! (successful calls by the subset the split chose and the endpoint that answered). Exits 1 if any
//! call failed, 2 on bad usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh::{
    core::{Credentials, Discovery, FileDiscovery, IdentityFiles, IdentitySource, ServiceName},
    dns::DnsDiscovery,
    tonic::MeshChannel,
    tower::Upstream,
};

/// The code generated from `examples/proto/helloworld/helloworld.proto` (by `build.rs`).
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}

use pb::{HelloRequest, greeter_client::GreeterClient};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: dns-client --nameserver ADDR|system --config FILE --requests N [--json] \
                     (--ca FILE --cert FILE --key FILE | --plaintext) [--service NAME] [--concurrency C]";

/// How long the first snapshot (the file read, every DNS subset answered) may take.
const FIRST_SNAPSHOT: Duration = Duration::from_secs(10);

enum Tls {
    Files { ca: PathBuf, cert: PathBuf, key: PathBuf },
    Plaintext,
}

struct Args {
    nameserver: Option<SocketAddr>,
    config: PathBuf,
    requests: usize,
    json: bool,
    tls: Tls,
    service: Option<ServiceName>,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let (mut nameserver, mut config, mut requests, mut json) = (None, None, None, false);
    let (mut ca, mut cert, mut key, mut plaintext, mut service, mut concurrency) = (None, None, None, false, None, 4);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nameserver" => {
                let text = value()?;
                nameserver = Some(match text.as_str() {
                    "system" => None,
                    _ => Some(text.parse().map_err(|_| format!("--nameserver: {text:?} is not IP:PORT or system"))?),
                });
            }
            "--config" => config = Some(PathBuf::from(value()?)),
            "--requests" => requests = Some(value()?.parse().map_err(|e| format!("--requests: {e}"))?),
            "--json" => json = true,
            "--ca" => ca = Some(PathBuf::from(value()?)),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--plaintext" => plaintext = true,
            "--service" => service = Some(value()?.parse().map_err(|e| format!("--service: {e}"))?),
            "--concurrency" => concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let tls = match (ca, cert, key, plaintext) {
        (Some(ca), Some(cert), Some(key), false) => Tls::Files { ca, cert, key },
        (None, None, None, true) => Tls::Plaintext,
        (_, _, _, true) => return Err("--plaintext excludes --ca, --cert and --key".into()),
        _ => return Err("mTLS needs --ca, --cert and --key (or opt out with --plaintext)".into()),
    };
    Ok(Args {
        nameserver: nameserver.ok_or("--nameserver is required (IP:PORT, or system)")?,
        config: config.ok_or("--config is required (a discovery file)")?,
        requests: requests.ok_or("--requests is required")?,
        json,
        tls,
        service,
        concurrency,
    })
}

#[derive(Default)]
struct Tally {
    errors: usize,
    subsets: BTreeMap<String, usize>,
    endpoints: BTreeMap<String, usize>,
    first_error: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("dns-client: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("dns-client: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<bool, Error> {
    // Routes, split and identity from the file; the pods of its DNS subsets from DNS.
    let file = FileDiscovery::open(&args.config)?;
    let service = match args.service {
        Some(service) => service,
        None => match file.services().as_slice() {
            [only] => only.clone(),
            services => return Err(format!("the file has {} services: pick one with --service", services.len()).into()),
        },
    };
    let mut dns = DnsDiscovery::builder();
    if let Some(nameserver) = args.nameserver {
        dns = dns.nameserver(nameserver);
    }
    let discovery = dns.build()?.compose(file).build()?;
    let mut watch = discovery.watch(&service);
    if tokio::time::timeout(FIRST_SNAPSHOT, watch.ready()).await.is_err() {
        let why = watch.last_error().map_or("no answer yet".to_owned(), |e| e.to_string());
        return Err(format!("no configuration for {service} after {FIRST_SNAPSHOT:?}: {why}").into());
    }
    if let Some(error) = watch.last_error() {
        eprintln!("dns-client: starting with the last good endpoints: {error}");
    }

    let channel = MeshChannel::builder(discovery.clone(), service.clone());
    let channel = match &args.tls {
        Tls::Files { ca, cert, key } => {
            // The bundle's trust domain is the client's own, as its certificate names it.
            let trust_domain = Credentials::from_pem_files(cert, key)?.spiffe_id().trust_domain();
            channel.identity(IdentitySource::from_files(IdentityFiles::new(cert, key, ca, trust_domain))?)
        }
        Tls::Plaintext => channel.plaintext(),
    };
    let client = GreeterClient::new(channel.build()?);

    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mut client, tally, next, requests) = (client.clone(), tally.clone(), next.clone(), args.requests);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let result = client.say_hello(HelloRequest { name: "dns-client".into() }).await;
                    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(response) => {
                            let upstream = response.extensions().get::<Upstream>();
                            let subset =
                                upstream.and_then(|u| u.subset.as_ref()).map_or("none".into(), |s| s.to_string());
                            let endpoint = upstream.map_or("unknown".into(), |u| u.address.to_string());
                            *t.subsets.entry(subset).or_default() += 1;
                            *t.endpoints.entry(endpoint).or_default() += 1;
                        }
                        Err(status) => {
                            t.errors += 1;
                            t.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }

    let t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = &t.first_error {
        eprintln!("dns-client: first failure: {e}");
    }
    if let Some(error) = watch.last_error() {
        eprintln!("dns-client: discovery reports: {error}");
    }
    if args.json {
        // Keys in the documented order (a JSON map would sort them).
        let (subsets, endpoints) = (serde_json::to_string(&t.subsets)?, serde_json::to_string(&t.endpoints)?);
        println!(
            r#"{{"requests":{},"errors":{},"subsets":{subsets},"endpoints":{endpoints}}}"#,
            args.requests, t.errors
        );
    } else {
        for (subset, n) in &t.subsets {
            println!("subset {subset}: {n}");
        }
        for (endpoint, n) in &t.endpoints {
            println!("endpoint {endpoint}: {n}");
        }
        println!("requests {}, errors {}", args.requests, t.errors);
    }
    Ok(t.errors == 0)
}
