//! Prometheus metrics, served as text on `GET /metrics` of the metrics address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// Every metric the server keeps.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// By RPC and gRPC status code ("OK", "INVALID_ARGUMENT", ...).
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    /// Time a request waited in the worker's queue, by worker ("screen", "attack").
    pub queue_wait: HistogramVec,
    /// Images per forward pass of the screening worker.
    pub batch_size: prometheus::Histogram,
    /// Where a screening request's time goes, by stage: "decode" (decoding and validating the
    /// pixels), "queue" (waiting for the worker), "model" (the forward pass of the batch),
    /// "detector" (path features, experts, distance to the training images), "encode"
    /// (building the response message).
    pub stage: HistogramVec,
    /// By model (its served name): a flag rate that jumps on one model says where to look.
    pub images_screened: IntCounterVec,
    pub images_flagged: IntCounterVec,
    /// Attacks stopped part-way because their caller went away or its deadline passed.
    pub attacks_abandoned: IntCounter,
    /// Resident memory of the process, read when the metrics are rendered.
    pub resident_memory: prometheus::IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("pathguard_requests_total", "Requests by RPC and gRPC status code"),
            &["rpc", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("pathguard_request_duration_seconds", "Request latency by RPC")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")),
            &["rpc"],
        )
        .expect("valid metric");
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("pathguard_queue_wait_seconds", "Time requests waited for a worker")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")),
            &["worker"],
        )
        .expect("valid metric");
        let batch_size = prometheus::Histogram::with_opts(
            HistogramOpts::new("pathguard_batch_size_images", "Images per forward pass of the screening worker")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets")),
        )
        .expect("valid metric");
        let stage = HistogramVec::new(
            HistogramOpts::new("pathguard_stage_duration_seconds", "Time of each stage of screening, by stage")
                .buckets(prometheus::exponential_buckets(0.00002, 2.0, 20).expect("valid buckets")),
            &["stage"],
        )
        .expect("valid metric");
        let images_screened =
            IntCounterVec::new(Opts::new("pathguard_images_screened_total", "Images screened, by model"), &["model"])
                .expect("valid metric");
        let images_flagged = IntCounterVec::new(
            Opts::new("pathguard_images_flagged_total", "Images flagged as adversarial, by model"),
            &["model"],
        )
        .expect("valid metric");
        let attacks_abandoned = IntCounter::new(
            "pathguard_attacks_abandoned_total",
            "Attacks stopped part-way because the caller went away or its deadline passed",
        )
        .expect("valid metric");
        let resident_memory =
            prometheus::IntGauge::new("pathguard_process_resident_memory_bytes", "Resident memory of the server process")
                .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(queue_wait.clone()),
            Box::new(batch_size.clone()),
            Box::new(stage.clone()),
            Box::new(images_screened.clone()),
            Box::new(images_flagged.clone()),
            Box::new(attacks_abandoned.clone()),
            Box::new(resident_memory.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            latency,
            queue_wait,
            batch_size,
            stage,
            images_screened,
            images_flagged,
            attacks_abandoned,
            resident_memory,
        }
    }

    /// Records the time one stage of screening took (see `stage`).
    pub fn observe_stage(&self, stage: &str, elapsed: Duration) {
        self.stage.with_label_values(&[stage]).observe(elapsed.as_secs_f64());
    }

    /// Records one finished request.
    pub fn record(&self, rpc: &str, code: tonic::Code, elapsed: Duration) {
        self.requests.with_label_values(&[rpc, code_name(code)]).inc();
        self.latency.with_label_values(&[rpc]).observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(bytes as i64);
        }
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

/// Resident memory of this process (Linux: `/proc/self/statm`), or None elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The canonical upper-case name of a gRPC code.
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

/// The `GET /metrics` route.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
            }
        }),
    )
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, routes(metrics)).with_graceful_shutdown(shutdown).await
}

/// Binds the metrics listener (a clear error when the port is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
