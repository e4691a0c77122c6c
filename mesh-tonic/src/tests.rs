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
