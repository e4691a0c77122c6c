//! gRPC's interop test cases, client side (doc/interop-test-descriptions.md in the gRPC
//! repository), run through a `MeshChannel`. Each case checks what the description says its
//! client checks; where the description speaks of a client-side status that Rust expresses by
//! dropping the call (the two cancellation cases), the case checks what a Rust caller can: the
//! call was still open when it was dropped, and the channel serves the next call.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream};
use http::HeaderMap;
use mesh::tonic::MeshChannel;
use tokio::sync::mpsc;
use tonic::{
    Code, Request,
    metadata::{MetadataMap, MetadataValue},
};
use tower::ServiceExt;

use crate::service::{
    ECHO_INITIAL, ECHO_TRAILING,
    pb::{
        EchoStatus, Empty, Payload, ResponseParameters, SimpleRequest, StreamingInputCallRequest,
        StreamingOutputCallRequest, test_service_client::TestServiceClient,
        unimplemented_service_client::UnimplementedServiceClient,
    },
};

/// An error that names what went wrong.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// The cases this client runs, in the order the descriptions list them.
pub(crate) const CASES: &[&str] = &[
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "cancel_after_begin",
    "cancel_after_first_response",
    "timeout_on_sleeping_server",
    "custom_metadata",
    "status_code_and_message",
    "special_status_message",
    "unimplemented_method",
    "unimplemented_service",
    "rpc_soak",
    "channel_soak",
];

const REQUEST_SIZES: [usize; 4] = [27182, 8, 1828, 45904];
const RESPONSE_SIZES: [i32; 4] = [31415, 9, 2653, 58979];
const INITIAL_VALUE: &str = "test_initial_metadata_value";
const TRAILING_VALUE: &[u8] = b"\x0a\x0b\x0a\x0b\x0a\x0b";
const SPECIAL_MESSAGE: &str = "\t\ntest with whitespace\r\nand Unicode BMP \u{263a} and non-BMP \u{1f608}\t\n";

macro_rules! fail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

/// Makes a new channel to the server (for `channel_soak`).
pub(crate) type NewChannel = dyn Fn() -> Result<MeshChannel, Error> + Send + Sync;

/// Runs `case` on `channel`.
pub(crate) async fn run(
    case: &str,
    channel: &MeshChannel,
    new_channel: &NewChannel,
    soak_iterations: u32,
) -> Result<(), Error> {
    let mut client = TestServiceClient::new(channel.clone());
    match case {
        "empty_unary" => empty_unary(&mut client).await,
        "large_unary" => large_unary(&mut client).await,
        "client_streaming" => client_streaming(&mut client).await,
        "server_streaming" => server_streaming(&mut client).await,
        "ping_pong" => ping_pong(&mut client).await,
        "empty_stream" => empty_stream(&mut client).await,
        "cancel_after_begin" => cancel_after_begin(&mut client).await,
        "cancel_after_first_response" => cancel_after_first_response(&mut client).await,
        "timeout_on_sleeping_server" => timeout_on_sleeping_server(&mut client).await,
        "custom_metadata" => custom_metadata(channel).await,
        "status_code_and_message" => echoed_status(&mut client, "test status message", true).await,
        "special_status_message" => echoed_status(&mut client, SPECIAL_MESSAGE, false).await,
        "unimplemented_method" => unimplemented_method(&mut client).await,
        "unimplemented_service" => unimplemented_service(channel).await,
        "rpc_soak" => {
            for i in 0..soak_iterations {
                large_unary(&mut client).await.map_err(|e| format!("iteration {i}: {e}"))?;
            }
            Ok(())
        }
        "channel_soak" => {
            for i in 0..soak_iterations {
                let mut fresh = TestServiceClient::new(new_channel()?);
                large_unary(&mut fresh).await.map_err(|e| format!("iteration {i}: {e}"))?;
            }
            Ok(())
        }
        other => fail!("unknown test case {other:?} (this client runs: {})", CASES.join(", ")),
    }
}

type Client = TestServiceClient<MeshChannel>;

fn zeros(size: usize) -> Option<Payload> {
    Some(Payload { r#type: 0, body: vec![0; size] })
}

fn check_payload(payload: Option<&Payload>, size: i32) -> Result<(), Error> {
    let Some(payload) = payload else { fail!("a response without a payload; want {size} bytes") };
    if payload.r#type != 0 || payload.body.len() != size as usize {
        fail!("a payload of type {} and {} bytes; want COMPRESSABLE and {size}", payload.r#type, payload.body.len());
    }
    Ok(())
}

fn duplex_request(request: usize, response: i32) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters { size: response, ..ResponseParameters::default() }],
        payload: zeros(request),
        ..StreamingOutputCallRequest::default()
    }
}

/// A request stream the case writes to as it goes.
fn channel_stream<T: Send + 'static>(capacity: usize) -> (mpsc::Sender<T>, impl Stream<Item = T> + Send + 'static) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }))
}

async fn empty_unary(client: &mut Client) -> Result<(), Error> {
    let reply = client.empty_call(Empty {}).await?.into_inner();
    if reply != (Empty {}) {
        fail!("EmptyCall answered {reply:?}, want an empty message");
    }
    Ok(())
}

async fn large_unary(client: &mut Client) -> Result<(), Error> {
    let request = SimpleRequest { response_size: 314_159, payload: zeros(271_828), ..SimpleRequest::default() };
    let reply = client.unary_call(request).await?.into_inner();
    check_payload(reply.payload.as_ref(), 314_159)
}

async fn client_streaming(client: &mut Client) -> Result<(), Error> {
    let requests =
        REQUEST_SIZES.map(|size| StreamingInputCallRequest { payload: zeros(size), expect_compressed: None });
    let reply = client.streaming_input_call(stream::iter(requests)).await?.into_inner();
    let want: usize = REQUEST_SIZES.iter().sum();
    if reply.aggregated_payload_size as usize != want {
        fail!("aggregated_payload_size {}, want {want}", reply.aggregated_payload_size);
    }
    Ok(())
}

async fn server_streaming(client: &mut Client) -> Result<(), Error> {
    let response_parameters =
        RESPONSE_SIZES.map(|size| ResponseParameters { size, ..ResponseParameters::default() }).to_vec();
    let request = StreamingOutputCallRequest { response_parameters, ..StreamingOutputCallRequest::default() };
    let mut responses = client.streaming_output_call(request).await?.into_inner();
    let mut got = 0;
    while let Some(response) = responses.message().await? {
        let Some(&size) = RESPONSE_SIZES.get(got) else { fail!("more than {} responses", RESPONSE_SIZES.len()) };
        check_payload(response.payload.as_ref(), size).map_err(|e| format!("response {got}: {e}"))?;
        got += 1;
    }
    if got != RESPONSE_SIZES.len() {
        fail!("{got} responses, want {}", RESPONSE_SIZES.len());
    }
    Ok(())
}

async fn ping_pong(client: &mut Client) -> Result<(), Error> {
    let (tx, requests) = channel_stream(1);
    // A server may hold its response headers until its first message: send a request first.
    tx.send(duplex_request(REQUEST_SIZES[0], RESPONSE_SIZES[0])).await?;
    let mut responses = client.full_duplex_call(requests).await?.into_inner();
    for (i, (&request, &response)) in REQUEST_SIZES.iter().zip(&RESPONSE_SIZES).enumerate() {
        if i > 0 {
            tx.send(duplex_request(request, response)).await?;
        }
        let Some(reply) = responses.message().await? else { fail!("the stream ended after {i} responses") };
        check_payload(reply.payload.as_ref(), response).map_err(|e| format!("response {i}: {e}"))?;
    }
    drop(tx);
    if let Some(extra) = responses.message().await? {
        fail!("a response after the last request: {} bytes", extra.payload.map_or(0, |p| p.body.len()));
    }
    Ok(())
}

async fn empty_stream(client: &mut Client) -> Result<(), Error> {
    let mut responses = client.full_duplex_call(stream::empty()).await?.into_inner();
    if responses.message().await?.is_some() {
        fail!("a response to an empty stream");
    }
    Ok(())
}

/// How long a cancellation case lets a call run before dropping it: the server must not have
/// answered a stream that never ended.
const OPEN_CALL: Duration = Duration::from_millis(200);

async fn cancel_after_begin(client: &mut Client) -> Result<(), Error> {
    let (tx, requests) = channel_stream::<StreamingInputCallRequest>(1);
    let call = client.streaming_input_call(requests);
    match tokio::time::timeout(OPEN_CALL, call).await {
        Err(_) => {} // still open: dropped (cancelled) here
        Ok(result) => fail!("a client stream that never ended was answered: {result:?}"),
    }
    drop(tx);
    empty_unary(client).await.map_err(|e| format!("after the cancelled call: {e}").into())
}

async fn cancel_after_first_response(client: &mut Client) -> Result<(), Error> {
    let (tx, requests) = channel_stream(1);
    tx.send(duplex_request(27182, 31415)).await?;
    let mut responses = client.full_duplex_call(requests).await?.into_inner();
    let Some(first) = responses.message().await? else { fail!("the stream ended before its first response") };
    check_payload(first.payload.as_ref(), 31415)?;
    drop(responses); // cancels the call
    drop(tx);
    empty_unary(client).await.map_err(|e| format!("after the cancelled call: {e}").into())
}

async fn timeout_on_sleeping_server(client: &mut Client) -> Result<(), Error> {
    let first = StreamingOutputCallRequest { payload: zeros(27182), ..StreamingOutputCallRequest::default() };
    let mut request = Request::new(stream::iter([first]).chain(stream::pending()));
    request.set_timeout(Duration::from_millis(1));
    let status = match client.full_duplex_call(request).await {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status,
            Ok(message) => fail!("the call outlived its 1 ms deadline: {message:?}"),
        },
    };
    if status.code() != Code::DeadlineExceeded {
        fail!("{:?}: {}; want DEADLINE_EXCEEDED", status.code(), status.message());
    }
    Ok(())
}

fn echo_metadata() -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert(ECHO_INITIAL, MetadataValue::from_static(INITIAL_VALUE));
    metadata.insert_bin(ECHO_TRAILING, MetadataValue::from_bytes(TRAILING_VALUE));
    metadata
}

fn check_echo(headers: &HeaderMap, trailers: &HeaderMap) -> Result<(), Error> {
    let initial: Vec<_> = headers.get_all(ECHO_INITIAL).iter().collect();
    if initial.len() != 1 || initial[0] != INITIAL_VALUE {
        fail!("response headers {ECHO_INITIAL}: {initial:?}, want exactly [{INITIAL_VALUE:?}]");
    }
    if headers.contains_key(ECHO_TRAILING) {
        fail!("{ECHO_TRAILING} came in the headers, not the trailers");
    }
    let trailers = MetadataMap::from_headers(trailers.clone());
    let trailing: Vec<_> = trailers.get_all_bin(ECHO_TRAILING).iter().map(|v| v.to_bytes()).collect();
    match trailing.as_slice() {
        [Ok(value)] if value.as_ref() == TRAILING_VALUE => {}
        _ => fail!("trailers {ECHO_TRAILING}: {trailing:?}, want exactly one: {TRAILING_VALUE:?}"),
    }
    Ok(())
}

async fn custom_metadata(channel: &MeshChannel) -> Result<(), Error> {
    // Unary: tonic merges the trailers into the reply's metadata, so the headers are read off the
    // HTTP response as it passes.
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let probe = {
        let seen = seen.clone();
        channel.clone().map_response(move |response: http::Response<_>| {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = response.headers().clone();
            response
        })
    };
    let mut unary = TestServiceClient::new(probe);
    let mut request = Request::new(SimpleRequest { response_size: 1, payload: zeros(1), ..SimpleRequest::default() });
    *request.metadata_mut() = echo_metadata();
    let reply = unary.unary_call(request).await?;
    check_payload(reply.get_ref().payload.as_ref(), 1)?;
    let headers = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut trailers = reply.metadata().clone().into_headers();
    for name in headers.keys() {
        trailers.remove(name);
    }
    check_echo(&headers, &trailers).map_err(|e| format!("UnaryCall: {e}"))?;

    // Full duplex: headers and trailers apart.
    let (tx, requests) = channel_stream(1);
    tx.send(duplex_request(1, 1)).await?;
    let mut request = Request::new(requests);
    *request.metadata_mut() = echo_metadata();
    let response = TestServiceClient::new(channel.clone()).full_duplex_call(request).await?;
    let headers = response.metadata().clone().into_headers();
    let mut responses = response.into_inner();
    let Some(reply) = responses.message().await? else { fail!("FullDuplexCall: no response") };
    check_payload(reply.payload.as_ref(), 1)?;
    drop(tx);
    if responses.message().await?.is_some() {
        fail!("FullDuplexCall: a second response to one request");
    }
    let trailers = responses.trailers().await?.unwrap_or_default().into_headers();
    check_echo(&headers, &trailers).map_err(|e| format!("FullDuplexCall: {e}").into())
}

fn check_status(what: &str, status: &tonic::Status, message: &str) -> Result<(), Error> {
    if status.code() != Code::Unknown || status.message() != message {
        fail!("{what}: {:?} {:?}, want Unknown {message:?}", status.code(), status.message());
    }
    Ok(())
}

/// `status_code_and_message` (unary and duplex) and `special_status_message` (unary): the
/// server answers the status the request asks for, code 2 (UNKNOWN) and `message` unchanged.
async fn echoed_status(client: &mut Client, message: &str, duplex: bool) -> Result<(), Error> {
    let echo = Some(EchoStatus { code: 2, message: message.to_owned() });
    let request = SimpleRequest { response_status: echo.clone(), ..SimpleRequest::default() };
    match client.unary_call(request).await {
        Ok(reply) => fail!("UnaryCall succeeded ({reply:?}), want the status it asked for"),
        Err(status) => check_status("UnaryCall", &status, message)?,
    }
    if !duplex {
        return Ok(());
    }
    let request = StreamingOutputCallRequest { response_status: echo, ..StreamingOutputCallRequest::default() };
    let status = match client.full_duplex_call(stream::iter([request])).await {
        Err(status) => status,
        Ok(response) => {
            let mut responses = response.into_inner();
            match responses.message().await {
                Err(status) => status,
                Ok(next) => {
                    fail!("FullDuplexCall went on (a message: {}), want the status it asked for", next.is_some())
                }
            }
        }
    };
    check_status("FullDuplexCall", &status, message)
}

async fn unimplemented_method(client: &mut Client) -> Result<(), Error> {
    match client.unimplemented_call(Empty {}).await {
        Err(status) if status.code() == Code::Unimplemented => Ok(()),
        other => fail!("TestService/UnimplementedCall: {other:?}, want UNIMPLEMENTED"),
    }
}

async fn unimplemented_service(channel: &MeshChannel) -> Result<(), Error> {
    match UnimplementedServiceClient::new(channel.clone()).unimplemented_call(Empty {}).await {
        Err(status) if status.code() == Code::Unimplemented => Ok(()),
        other => fail!("UnimplementedService/UnimplementedCall: {other:?}, want UNIMPLEMENTED"),
    }
}
