//! mesh in one process: three backends, a client that calls them by service name through
//! discovery, and endpoint changes while traffic flows.
//!
//! ```text
//! cargo run --example quickstart [-- --requests 3000 --concurrency 8 --plaintext --json]
//! ```
//!
//! Every hop is mutual TLS with SPIFFE identities from a throwaway development CA (the backends
//! are `spiffe://example.org/reviews`, the client `spiffe://example.org/frontend`); `--plaintext`
//! opts out.
//!
//! The client starts with `backend-1` and `backend-2`. A third of the way through, `backend-3`
//! joins; two thirds of the way, `backend-1` leaves discovery, and once no caller can still be
//! heading to it, it shuts down gracefully. The table shows which backend answered under which
//! snapshot version. Exits 1 if any request failed.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::dev::DevCa},
    tower::{
        client::MeshClient,
        server::{Server, ServerHandle},
    },
};
use tokio::sync::watch;
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    requests: usize,
    concurrency: usize,
    plaintext: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { requests: 3000, concurrency: 8, plaintext: false, json: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |flag: &str| -> Result<usize, String> {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            value.parse().map_err(|_| format!("{flag}: {value:?} is not a positive number"))
        };
        match arg.as_str() {
            "--requests" => args.requests = number("--requests")?,
            "--concurrency" => args.concurrency = number("--concurrency")?,
            "--json" => args.json = true,
            "--plaintext" => args.plaintext = true,
            "-h" | "--help" => {
                println!("usage: quickstart [--requests N] [--concurrency N] [--plaintext] [--json]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.requests < 3 || args.concurrency == 0 {
        return Err("--requests must be at least 3 and --concurrency at least 1".into());
    }
    Ok(args)
}

/// A backend that answers with its name.
async fn start_backend(name: &'static str, identity: Option<IdentitySource>) -> Result<ServerHandle, Error> {
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(http::Response::new(name.to_string()))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = match identity {
        Some(identity) => Server::builder().identity(identity),
        None => Server::builder().plaintext(),
    };
    Ok(server.build()?.spawn(listener, service)?)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("quickstart: {message}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(error) => {
            eprintln!("quickstart: {error}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<usize, Error> {
    let names = ["backend-1", "backend-2", "backend-3"];
    // Identities from a development CA; in production, IdentitySource::from_files reads what a
    // SPIRE agent or cert-manager writes, and renews it live.
    let ca = DevCa::new("example.org".parse()?)?;
    let (server_identity, client_identity) = if args.plaintext {
        (None, None)
    } else {
        (Some(IdentitySource::fixed(ca.identity("/reviews")?)), Some(IdentitySource::fixed(ca.identity("/frontend")?)))
    };
    let mut backends = Vec::new();
    for name in names {
        backends.push(start_backend(name, server_identity.clone()).await?);
    }
    let addrs: Vec<_> = backends.iter().map(ServerHandle::local_addr).collect();
    let label = |addr| names[addrs.iter().position(|a| *a == addr).unwrap_or(0)];

    // Discovery: the `reviews` service starts on backends 1 and 2.
    let service: ServiceName = "reviews".parse()?;
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(service.clone())
            .identity("spiffe://example.org/reviews".parse()?)
            .endpoint(Endpoint::new(addrs[0]))
            .endpoint(Endpoint::new(addrs[1]))
            .build()?,
    );
    let client = MeshClient::builder(discovery.clone(), service.clone());
    let client = match client_identity {
        Some(identity) => client.identity(identity),
        None => client.plaintext(),
    };
    let client = client.build::<Empty<bytes::Bytes>>()?;
    if !args.json {
        println!(
            "quickstart: {} requests from {} concurrent callers to service `reviews`, resolved through discovery, over {}",
            args.requests,
            args.concurrency,
            if args.plaintext {
                "plaintext (--plaintext)"
            } else {
                "mutual TLS (spiffe://example.org/frontend -> spiffe://example.org/reviews)"
            }
        );
        for (name, addr) in names.iter().zip(&addrs) {
            println!("  {name} listens on {addr}");
        }
    }

    // Callers take request tickets until all are sent, and record who answered under which
    // snapshot version.
    let tickets = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let answered: Arc<Mutex<BTreeMap<(u64, String), usize>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    // Set to the version without backend-1; callers count themselves once they completed a
    // request sent under it, after which none of them can still be heading to backend-1.
    let removal_version = Arc::new(AtomicU64::new(0));
    let (moved_tx, mut moved_rx) = watch::channel(0usize);
    let moved_tx = Arc::new(moved_tx);
    let mut callers = Vec::new();
    for _ in 0..args.concurrency {
        let (removal_version, moved_tx) = (removal_version.clone(), moved_tx.clone());
        let (client, tickets, done_tx, answered, failures, discovery, service) = (
            client.clone(),
            tickets.clone(),
            done_tx.clone(),
            answered.clone(),
            failures.clone(),
            discovery.clone(),
            service.clone(),
        );
        let total = args.requests;
        callers.push(tokio::spawn(async move {
            let mut moved = false;
            while tickets.fetch_add(1, Ordering::Relaxed) < total {
                let version = discovery.get(&service).map_or(0, |s| s.version());
                let request = http::Request::get("/reviews/42").body(Empty::new()).expect("static request");
                let outcome = match client.clone().oneshot(request).await {
                    Ok(response) if response.status().is_success() => {
                        response.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string())
                    }
                    Ok(response) => Err(format!("status {}", response.status())),
                    Err(error) => Err(error.to_string()),
                };
                match outcome {
                    Ok(body) => {
                        let who = String::from_utf8_lossy(&body).into_owned();
                        *answered.lock().expect("poisoned").entry((version, who)).or_default() += 1;
                    }
                    Err(error) => failures.lock().expect("poisoned").push(error),
                }
                let removal = removal_version.load(Ordering::SeqCst);
                if !moved && removal != 0 && version >= removal {
                    moved = true;
                    moved_tx.send_modify(|n| *n += 1);
                }
                done_tx.send_modify(|n| *n += 1);
            }
            // A caller that runs out of tickets heads nowhere.
            if !moved {
                moved_tx.send_modify(|n| *n += 1);
            }
        }));
    }

    // The operator: change the endpoint set while traffic flows.
    let third = args.requests / 3;
    done_rx.wait_for(|n| *n >= third).await?;
    let v2 = discovery.update(&service, |spec| spec.endpoints.push(Endpoint::new(addrs[2])))?;
    let mut changes = vec![(v2.version(), format!("{} joined", label(addrs[2])))];
    done_rx.wait_for(|n| *n >= 2 * third).await?;
    let v3 = discovery.update(&service, |spec| spec.endpoints.retain(|ep| ep.address != addrs[0]))?;
    changes.push((v3.version(), format!("{} left and drains", label(addrs[0]))));
    removal_version.store(v3.version(), Ordering::SeqCst);
    // The operator's order, as with a Kubernetes preStop hook: out of discovery first, then
    // drain once traffic has moved. A request that raced the drain on an idle keep-alive
    // connection would fail; retries (a later layer) cover that for idempotent requests.
    let concurrency = args.concurrency;
    moved_rx.wait_for(|n| *n >= concurrency).await?;
    let leaving = backends.remove(0);
    let drained = tokio::spawn(leaving.shutdown());

    for caller in callers {
        caller.await?;
    }
    drained.await??;
    for backend in backends {
        backend.shutdown().await?;
    }

    let answered = answered.lock().expect("poisoned").clone();
    let failures = failures.lock().expect("poisoned").clone();
    let versions: Vec<u64> = {
        let mut v: Vec<u64> = answered.keys().map(|(v, _)| *v).collect();
        v.dedup();
        v
    };
    let per_backend = |name: &str| answered.iter().filter(|((_, who), _)| who == name).map(|(_, n)| n).sum::<usize>();

    if args.json {
        let backends: Vec<String> = names.iter().map(|n| format!("\"{n}\":{}", per_backend(n))).collect();
        println!(
            "{{\"requests\":{},\"errors\":{},\"mtls\":{},\"backends\":{{{}}},\"snapshot_versions\":{}}}",
            args.requests,
            failures.len(),
            !args.plaintext,
            backends.join(","),
            versions.len()
        );
    } else {
        println!();
        println!("{:<34} {:>10} {:>10} {:>10}", "snapshot version (when sent)", names[0], names[1], names[2]);
        for version in &versions {
            let what = match changes.iter().find(|(v, _)| v == version) {
                Some((_, what)) => format!("v{version}: {what}"),
                None => format!("v{version}: backend-1, backend-2"),
            };
            let count = |name: &str| answered.get(&(*version, name.to_string())).copied().unwrap_or(0);
            println!("{:<34} {:>10} {:>10} {:>10}", what, count(names[0]), count(names[1]), count(names[2]));
        }
        println!(
            "{:<34} {:>10} {:>10} {:>10}",
            "total",
            per_backend(names[0]),
            per_backend(names[1]),
            per_backend(names[2])
        );
        println!();
        println!("failed requests: {}", failures.len());
        for failure in failures.iter().take(5) {
            println!("  {failure}");
        }
        if failures.is_empty() {
            println!("every request succeeded while the endpoint set changed twice");
        }
    }
    Ok(failures.len())
}
