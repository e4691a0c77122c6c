//! Writes the seed corpus of every fuzz target under `seeds/<target>/`: valid inputs the fuzzers
//! start from and mutate. The xDS seeds are the Istio-shaped resources the integration tests'
//! control plane serves (`mesh_xds::testing`).
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, path::Path};

use mesh_xds::testing::resources as fixtures;
use prost::Message;

const HOST: &str = "reviews.default.svc.cluster.local";
const SA: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let listener = mesh_xds::fuzzing::LISTENER;
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (v1, v2) = (fixtures::cluster_name(HOST, 9080, "v1"), fixtures::cluster_name(HOST, 9080, "v2"));
    let resources: [Vec<u8>; 4] = [
        fixtures::client_listener(listener).encode_to_vec(),
        fixtures::route_config(listener, HOST, 9080, &[(&v1, 90), (&v2, 10)]).encode_to_vec(),
        fixtures::cluster(&v1, Some(SA)).encode_to_vec(),
        fixtures::load_assignment(&v1, &[addr(1), addr(2)]).encode_to_vec(),
    ];
    for (kind, bytes) in resources.iter().enumerate() {
        let mut input = vec![kind as u8];
        input.extend_from_slice(bytes);
        write("xds_resource", &format!("{}", mesh_xds::fuzzing::ORDER[kind]), &input);
    }
    let extra = [
        (2u8, fixtures::cluster(&v2, None).encode_to_vec()),
        (0u8, fixtures::envoy_listener("in", addr(15006), "inbound").encode_to_vec()),
    ];
    for (i, (kind, bytes)) in extra.iter().enumerate() {
        let mut input = vec![*kind];
        input.extend_from_slice(bytes);
        write("xds_resource", &format!("extra-{i}"), &input);
    }
    // One cluster: the route configuration sends everything to v1.
    let single = fixtures::route_config(listener, HOST, 9080, &[(&v1, 100)]).encode_to_vec();
    let cascade = [&resources[0], &single, &resources[2], &resources[3]];
    let mut input = Vec::new();
    for part in &cascade[..3] {
        input.extend_from_slice(&(part.len() as u16).to_le_bytes());
    }
    for part in cascade {
        input.extend_from_slice(part);
    }
    write("xds_translate", "istio-v1", &input);

    for (i, id) in [
        "spiffe://example.org/ns/prod/sa/reviews",
        "spiffe://cluster.local/ns/default/sa/x",
        "spiffe://a.b-c.d/x/y.z/_-~",
        "example.org",
        "spiffe://example.org",
    ]
    .iter()
    .enumerate()
    {
        write("spiffe_id", &format!("{i}"), id.as_bytes());
    }
    let yaml = "services:\n  reviews:\n    identity: spiffe://example.org/ns/prod/sa/reviews\n    endpoints:\n      - { address: 10.0.0.7:9080, labels: { version: v1 } }\n      - { address: 10.0.0.8:9080, labels: { version: v2 } }\n    subsets:\n      - { name: v1, labels: { version: v1 } }\n      - { name: v2, labels: { version: v2 } }\n    routes:\n      - name: default\n        timeout: 2s\n        targets: [ { subset: v1, weight: 50 }, { subset: v2, weight: 50 } ]\n";
    write("discovery_yaml", "reviews", yaml.as_bytes());
    let json = r#"{"services":{"reviews":{"identity":"spiffe://example.org/reviews","endpoints":[{"address":"10.0.0.7:9080","labels":{"version":"v1"}}],"subsets":[{"name":"v1","labels":{"version":"v1"}}],"routes":[{"name":"default","targets":[{"subset":"v1","weight":1}]}]}}}"#;
    write("discovery_json", "reviews", json.as_bytes());
    let trace = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nrojo=00f067aa0ba902b7,congo=t61rcWkgMzE\nuserId=alice,serverNode=DF%2028;k=v",
        "\n\n\n80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        "\n\n\n\n463ac35c9f6413ad48485a3953bb6124\na2fb4a1d1a96d312\n1\n",
    ];
    for (i, t) in trace.iter().enumerate() {
        write("trace_context", &format!("{i}"), t.as_bytes());
    }
    for (i, t) in ["1000", "5S", "100m", "99999999n", "1H", "3M", "250u"].iter().enumerate() {
        write("timeouts", &format!("{i}"), t.as_bytes());
    }
}
