//! The Istio conformance corpus (`tests/istio-corpus/NAME/`): each case is the Istio YAML istiod
//! reads (`config.yaml`) and what must happen (`expect.json`): whether the clients accept what
//! istiod generates or refuse it (NACK, and of which type), and where each request of a fixed
//! list goes. One istiod runs them all: the case's file is swapped in, a marker written after it
//! tells when istiod has pushed it, then fresh mesh and grpcio clients are held to the expectation
//! and to each other. The table is printed at the end.
//!
//! Needs `MESH_ISTIOD` and `MESH_XDS_PYTHON`; skips without them unless `MESH_INTEROP=1`.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod grpc_support;
mod istiod_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use istiod_support::{
    Istiod,
    ads::{AdsRecorder, Client, RDS, short},
    grpcio::{Calls, Outcome, mesh_round},
    pair::{PUSH, Pair},
    workload::{backend, grpc::Behaviour, service_entry, workload_entry, workload_ip},
};
use mesh::{core::Discovery, xds::XdsDiscovery};

const HOST: &str = "reviews.default.svc.cluster.local";
const PORT: u16 = 9080;
const MARKER: &str = "marker.default.svc.cluster.local";

/// The fixed list of requests every case sends: (name, calls).
fn requests() -> Vec<(&'static str, Calls)> {
    let base = |n| Calls::new(n).fail_fast().timeout(Duration::from_secs(5));
    vec![
        ("plain", base(10)),
        ("header", base(10).header("end-user", "jason")),
        ("again", base(10).method("/helloworld.Greeter/SayHelloAgain")),
    ]
}

/// What a case expects of a client.
#[derive(Clone, Debug)]
struct Expect {
    about: String,
    /// `None`: every resource ACKed; `Some("CDS")`: the client NACKs that type (only that one).
    nack: Option<String>,
    /// Request name -> allowed outcomes (`v1`, `v2|v3`, `UNAVAILABLE`, ...).
    requests: BTreeMap<String, String>,
    /// Why this client is expected to differ from the other (`expect.json`'s `"mesh"` or
    /// `"grpcio"` override: a known difference, kept visible in the table).
    differs: Option<String>,
    /// `"concurrent": true`: no outcome depends on the order of calls (the case never reaches
    /// `v3`, whose failures do), so a request's calls run 10 at a time, mesh's beside grpcio's.
    concurrent: bool,
}

impl Expect {
    /// The case's expectation for each client: (mesh, grpcio).
    fn read(path: &Path) -> (Self, Self) {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let requests = |v: &serde_json::Value| -> BTreeMap<String, String> {
            v.as_object().map_or_else(BTreeMap::new, |o| {
                o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect()
            })
        };
        let base = Self {
            about: v["about"].as_str().unwrap_or_default().to_owned(),
            nack: v["nack"].as_str().map(Into::into),
            requests: requests(&v["requests"]),
            differs: None,
            concurrent: v["concurrent"].as_bool().unwrap_or(false),
        };
        assert!(!base.requests.is_empty(), "{}: no requests", path.display());
        let client = |key: &str| {
            let o = &v[key];
            if o.is_null() {
                return base.clone();
            }
            let mut e = base.clone();
            e.differs = Some(o["why"].as_str().unwrap_or_else(|| panic!("{}: {key}.why", path.display())).into());
            if o.get("nack").is_some() {
                e.nack = o["nack"].as_str().map(Into::into);
            }
            e.requests.extend(requests(&o["requests"]));
            e
        };
        (client("mesh"), client("grpcio"))
    }

    fn show(&self) -> String {
        format!(
            "{}; {}",
            self.nack.as_ref().map_or("ACK".to_owned(), |t| format!("NACK {t}")),
            self.requests.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        )
    }
}

/// The labels of a round's calls: versions and error codes.
fn labels(o: &Outcome) -> BTreeSet<String> {
    o.versions.keys().chain(o.errors.keys()).cloned().collect()
}

fn matches(spec: &str, o: &Outcome) -> bool {
    let allowed: BTreeSet<String> = spec.split('|').map(str::to_owned).collect();
    let seen = labels(o);
    !seen.is_empty() && seen.is_subset(&allowed)
}

fn show(o: &Outcome) -> String {
    let mut parts: Vec<String> = o.versions.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    parts.extend(o.errors.iter().map(|(k, n)| format!("{k}:{n}")));
    parts.join(",")
}

/// Which types a client NACKed.
fn nacked(c: &Client) -> BTreeSet<String> {
    c.sent.iter().filter(|s| matches!(s.answer, Some(Some(_)))).map(|s| short(&s.type_url).to_owned()).collect()
}

/// What istiod sent: resources per type in the latest response of each.
fn sent(c: &Client) -> String {
    let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &c.sent {
        latest.insert(short(&s.type_url), s.resources.len());
    }
    ["LDS", "RDS", "CDS", "EDS"]
        .iter()
        .map(|t| format!("{}{}", &t[..1], latest.get(t).map_or("-".into(), |n| n.to_string())))
        .collect::<Vec<_>>()
        .join(" ")
}

fn marker(case: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: marker, namespace: default}}
spec:
  hosts: [{MARKER}]
  http:
  - match: [{{headers: {{x-corpus-case: {{exact: {case}}}}}}}]
    route: [{{destination: {{host: {MARKER}}}}}]
"
    )
}

/// The cases, every one unless `MESH_CORPUS_ONLY` names some (comma-separated, while working on
/// them; the full run, which CI makes, must then have at least 30).
fn cases() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio-corpus");
    let only = std::env::var("MESH_CORPUS_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|n| n.trim() == name));
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .filter(|(name, _)| wanted(name))
        .collect();
    out.sort();
    out
}

struct Row {
    name: String,
    resources: String,
    mesh: String,
    grpcio: String,
    expected: String,
    problems: Vec<String>,
    /// A known difference between mesh and grpcio, each held to its own expectation.
    known: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_corpus_through_istiod_into_mesh_and_grpcio() {
    let Some((binary, python)) = istiod_support::peers() else { return };
    let started = std::time::Instant::now();
    let v1 = backend(workload_ip(1), "reviews", "v1", Behaviour::Answer).await;
    let v2 = backend(workload_ip(2), "reviews", "v2", Behaviour::Answer).await;
    let v3 = backend(workload_ip(3), "reviews", "v3", Behaviour::FailThirtyPercent).await;
    let v4 = backend(workload_ip(4), "reviews", "v4", Behaviour::Delay(Duration::from_secs(1))).await;
    let mut base: Vec<(String, String)> = vec![
        ("base-se".into(), service_entry("reviews", HOST, PORT, "reviews")),
        ("base-marker-se".into(), service_entry("marker", MARKER, 9999, "marker")),
        ("marker".into(), marker("none")),
    ];
    for (n, (v, b)) in [("v1", &v1), ("v2", &v2), ("v3", &v3), ("v4", &v4)].into_iter().enumerate() {
        base.push((
            format!("base-we{n}"),
            workload_entry(&format!("reviews-{v}"), "reviews", v, b.handle.local_addr(), "reviews"),
        ));
    }
    let initial: Vec<(&str, &str)> = base.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let istiod = Istiod::start(&binary, &initial).await;
    let recorder = AdsRecorder::start(istiod.grpc).await;

    // The sentinel: a client of the marker's target, whose route names the case istiod last pushed.
    let sentinel_dir = tempfile::tempdir().unwrap();
    let sentinel_spec = istiod_support::workload::NodeSpec::new("sentinel", [127, 0, 0, 1].into(), "sentinel");
    let sentinel_bootstrap = istiod_support::workload::bootstrap(sentinel_dir.path(), recorder.addr, &sentinel_spec);
    let sentinel =
        XdsDiscovery::builder(mesh::xds::Bootstrap::from_file(&sentinel_bootstrap).unwrap()).build().unwrap();
    let _marker_watch = sentinel.watch(&sentinel.target(&format!("{MARKER}:9999")).unwrap());

    let mut rows = Vec::new();
    for (name, dir) in cases() {
        let (mesh_expect, grpcio_expect) = Expect::read(&dir.join("expect.json"));
        let known = mesh_expect.differs.clone().or_else(|| grpcio_expect.differs.clone());
        let case_started = std::time::Instant::now();
        istiod.apply("case", &std::fs::read_to_string(dir.join("config.yaml")).unwrap());
        istiod.apply("marker", &marker(&name));
        let rds_names_case =
            |c: &Client| c.acked(RDS).values().any(|a| String::from_utf8_lossy(&a.value).contains(name.as_str()));
        recorder.wait(&sentinel_spec.id(), &format!("istiod's push of case {name}"), PUSH, rds_names_case).await;

        let pushed = case_started.elapsed();
        let mut pair = Pair::start_named(&recorder, &python, &format!("{HOST}:{PORT}"), "productpage", &name);
        let mut problems = Vec::new();
        let (mut mesh_cells, mut grpcio_cells) = (Vec::new(), Vec::new());
        for (request, calls) in requests() {
            let (m, g) = if mesh_expect.concurrent {
                pair.round(&calls.concurrency(10)).await
            } else {
                // One after the other: the backends that fail a share of calls count them together.
                (mesh_round(&pair.channel, &calls).await, pair.grpcio.round(&calls).await)
            };
            let spec = mesh_expect.requests.get(request).map_or("?", String::as_str);
            let grpcio_spec = grpcio_expect.requests.get(request).map_or("?", String::as_str);
            if !matches(spec, &m) {
                problems.push(format!("mesh {request}: {} (expected {spec}; {:?})", show(&m), m.first_error));
            }
            if !matches(grpcio_spec, &g) {
                problems.push(format!("grpcio {request}: {} (expected {grpcio_spec}; {:?})", show(&g), g.first_error));
            }
            if spec.contains('|') || spec != grpcio_spec {
                // A mix (each must stay inside it; they need not draw the same), or a known
                // difference.
            } else if labels(&m) != labels(&g) {
                problems.push(format!("{request}: mesh {} but grpcio {}", show(&m), show(&g)));
            }
            mesh_cells.push(format!("{request}={}", show(&m)));
            grpcio_cells.push(format!("{request}={}", show(&g)));
        }
        let called = case_started.elapsed();
        let (mesh_client, grpcio_client) = pair.wait_settled(&recorder).await;
        for (who, c, expect) in [("mesh", &mesh_client, &mesh_expect), ("grpcio", &grpcio_client, &grpcio_expect)] {
            let want: BTreeSet<String> = expect.nack.iter().cloned().collect();
            if nacked(c) != want {
                problems.push(format!("{who} NACKed {:?}, expected {want:?}: {:?}", nacked(c), c.nacks()));
            }
        }
        let ack = |c: &Client| match nacked(c) {
            n if n.is_empty() => "ACK".to_owned(),
            n => format!("NACK {}", n.into_iter().collect::<Vec<_>>().join("+")),
        };
        let expected = match &known {
            None => mesh_expect.show(),
            Some(why) => format!("mesh {}; grpcio {} (differs: {why})", mesh_expect.show(), grpcio_expect.show()),
        };
        rows.push(Row {
            name: name.clone(),
            resources: sent(&mesh_client),
            mesh: format!("{}; {}", ack(&mesh_client), mesh_cells.join(" ")),
            grpcio: format!("{}; {}", ack(&grpcio_client), grpcio_cells.join(" ")),
            expected,
            problems,
            known: known.is_some(),
        });
        eprintln!(
            "case {name} ({}): {:?}; pushed in {pushed:.1?}, called by {called:.1?}, settled by {:.1?}",
            mesh_expect.about,
            rows.last().unwrap().problems,
            case_started.elapsed()
        );
    }

    println!("\n| name | istiod resources | mesh | grpcio | expected |\n|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} |", r.name, r.resources, r.mesh, r.grpcio, r.expected);
    }
    let agree = rows.iter().filter(|r| r.problems.is_empty() && !r.known).count();
    let known: Vec<&str> = rows.iter().filter(|r| r.known).map(|r| r.name.as_str()).collect();
    println!("\n{agree} of {} cases: mesh and grpcio agree with each other and the expectation", rows.len());
    println!("{} known differences, each client held to its own expectation: {known:?}", known.len());
    println!("corpus took {:?}", started.elapsed());
    if std::env::var_os("MESH_CORPUS_ONLY").is_some() {
        println!("only the cases MESH_CORPUS_ONLY names were run");
    } else {
        assert!(rows.len() >= 30, "the corpus has {} cases", rows.len());
    }
    let failures: Vec<String> =
        rows.iter().filter(|r| !r.problems.is_empty()).map(|r| format!("{}: {:?}", r.name, r.problems)).collect();
    assert!(failures.is_empty(), "cases that disagree:\n{}", failures.join("\n"));
    drop((v1, v2, v3, v4));
}
