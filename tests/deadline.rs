//! Deadlines over real sockets.
//!
//! - Propagation: a 200 ms deadline set by the first caller travels over two hops, the last server
//!   sees less than 200 ms left, and its work is cancelled when the caller gives up.
//! - A deadline covers the whole call, not only the response head, as Envoy's route `timeout`
//!   and gRPC's deadlines do. On the wire, against a bare hyper peer that enforces nothing
//!   itself: the client cuts a response body off with `RouteTimeout` and resets the stream with
//!   `RST_STREAM(CANCEL)`, its still-open request stream included; the server cuts its handler's
//!   body off with `RST_STREAM(CANCEL)`, or a gRPC call with `grpc-status: 4` in trailers.
//! - A call whose deadline passes during the TLS handshake it started leaves the handshake going:
//!   the next call takes the connection over, over HTTP/1.1 and HTTP/2 alike.
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

/// How long anything may take before a test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// A response body that sends a chunk every 20 ms, forever, and says when it is dropped.
#[derive(Default)]
struct Ticking {
    interval: Option<tokio::time::Interval>,
    dropped: Option<mpsc::UnboundedSender<&'static str>>,
}

impl Ticking {
    fn new(dropped: mpsc::UnboundedSender<&'static str>) -> Self {
        Self { interval: Some(tokio::time::interval(Duration::from_millis(20))), dropped: Some(dropped) }
    }
}

impl http_body::Body for Ticking {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
        match &mut self.interval {
            None => std::task::Poll::Ready(None),
            Some(interval) => interval.poll_tick(cx).map(|_| Some(Ok(http_body::Frame::data("tick".into())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.interval.is_none()
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        if let Some(dropped) = &self.dropped {
            let _ = dropped.send("the response body was dropped");
        }
    }
}

/// A request body the caller never finishes.
struct NeverEnds;

impl http_body::Body for NeverEnds {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

/// The HTTP/2 reason a stream error carries, anywhere in its chain.
fn h2_reason(error: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<h2::Error>()?.reason())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_cuts_a_running_body_off_and_resets_the_stream() {
    use http_body_util::BodyExt;
    // A bare hyper HTTP/2 server, plaintext, that enforces no deadline of its own: it streams
    // forever and reports how its request body and its response body ended.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<String>();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (ended_tx, dropped_tx) = (ended_tx.clone(), dropped_tx.clone());
            let left: Option<u64> =
                request.headers().get("x-mesh-timeout").map(|v| v.to_str().unwrap().parse().unwrap());
            let told = left.is_some_and(|ms| ms > 0 && ms <= 300);
            let _ = ended_tx.send(format!("told the time left: {told}"));
            tokio::spawn(async move {
                let outcome = match request.into_body().frame().await {
                    Some(Err(error)) => format!("request reset: {:?}", h2_reason(&error)),
                    other => format!("request went on: {other:?}"),
                };
                let _ = ended_tx.send(outcome);
            });
            async move { Ok::<_, Infallible>(http::Response::new(Ticking::new(dropped_tx))) }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    });

    let discovery = StaticDiscovery::new();
    publish(&discovery, "ticker", addr, Some(Duration::from_millis(300)));
    let client = MeshClient::builder(discovery, "ticker".parse().unwrap())
        .plaintext()
        .protocol(mesh::tower::client::Protocol::Http2)
        .build::<NeverEnds>()
        .unwrap();
    let response = client.oneshot(http::Request::post("/").body(NeverEnds).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut ticks = 0;
    let error = loop {
        match tokio::time::timeout(PATIENCE, body.frame()).await.expect("the body ended in time") {
            Some(Ok(_)) => ticks += 1,
            Some(Err(error)) => break error,
            None => panic!("the body completed ({ticks} ticks) despite the route's timeout"),
        }
    };
    assert!(ticks > 0, "the response had started");
    let timeout = std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| e.source())
        .find_map(|e| e.downcast_ref::<RouteTimeout>())
        .unwrap_or_else(|| panic!("not a RouteTimeout: {error}"));
    assert_eq!(timeout.0, Duration::from_millis(300));
    assert!(http_body::Body::is_end_stream(&body));

    let mut next = async || tokio::time::timeout(PATIENCE, ended.recv()).await.expect("the server reported").unwrap();
    assert_eq!(next().await, "told the time left: true");
    // RST_STREAM(CANCEL): the server's request body fails with it, though the caller holds it open.
    assert_eq!(next().await, "request reset: Some(CANCEL)");
    let why = tokio::time::timeout(PATIENCE, dropped.recv()).await.expect("the server stopped streaming").unwrap();
    assert_eq!(why, "the response body was dropped");
}

/// A mesh server, plaintext HTTP/2, whose handler streams forever; and a bare hyper client.
async fn ticking_server()
-> (ServerHandle, mpsc::UnboundedReceiver<&'static str>, hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>) {
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = tower::service_fn(move |_: http::Request<hyper::body::Incoming>| {
        let dropped_tx = dropped_tx.clone();
        async move {
            let mut response = http::Response::new(Ticking::new(dropped_tx));
            response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
            Ok::<_, Infallible>(response)
        }
    });
    let server = Server::builder()
        .plaintext()
        .protocol(mesh::tower::server::ServerProtocol::Http2)
        .build()
        .unwrap()
        .spawn(listener, service)
        .unwrap();
    let stream = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    (server, dropped, send)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_cuts_a_servers_running_body_off() {
    use http_body_util::BodyExt;
    let (_server, mut dropped, mut send) = ticking_server().await;

    // Plain HTTP: the server resets the stream with CANCEL.
    let request = http::Request::get("http://ticker/").header("x-mesh-timeout", "300").body(Empty::new()).unwrap();
    let mut body = send.send_request(request).await.unwrap().into_body();
    let mut ticks = 0;
    let error = loop {
        match tokio::time::timeout(PATIENCE, body.frame()).await.expect("the server ended the body") {
            Some(Ok(frame)) if frame.is_data() => ticks += 1,
            other => break other,
        }
    };
    assert!(ticks > 0, "the response had started");
    let error = error.expect("the body failed").expect_err("the body failed");
    assert_eq!(h2_reason(&error), Some(h2::Reason::CANCEL), "{error}");
    let why = tokio::time::timeout(PATIENCE, dropped.recv()).await.expect("the handler's body was dropped").unwrap();
    assert_eq!(why, "the response body was dropped");

    // gRPC: the server ends the call with DEADLINE_EXCEEDED in trailers.
    let request = http::Request::post("http://ticker/grpc.testing.TestService/StreamingOutputCall")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Empty::new())
        .unwrap();
    let mut body = send.send_request(request).await.unwrap().into_body();
    let mut ticks = 0;
    let trailers = loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame()).await.expect("the server ended the call");
        let frame = frame.expect("the call ended with trailers").expect("the call ended with trailers, not a reset");
        match frame.into_trailers() {
            Ok(trailers) => break trailers,
            Err(_data) => ticks += 1,
        }
    };
    assert!(ticks > 0, "the response had started");
    assert_eq!(trailers.get("grpc-status").unwrap(), "4", "{trailers:?}");
    assert!(trailers.get("grpc-message").unwrap().to_str().unwrap().contains("deadline"), "{trailers:?}");
    let why = tokio::time::timeout(PATIENCE, dropped.recv()).await.expect("the handler's body was dropped").unwrap();
    assert_eq!(why, "the response body was dropped");
}

/// A TCP proxy to `backend` that accepts at once but holds every connection (the TLS handshake
/// with it) until `release` opens; it counts the connections it accepted.
async fn slow_handshake_proxy(
    backend: std::net::SocketAddr,
    release: tokio::sync::watch::Receiver<bool>,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut release = release.clone();
            tokio::spawn(async move {
                // The client's ClientHello waits, unread, until the test lets the handshake on.
                if release.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let mut server = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_outlives_the_call_whose_deadline_passed_and_serves_the_next() {
    use mesh::tower::client::Protocol;
    let backend = serve(tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("ok")))
    }))
    .await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let (release_tx, release) = tokio::sync::watch::channel(false);
        let (proxy, accepted) = slow_handshake_proxy(backend.local_addr(), release).await;
        let discovery = StaticDiscovery::new();
        publish(&discovery, "slow", proxy, Some(Duration::from_millis(200)));
        let client = MeshClient::builder(discovery, "slow".parse().unwrap())
            .identity(identity("/caller"))
            .protocol(protocol)
            .build::<Empty<bytes::Bytes>>()
            .unwrap();
        let get = || http::Request::get("/").body(Empty::new()).unwrap();

        // The first call gives up while the TLS handshake it started is held.
        let error = tokio::time::timeout(PATIENCE, client.clone().oneshot(get())).await.unwrap().unwrap_err();
        let error = error.downcast_ref::<ClientError>().expect("a ClientError");
        assert_eq!(error.kind(), ErrorKind::Timeout, "{protocol:?}: {error}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "{protocol:?}");

        // The handshake goes on; the next call takes its connection over instead of dialling again.
        release_tx.send(true).unwrap();
        let response = tokio::time::timeout(PATIENCE, client.clone().oneshot(get())).await.unwrap();
        let response = response.unwrap_or_else(|e| panic!("{protocol:?}: the second call failed: {e}"));
        assert_eq!(response.status(), 200);
        let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(accepted, 1, "{protocol:?}: the second call dialled again");
    }
}
