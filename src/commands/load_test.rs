//! `pathguard load-test`: honest clients load a running server and report throughput and
//! latency; with `--hostile-clients` and `--duration-s` it is the soak of `make soak`: hostile
//! clients send every request that once hurt the server (issue 13) while health checks and the
//! server's memory are watched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use pathguard::data::{DataFormat, DataSource, Split};
use pathguard::service::client::Backend;
use pathguard::service::hostile::{giant_header_png, png_bomb, short_palette_png};
use pathguard::service::limits::Limits;
use pathguard::service::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use pathguard::service::inference::model_infer_request::InferInputTensor;
use pathguard::service::inference::ModelInferRequest;
use pathguard::service::proto::screening_client::ScreeningClient;
use pathguard::service::proto::{images::Source, AttackRequest, DataType, EncodedImages, Images, ScreenRequest, Tensor};
use serde::Serialize;

use super::stage_times::{self, StageFigures};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Args)]
pub struct LoadTestArgs {
    /// Server URL
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Concurrent honest clients (each its own connection)
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Honest requests in total (ignored with --duration-s)
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Images per honest request (test images, the first N)
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Data set whose test images the clients send, brought to the server's input (GetInfo)
    /// [default: $PATHGUARD_DATA or /usr/share/datasets/fashion-mnist]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Its format (auto recognises IDX, CIFAR-10/100 binary, NPY arrays and image folders)
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    data_format: DataFormat,
    /// Run for this many seconds instead of a number of requests
    #[arg(long)]
    duration_s: Option<f64>,
    /// Seconds at the start left out of the latency and memory figures
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    /// Clients sending hostile requests in a loop: PNGs whose header claims gigapixels, a
    /// decompression bomb, broken palettes, million-entry fields, attacks abandoned after 200 ms
    #[arg(long, default_value_t = 0)]
    hostile_clients: usize,
    /// Clients running honest attacks in a loop (GenerateAttack, PGD-40 on --attack-images test
    /// images): how screening holds up while the attack worker computes
    #[arg(long, default_value_t = 0)]
    attack_clients: usize,
    /// Images per attack of --attack-clients
    #[arg(long, default_value_t = 256)]
    attack_images: usize,
    /// The server's metrics address (host:port), to follow its resident memory
    #[arg(long)]
    metrics: Option<String>,
    /// Also write the summary as JSON here (atomically)
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// What a run measured.
#[derive(Debug, Default, Serialize)]
struct Summary {
    seconds: f64,
    honest_clients: usize,
    hostile_clients: usize,
    attack_clients: usize,
    /// Attacks of --attack-clients finished, and their mean duration.
    attacks_done: usize,
    attack_seconds_mean: f64,
    batch_size: usize,
    honest_ok: usize,
    honest_errors: BTreeMap<String, usize>,
    images_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p95: f64,
    latency_ms_p99: f64,
    /// Hostile requests by kind and answer code.
    hostile: BTreeMap<String, BTreeMap<String, usize>>,
    health_checks: usize,
    health_not_serving: usize,
    health_ms_p99: f64,
    health_ms_max: f64,
    /// The server's resident memory after the warm-up, at its highest after it, and at the end.
    rss_mb_after_warmup: Option<f64>,
    rss_mb_max: Option<f64>,
    rss_mb_end: Option<f64>,
    /// With --metrics: where the server spent the measured requests' time, per stage.
    stages: BTreeMap<String, StageFigures>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// When the run ends: after a number of requests, or at a time.
#[derive(Clone)]
struct Budget {
    next: Arc<AtomicUsize>,
    requests: usize,
    until: Option<Instant>,
}

impl Budget {
    fn take(&self) -> bool {
        match self.until {
            Some(until) => Instant::now() < until,
            None => self.next.fetch_add(1, Ordering::Relaxed) < self.requests,
        }
    }

    fn running(&self) -> bool {
        match self.until {
            Some(until) => Instant::now() < until,
            None => self.next.load(Ordering::Relaxed) < self.requests,
        }
    }
}

pub fn run_load_test(args: LoadTestArgs) -> Result<()> {
    if args.concurrency == 0 || args.requests == 0 || args.batch_size == 0 {
        bail!("--concurrency, --requests and --batch-size must be at least 1");
    }
    if let Some(d) = args.duration_s {
        if !(d > 0.0 && d.is_finite()) {
            bail!("--duration-s must be a positive number of seconds");
        }
    }
    if !(args.warmup_s >= 0.0 && args.warmup_s.is_finite()) {
        bail!("--warmup-s must be a non-negative number of seconds");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    // The server's model says what the images must look like; the data are brought to it.
    let spec = runtime.block_on(async { Backend::connect(&args.server, Limits::default().max_message_bytes, "").await?.input_spec().await })?;
    let mut source = DataSource::new(args.data.clone().unwrap_or_else(pathguard::data::fashion_mnist::default_dir));
    source.format = args.data_format;
    (source.channels, source.size, source.resize) = (Some(spec.channels), Some(spec.size), spec.resize);
    let test = source.load(Split::Test)?;
    let request = ScreenRequest {
        images: Some(float32_images(&test.take(args.batch_size).images)),
        ..Default::default()
    };
    let attack = AttackRequest {
        images: Some(float32_images(&test.take(args.attack_images.max(1)).images)),
        method: "pgd".into(),
        eps: 0.1,
        steps: Some(40),
        ..Default::default()
    };
    let summary = runtime.block_on(load(&args, request, attack))?;
    println!(
        "{} honest clients ({} images per request), {} hostile clients, {} attack clients, {:.0} s: {} ok -> {:.0} images/s",
        summary.honest_clients,
        summary.batch_size,
        summary.hostile_clients,
        summary.attack_clients,
        summary.seconds,
        summary.honest_ok,
        summary.images_per_second
    );
    println!(
        "latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        summary.latency_ms_p50, summary.latency_ms_p95, summary.latency_ms_p99
    );
    if summary.honest_errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors: {:?}", summary.honest_errors);
    }
    if args.attack_clients > 0 {
        println!("attacks: {} finished, {:.1} s each on average", summary.attacks_done, summary.attack_seconds_mean);
    }
    if args.hostile_clients > 0 {
        for (kind, codes) in &summary.hostile {
            println!("hostile {kind}: {codes:?}");
        }
        println!(
            "health: {} checks, {} not SERVING, p99 {:.1} ms, max {:.1} ms",
            summary.health_checks, summary.health_not_serving, summary.health_ms_p99, summary.health_ms_max
        );
    }
    if let (Some(a), Some(m), Some(e)) = (summary.rss_mb_after_warmup, summary.rss_mb_max, summary.rss_mb_end) {
        println!("server memory: {a:.1} MB after warm-up, {m:.1} MB at most, {e:.1} MB at the end (growth {:.1} MB)", e - a);
    }
    if !summary.stages.is_empty() {
        println!("server stages (mean / p50 / p99 ms, per request or per forward pass):");
        for (stage, f) in &summary.stages {
            println!("  {stage:<9} {:>8.3} {:>8.3} {:>8.3}   ({} observations)", f.mean_ms, f.p50_ms, f.p99_ms, f.observations);
        }
    }
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        pathguard::model::checkpoint::write_atomic(path, json.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn float32_images(images: &tch::Tensor) -> Images {
    Images {
        source: Some(Source::Tensor(Tensor {
            dtype: DataType::Float32 as i32,
            shape: images.size(),
            data: pathguard::service::input::float32_bytes(images),
        })),
    }
}

async fn load(args: &LoadTestArgs, request: ScreenRequest, attack: AttackRequest) -> Result<Summary> {
    let started = Instant::now();
    let warm = started + Duration::from_secs_f64(args.warmup_s);
    let budget = Budget {
        next: Arc::new(AtomicUsize::new(0)),
        requests: args.requests,
        until: args.duration_s.map(|d| started + Duration::from_secs_f64(d)),
    };
    let connect = |url: String| async move {
        let channel = Channel::from_shared(url.clone())?.connect().await.with_context(|| format!("connecting to {url}"))?;
        anyhow::Ok(channel)
    };

    let mut honest = Vec::new();
    for _ in 0..args.concurrency {
        let (channel, request, budget) = (connect(args.server.clone()).await?, request.clone(), budget.clone());
        honest.push(tokio::spawn(async move {
            let mut client = ScreeningClient::new(channel).max_decoding_message_size(64 << 20);
            let (mut latencies, mut errors) = (Vec::new(), BTreeMap::<String, usize>::new());
            while budget.take() {
                let t = Instant::now();
                match client.screen(request.clone()).await {
                    Ok(_) if t >= warm => latencies.push(t.elapsed()),
                    Ok(_) => {}
                    Err(s) => *errors.entry(format!("{:?}", s.code())).or_default() += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut hostile = Vec::new();
    if args.hostile_clients > 0 {
        let attack_images = match &request.images {
            Some(images) => images.clone(),
            None => unreachable!("built above"),
        };
        let payloads = Arc::new(Payloads::new(attack_images));
        for c in 0..args.hostile_clients {
            let (channel, budget, payloads) = (connect(args.server.clone()).await?, budget.clone(), payloads.clone());
            hostile.push(tokio::spawn(async move { payloads.send_until(channel, budget, c).await }));
        }
    }
    let mut attackers = Vec::new();
    for _ in 0..args.attack_clients {
        let (channel, budget, attack) = (connect(args.server.clone()).await?, budget.clone(), attack.clone());
        attackers.push(tokio::spawn(async move {
            let mut client = ScreeningClient::new(channel).max_decoding_message_size(64 << 20);
            let mut seconds = Vec::new();
            while budget.running() {
                let t = Instant::now();
                if client.generate_attack(attack.clone()).await.is_ok() {
                    seconds.push(t.elapsed().as_secs_f64());
                }
            }
            seconds
        }));
    }
    let health = {
        let (channel, budget) = (connect(args.server.clone()).await?, budget.clone());
        tokio::spawn(async move {
            let mut client = HealthClient::new(channel);
            let (mut times, mut not_serving) = (Vec::new(), 0);
            while budget.running() {
                let t = Instant::now();
                let answer = client.check(HealthCheckRequest { service: "pathguard.v1.Screening".into() }).await;
                times.push(t.elapsed());
                if answer.map(|a| a.into_inner().status).ok() != Some(1) {
                    not_serving += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (times, not_serving)
        })
    };
    // The stage histograms at the end of the warm-up, to subtract from those at the end.
    let stages_before = args.metrics.clone().map(|addr| {
        tokio::spawn(async move {
            tokio::time::sleep_until(warm.into()).await;
            metrics_text(&addr).await
        })
    });
    let memory = args.metrics.clone().map(|addr| {
        let budget = budget.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while budget.running() {
                if Instant::now() >= warm {
                    if let Some(rss) = resident_memory(&addr).await {
                        samples.push(rss);
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            samples.extend(resident_memory(&addr).await);
            samples
        })
    });

    let mut summary = Summary {
        honest_clients: args.concurrency,
        hostile_clients: args.hostile_clients,
        attack_clients: args.attack_clients,
        batch_size: args.batch_size,
        ..Summary::default()
    };
    let mut latencies = Vec::new();
    for task in honest {
        let (l, e) = task.await?;
        summary.honest_ok += l.len();
        latencies.extend(l);
        for (code, n) in e {
            *summary.honest_errors.entry(code).or_default() += n;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    let measured = (summary.seconds - args.warmup_s).max(1e-9);
    summary.images_per_second = (latencies.len() * args.batch_size) as f64 / measured;
    latencies.sort();
    summary.latency_ms_p50 = percentile(&latencies, 0.50);
    summary.latency_ms_p95 = percentile(&latencies, 0.95);
    summary.latency_ms_p99 = percentile(&latencies, 0.99);
    for task in hostile {
        for ((kind, code), n) in task.await? {
            *summary.hostile.entry(kind).or_default().entry(code).or_default() += n;
        }
    }
    let mut attack_seconds = Vec::new();
    for task in attackers {
        attack_seconds.extend(task.await?);
    }
    summary.attacks_done = attack_seconds.len();
    summary.attack_seconds_mean = attack_seconds.iter().sum::<f64>() / attack_seconds.len().max(1) as f64;
    let (mut times, not_serving) = health.await?;
    times.sort();
    summary.health_checks = times.len();
    summary.health_not_serving = not_serving;
    summary.health_ms_p99 = percentile(&times, 0.99);
    summary.health_ms_max = percentile(&times, 1.0);
    if let Some(memory) = memory {
        let samples = memory.await?;
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        summary.rss_mb_after_warmup = samples.first().copied().map(mb);
        summary.rss_mb_max = samples.iter().max().copied().map(mb);
        summary.rss_mb_end = samples.last().copied().map(mb);
    }
    if let (Some(before), Some(addr)) = (stages_before, &args.metrics) {
        if let (Some(before), Some(after)) = (before.await?, metrics_text(addr).await) {
            summary.stages = stage_times::between(&before, &after);
        }
    }
    Ok(summary)
}

/// The server's metrics, as text.
async fn metrics_text(addr: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// `pathguard_process_resident_memory_bytes` from the server's metrics endpoint.
async fn resident_memory(addr: &str) -> Option<u64> {
    let text = metrics_text(addr).await?;
    let line = text.lines().find(|l| l.starts_with("pathguard_process_resident_memory_bytes "))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// The hostile requests, built once.
struct Payloads {
    giant: Vec<u8>,
    bomb: Vec<u8>,
    palette: Vec<u8>,
    shape: Vec<i64>,
    method: String,
    model_name: String,
    images: Images,
}

impl Payloads {
    fn new(images: Images) -> Self {
        Payloads {
            giant: giant_header_png(60_000, 60_000, 16, 6),
            bomb: png_bomb(20_000),
            palette: short_palette_png(2),
            shape: vec![7; 1_500_000],
            method: "p".repeat(1 << 20),
            model_name: "m".repeat(1 << 20),
            images,
        }
    }

    fn files(files: Vec<Vec<u8>>) -> ScreenRequest {
        ScreenRequest { images: Some(Images { source: Some(Source::Encoded(EncodedImages { files })) }), ..Default::default() }
    }

    /// Sends the hostile requests in turn (client `c` starts at kind `c`) until the budget
    /// ends; counts the answers by kind and code.
    async fn send_until(&self, channel: Channel, budget: Budget, c: usize) -> BTreeMap<(String, String), usize> {
        let mut screening = ScreeningClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let mut inference = GrpcInferenceServiceClient::new(channel);
        let mut counts = BTreeMap::new();
        let code = |r: std::result::Result<(), tonic::Status>| match r {
            Ok(()) => "OK".to_string(),
            Err(s) => pathguard::service::metrics::code_name(s.code()).to_string(),
        };
        let mut k = c;
        while budget.running() {
            let (kind, result) = match k % 7 {
                0 => ("giant-header-png", screening.screen(Self::files(vec![self.giant.clone()])).await.map(|_| ())),
                1 => ("png-bomb-20000", screening.screen(Self::files(vec![self.bomb.clone()])).await.map(|_| ())),
                2 => ("short-palette-png", screening.screen(Self::files(vec![self.palette.clone()])).await.map(|_| ())),
                3 => {
                    let request = ScreenRequest {
                        images: Some(Images {
                            source: Some(Source::Tensor(Tensor { dtype: DataType::Float32 as i32, shape: self.shape.clone(), data: vec![0; 16] })),
                        }),
                        ..Default::default()
                    };
                    ("huge-shape", screening.screen(request).await.map(|_| ()))
                }
                4 => {
                    let request = AttackRequest { images: Some(self.images.clone()), method: self.method.clone(), eps: 0.1, ..Default::default() };
                    ("huge-attack-method", screening.generate_attack(request).await.map(|_| ()))
                }
                5 => {
                    let request = ModelInferRequest {
                        model_name: self.model_name.clone(),
                        inputs: vec![InferInputTensor { name: "images".into(), datatype: "FP32".into(), shape: vec![1, 1, 28, 28], ..Default::default() }],
                        raw_input_contents: vec![vec![0; 784 * 4]],
                        ..Default::default()
                    };
                    ("huge-model-name", inference.model_infer(request).await.map(|_| ()))
                }
                _ => {
                    let mut request = tonic::Request::new(AttackRequest {
                        images: Some(self.images.clone()),
                        method: "pgd".into(),
                        eps: 0.1,
                        steps: Some(1000),
                        ..Default::default()
                    });
                    request.set_timeout(Duration::from_millis(200));
                    ("attack-abandoned-after-200ms", screening.generate_attack(request).await.map(|_| ()))
                }
            };
            *counts.entry((kind.to_string(), code(result))).or_default() += 1;
            k += 1;
        }
        counts
    }
}
