use mesh_core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::dev::DevCa};
use mesh_tower::server::Server;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::*;

#[tokio::test]
async fn a_generated_tonic_client_calls_through_the_mesh_over_mtls() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("mesh.Test", tonic_health::ServingStatus::Serving).await;
    let ca = DevCa::new("example.org".parse().unwrap()).unwrap();
    let server_identity = IdentitySource::fixed(ca.identity("/health").unwrap());
    let mut servers = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::builder().identity(server_identity.clone()).build().unwrap();
        servers.push(server.spawn(listener, health.clone()).unwrap());
    }

    let name: ServiceName = "health".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity("spiffe://example.org/health".parse().unwrap())
            .endpoints(servers.iter().map(|s| Endpoint::new(s.local_addr())))
            .build()
            .unwrap(),
    );
    let client_identity = IdentitySource::fixed(ca.identity("/probe").unwrap());
    let channel = MeshChannel::builder(discovery, name).identity(client_identity).build().unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..10 {
        let reply = client.check(HealthCheckRequest { service: "mesh.Test".into() }).await.unwrap();
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    }
    let status = client.check(HealthCheckRequest { service: "mesh.Unknown".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

/// Every setting of `MeshClientBuilder` reaches the channel's client, each checked by its effect:
/// a setting the channel builder cannot reach does not compile, one that does nothing fails here.
#[test]
fn every_client_builder_setting_reaches_the_channel() {
    use std::time::Duration;

    use mesh_tower::{
        client::{ClientConfig, Protocol},
        telemetry::TelemetryLayer,
    };

    let name: ServiceName = "greeter".parse().unwrap();
    let ca = DevCa::new("example.org".parse().unwrap()).unwrap();
    let me = IdentitySource::fixed(ca.identity("/frontend").unwrap());
    let builder = || MeshChannel::builder(StaticDiscovery::new(), name.clone());
    let mut config = ClientConfig::default();
    config.seed = Some(7);
    config.pool_idle_timeout = Duration::from_secs(11);
    let window = Duration::from_secs(7);
    let telemetry = TelemetryLayer::client(name.clone()).golden_window(window);
    let mut expected = config.clone();
    expected.protocol = Protocol::Http2;

    // Neither identity nor plaintext: refused, as a MeshClientBuilder is.
    assert!(builder().build().is_err());
    assert!(builder().with_client(|client| client.plaintext()).build().is_ok());

    // The shortcuts.
    let channel = builder().identity(me.clone()).config(config.clone()).telemetry(telemetry.clone()).build().unwrap();
    assert_eq!(channel.client().config(), &expected);
    assert_eq!(channel.client().telemetry().golden_signals().window(), window);

    // Every setter of the client builder, through `with_client`; the protocol stays HTTP/2.
    let (connect, resolve) = (Duration::from_millis(1234), Duration::from_millis(4321));
    let channel = builder()
        .with_client(|client| {
            client
                .config(config.clone())
                .telemetry(telemetry.clone())
                .identity(me)
                .protocol(Protocol::Http1)
                .connect_timeout(connect)
                .resolve_timeout(resolve)
        })
        .build()
        .unwrap();
    expected.connect_timeout = connect;
    expected.resolve_timeout = resolve;
    assert_eq!(channel.client().config(), &expected);
    assert_eq!(channel.client().telemetry().golden_signals().window(), window);
}
