//! Calls `helloworld.Greeter/SayHello` on an xDS target through the whole mesh client stack fed
//! by `XdsDiscovery`: routes, weighted clusters, retries, endpoints and the endpoints' SPIFFE IDs
//! come from the control plane (istiod, or any xDS server gRPC's xDS client accepts), and change
//! live while it runs.
//!
//! ```text
//! cargo run --features xds --example xds-client -- --bootstrap FILE --target NAME --requests N [--rate R] [--concurrency C] [--json]
//! ```
//!
//! `--target` is the listener name, as in gRPC's `xds:///NAME` (Istio:
//! `reviews.default.svc.cluster.local:9080`). mTLS uses the bootstrap's certificate provider
//! instance `default` (or its only one), as the clusters' TLS contexts say; a bootstrap without
//! certificate providers means plaintext, and clusters without TLS are then accepted.
//!
//! Sends N calls, C at a time (default 1), at most R per second with `--rate`. Prints one line
//! per cluster at the end, or with `--json` a last line
//! `{"requests":N,"errors":N,"clusters":{"CLUSTER_NAME":N,...},"nacks":N}`: successful calls by
//! the cluster the xDS configuration routed them to, and the NACKs this client sent. Exits 1 if
//! any call failed, 2 on bad usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh::{
    tonic::MeshChannel,
    tower::Upstream,
    xds::{Bootstrap, XdsDiscovery},
};

/// The code generated from `examples/proto/helloworld/helloworld.proto` (by `build.rs`).
#[allow(missing_docs, unreachable_pub)]
mod pb {
    include!("proto/gen/helloworld.rs");
}

use pb::{HelloRequest, greeter_client::GreeterClient};

const USAGE: &str =
    "usage: xds-client --bootstrap FILE --target NAME --requests N [--rate R] [--concurrency C] [--json]";

struct Args {
    bootstrap: PathBuf,
    target: String,
    requests: usize,
    rate: Option<f64>,
    concurrency: usize,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut bootstrap, mut target, mut requests, mut rate, mut concurrency, mut json) =
        (None, None, None, None, 1, false);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => bootstrap = Some(PathBuf::from(value()?)),
            "--target" => target = Some(value()?),
            "--requests" => requests = Some(value()?.parse().map_err(|e| format!("--requests: {e}"))?),
            "--rate" => {
                let r: f64 = value()?.parse().map_err(|e| format!("--rate: {e}"))?;
                if !(r > 0.0 && r.is_finite()) {
                    return Err("--rate must be a positive number".into());
                }
                rate = Some(r);
            }
            "--concurrency" => concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(Args {
        bootstrap: bootstrap.ok_or("--bootstrap is required")?,
        target: target.ok_or("--target is required")?,
        requests: requests.ok_or("--requests is required")?,
        rate,
        concurrency,
        json,
    })
}

#[derive(Default)]
struct Tally {
    errors: usize,
    clusters: BTreeMap<String, usize>,
    first_error: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("xds-client: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("xds-client: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let bootstrap = Bootstrap::from_file(&args.bootstrap)?;
    let instance = if bootstrap.certificate_providers.contains_key("default") {
        Some("default".to_owned())
    } else {
        bootstrap.certificate_providers.keys().next().cloned()
    };
    let mut builder = XdsDiscovery::builder(bootstrap);
    if instance.is_none() {
        builder = builder.allow_plaintext();
    }
    let xds = builder.build()?;
    let service = xds.target(&args.target)?;
    let channel = MeshChannel::builder(xds.clone(), service.clone());
    let channel = match &instance {
        Some(instance) => channel.identity(xds.identity(instance)?),
        None => channel.plaintext(),
    };
    let client = GreeterClient::new(channel.build()?);

    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mut client, tally, next, xds, service) =
                (client.clone(), tally.clone(), next.clone(), xds.clone(), service.clone());
            let (requests, rate) = (args.requests, args.rate);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                    }
                    let result = client.say_hello(HelloRequest { name: "xds-client".into() }).await;
                    let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match result {
                        Ok(response) => {
                            let subset = response.extensions().get::<Upstream>().and_then(|u| u.subset.clone());
                            let cluster =
                                subset.and_then(|s| xds.cluster(&service, &s)).unwrap_or_else(|| "unknown".into());
                            *t.clusters.entry(cluster).or_default() += 1;
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
    let nacks = xds.status().borrow().nacks;
    let t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = &t.first_error {
        eprintln!("xds-client: first failure: {e}");
    }
    if args.json {
        let line =
            serde_json::json!({"requests": args.requests, "errors": t.errors, "clusters": t.clusters, "nacks": nacks});
        println!("{line}");
    } else {
        for (cluster, n) in &t.clusters {
            println!("{cluster}: {n}");
        }
        println!("requests {}, errors {}, nacks {nacks}", args.requests, t.errors);
    }
    Ok(t.errors == 0)
}
