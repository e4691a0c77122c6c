//! Runs the `prometheus` example as its own process, scrapes its `/metrics` over HTTP and reads
//! the Prometheus text format back: names, labels, counts and histogram consistency.
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use support::example;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A strict reader of the text exposition format: every line is a comment or a sample, or the
/// test fails naming the line.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let (mut types, mut samples) = (BTreeMap::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, labels(body).unwrap_or_else(|| panic!("bad labels in {line:?}")))
            }
            None => (series, BTreeMap::new()),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name in {line:?}");
        samples.push((name.to_owned(), labels, value));
    }
    (types, samples)
}

/// `k="v",k2="v2"` with `\\`, `\"` and `\n` escapes in values.
fn labels(body: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
    }
    Some(labels)
}

fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test]
async fn scrape_the_example() {
    let mut child = tokio::process::Command::new(example("prometheus"))
        .args(["--listen", "127.0.0.1:0", "--requests", "200"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("metrics on ") {
                return url.to_owned();
            }
        }
        panic!("the example exited before serving metrics");
    })
    .await
    .unwrap();

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let (types, samples) = parse(&text);

    assert_eq!(types["mesh_requests_total"], "counter");
    assert_eq!(types["mesh_request_duration_seconds"], "histogram");
    assert_eq!(types["mesh_discovery_endpoints"], "gauge");
    // 200 requests and the intruder's, as the frontend's application saw them.
    assert_eq!(sum(&samples, "mesh_requests_total", &[("direction", "outbound"), ("service", "reviews")]), 201.0);
    let outbound_v2 = sum(&samples, "mesh_requests_total", &[("direction", "outbound"), ("subset", "v2")]);
    assert!(outbound_v2 > 10.0 && outbound_v2 < 80.0, "about 20% of 200 to v2: {outbound_v2}");
    // The server saw every attempt: the requests, the retries, and the denied intruder.
    let retries = sum(&samples, "mesh_retries_total", &[("service", "reviews")]);
    assert!(retries >= 1.0, "v2 fails 20%: some are retried");
    assert_eq!(sum(&samples, "mesh_requests_total", &[("direction", "inbound")]), 201.0 + retries);
    let denied = [("direction", "inbound"), ("status_class", "4xx"), ("peer", "spiffe://example.org/intruder")];
    assert_eq!(sum(&samples, "mesh_requests_total", &denied), 1.0);
    assert_eq!(sum(&samples, "mesh_authz_denials_total", &[("mode", "enforce")]), 1.0);
    assert_eq!(sum(&samples, "mesh_discovery_endpoints", &[("service", "reviews"), ("subset", "v1")]), 1.0);
    assert_eq!(sum(&samples, "mesh_discovery_endpoints", &[("service", "reviews"), ("subset", "")]), 2.0);

    // Each histogram's _count equals its counter, and its buckets never decrease.
    let counters: Vec<_> = samples.iter().filter(|(n, _, _)| n == "mesh_requests_total").collect();
    assert!(!counters.is_empty());
    for (_, labels, value) in &counters {
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(sum(&samples, "mesh_request_duration_seconds_count", &pairs), *value, "{labels:?}");
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == "mesh_request_duration_seconds_bucket" && labels.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{labels:?}: {buckets:?}");
        assert_eq!(buckets.last().copied(), Some(*value), "+Inf bucket of {labels:?}");
    }
    // Bounded labels: no path ever appears.
    assert!(!text.contains("/reviews/1"));
    child.kill().await.unwrap();
}
