//! `pathguard serve`: binds, serves Screening + the Open Inference Protocol + health +
//! reflection on one port (+ metrics over HTTP),
//! loads the model in the background (health says NOT_SERVING until it is ready), and shuts
//! down gracefully on SIGINT/SIGTERM (health NOT_SERVING, in-flight requests finish, exit 0).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tch::Device;
use axum::serve::ListenerExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt as _;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use super::grpc::ScreeningService;
use super::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::kserve::InferenceService;
use super::limits::Limits;
use super::metrics::{serve_metrics, Metrics};
use super::proto::screening_server::ScreeningServer;
use super::models::{ModelSpec, Models};
use super::worker::Workers;
use crate::error::{Error, Result};
use crate::model::Execution;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The models, by name; the first is the default.
    pub models: Vec<ModelSpec>,
    pub addr: SocketAddr,
    pub device: Device,
    /// How the screening worker runs the model (dense, gated or auto).
    pub execution: Execution,
    pub limits: Limits,
    pub metrics_addr: Option<SocketAddr>,
    /// The Open Inference Protocol over HTTP/JSON, the page and /metrics.
    pub http_addr: Option<SocketAddr>,
    /// After a shutdown signal, how long the calls in flight may take before they are answered
    /// UNAVAILABLE and the server exits.
    pub shutdown_grace: std::time::Duration,
}

/// After the drain, how long answers and open streams get to be written before the process
/// exits.
const FLUSH_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the process waits for the workers' last computation (an abandoned attack stops
/// within one iteration) before it exits.
const WORKERS_STOP_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Calls one connection may run at once (each may hold a message of up to
/// `max_message_bytes` while it decodes).
const CALLS_PER_CONNECTION: usize = 32;
/// Open HTTP/2 streams per connection; beyond it new streams are refused (REFUSED_STREAM).
const STREAMS_PER_CONNECTION: u32 = 128;
/// Request headers (gRPC metadata) per call; hyper's default is 16 MiB.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

const SCREENING: &str = <ScreeningServer<ScreeningService> as NamedService>::NAME;

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Runs the server until a shutdown signal (or a failure to load the model).
pub async fn serve(options: ServeOptions) -> Result<()> {
    let io = |what: String| move |e: std::io::Error| Error::Io { path: PathBuf::from(what), source: e };
    let listener = tokio::net::TcpListener::bind(options.addr).await.map_err(io(format!("binding {}", options.addr)))?;
    let local = listener.local_addr().map_err(io("local address".into()))?;
    let metrics = Arc::new(Metrics::new());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = options.metrics_addr {
        let metrics_listener = tokio::net::TcpListener::bind(addr).await.map_err(io(format!("binding metrics {addr}")))?;
        let metrics_local = metrics_listener.local_addr().map_err(io("metrics address".into()))?;
        println!("pathguard metrics on http://{metrics_local}/metrics");
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            if let Err(e) = serve_metrics(metrics_listener, metrics, stopped).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    let http_listener = match options.http_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(io(format!("binding HTTP {addr}")))?),
        None => None,
    };
    if let Some(l) = &http_listener {
        println!("pathguard http on http://{}", l.local_addr().map_err(io("HTTP address".into()))?);
    }
    // Tests and scripts read this line to learn the port (with --addr 127.0.0.1:0).
    println!("pathguard listening on {local}");
    let _ = std::io::stdout().flush();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_service_status(SCREENING, ServingStatus::NotServing).await;
    let service = ScreeningService::new(None, metrics.clone());

    // Load in the background so that health answers NOT_SERVING meanwhile.
    let (load_failed, load_failure) = tokio::sync::oneshot::channel::<Error>();
    {
        let (service, health, options) = (service.clone(), health.clone(), options.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let loaded = tokio::task::spawn_blocking(move || {
                let mut loaded = Vec::new();
                for spec in &options.models {
                    let workers = Workers::start(&spec.dir, options.device, options.execution, options.limits.clone(), metrics.clone())
                        .map_err(|e| Error::Model { name: spec.name.clone(), source: Box::new(e) })?;
                    tracing::info!(name = %spec.name, model = %workers.info.model_hash, device = %workers.info.device, "model and detector loaded");
                    loaded.push((spec.name.clone(), workers));
                }
                Ok(Models::new(loaded))
            })
            .await
            .unwrap_or_else(|e| Err(Error::Service(format!("loading the models panicked: {e}"))));
            match loaded {
                Ok(models) => {
                    tracing::info!(models = ?models.names(), seconds = started.elapsed().as_secs_f64(), "serving");
                    let _ = service.models.set(Arc::new(models));
                    health.set_service_status("", ServingStatus::Serving).await;
                    health.set_service_status(SCREENING, ServingStatus::Serving).await;
                }
                Err(e) => {
                    let _ = load_failed.send(e);
                }
            }
        });
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(super::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Service(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(super::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Service(format!("reflection: {e}")))?;
    let max_bytes = options.limits.max_message_bytes;
    let screening = ScreeningServer::new(service.clone())
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes);
    let inference = GrpcInferenceServiceServer::new(InferenceService { screening: service.clone() })
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes);

    // Shutdown, in order: health NOT_SERVING and new calls refused (connections are still
    // accepted, so probes read NOT_SERVING); wait for the calls in flight, at most the grace
    // period; then the calls still running answer UNAVAILABLE; then the transport stops.
    let (failure_tx, mut failure_rx) = tokio::sync::mpsc::channel::<Error>(1);
    let (stop_transport, transport_stopping) = tokio::sync::watch::channel(false);
    let grace = options.shutdown_grace;
    if let Some(listener) = http_listener {
        let app = super::rest::routes(InferenceService { screening: service.clone() }, max_bytes)
            .merge(super::page::routes(service.clone(), max_bytes))
            .merge(super::metrics::routes(service.metrics.clone()));
        let mut stopping = transport_stopping.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stopping.wait_for(|&s| s).await;
            };
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "HTTP endpoint failed");
            }
        });
    }
    {
        let (health, drain) = (health.clone(), service.drain.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown_signal() => tracing::info!(
                    in_flight = drain.in_flight(),
                    "shutdown signal: refusing new calls, finishing those in flight"
                ),
                Ok(e) = load_failure => {
                    tracing::error!(error = %e, "could not load the model");
                    let _ = failure_tx.send(e).await;
                }
            }
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_service_status(SCREENING, ServingStatus::NotServing).await;
            drain.begin();
            if tokio::time::timeout(grace, drain.idle()).await.is_err() {
                tracing::warn!(
                    seconds = grace.as_secs_f64(),
                    in_flight = drain.in_flight(),
                    "grace period over; answering the calls still running with UNAVAILABLE"
                );
                drain.abort();
                // Their answers are written before the transport closes.
                let _ = tokio::time::timeout(FLUSH_TIME, drain.idle()).await;
            }
            stop_transport.send_replace(true);
        });
    }
    let server = tonic::transport::Server::builder()
        // One connection runs at most this many calls at once; the others wait unread (HTTP/2
        // flow control holds their bytes back), so its decode buffers stay bounded.
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(screening)
        .add_service(inference)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener).map(no_delay), {
            let mut stopping = transport_stopping.clone();
            async move {
                let _ = stopping.wait_for(|&s| s).await;
            }
        });
    // The transport's own graceful stop waits for every open stream; a client watching health
    // forever must not keep the process alive.
    let streams_left = async move {
        let mut stopping = transport_stopping;
        let _ = stopping.wait_for(|&s| s).await;
        tokio::time::sleep(FLUSH_TIME).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| Error::Service(format!("gRPC server: {e}")))?,
        _ = streams_left => tracing::warn!("closing the streams still open (health watches)"),
    }
    if let Some(models) = service.models.get().cloned() {
        let idle = tokio::task::spawn_blocking(move || {
            let until = std::time::Instant::now() + WORKERS_STOP_TIME;
            models.all().all(|w| w.wait_idle(until.saturating_duration_since(std::time::Instant::now())))
        })
        .await
        .unwrap_or(false);
        if !idle {
            tracing::warn!("a worker is still computing; exiting anyway");
        }
    }
    let _ = stop_metrics.send(());
    if let Ok(e) = failure_rx.try_recv() {
        return Err(e);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Turns Nagle's algorithm off on an accepted connection: a small answer must not wait for
/// the client's delayed ACK (about 40 ms on Linux), which would dominate one client's latency.
fn no_delay(accepted: std::io::Result<tokio::net::TcpStream>) -> std::io::Result<tokio::net::TcpStream> {
    accepted.inspect(|stream| {
        // A socket that refuses the option still works, only slower.
        let _ = stream.set_nodelay(true);
    })
}
