//! The server's request stack run two ways over real mTLS connections: as the server runs it
//! (`ServerBuilder::telemetry` and `::authorization`: one service per connection, authorization
//! narrowed to the connection's caller) and composed by hand from the public layers
//! (`TelemetryLayer`, `AuthorizationLayer`, `ContextLayer`) on a server with no stack. The same
//! requests get the same answers, and the same decisions, counters, golden signals and metrics
//! are recorded, including after the policy changes under open connections.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use mesh::{
    core::{
        Endpoint, PathMatch, ServiceName, ServiceSnapshot, StaticDiscovery,
        policy::{AuthorizationPolicy, AuthorizationRule, PrincipalMatch},
    },
    tower::{
        authz::{AuthorizationLayer, AuthorizationStats},
        client::MeshClient,
        context::ContextLayer,
        metrics as names,
        server::{Server, ServerHandle},
        telemetry::{GoldenSignals, TelemetryLayer},
    },
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{backend_id, identity};
use tokio::sync::watch;
use tower::{ServiceBuilder, ServiceExt};

/// `/fail` 503, anything else 200.
async fn handler(request: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let mut response = Response::new(format!("{} {}", request.method(), request.uri().path()));
    if request.uri().path() == "/fail" {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    Ok(response)
}

/// `web` anywhere but under `/admin`; `batch` nowhere (an explicit deny).
fn policy() -> AuthorizationPolicy {
    let web = PrincipalMatch::Exact("spiffe://example.org/web".parse().unwrap());
    let batch = PrincipalMatch::Exact("spiffe://example.org/batch".parse().unwrap());
    let mut allow = AuthorizationRule::allow(vec![web]);
    allow.not_paths = vec![PathMatch::prefix("/admin").unwrap()];
    AuthorizationPolicy::enforce(vec![AuthorizationRule::deny(vec![batch]), allow])
}

struct Side {
    handle: ServerHandle,
    stats: std::sync::Arc<AuthorizationStats>,
    golden: GoldenSignals,
}

/// The server's own stack, as `ServerBuilder` configures it.
async fn fused(authorization: AuthorizationLayer) -> Side {
    let telemetry = TelemetryLayer::server("fused".parse().unwrap());
    let (stats, golden) = (authorization.stats(), telemetry.golden_signals());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = Server::builder()
        .identity(identity("/backend"))
        .telemetry(telemetry)
        .authorization(authorization)
        .build()
        .unwrap()
        .spawn(listener, tower::service_fn(handler))
        .unwrap();
    Side { handle, stats, golden }
}

/// The same layers composed by hand in front of the handler, on a server without a stack.
async fn composed(authorization: AuthorizationLayer) -> Side {
    let telemetry = TelemetryLayer::server("layers".parse().unwrap());
    let (stats, golden) = (authorization.stats(), telemetry.golden_signals());
    let service = ServiceBuilder::new()
        // The server wants a body with a default (its own deadline answer); the layers' is boxed.
        .map_response(|response: Response<_>| {
            response.map(|body: mesh::tower::telemetry::TelemetryBody<mesh::tower::context::DeadlineBody<String>>| {
                UnsyncBoxBody::new(body)
            })
        })
        .layer(telemetry)
        .layer(authorization)
        .layer(ContextLayer::new())
        .service_fn(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = Server::builder().identity(identity("/backend")).build().unwrap().spawn(listener, service).unwrap();
    Side { handle, stats, golden }
}

fn client(side: &Side, caller: &str) -> MeshClient<Empty<Bytes>> {
    let name: ServiceName = "reviews".parse().unwrap();
    let discovery = StaticDiscovery::new();
    discovery.set(
        ServiceSnapshot::builder(name.clone())
            .identity(backend_id())
            .endpoint(Endpoint::new(side.handle.local_addr()))
            .build()
            .unwrap(),
    );
    MeshClient::builder(discovery, name).identity(identity(caller)).build().unwrap()
}

/// What a caller can see of one answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    grpc_status: Option<String>,
    body: Bytes,
}

async fn ask(client: &MeshClient<Empty<Bytes>>, path: &str, grpc: bool) -> Answer {
    let mut request = Request::post(path);
    if grpc {
        request = request.header("content-type", "application/grpc");
    }
    let response = client.clone().oneshot(request.body(Empty::new()).unwrap()).await.unwrap();
    let grpc_status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer { status, grpc_status, body }
}

/// The answers to one round of requests from `web` and `batch`.
async fn round(web: &MeshClient<Empty<Bytes>>, batch: &MeshClient<Empty<Bytes>>) -> Vec<Answer> {
    vec![
        ask(web, "/ok", false).await,
        ask(web, "/fail", false).await,
        ask(web, "/admin/users", false).await,
        ask(web, "/admin/users", true).await,
        ask(batch, "/ok", false).await,
        ask(batch, "/ok", true).await,
    ]
}

/// Every metric recorded so far (a snapshot resets the counters).
type Metrics = Vec<(metrics_util::CompositeKey, Option<metrics::Unit>, Option<metrics::SharedString>, DebugValue)>;

/// The inbound request counters of `service` in `metrics`, by their other labels.
fn inbound(metrics: &Metrics, service: &str) -> Vec<(Vec<(String, String)>, u64)> {
    let mut counters: Vec<_> = metrics
        .iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<_> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            let ours = key.name() == names::REQUESTS
                && labels.iter().any(|(k, v)| k == "direction" && v == "inbound")
                && labels.iter().any(|(k, v)| k == "service" && v == service);
            let DebugValue::Counter(n) = *value else { return None };
            ours.then(|| (labels.into_iter().filter(|(k, _)| k != "service").collect::<Vec<_>>(), n))
        })
        .collect();
    counters.sort();
    counters
}

/// Waits (bounded) until `golden` has seen `requests` requests: the last one's telemetry settles
/// when its response body ends, which may be just after the client read it.
async fn settled(golden: &GoldenSignals, requests: u64) -> (u64, u64) {
    let count =
        || golden.snapshot().iter().fold((0, 0), |(r, s), signals| (r + signals.requests, s + signals.successes));
    for _ in 0..500 {
        if count().0 >= requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stack_and_the_composed_layers_behave_the_same() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // A fixed policy (narrowed once per connection), and one from a watch (narrowed per version).
    let (set_policy, watched) = watch::channel(Some(std::sync::Arc::new(policy())));
    let sides = [
        (fused(AuthorizationLayer::new(policy())).await, composed(AuthorizationLayer::new(policy())).await),
        (
            fused(AuthorizationLayer::from_watch(watched.clone())).await,
            composed(AuthorizationLayer::from_watch(watched)).await,
        ),
    ];
    let mut rounds = 0;
    for (fused, composed) in &sides {
        let clients = |side: &Side| (client(side, "/web"), client(side, "/batch"));
        let (fused_web, fused_batch) = clients(fused);
        let (composed_web, composed_batch) = clients(composed);
        let answers = round(&fused_web, &fused_batch).await;
        assert_eq!(answers, round(&composed_web, &composed_batch).await);
        let statuses: Vec<_> = answers.iter().map(|a| (a.status.as_u16(), a.grpc_status.as_deref())).collect();
        assert_eq!(statuses, [(200, None), (503, None), (403, None), (200, Some("7")), (403, None), (200, Some("7")),]);
        assert_eq!(answers[0].body, "POST /ok");
        rounds += 1;

        // A new policy under the open connections: nobody may call any more.
        set_policy.send_replace(Some(std::sync::Arc::new(AuthorizationPolicy::enforce(vec![]))));
        let now_fused = ask(&fused_web, "/ok", false).await;
        let now_composed = ask(&composed_web, "/ok", false).await;
        assert_eq!(now_fused, now_composed);
        let live = rounds == 2;
        assert_eq!(now_fused.status, if live { StatusCode::FORBIDDEN } else { StatusCode::OK }, "watched={live}");
        set_policy.send_replace(Some(std::sync::Arc::new(policy())));
        assert_eq!(ask(&fused_web, "/ok", false).await.status, StatusCode::OK);
        assert_eq!(ask(&composed_web, "/ok", false).await.status, StatusCode::OK);

        for side in [fused, composed] {
            let stats = (side.stats.allowed(), side.stats.denied(), side.stats.would_deny());
            assert_eq!(stats, if live { (3, 5, 0) } else { (4, 4, 0) }, "allowed, denied, would deny");
        }
        let (requests, successes) = settled(&fused.golden, 8).await;
        assert_eq!((requests, successes), settled(&composed.golden, 8).await);
        // Denials are the caller's failure, not the server's; the 503 is the server's.
        assert_eq!((requests, successes), (8, 7));
    }
    let metrics = snapshotter.snapshot().into_vec();
    let (fused, composed) = (inbound(&metrics, "fused"), inbound(&metrics, "layers"));
    assert!(!fused.is_empty());
    assert_eq!(fused, composed);
}
