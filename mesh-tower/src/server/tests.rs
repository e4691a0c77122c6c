use std::{convert::Infallible, sync::Arc};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::sync::{Notify, Semaphore};

use super::*;

type Body = Empty<bytes::Bytes>;

fn client(http2: bool) -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(http2).build_http()
}

/// A handler that reports each arrival and holds the request until released.
fn gated(
    arrived: Arc<Semaphore>,
    release: Arc<Notify>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |req: Request<Incoming>| {
        let (arrived, release) = (arrived.clone(), release.clone());
        async move {
            let info = *req.extensions().get::<ConnectionInfo>().expect("connection info");
            let released = release.notified();
            arrived.add_permits(1);
            released.await;
            Ok(Response::new(format!("{}", info.remote_addr.ip())))
        }
    })
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    for http2 in [false, true] {
        let arrived = Arc::new(Semaphore::new(0));
        let release = Arc::new(Notify::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::builder()
            .plaintext()
            .build()
            .unwrap()
            .spawn(listener, gated(arrived.clone(), release.clone()))
            .unwrap();
        let addr = server.local_addr();
        let client = client(http2);

        let in_flight: Vec<_> = (0..4)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
                    let res = client.get(uri).await?;
                    let body = res.into_body().collect().await?.to_bytes();
                    Ok::<_, BoxError>(body)
                })
            })
            .collect();
        let _all_arrived = arrived.acquire_many(4).await.unwrap();

        let shutdown = tokio::spawn(server.shutdown());
        // Once the listener is gone, new connections are refused.
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                // Refused, or reset when the connection raced into the closing listener's backlog.
                Err(e) => {
                    assert!(
                        matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset),
                        "{e}"
                    );
                    break;
                }
                Ok(_) => tokio::task::yield_now().await,
            }
        }
        assert!(!shutdown.is_finished(), "shutdown waits for the in-flight requests");
        release.notify_waiters();
        for request in in_flight {
            assert_eq!(request.await.unwrap().unwrap(), "127.0.0.1", "http2={http2}");
        }
        shutdown.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn drain_timeout_cuts_off_stuck_requests() {
    let arrived = Arc::new(Semaphore::new(0));
    let never = Arc::new(Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder()
        .plaintext()
        .drain_timeout(Duration::from_millis(50))
        .build()
        .unwrap()
        .spawn(listener, gated(arrived.clone(), never))
        .unwrap();
    let uri: http::Uri = format!("http://{}/", server.local_addr()).parse().unwrap();
    let stuck = tokio::spawn(client(false).get(uri));
    let _arrived = arrived.acquire().await.unwrap();
    server.shutdown().await.unwrap();
    assert!(stuck.await.unwrap().is_err(), "the stuck request's connection was closed");
}
