use std::time::Duration;

use super::*;

const GOOD: &str = "\
services:
  reviews:
    endpoints:
      - address: 127.0.0.1:9001
        labels: { version: v1 }
";

fn name() -> ServiceName {
    "reviews".parse().unwrap()
}

#[test]
fn yaml_errors_name_line_and_field() {
    let bad = "\
services:
  reviews:
    endpoints:
      - address: 127.0.0.1:9001
        weight: 2000000
";
    let err = parse(Path::new("/x/s.yaml"), bad, false).unwrap_err();
    assert_eq!(err.line(), Some(4), "the entry holding the bad value starts on line 4: {err}");
    assert_eq!(err.field(), Some("services.reviews.endpoints[0].weight"), "{err}");
    assert!(err.message().contains("invalid weight 2000000"), "{err}");
    assert!(err.to_string().starts_with("discovery file /x/s.yaml, line 4"), "{err}");

    let unknown = "services:\n  reviews:\n    endpoints: []\n    subset: []\n";
    let err = parse(Path::new("s.yaml"), unknown, false).unwrap_err();
    assert!(err.message().contains("unknown field `subset`"), "{err}");
    assert_eq!(err.line(), Some(4), "{err}");

    let inconsistent = "\
services:
  reviews:
    routes:
      - name: r
        targets: [ { subset: v3, weight: 1 } ]
";
    let err = parse(Path::new("s.yaml"), inconsistent, false).unwrap_err();
    assert!(err.message().contains("routes[0].targets[0].subset: unknown subset \"v3\""), "{err}");
    assert_eq!(err.field(), Some("services.reviews"), "{err}");
    assert!(err.line().is_some(), "{err}");

    let err = parse(Path::new("s.yaml"), "services: [1", false).unwrap_err();
    assert!(err.line().is_some(), "{err}");
}

#[test]
fn json_errors_name_line_and_field() {
    let bad = "{\"services\": {\"reviews\": {\n \"endpoints\": [{\"address\": \"nowhere\"}]}}}";
    let err = parse(Path::new("s.json"), bad, true).unwrap_err();
    assert_eq!(err.line(), Some(2), "{err}");
    assert_eq!(err.field(), Some("services.reviews.endpoints[0].address"), "{err}");
    let ok = parse(Path::new("s.json"), r#"{"services":{"reviews":{"endpoints":[]}}}"#, true).unwrap();
    assert!(ok.contains_key(&name()));
}

#[test]
fn open_requires_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = FileDiscovery::open(dir.path().join("nope.yaml")).unwrap_err();
    assert!(missing.is_io(), "{missing}");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "services: {reviews: {endpoints: [{address: x}]}}").unwrap();
    assert!(FileDiscovery::open(&path).is_err());
}

#[tokio::test]
async fn edits_are_followed_and_bad_edits_keep_the_last_good_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let discovery = FileDiscovery::open(&path).unwrap();
    let mut watch = discovery.watch(&name());
    assert_eq!(watch.ready().await.unwrap().endpoints().len(), 1);

    let write = |text: &str| {
        // Write then rename, as careful tools do, so no reload sees half a file.
        let tmp = dir.path().join(".services.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    let wait = Duration::from_secs(20);

    write(&format!("{GOOD}      - address: 127.0.0.1:9002\n"));
    let snap = tokio::time::timeout(wait, watch.wait_for(|s| s.endpoints().len() == 2)).await.unwrap().unwrap();
    let version = snap.version();

    write("services:\n  reviews:\n    endpoints: [ { address: 127.0.0.1:9003, weight: -1 } ]\n");
    tokio::time::timeout(wait, async {
        while watch.last_error().is_none() {
            watch.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let error = watch.last_error().unwrap().to_string();
    assert!(error.contains("services.yaml, line ") && error.contains("endpoints[0].weight"), "{error}");
    assert_eq!(watch.current_version(), version, "a bad edit publishes nothing");
    assert_eq!(watch.current().unwrap().endpoints().len(), 2, "a bad edit keeps the endpoints");
    assert!(discovery.last_error().is_some());

    // Removing the service from the file keeps its snapshot, with an error.
    write("services: {}\n");
    discovery.reload().unwrap();
    assert_eq!(watch.current().unwrap().endpoints().len(), 2);
    assert!(watch.last_error().unwrap().to_string().contains("not in the file"));

    write(GOOD);
    tokio::time::timeout(wait, watch.wait_for(|s| s.endpoints().len() == 1)).await.unwrap().unwrap();
    assert!(watch.last_error().is_none());
    assert!(discovery.last_error().is_none());
}

#[test]
fn the_whole_yaml_shape_reads_without_tags() {
    let text = "\
services:
  reviews:
    identity: spiffe://example.org/ns/prod/sa/reviews
    endpoints:
      - { address: 127.0.0.1:9001, labels: { version: v1 } }
      - { address: 127.0.0.1:9002, labels: { version: v2 }, weight: 3 }
    subsets:
      - { name: v1, labels: { version: v1 } }
      - { name: v2, labels: { version: v2 } }
    routes:
      - name: testers
        match:
          path: { prefix: /reviews }
          method: GET
          headers: [ { name: x-canary, exact: \"1\" }, { name: x-debug, present: true } ]
        targets: [ { subset: v2, weight: 1 } ]
      - name: default
        targets: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
        retry: { max_attempts: 3, retry_on: [ gateway_error, connect_failure, 429 ] }
        timeout: 2s
    policies:
      authorization:
        mode: dry_run
        rules:
          - action: allow
            from:
              - { exact: spiffe://example.org/ns/prod/sa/frontend }
              - { trust_domain: partner.org }
              - { path_prefix: { trust_domain: example.org, prefix: /ns/prod } }
            paths: [ { prefix: /reviews } ]
            methods: [ GET ]
      outlier_detection: { consecutive_failures: 3, base_ejection_time: 10s }
      circuit_breaker: { max_concurrent: 100 }
";
    let specs = parse(Path::new("s.yaml"), text, false).unwrap_or_else(|e| panic!("{e}"));
    let spec = &specs[&name()];
    assert_eq!(spec.routes[0].matches.headers.len(), 2);
    assert_eq!(spec.routes[1].retry.as_ref().unwrap().retry_on.len(), 3);
    let authz = spec.policies.authorization.as_ref().unwrap();
    assert_eq!(authz.rules[0].from.len(), 3);
}
