//! Istio's standard metrics read by the tools that read Istio's: a real Prometheus scrapes the
//! `prometheus` example (`frontend` calling `reviews-v1` and `reviews-v2` over mTLS, a 90/10
//! canary whose v2 fails 20% of its calls) and answers Flagger's Istio queries
//! (`request-success-rate`, `request-duration`, as Flagger's Istio metrics observer writes them)
//! and Kiali's workload-graph query through its HTTP API.
//!
//! Prometheus comes from `MESH_PROMETHEUS` or `prometheus` on `PATH` (Debian's `prometheus`
//! package). Without it the test skips with the reason, unless `MESH_INTEROP=1`: then it fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use support::example;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

type Http = Client<HttpConnector, Empty<bytes::Bytes>>;

/// Flagger's `request-success-rate` (pkg/metrics/observers/istio.go), templated.
const FLAGGER_SUCCESS_RATE: &str = r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}",response_code!~"5.*"}[{{ interval }}])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}[{{ interval }}])) * 100"#;
/// Flagger's `request-duration`, templated.
const FLAGGER_DURATION: &str = r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}[{{ interval }}])) by (le))"#;
/// Kiali's workload graph: requests by source and destination workload, as its namespace
/// appender groups them.
const KIALI_GRAPH: &str = r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="default"}[2m])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0"#;

fn flagger(template: &str, target: &str) -> String {
    template.replace("{{ namespace }}", "default").replace("{{ target }}", target).replace("{{ interval }}", "2m")
}

/// Prometheus's binary, or why there is none (a failure under `MESH_INTEROP=1`).
fn prometheus_binary() -> Option<PathBuf> {
    let binary = std::env::var_os("MESH_PROMETHEUS").map_or_else(|| PathBuf::from("prometheus"), PathBuf::from);
    let why = match std::process::Command::new(&binary).arg("--version").output() {
        Ok(output) if output.status.success() => return Some(binary),
        Ok(output) => format!("{} --version failed: {}", binary.display(), String::from_utf8_lossy(&output.stderr)),
        Err(error) => format!("cannot run {}: {error}", binary.display()),
    };
    if std::env::var("MESH_INTEROP").as_deref() == Ok("1") {
        panic!("MESH_INTEROP=1 but {why} (install Debian's prometheus, or set MESH_PROMETHEUS)");
    }
    eprintln!("skipping the Prometheus test: {why}");
    None
}

/// Every byte but the unreserved ones percent-encoded, for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get(client: &Http, url: &str) -> (u16, String) {
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// An instant query through Prometheus's HTTP API: each result's labels and value.
async fn query(client: &Http, prometheus: &str, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (status, body) = get(client, &format!("{prometheus}/api/v1/query?query={}", encode(promql))).await;
    assert_eq!(status, 200, "{promql}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "success", "{body}");
    json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (labels, r["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

async fn scalar(client: &Http, prometheus: &str, promql: &str) -> f64 {
    let results = query(client, prometheus, promql).await;
    assert_eq!(results.len(), 1, "{promql}: {results:?}");
    results[0].1
}

async fn line_with(lines: &mut Lines<BufReader<tokio::process::ChildStdout>>, prefix: &str) -> String {
    tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
        panic!("the example exited before printing {prefix:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {prefix:?} from the example within 180 s"))
}

/// The samples of `name` in the text format whose labels include `labels`: (labels, value).
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn flagger_and_kiali_read_istio_metrics_through_prometheus() {
    let Some(prometheus_bin) = prometheus_binary() else { return };
    let mut child = tokio::process::Command::new(example("prometheus"))
        .args(["--listen", "127.0.0.1:0", "--requests", "3000", "--istio-metrics", "--grpc-metrics", "--canary", "10"])
        .args(["--fail", "0.2", "--live"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let metrics_url = line_with(&mut lines, "metrics on ").await;
    let target = metrics_url.trim_start_matches("http://").trim_end_matches("/metrics").to_owned();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\nscrape_configs:\n  - job_name: mesh\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    // A free port for Prometheus's API (it cannot report one it picked itself).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut prometheus_child = tokio::process::Command::new(&prometheus_bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let prometheus = format!("http://127.0.0.1:{port}");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();

    // The example sends a round of traffic after each scrape: wait for all of it.
    line_with(&mut lines, "traffic done").await;
    let (_, text) = get(&client, &metrics_url).await;
    let total: f64 = samples(&text, "istio_requests_total", &[("reporter", "destination")]).iter().map(|s| s.1).sum();
    assert!(total > 3000.0, "every request and retry reached a server: {total}");
    // Until Prometheus has scraped the end of the traffic (bounded).
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let results = query(&client, &prometheus, r#"sum(istio_requests_total{reporter="destination"})"#).await;
            if results.first().is_some_and(|r| r.1 == total) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "Prometheus did not scrape the final counts ({total}) within 60 s");

    // The truth, from the example's own exposition: v2's non-5xx share at its server.
    let v2 = [("reporter", "destination"), ("destination_workload", "reviews-v2")];
    let v2_total: f64 = samples(&text, "istio_requests_total", &v2).iter().map(|s| s.1).sum();
    let v2_failed: f64 = samples(&text, "istio_requests_total", &v2)
        .iter()
        .filter(|s| s.0.contains("response_code=\"5"))
        .map(|s| s.1)
        .sum();
    let truth = 100.0 * (v2_total - v2_failed) / v2_total;
    assert!(v2_total > 150.0, "about 10% of 3000 requests (and retries) to v2: {v2_total}");
    assert!((truth - 80.0).abs() < 1.0, "v2 fails 20% of its calls, spread evenly: {truth}");

    let success = scalar(&client, &prometheus, &flagger(FLAGGER_SUCCESS_RATE, "reviews-v2")).await;
    eprintln!("Flagger request-success-rate of reviews-v2: {success:.2} (truth {truth:.2})");
    assert!((success - truth).abs() < 2.0, "Flagger's success rate {success} vs {truth}");
    let stable = scalar(&client, &prometheus, &flagger(FLAGGER_SUCCESS_RATE, "reviews-v1")).await;
    assert!((stable - 100.0).abs() < 1e-9, "v1 never fails: {stable}");

    // p99: the bucket holding the 99th percentile in the raw histogram, and Prometheus's answer.
    let buckets = samples(&text, "istio_request_duration_milliseconds_bucket", &v2);
    let mut by_le: BTreeMap<u64, f64> = BTreeMap::new();
    for (series, value) in &buckets {
        let le = series.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
        *by_le.entry(le.to_bits()).or_default() += value;
    }
    let mut cumulative: Vec<(f64, f64)> = by_le.into_iter().map(|(le, n)| (f64::from_bits(le), n)).collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rank = 0.99 * cumulative.last().unwrap().1;
    let at = cumulative.iter().position(|(_, n)| *n >= rank).unwrap();
    let (lower, upper) = (if at == 0 { 0.0 } else { cumulative[at - 1].0 }, cumulative[at].0);
    let p99 = scalar(&client, &prometheus, &flagger(FLAGGER_DURATION, "reviews-v2")).await;
    eprintln!("Flagger request-duration (p99) of reviews-v2: {p99:.3} ms, in bucket ({lower}, {upper}]");
    assert!(p99 >= lower && p99 <= upper, "p99 {p99} outside the bucket ({lower}, {upper}]");

    // Kiali's graph: the edges are frontend -> reviews-v1 and frontend -> reviews-v2.
    let graph = query(&client, &prometheus, KIALI_GRAPH).await;
    let edges: BTreeSet<(String, String, String)> = graph
        .iter()
        .map(|(l, _)| {
            (l["source_workload"].clone(), l["destination_workload"].clone(), l["destination_service"].clone())
        })
        .collect();
    let expected: BTreeSet<_> = ["reviews-v1", "reviews-v2"]
        .into_iter()
        .map(|w| ("frontend".to_owned(), w.to_owned(), "reviews".to_owned()))
        .collect();
    assert_eq!(edges, expected, "{graph:?}");
    for (labels, _) in &graph {
        assert_eq!(labels["source_canonical_service"], "frontend");
        assert_eq!(labels["destination_canonical_service"], "reviews");
        assert_eq!(labels["source_workload_namespace"], "default");
        assert_eq!(labels["request_protocol"], "http");
    }
    eprintln!("Kiali graph edges: {edges:?}");

    // gRPC's OpenTelemetry metrics, in the text format OpenTelemetry's Prometheus exporters
    // write, parsed and queried by Prometheus: one greeter call per HTTP request.
    for (query_text, want) in [
        (r#"sum(grpc_server_call_started_total{grpc_method="helloworld.Greeter/SayHello"})"#, 3000.0),
        (
            r#"sum(grpc_client_attempt_duration_seconds_count{grpc_status="OK",csm_workload_canonical_service="frontend"})"#,
            3000.0,
        ),
        // `HelloRequest { name: "frontend" }` is 10 bytes.
        (
            r#"sum(grpc_server_call_rcvd_total_compressed_message_size_bytes_sum{csm_remote_workload_canonical_service="frontend"})"#,
            30000.0,
        ),
        (r#"sum(grpc_client_call_duration_seconds_bucket{le="+Inf"})"#, 3000.0),
    ] {
        let value = scalar(&client, &prometheus, query_text).await;
        eprintln!("{query_text} = {value}");
        assert_eq!(value, want, "{query_text}");
    }

    prometheus_child.kill().await.unwrap();
    child.kill().await.unwrap();
}
