//! `pathguard serve`, `pathguard screen` and `pathguard load-test`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use pathguard::device::parse_device;
use pathguard::model::Execution;
use pathguard::service::client::{collect_inputs, request_for, Backend, Record};
use pathguard::service::models::{check_specs, ModelSpec, Models, DEFAULT_ALIAS};
use pathguard::service::grpc::ScreeningService;
use pathguard::service::limits::Limits;
use pathguard::service::metrics::Metrics;
use pathguard::service::server::{serve, ServeOptions};
use pathguard::service::worker::Workers;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory with detector.json, or NAME=DIR; repeat to serve several models,
    /// each with its own workers (a bare DIR is named after its last component; the first is
    /// the default and also answers to "pathguard")
    #[arg(long, default_value = "models/default")]
    model: Vec<String>,
    /// Address to listen on (loopback by default; port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// auto (GPU if CUDA works), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// How the model runs: dense (every filter), gated (only each input's path) or auto
    /// (by batch size, as measured on CPU; dense on CUDA)
    #[arg(long, value_enum, default_value_t = Execution::Auto)]
    execution: Execution,
    /// Threads libtorch uses inside one operation (default: one per core). With a client on
    /// the same few cores, 1 keeps single-image latency steadier (see BENCHMARKS.md)
    #[arg(long)]
    intra_op_threads: Option<i32>,
    /// Images per forward pass (requests from different clients are batched together)
    #[arg(long, default_value_t = Limits::default().max_batch)]
    max_batch: usize,
    /// How long the worker waits for more requests to fill a batch (ms)
    #[arg(long, default_value_t = Limits::default().max_delay_ms)]
    max_delay_ms: u64,
    /// Requests that may wait for the worker; beyond it the server answers RESOURCE_EXHAUSTED
    #[arg(long, default_value_t = Limits::default().queue_capacity)]
    queue: usize,
    /// Images per request
    #[arg(long, default_value_t = Limits::default().max_images_per_request)]
    max_request_images: usize,
    /// Images the screening worker may hold, queued or computing (bounds the queue's memory:
    /// 3 KB per image); beyond it the server answers RESOURCE_EXHAUSTED
    #[arg(long, default_value_t = Limits::default().max_queued_images)]
    max_queued_images: usize,
    /// Prometheus metrics over HTTP (GET /metrics); "off" disables
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_addr: String,
    /// The Open Inference Protocol over HTTP/JSON (/v2/...), the screening page (/) and
    /// /metrics; "off" disables
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_addr: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Seconds the calls in flight get to finish after SIGINT/SIGTERM; those still running then
    /// answer UNAVAILABLE
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace_s: f64,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    init_logging(args.log_format);
    // Panics inside a request are caught and answered; log each as one bounded line, without
    // the backtrace that the default hook may capture (symbolising libtorch costs tens of MB).
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        tracing::error!(panic = %pathguard::service::bounded::message(&text), "caught a panic");
    }));
    let optional_addr = |flag: &str, value: &str| -> Result<Option<SocketAddr>> {
        match value {
            "off" | "" => Ok(None),
            addr => Ok(Some(addr.parse::<SocketAddr>().with_context(|| format!("{flag} {addr:?}"))?)),
        }
    };
    let metrics_addr = optional_addr("--metrics-addr", &args.metrics_addr)?;
    let http_addr = optional_addr("--http-addr", &args.http_addr)?;
    if args.max_batch == 0 || args.queue == 0 || args.max_request_images == 0 {
        bail!("--max-batch, --queue and --max-request-images must be at least 1");
    }
    if args.max_queued_images < args.max_request_images {
        bail!("--max-queued-images must be at least --max-request-images ({})", args.max_request_images);
    }
    let limits = Limits {
        max_batch: args.max_batch,
        max_delay_ms: args.max_delay_ms,
        queue_capacity: args.queue,
        max_images_per_request: args.max_request_images,
        max_queued_images: args.max_queued_images,
        ..Limits::default()
    };
    if !(args.shutdown_grace_s >= 0.0 && args.shutdown_grace_s.is_finite()) {
        bail!("--shutdown-grace-s must be a non-negative number of seconds");
    }
    match args.intra_op_threads {
        Some(n) if n < 1 => bail!("--intra-op-threads must be at least 1"),
        Some(n) => tch::set_num_threads(n),
        None => {}
    }
    let models = args.model.iter().map(|m| ModelSpec::parse(m)).collect::<pathguard::Result<Vec<_>>>()?;
    check_specs(&models)?;
    let options = ServeOptions {
        models,
        addr: args.addr,
        device: parse_device(&args.device)?,
        execution: args.execution,
        limits,
        metrics_addr,
        http_addr,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace_s),
    };
    runtime()?.block_on(serve(options))?;
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    Jsonl,
    Csv,
}

#[derive(Args)]
pub struct ScreenArgs {
    /// PNG files, NPY arrays, or directories searched recursively for both
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Server URL, e.g. http://127.0.0.1:50051; without it, screens in process
    #[arg(long)]
    server: Option<String>,
    /// Which of the server's models screens (its --model names; default: its first)
    #[arg(long, default_value = "", requires = "server")]
    server_model: String,
    /// Model directory for in-process screening
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Device for in-process screening
    #[arg(long, default_value = "auto")]
    device: String,
    /// How in-process screening runs the model: dense, gated or auto
    #[arg(long, value_enum, default_value_t = Execution::Auto)]
    execution: Execution,
    /// Images per request
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Flag threshold instead of the detector's own
    #[arg(long)]
    threshold: Option<f32>,
    /// Output file (written atomically); default: standard output
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: OutputFormat,
    /// Exit with status 2 when any image is flagged
    #[arg(long)]
    fail_on_flag: bool,
}

/// Runs `pathguard screen`; returns whether any image was flagged.
pub fn run_screen(args: ScreenArgs) -> Result<bool> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut records = Vec::new();
    runtime()?.block_on(async {
        let mut backend = match &args.server {
            Some(url) => Backend::connect(url, Limits::default().max_message_bytes, &args.server_model).await?,
            None => {
                let device = parse_device(&args.device)?;
                let metrics = Arc::new(Metrics::new());
                let (model, worker_metrics, execution) = (args.model.clone(), metrics.clone(), args.execution);
                let workers = tokio::task::spawn_blocking(move || Workers::start(&model, device, execution, Limits::default(), worker_metrics))
                    .await
                    .context("loading the model")??;
                let models = Models::new(vec![(DEFAULT_ALIAS.to_string(), workers)]);
                Backend::InProcess(ScreeningService::new(Some(models), metrics))
            }
        };
        // The model's shape decides how NPY arrays are read and, for a mix of files, how
        // PNG/JPEG files are decoded here.
        let spec = backend.input_spec().await?;
        let inputs = collect_inputs(&args.paths, &spec)?;
        let requests = inputs
            .chunks(args.batch_size)
            .map(|chunk| request_for(chunk, &spec, args.threshold, false))
            .collect::<pathguard::Result<Vec<_>>>()?;
        let bar = pathguard::progress::bar(inputs.len() as u64, "screening");
        records.reserve(inputs.len());
        backend
            .screen_all(requests, |response| {
                let batch = Record::from_response(&response);
                bar.inc(batch.len() as u64);
                records.extend(batch);
                Ok(())
            })
            .await?;
        bar.finish_and_clear();
        anyhow::Ok(())
    })?;

    let mut text = String::new();
    match args.format {
        OutputFormat::Jsonl => {
            for r in &records {
                text.push_str(&serde_json::to_string(r).expect("record serialises"));
                text.push('\n');
            }
        }
        OutputFormat::Csv => {
            text.push_str(Record::CSV_HEADER);
            text.push('\n');
            for r in &records {
                text.push_str(&r.csv_row());
                text.push('\n');
            }
        }
    }
    match &args.out {
        Some(path) => pathguard::model::checkpoint::write_atomic(path, text.as_bytes())?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    let flagged = records.iter().filter(|r| r.flagged).count();
    let mut per_class: BTreeMap<(i32, String), (usize, usize)> = BTreeMap::new();
    for r in &records {
        let entry = per_class.entry((r.predicted_class, r.predicted_name.clone())).or_default();
        entry.0 += 1;
        entry.1 += r.flagged as usize;
    }
    eprintln!(
        "screened {} images: {flagged} flagged ({:.1}%)",
        records.len(),
        100.0 * flagged as f64 / records.len().max(1) as f64
    );
    for ((class, name), (count, flagged)) in &per_class {
        eprintln!("  {class} {name:<12} {count:>6} images, {flagged:>6} flagged");
    }
    if let Some(path) = &args.out {
        eprintln!("wrote {}", path.display());
    }
    Ok(args.fail_on_flag && flagged > 0)
}
