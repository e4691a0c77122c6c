//! `mesh-bench server`: the hello handler (the Greeter for gRPC) behind each configuration, in its
//! own process.
//!
//! Every server runs on a current-thread tokio runtime (the run pins it to one core), binds
//! `127.0.0.1:0`, prints `LISTENING port[,port..]` and serves until killed.

use std::{io::Write, path::Path};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

use crate::{cli::ServerArgs, configs::Config, hello::hello, mesh_config, plumbing::BoxError};

/// Runs the server for `args.config` until the process is killed.
pub(crate) fn main(args: ServerArgs) -> Result<(), BoxError> {
    // The idle workload holds 1,000 connections (the client says so if the limit is too low).
    if let Err(error) = crate::procstat::raise_open_files() {
        eprintln!("mesh-bench server: could not raise the open-file limit: {error}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(args.config.server(), &args.certs))
}

fn announce(ports: &[u16]) -> Result<(), BoxError> {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {}", ports.join(","))?;
    out.flush()?;
    Ok(())
}

async fn serve(config: Config, certs: &Path) -> Result<(), BoxError> {
    match config {
        Config::Mesh => {
            let _telemetry = mesh_config::install_telemetry()?;
            let (ports, _servers) = mesh_config::serve(certs).await?;
            announce(&ports)?;
            std::future::pending::<()>().await;
            Ok(())
        }
        Config::GrpcMesh => {
            let _telemetry = mesh_config::install_telemetry()?;
            let (ports, _servers) = crate::grpc::serve_mesh(certs).await?;
            announce(&ports)?;
            std::future::pending::<()>().await;
            Ok(())
        }
        Config::GrpcTonic => {
            let (port, serve) = crate::grpc::serve_tonic(certs).await?;
            announce(&[port])?;
            serve.await
        }
        Config::BareMtls => bare(Some(crate::tls::acceptor(certs)?)).await,
        _ => bare(None).await,
    }
}

/// hyper-util's auto (HTTP/1.1 or HTTP/2) connection builder with its defaults, the mTLS
/// handshake (if any) in the connection's own task.
async fn bare(tls: Option<TlsAcceptor>) -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    announce(&[listener.local_addr()?.port()])?;
    let http = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (http, tls) = (http.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(&http, tcp).await,
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => connection(&http, stream).await,
                    Err(error) => tracing::debug!(%error, "handshake failed"),
                },
            }
        });
    }
}

async fn connection<I>(http: &auto::Builder<TokioExecutor>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(hello::<Incoming>);
    if let Err(error) = http.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
