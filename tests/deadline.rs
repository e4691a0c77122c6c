//! Deadline propagation: a 200 ms deadline set by the first caller travels over two hops, the
//! last server sees less than 200 ms left, and its work is cancelled when the caller gives up.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{convert::Infallible, time::Duration};

use http_body_util::{Empty, Full};
use mesh::{
    core::{Endpoint, Route, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery},
    tower::{
        client::MeshClient,
        client::{ClientError, ErrorKind, deadline::RouteTimeout},
        context,
        server::{Server, ServerHandle},
    },
};
use support::{backend_id, identity};
use tokio::sync::mpsc;
use tower::ServiceExt;

fn publish(discovery: &StaticDiscovery, name: &str, addr: std::net::SocketAddr, timeout: Option<Duration>) {
    let mut route = Route::new(RouteName::new("default").unwrap());
    if let Some(t) = timeout {
        route = route.with_timeout(t);
    }
    discovery.set(
        ServiceSnapshot::builder(name.parse().unwrap())
            .identity(backend_id())
            .endpoint(Endpoint::new(addr))
            .route(route)
            .build()
            .unwrap(),
    );
}

async fn serve<S>(service: S) -> ServerHandle
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<String>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap()
}

struct Cancelled(mpsc::UnboundedSender<&'static str>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        let _ = self.0.send("b's work was dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200ms_deadline_crosses_two_hops_and_cancels_the_last() {
    let discovery = StaticDiscovery::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();

    // b: reports the time it has left, then works "forever".
    let b = serve(tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let (seen_tx, dropped_tx) = (seen_tx.clone(), dropped_tx.clone());
        async move {
            let _ = seen_tx.send(context::remaining());
            let _guard = Cancelled(dropped_tx);
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Infallible>(http::Response::new(String::from("too late")))
        }
    }))
    .await;
    publish(&discovery, "b", b.local_addr(), None);

    // a: calls b with plain application code; the deadline goes along by itself.
    let to_b = MeshClient::builder(discovery.clone(), "b".parse().unwrap())
        .identity(identity("/a"))
        .build::<Empty<bytes::Bytes>>()
        .unwrap();
    let a = serve(tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let to_b = to_b.clone();
        async move {
            let response = to_b.oneshot(http::Request::get("/").body(Empty::new()).unwrap()).await;
            let status = response.map(|r| r.status().as_u16()).unwrap_or(502);
            Ok::<_, Infallible>(http::Response::new(status.to_string()))
        }
    }))
    .await;
    publish(&discovery, "a", a.local_addr(), Some(Duration::from_millis(200)));

    // The caller: 200 ms on the route to a.
    let name: ServiceName = "a".parse().unwrap();
    let client = MeshClient::builder(discovery.clone(), name.clone())
        .identity(identity("/edge"))
        .build::<Full<bytes::Bytes>>()
        .unwrap();
    let error =
        client.oneshot(http::Request::get("/").body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap_err();
    let error = error.downcast_ref::<ClientError>().expect("a ClientError");
    assert_eq!(error.kind(), ErrorKind::Timeout);
    let timeout = error.find::<RouteTimeout>().expect("the caller gives up with RouteTimeout");
    assert_eq!(timeout.0, Duration::from_millis(200));

    let left = seen.recv().await.unwrap().expect("b has a deadline");
    eprintln!("b saw {left:?} left of the caller's 200 ms");
    assert!(left < Duration::from_millis(200) && left > Duration::ZERO, "{left:?}");
    let why = tokio::time::timeout(Duration::from_secs(10), dropped.recv()).await.expect("b's work stopped").unwrap();
    assert_eq!(why, "b's work was dropped");
}
