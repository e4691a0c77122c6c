//! grpcio's own xDS client (`tests/interop/istiod_greeter_client.py`): one `xds:///` channel with
//! gRPC's xDS credentials, driven by JSON commands; and the same calls made through mesh, so a
//! test compares the two outcome by outcome.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh::tonic::MeshChannel;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::workload::grpc::pb::{HelloRequest, greeter_client::GreeterClient};

/// What a round of calls came to: replies by version, failures by gRPC code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub versions: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, usize>,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn version(&self, v: &str) -> usize {
        self.versions.get(v).copied().unwrap_or(0)
    }

    pub fn failed(&self) -> usize {
        self.errors.values().sum()
    }

    pub fn calls(&self) -> usize {
        self.versions.values().sum::<usize>() + self.failed()
    }

    fn from_json(v: &Value) -> Self {
        let map = |k: &str| {
            v[k].as_object()
                .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0) as usize)).collect())
                .unwrap_or_default()
        };
        Self {
            versions: map("versions"),
            errors: map("errors"),
            first_error: v["first_error"].as_str().map(Into::into),
        }
    }

    fn add_reply(&mut self, message: &str) {
        let version = message.split(" from ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("?");
        *self.versions.entry(version.to_owned()).or_default() += 1;
    }

    fn add_error(&mut self, status: &tonic::Status) {
        *self.errors.entry(code_name(status.code()).to_owned()).or_default() += 1;
        self.first_error.get_or_insert_with(|| format!("{}: {}", code_name(status.code()), status.message()));
    }
}

/// gRPC's canonical name of a code, as grpcio prints it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How each call of a round is made.
#[derive(Clone, Debug)]
pub struct Calls {
    pub calls: usize,
    pub metadata: Vec<(String, String)>,
    /// The method path; `None` is `/helloworld.Greeter/SayHello`.
    pub method: Option<String>,
    pub timeout: Duration,
    pub wait_for_ready: bool,
    pub concurrency: usize,
}

impl Calls {
    pub fn new(calls: usize) -> Self {
        Self {
            calls,
            metadata: vec![],
            method: None,
            timeout: Duration::from_secs(30),
            wait_for_ready: true,
            concurrency: 1,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.metadata.push((k.into(), v.into()));
        self
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn fail_fast(mut self) -> Self {
        self.wait_for_ready = false;
        self
    }

    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = c;
        self
    }

    fn json(&self, op: &str) -> Value {
        let mut v = json!({"op": op, "calls": self.calls, "metadata": self.metadata,
            "timeout": self.timeout.as_secs_f64(), "wait_for_ready": self.wait_for_ready,
            "concurrency": self.concurrency});
        if let Some(m) = &self.method {
            v["method"] = json!(m);
        }
        v
    }
}

/// The grpcio client process.
pub struct Grpcio {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Grpcio {
    /// Starts the client for `xds:///TARGET` with `bootstrap`.
    pub fn spawn(python: &Path, target: &str, bootstrap: &Path) -> Self {
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let mut child = tokio::process::Command::new(python)
            .arg(interop.join("istiod_greeter_client.py"))
            .arg(format!("xds:///{target}"))
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .env("PYTHONPATH", &interop)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    async fn command(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.child.stdin.as_mut().unwrap().write_all(line.as_bytes()).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(180), self.lines.next_line())
            .await
            .expect("grpcio gave no answer in 180 s")
            .unwrap()
            .expect("grpcio exited (its stderr is above)");
        serde_json::from_str(&out).unwrap()
    }

    pub async fn round(&mut self, calls: &Calls) -> Outcome {
        Outcome::from_json(&self.command(calls.json("round")).await)
    }

    pub async fn load_start(&mut self, calls: &Calls) {
        self.command(calls.json("load_start")).await;
    }

    pub async fn load_stop(&mut self) -> Outcome {
        Outcome::from_json(&self.command(json!({"op": "load_stop"})).await)
    }
}

/// The same calls through mesh's `MeshChannel`.
pub async fn mesh_round(channel: &MeshChannel, calls: &Calls) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let per_worker = calls.calls.div_ceil(calls.concurrency.max(1));
    let mut workers = Vec::new();
    let mut left = calls.calls;
    for _ in 0..calls.concurrency.max(1) {
        let n = per_worker.min(left);
        left -= n;
        let (channel, calls, outcome) = (channel.clone(), calls.clone(), outcome.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..n {
                let result = mesh_call(&channel, &calls).await;
                let mut o = outcome.lock().unwrap();
                match result {
                    Ok(message) => o.add_reply(&message),
                    Err(status) => o.add_error(&status),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    Arc::try_unwrap(outcome).unwrap().into_inner().unwrap()
}

async fn mesh_call(channel: &MeshChannel, calls: &Calls) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(HelloRequest { name: "istiod".into() });
    request.set_timeout(calls.timeout);
    for (k, v) in &calls.metadata {
        request
            .metadata_mut()
            .insert(tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let mut client = GreeterClient::new(channel.clone());
    match &calls.method {
        None => client.say_hello(request).await.map(|r| r.into_inner().message),
        Some(method) => {
            // Another method path on the same message types (path-routing checks).
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<HelloRequest, super::workload::grpc::pb::HelloReply>::default();
            let path = http::uri::PathAndQuery::try_from(method.as_str()).unwrap();
            grpc.unary(request, path, codec).await.map(|r| r.into_inner().message)
        }
    }
}

/// Background load through mesh: calls in a loop until stopped.
pub struct MeshLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl MeshLoad {
    pub fn start(channel: &MeshChannel, calls: &Calls) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (channel, calls, flag) = (channel.clone(), calls.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut outcome = Outcome::default();
            while !flag.load(Ordering::SeqCst) {
                match mesh_call(&channel, &calls).await {
                    Ok(message) => outcome.add_reply(&message),
                    Err(status) => outcome.add_error(&status),
                }
            }
            outcome
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// `got` of `n` calls is within 5.5 standard deviations of a binomial draw of `share` (a correct
/// random picker misses this about once in 10^7 runs).
pub fn within(got: usize, n: usize, share: f64) -> bool {
    let sd = (n as f64 * share * (1.0 - share)).sqrt();
    ((got as f64) - n as f64 * share).abs() <= 5.5 * sd + 0.5
}
