//! The worker threads that own the model. Handlers enqueue jobs on bounded queues and await
//! the reply; the screening worker gathers the jobs of different clients into one forward
//! pass (up to `max_batch` images, waiting at most `max_delay_ms` for more), and drops jobs
//! whose deadline passed or whose caller went away before computing. Attacks, much slower,
//! run on a second worker with its own copy of the model, so that they never hold up
//! screening. Inference never runs on the async runtime's threads.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;
use tonic::Status;

use super::limits::Limits;
use super::metrics::Metrics;
use crate::attack_set::{run_attack_until, GateGradient};
use crate::attack_spec::AttackSpec;
use crate::data::Dataset;
use crate::model::Execution;
use crate::screener::{Screened, Screener};

/// What clients may learn about the loaded model (GetInfo, metadata).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_hash: String,
    pub class_names: Vec<String>,
    pub gate_sizes: Vec<usize>,
    pub threshold: f64,
    pub detector_kind: String,
    pub detector_hash: String,
    /// The detector's experts, in the order of `Screened::expert_scores`.
    pub expert_names: Vec<String>,
    /// Per class, how often clean images switch each filter on (the detector's templates).
    pub templates: Vec<Vec<f32>>,
    pub device: String,
    /// [`crate::train::TrainingRecord::summary`] of the checkpoint.
    pub training: String,
    /// What the model takes (shape, resize rule): requests are decoded and checked for it.
    pub input: crate::data::InputSpec,
    /// Whether the model standardises its input inside (callers give [0, 1] pixels either way).
    pub normalized_input: bool,
}

struct ScreenJob {
    images: Tensor,
    _held: HeldImages,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Vec<Screened>, Status>>,
}

impl ScreenJob {
    /// Frees the job's images from the queue bound, then answers: a caller who gets the
    /// answer and sends again at once must find its images no longer counted.
    fn answer(self, result: Result<Vec<Screened>, Status>) {
        let ScreenJob { _held, reply, .. } = self;
        drop(_held);
        let _ = reply.send(result);
    }
}

/// The outcome of an attack job, per image.
#[derive(Debug)]
pub struct AttackResult {
    pub adversarial: Tensor,
    pub labels: Vec<i64>,
    pub clean_predictions: Vec<i64>,
    pub predictions: Vec<i64>,
    pub success: Vec<bool>,
    pub linf: Vec<f32>,
    pub l2: Vec<f32>,
    /// The detector's score of each adversarial image, and its threshold.
    pub scores: Vec<f64>,
    pub threshold: f64,
    pub seconds: f64,
}

struct AttackJob {
    images: Tensor,
    labels: Option<Tensor>,
    spec: AttackSpec,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<AttackResult, Status>>,
}

/// Handles to the running workers; dropping it stops them once their queues drain.
pub struct Workers {
    screen: SyncSender<ScreenJob>,
    attack: SyncSender<AttackJob>,
    /// Jobs computing right now, on either worker.
    computing: Arc<AtomicUsize>,
    /// Images of the screening jobs queued or computing (bounded by `max_queued_images`).
    held_images: Arc<AtomicUsize>,
    pub info: ModelInfo,
    pub limits: Limits,
}

/// Counts a screening job's images as held by the worker while the job lives.
struct HeldImages {
    count: Arc<AtomicUsize>,
    images: usize,
}

impl Drop for HeldImages {
    fn drop(&mut self) {
        self.count.fetch_sub(self.images, Ordering::SeqCst);
    }
}

/// Counts a job as computing while it lives.
struct Computing<'a>(&'a AtomicUsize);

impl<'a> Computing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Computing(count)
    }
}

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Attacks waiting for the attack worker.
const ATTACK_QUEUE: usize = 4;

impl Workers {
    /// Starts both workers, each loading `model_dir` on `device`; returns once both are ready.
    pub fn start(model_dir: &Path, device: Device, execution: Execution, limits: Limits, metrics: Arc<Metrics>) -> crate::Result<Self> {
        let (screen, screen_rx) = sync_channel::<ScreenJob>(limits.queue_capacity);
        let (attack, attack_rx) = sync_channel::<AttackJob>(ATTACK_QUEUE);
        let computing = Arc::new(AtomicUsize::new(0));
        let info = spawn_worker("pathguard-screen", model_dir, device, execution, {
            let (limits, metrics, computing) = (limits.clone(), metrics.clone(), computing.clone());
            move |screener| screen_loop(&screener, screen_rx, &limits, &metrics, &computing)
        })?;
        spawn_worker("pathguard-attack", model_dir, device, execution, {
            let (limits, metrics, computing) = (limits.clone(), metrics.clone(), computing.clone());
            move |screener| attack_loop(&screener, attack_rx, &limits, &metrics, &computing)
        })?;
        Ok(Workers { screen, attack, computing, held_images: Arc::new(AtomicUsize::new(0)), info, limits })
    }

    /// Waits (at most `timeout`) until no job is computing; says whether that happened. The
    /// process must not exit while libtorch runs on a worker thread (its globals are torn
    /// down under the computation); an abandoned attack stops within an iteration.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.computing.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Screens `images` (`[N, 1, 28, 28]` float32, validated) on the screening worker.
    pub async fn screen(&self, images: Tensor, deadline: Option<Instant>) -> Result<Vec<Screened>, Status> {
        // Requests are bounded by count (the queue) and, as they may hold 1 to 1,024 images
        // each, by images: what a full queue costs in memory is bounded either way.
        let n = images.size()[0] as usize;
        let before = self.held_images.fetch_add(n, Ordering::SeqCst);
        let held = HeldImages { count: self.held_images.clone(), images: n };
        if before + n > self.limits.max_queued_images {
            return Err(Status::resource_exhausted(format!(
                "the screening queue holds {before} images; with these {n} it would pass its limit of {}; retry later",
                self.limits.max_queued_images
            )));
        }
        let (reply, answer) = oneshot::channel();
        let job = ScreenJob { images, _held: held, enqueued: Instant::now(), deadline, reply };
        enqueue(&self.screen, job, "screening")?;
        answer.await.map_err(|_| Status::internal("the screening worker stopped"))?
    }

    /// Runs an attack on the attack worker.
    pub async fn attack(
        &self,
        images: Tensor,
        labels: Option<Tensor>,
        spec: AttackSpec,
        deadline: Option<Instant>,
    ) -> Result<AttackResult, Status> {
        let (reply, answer) = oneshot::channel();
        let job = AttackJob { images, labels, spec, enqueued: Instant::now(), deadline, reply };
        enqueue(&self.attack, job, "attack")?;
        answer.await.map_err(|_| Status::internal("the attack worker stopped"))?
    }
}

fn enqueue<J>(queue: &SyncSender<J>, job: J, name: &str) -> Result<(), Status> {
    match queue.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            Err(Status::resource_exhausted(format!("the {name} queue is full; retry later or lower the request rate")))
        }
        Err(TrySendError::Disconnected(_)) => Err(Status::unavailable(format!("the {name} worker has stopped"))),
    }
}

/// Starts a thread that loads the model and then runs `work`; waits until it has loaded.
fn spawn_worker(
    name: &str,
    model_dir: &Path,
    device: Device,
    execution: Execution,
    work: impl FnOnce(Screener) + Send + 'static,
) -> crate::Result<ModelInfo> {
    let (ready, loaded) = sync_channel(1);
    let dir = model_dir.to_path_buf();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match Screener::load(&dir, device).and_then(|s| s.with_execution(execution)) {
            Ok(screener) => {
                let _ = ready.send(Ok(model_info(&screener)));
                work(screener);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        })
        .map_err(|e| crate::Error::Service(format!("starting worker thread {name}: {e}")))?;
    loaded.recv().map_err(|_| crate::Error::Service(format!("worker {name} died while loading")))?
}

fn model_info(s: &Screener) -> ModelInfo {
    let detector_json = serde_json::to_vec(&s.detector).unwrap_or_default();
    ModelInfo {
        model_hash: s.checkpoint.model_hash().to_string(),
        class_names: s.class_names().to_vec(),
        input: s.checkpoint.input_spec(),
        normalized_input: s.checkpoint.model.config().normalized_input,
        gate_sizes: s.gate_sizes(),
        threshold: s.detector.threshold(),
        detector_kind: format!(
            "path detector: noisy-OR of logistic experts ({})",
            s.detector.experts.iter().map(|e| format!("{}, {} features", e.name, e.features.len())).collect::<Vec<_>>().join("; ")
        ),
        detector_hash: crate::model::checkpoint::sha256_hex(&detector_json),
        expert_names: s.detector.experts.iter().map(|e| e.name.clone()).collect(),
        templates: s.detector.templates.frequencies.clone(),
        device: crate::device::device_name(s.device),
        training: s.checkpoint.meta.training.as_ref().map_or_else(|| "no training record".to_string(), |t| t.summary()),
    }
}

/// Runs `f`, turning a panic inside libtorch or our code into INTERNAL instead of killing
/// the worker.
fn guarded<T>(f: impl FnOnce() -> crate::Result<T>) -> Result<T, Status> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(crate::Error::InvalidInput(msg))) => Err(Status::invalid_argument(msg)),
        Ok(Err(crate::Error::Config(msg))) => Err(Status::invalid_argument(msg)),
        Ok(Err(crate::Error::Cancelled)) => Err(Status::cancelled("the caller gave up before the work finished")),
        Ok(Err(e)) => Err(Status::internal(e.to_string())),
        Err(_) => Err(Status::internal("the computation failed; the server is still running")),
    }
}

fn expired(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

fn screen_loop(screener: &Screener, queue: Receiver<ScreenJob>, limits: &Limits, metrics: &Metrics, computing: &AtomicUsize) {
    let max_batch = limits.max_batch.max(1);
    let max_delay = Duration::from_millis(limits.max_delay_ms);
    while let Ok(first) = queue.recv() {
        let mut images = first.images.size()[0] as usize;
        let mut jobs = vec![first];
        let until = Instant::now() + max_delay;
        while images < max_batch {
            match queue.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    images += job.images.size()[0] as usize;
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            metrics.queue_wait.with_label_values(&["screen"]).observe((now - job.enqueued).as_secs_f64());
            metrics.observe_stage("queue", now - job.enqueued);
            if expired(job.deadline, now) {
                job.answer(Err(Status::deadline_exceeded("the deadline passed while the request was queued")));
            } else if !job.reply.is_closed() {
                live.push(job);
            }
        }
        if live.is_empty() {
            continue;
        }
        let _computing = Computing::start(computing);
        let batch = Tensor::cat(&live.iter().map(|j| j.images.shallow_clone()).collect::<Vec<_>>(), 0);
        let result = guarded(|| {
            let n = batch.size()[0];
            let mut screened = Vec::with_capacity(n as usize);
            for start in (0..n).step_by(max_batch) {
                let chunk = batch.narrow(0, start, (max_batch as i64).min(n - start));
                metrics.batch_size.observe(chunk.size()[0] as f64);
                let (results, times) = screener.screen_timed(&chunk)?;
                metrics.observe_stage("model", times.model);
                metrics.observe_stage("detector", times.detector);
                screened.extend(results);
            }
            Ok(screened)
        });
        match result {
            Ok(screened) => {
                let mut rest = screened.into_iter();
                for job in live {
                    let n = job.images.size()[0] as usize;
                    let screened = rest.by_ref().take(n).collect();
                    job.answer(Ok(screened));
                }
            }
            Err(status) => {
                for job in live {
                    job.answer(Err(status.clone()));
                }
            }
        }
    }
}

fn attack_loop(screener: &Screener, queue: Receiver<AttackJob>, limits: &Limits, metrics: &Metrics, computing: &AtomicUsize) {
    while let Ok(job) = queue.recv() {
        let now = Instant::now();
        metrics.queue_wait.with_label_values(&["attack"]).observe((now - job.enqueued).as_secs_f64());
        if expired(job.deadline, now) {
            let _ = job.reply.send(Err(Status::deadline_exceeded("the deadline passed while the request was queued")));
            continue;
        }
        if job.reply.is_closed() {
            continue;
        }
        // The attack stops within one iteration of its caller going away (a dropped call
        // closes the reply channel) or of its deadline passing, freeing the worker.
        let abandoned = || job.reply.is_closed() || expired(job.deadline, Instant::now());
        let computing = Computing::start(computing);
        let result = guarded(|| run_attack_job(screener, &job, limits.max_batch, &abandoned));
        if matches!(&result, Err(s) if s.code() == tonic::Code::Cancelled) {
            metrics.attacks_abandoned.inc();
        }
        drop(computing);
        let _ = job.reply.send(result);
    }
}

fn run_attack_job(
    screener: &Screener,
    job: &AttackJob,
    batch_size: usize,
    abandoned: &dyn Fn() -> bool,
) -> crate::Result<AttackResult> {
    let model = &screener.checkpoint.model;
    let labels = match &job.labels {
        Some(labels) => labels.shallow_clone(),
        None => model.predict(&job.images.to_device(screener.device))?.0.argmax(1, false).to_device(Device::Cpu),
    };
    let data = Dataset { images: job.images.shallow_clone(), labels, class_names: screener.checkpoint.meta.class_names.clone() };
    let n = data.len() as i64;
    let indices = Tensor::arange(n, (Kind::Int64, Device::Cpu));
    let outcome = run_attack_until(
        model,
        Some(&screener.detector),
        screener.device,
        &data,
        &indices,
        &job.spec,
        GateGradient::Surrogate,
        batch_size,
        false,
        abandoned,
    )?;
    let success = match job.spec.target_class {
        Some(t) => outcome.predictions.eq(t),
        None => outcome.predictions.ne_tensor(&outcome.labels),
    };
    let delta = &outcome.adversarial - &data.images;
    let as_f32 = |t: Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap_or_default();
    let as_i64 = |t: &Tensor| Vec::<i64>::try_from(t.to_kind(Kind::Int64)).unwrap_or_default();
    Ok(AttackResult {
        labels: as_i64(&outcome.labels),
        clean_predictions: as_i64(&outcome.clean_predictions),
        predictions: as_i64(&outcome.predictions),
        success: Vec::<bool>::try_from(success).unwrap_or_default(),
        linf: as_f32(attacks::linf_norms(&delta)),
        l2: as_f32(attacks::l2_norms(&delta)),
        scores: outcome.detector.as_ref().map(|d| d.scores.clone()).unwrap_or_default(),
        threshold: screener.detector.threshold(),
        seconds: outcome.stats.seconds,
        adversarial: outcome.adversarial,
    })
}
