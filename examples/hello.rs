//! The smallest real use of mesh: an axum service and its client, over mutual TLS.
//!
//! ```text
//! cargo run --example hello
//! ```
#![allow(clippy::print_stdout)]

use axum::{Router, extract::Request, routing::get};
use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::dev::DevCa},
    tower::{PeerIdentity, client::MeshClient, server::Server, telemetry::TelemetryLayer},
};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Workload identities; in production a SPIRE agent or cert-manager writes them to disk
    // (`IdentitySource::from_files`) and mesh re-reads them as they rotate.
    let ca = DevCa::new("example.org".parse()?)?;
    let hello: ServiceName = "hello".parse()?;

    // The service: any axum Router. mTLS, telemetry and deadlines come from the server's builder.
    let app = Router::new().route(
        "/",
        get(|request: Request| async move {
            let caller = request.extensions().get::<PeerIdentity>().map(|p| p.id().to_string());
            format!("hello, {}", caller.unwrap_or_default())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = Server::builder()
        .identity(IdentitySource::fixed(ca.identity("/hello")?))
        .telemetry(TelemetryLayer::server(hello.clone()))
        .build()?
        .spawn(listener, app)?;

    // Discovery says where `hello` runs and which SPIFFE ID it must prove.
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(hello.clone())
            .identity("spiffe://example.org/hello".parse()?)
            .endpoint(Endpoint::new(server.local_addr()))
            .build()?,
    );

    // The client calls it by name, with the whole client stack.
    let client = MeshClient::builder(discovery, hello).identity(IdentitySource::fixed(ca.identity("/web")?)).build()?;
    let response = client.oneshot(http::Request::get("/").body(Empty::<bytes::Bytes>::new())?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    server.shutdown().await?;
    Ok(())
}
