//! Entry points for the fuzz targets (`fuzz/` in the repository), behind the `fuzzing` feature:
//! **no stability promise**, not for applications. They run the translation of xDS resources
//! (protobuf bytes from the control plane) into mesh's model; a panic or a hang is the bug the
//! fuzzer looks for.

use std::{collections::BTreeMap, time::Duration};

use envoy_types::pb::{
    envoy::{config::core::v3::Node, service::discovery::v3::DiscoveryResponse},
    google::protobuf::Any,
};
use mesh_core::ServiceName;
use tokio::time::Instant;

use crate::{
    ads::AdsState,
    bootstrap::CertificateProvider,
    cascade::{self, BuildOptions, ClientCascade, ClientUpdate},
    resource::{self, DecodeContext, ResourceType},
};

/// The listener [`translate`] subscribes to, as an Istio client would for `reviews:9080`.
pub const LISTENER: &str = "reviews.default.svc.cluster.local:9080";

fn providers() -> BTreeMap<String, CertificateProvider> {
    let provider = CertificateProvider {
        certificate_file: "cert.pem".into(),
        private_key_file: "key.pem".into(),
        ca_certificate_file: "ca.pem".into(),
    };
    BTreeMap::from([("default".to_owned(), provider)])
}

/// The resource types in the order [`translate`] takes them: LDS, RDS, CDS, EDS.
pub const ORDER: [&str; 4] = ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"];

fn kind(index: usize) -> ResourceType {
    [
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
    ][index % 4]
}

/// Decodes `bytes` as one resource of the type `ORDER[kind % 4]` and translates it; an error's
/// `Display` is rendered too. Returns whether the resource was accepted.
pub fn decode_resource(kind_index: u8, bytes: &[u8]) -> bool {
    let kind = kind(kind_index as usize);
    let any = Any { type_url: kind.type_url().to_owned(), value: bytes.to_vec() };
    let providers = providers();
    let ctx = DecodeContext { certificate_providers: &providers };
    match resource::decode(kind, &any, &ctx) {
        Ok((_, Ok(_))) => true,
        Ok((_, Err(error))) | Err(error) => {
            let _ = error.to_string();
            false
        }
    }
}

/// Runs the ADS state machine and the cascade as the driver does for a client of [`LISTENER`]:
/// starts a stream, takes one response per type (in the order of [`ORDER`], each holding the
/// resource `resources[i]`), and after each runs the cascade step that settles the subscriptions
/// and makes the service's snapshot. Returns whether the last news of the target was a snapshot.
pub fn translate(resources: [&[u8]; 4]) -> bool {
    let providers = providers();
    let ctx = DecodeContext { certificate_providers: &providers };
    let now = Instant::now();
    let service = ServiceName::new("reviews").expect("a valid name");
    let mut cache = AdsState::new(Node { id: "fuzz".into(), ..Default::default() }, Duration::from_secs(15));
    let mut target = ClientCascade::new(LISTENER.to_owned());
    let mut built = false;
    let _ = cache.on_stream_start(now);
    step(&mut cache, &service, &mut target, now, &mut built);
    for (index, bytes) in resources.iter().enumerate() {
        let kind = kind(index);
        let response = DiscoveryResponse {
            version_info: "1".into(),
            resources: vec![Any { type_url: kind.type_url().to_owned(), value: bytes.to_vec() }],
            type_url: kind.type_url().into(),
            nonce: index.to_string(),
            ..Default::default()
        };
        let handled = cache.on_response(response, &ctx, now);
        let _ = handled.nack;
        step(&mut cache, &service, &mut target, now, &mut built);
    }
    built
}

/// One cascade step; `built` follows the target's news.
fn step(cache: &mut AdsState, service: &ServiceName, target: &mut ClientCascade, now: Instant, built: &mut bool) {
    let step = cascade::step(cache, [(service, target)], std::iter::empty(), &BuildOptions::default(), now);
    for (_, update) in step.clients {
        *built = match update {
            ClientUpdate::Snapshot { .. } => true,
            ClientUpdate::Invalid(error) => {
                let _ = error.to_string();
                false
            }
            ClientUpdate::Failed(error) => {
                let _ = error.to_string();
                false
            }
        };
    }
}
