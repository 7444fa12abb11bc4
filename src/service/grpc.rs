//! `pathguard.v1.Screening`: validation, then the workers.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt as _;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::bounded;
use super::deadline::deadline_of;
use super::drain::Drain;
use super::input::{decode_images_blocking, float32_bytes};
use super::metrics::Metrics;
use super::proto::screening_server::Screening;
use super::proto::{
    AttackRequest, AttackResponse, AttackedImage, DataType, ExpertScore, GatedLayer, GetInfoRequest, GetInfoResponse, ImageResult,
    Limits as LimitsMessage, PathSummary, ScreenRequest, ScreenResponse, Tensor as TensorMessage, TrainingDistance,
};
use super::models::Models;
use super::worker::Workers;
use crate::attack_spec::{AttackName, AttackParams, AttackSpec, Norm};
use crate::screener::pack_bits;

/// The service: shared by every connection. `models` is empty until the models are loaded.
#[derive(Clone)]
pub struct ScreeningService {
    pub models: Arc<tokio::sync::OnceCell<Arc<Models>>>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
}

impl ScreeningService {
    /// A service around `models` (loaded later by the server; at once in process).
    pub fn new(models: Option<Models>, metrics: Arc<Metrics>) -> Self {
        ScreeningService {
            models: Arc::new(tokio::sync::OnceCell::new_with(models.map(Arc::new))),
            metrics,
            drain: Drain::new(),
        }
    }

    /// All the models, once loaded.
    pub fn models(&self) -> Result<&Arc<Models>, Status> {
        self.models.get().ok_or_else(|| Status::unavailable("the models are still loading; see the health service"))
    }

    /// The workers of model `name` ("" = the default, the first).
    pub fn model(&self, name: &str) -> Result<&Arc<Workers>, Status> {
        self.models()?.get(name, "")
    }

    /// The default model's workers.
    pub fn workers(&self) -> Result<&Arc<Workers>, Status> {
        self.model("")
    }

    /// Screens one request: the whole of `Screen`, one message of `ScreenStream`, and the
    /// in-process path of `pathguard screen`.
    pub async fn screen_request(&self, mut request: ScreenRequest, deadline: Option<Instant>) -> Result<ScreenResponse, Status> {
        let (served, workers) = self.models()?.get_named(&request.model, "")?;
        let decoding = Instant::now();
        let images = decode_images_blocking(request.images.take(), "images", workers.limits.max_images_per_request, workers.info.input).await?;
        self.metrics.observe_stage("decode", decoding.elapsed());
        let n = images.size()[0] as usize;
        if !request.ids.is_empty() && request.ids.len() != n {
            return Err(Status::invalid_argument(format!(
                "ids: {} ids for {n} images; give none or one per image",
                request.ids.len()
            )));
        }
        if let Some(t) = request.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(Status::invalid_argument(format!("threshold: {t} is not in [0, 1]")));
            }
        }
        let threshold = request.threshold.map(f64::from).unwrap_or(workers.info.threshold);
        let screened = workers.screen(images, deadline).await?;
        let encoding = Instant::now();
        let names = &workers.info.class_names;
        let results: Vec<ImageResult> = screened
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let flagged = s.score >= threshold;
                ImageResult {
                    id: request.ids.get(i).cloned().unwrap_or_else(|| i.to_string()),
                    predicted_class: s.predicted_class as i32,
                    predicted_name: names.get(s.predicted_class as usize).cloned().unwrap_or_default(),
                    probabilities: s.probabilities,
                    adversarial_score: s.score as f32,
                    flagged,
                    threshold: threshold as f32,
                    path: Some(PathSummary {
                        open_fraction: s.open_fraction,
                        template_deviation: s.template_deviation,
                        packed_bits: if request.return_path_bits { pack_bits(&s.path) } else { Vec::new() },
                        bit_count: s.path.len() as u32,
                        layer_evidence: s.layer_evidence.iter().map(|&e| e as f32).collect(),
                    }),
                    experts: (workers.info.expert_names.iter().zip(&s.expert_scores))
                        .map(|(name, &score)| ExpertScore { name: name.clone(), score: score as f32, fired: score >= threshold })
                        .collect(),
                    distribution: s
                        .distribution
                        .map(|d| TrainingDistance { distance: d.distance, percentile: d.percentile as f32 }),
                }
            })
            .collect();
        self.metrics.images_screened.with_label_values(&[served]).inc_by(results.len() as u64);
        self.metrics.images_flagged.with_label_values(&[served]).inc_by(results.iter().filter(|r| r.flagged).count() as u64);
        self.metrics.observe_stage("encode", encoding.elapsed());
        Ok(ScreenResponse { results, model_hash: workers.info.model_hash.clone() })
    }

    async fn attack_request(&self, mut request: AttackRequest, deadline: Option<Instant>) -> Result<AttackResponse, Status> {
        let workers = self.model(&request.model)?;
        let limits = &workers.limits;
        let images = decode_images_blocking(request.images.take(), "images", limits.max_attack_images, workers.info.input).await?;
        let n = images.size()[0] as usize;
        let classes = workers.info.class_names.len() as i64;
        let labels = if request.labels.is_empty() {
            None
        } else if request.labels.len() != n {
            return Err(Status::invalid_argument(format!("labels: {} labels for {n} images", request.labels.len())));
        } else if let Some((i, l)) = request.labels.iter().enumerate().find(|(_, l)| !(0..classes).contains(*l)) {
            return Err(Status::invalid_argument(format!("labels[{i}]: {l} is not a class in 0..{classes}")));
        } else {
            Some(tch::Tensor::from_slice(&request.labels))
        };
        let spec = attack_spec(&request, classes, limits.max_attack_steps)?;
        let started = Instant::now();
        let result = workers.attack(images, labels, spec, deadline).await?;
        let results = (0..n)
            .map(|i| AttackedImage {
                label: result.labels[i],
                clean_prediction: result.clean_predictions[i] as i32,
                prediction: result.predictions[i] as i32,
                success: result.success[i],
                linf: result.linf[i],
                l2: result.l2[i],
                adversarial_score: result.scores[i],
                flagged: result.scores[i] >= result.threshold,
                evaded: result.success[i] && result.scores[i] < result.threshold,
            })
            .collect();
        Ok(AttackResponse {
            adversarial: Some(TensorMessage {
                dtype: DataType::Float32 as i32,
                shape: result.adversarial.size(),
                data: float32_bytes(&result.adversarial),
            }),
            results,
            seconds: started.elapsed().as_secs_f64(),
            threshold: result.threshold,
        })
    }

    /// A new unary call: admitted unless the server is shutting down, then [`Self::observed`];
    /// a refusal is counted like every other outcome.
    pub async fn call<T>(
        &self,
        rpc: &'static str,
        deadline: Option<Instant>,
        work: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let admitted = self.drain.admit();
        self.observed(rpc, deadline, async move {
            let _call = admitted?;
            work.await
        })
        .await
    }

    /// Runs `work`, recording the RPC's code and latency and logging it in the request's span.
    /// Every outcome is counted: a panic becomes INTERNAL, the end of the shutdown grace
    /// period UNAVAILABLE, and a call dropped before it finished (the client cancelled it, or
    /// its deadline passed) CANCELLED or DEADLINE_EXCEEDED. Status messages are bounded.
    pub async fn observed<T>(
        &self,
        rpc: &'static str,
        deadline: Option<Instant>,
        work: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let span = tracing::info_span!("request", rpc);
        let mut outcome = Outcome { metrics: &self.metrics, rpc, started: Instant::now(), deadline, finished: false };
        async move {
            let result = tokio::select! {
                result = AssertUnwindSafe(work).catch_unwind() => result.unwrap_or_else(|panic| {
                    let what = panic_message(panic.as_ref());
                    tracing::error!(panic = %bounded::message(&what), "request handler panicked");
                    Err(Status::internal("the request failed inside the server (a bug); the server is still running"))
                }),
                _ = self.drain.aborted() => Err(Status::unavailable(
                    "the server shut down before this request finished (its shutdown grace period ran out)",
                )),
            };
            let result = result.map_err(bounded::status);
            outcome.finish(result.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code()), result.as_ref().err());
            result
        }
        .instrument(span)
        .await
    }
}

/// How close to its deadline a dropped call counts as DEADLINE_EXCEEDED rather than CANCELLED.
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

/// Records one call's outcome, also when the call is dropped before it finishes.
struct Outcome<'a> {
    metrics: &'a Metrics,
    rpc: &'static str,
    started: Instant,
    deadline: Option<Instant>,
    finished: bool,
}

impl Outcome<'_> {
    fn finish(&mut self, code: tonic::Code, error: Option<&Status>) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.metrics.record(self.rpc, code, elapsed);
        let ms = elapsed.as_secs_f64() * 1e3;
        match error {
            None => tracing::info!(code = ?code, ms, "done"),
            Some(s) => tracing::warn!(code = ?code, ms, message = s.message(), "failed"),
        }
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // The client's timer and tonic's start before ours: a call dropped just before its
            // deadline was dropped because of it.
            let code = match self.deadline {
                Some(d) if d.saturating_duration_since(Instant::now()) < DEADLINE_SLACK => tonic::Code::DeadlineExceeded,
                _ => tonic::Code::Cancelled,
            };
            let elapsed = self.started.elapsed();
            self.metrics.record(self.rpc, code, elapsed);
            tracing::info!(rpc = self.rpc, code = ?code, ms = elapsed.as_secs_f64() * 1e3, "abandoned by the client");
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The attack of a request, checked against the server's limits.
fn attack_spec(r: &AttackRequest, classes: i64, max_steps: usize) -> Result<AttackSpec, Status> {
    let method: AttackName = r.method.parse().map_err(|_| {
        Status::invalid_argument(format!("method: unknown attack {}; use one of {}", bounded::quoted(&r.method), AttackName::list()))
    })?;
    if let Some(t) = r.target_class {
        if !(0..classes).contains(&(t as i64)) {
            return Err(Status::invalid_argument(format!("target_class: {t} is not a class in 0..{classes}")));
        }
    }
    let norm = match r.norm.as_str() {
        "" => None,
        norm => Some(norm.parse::<Norm>().map_err(|_| {
            Status::invalid_argument(format!("norm: {} is not linf or l2", bounded::quoted(norm)))
        })?),
    };
    let spec = AttackParams {
        steps: r.steps.map(|s| s as usize),
        step_size: r.step_size.map(f64::from),
        random_start: r.random_start,
        seed: r.seed,
        target_class: r.target_class.map(i64::from),
        decay: r.decay.map(f64::from),
        confidence: r.confidence.map(f64::from),
        initial_const: r.initial_const.map(f64::from),
        learning_rate: r.learning_rate.map(f64::from),
        search_steps: r.search_steps.map(|s| s as usize),
        overshoot: r.overshoot.map(f64::from),
        early_stop: r.early_stop,
        lambda: r.lambda.map(f64::from),
        restarts: r.restarts.map(|n| n as usize),
        norm,
        ..AttackParams::new(method, f64::from(r.eps))
    }
    .check()
    .map_err(|e| Status::invalid_argument(format!("attack parameters: {e}")))?;
    let iterations = spec.attack.iterations();
    if iterations > max_steps {
        return Err(Status::invalid_argument(format!(
            "steps: {iterations} iterations (steps x search_steps x restarts); this server allows at most {max_steps}"
        )));
    }
    Ok(spec)
}

type ScreenStreamOut = Pin<Box<dyn Stream<Item = Result<ScreenResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Screening for ScreeningService {
    async fn screen(&self, request: Request<ScreenRequest>) -> Result<Response<ScreenResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        let response = self.call("Screen", deadline, self.screen_request(request.into_inner(), deadline)).await?;
        Ok(Response::new(response))
    }

    type ScreenStreamStream = ScreenStreamOut;

    async fn screen_stream(
        &self,
        request: Request<Streaming<ScreenRequest>>,
    ) -> Result<Response<Self::ScreenStreamStream>, Status> {
        let deadline = deadline_of(request.metadata());
        let call = self.drain.admit().inspect_err(|s| self.metrics.record("ScreenStream", s.code(), Default::default()))?;
        let mut incoming = request.into_inner();
        let service = self.clone();
        // One message at a time, in order: the next request is read only after the previous
        // answer was handed to the (bounded) response channel, so a slow reader slows the
        // writer down (flow control end to end). Every message gets an answer, or the stream
        // ends with an error status: never "OK" with answers missing.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _call = call;
            loop {
                let message = tokio::select! {
                    message = incoming.next() => message,
                    _ = service.drain.aborted() => Some(Err(Status::unavailable(
                        "the server shut down before this stream ended (its shutdown grace period ran out)",
                    ))),
                };
                let Some(message) = message else { break };
                let result = match message {
                    Ok(request) => service.observed("ScreenStream", deadline, service.screen_request(request, deadline)).await,
                    Err(status) => Err(bounded::status(status)),
                };
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn generate_attack(&self, request: Request<AttackRequest>) -> Result<Response<AttackResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        let response = self.call("GenerateAttack", deadline, self.attack_request(request.into_inner(), deadline)).await?;
        Ok(Response::new(response))
    }

    async fn get_info(&self, request: Request<GetInfoRequest>) -> Result<Response<GetInfoResponse>, Status> {
        let name = request.into_inner().model;
        self.observed("GetInfo", None, async {
            let models = self.models()?;
            let (model_name, workers) = models.get_named(&name, "")?;
            let (info, limits) = (&workers.info, &workers.limits);
            Ok(Response::new(GetInfoResponse {
                model_name: model_name.to_string(),
                models: models.names().to_vec(),
                model_hash: info.model_hash.clone(),
                class_names: info.class_names.clone(),
                input_shape: info.input.image_shape().to_vec(),
                pixel_convention: format!(
                    "{}, float32 in [0, 1] (0 = black) or uint8 in [0, 255], NCHW; {}",
                    info.input.describe(),
                    match info.normalized_input {
                        true => "standardised per channel inside the model (send raw pixels)",
                        false => "no normalisation",
                    }
                ),
                resize: info.input.resize.name().into(),
                gated_layers: info
                    .gate_sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| GatedLayer { index: i as u32, filters: f as u32 })
                    .collect(),
                detector_kind: info.detector_kind.clone(),
                threshold: info.threshold as f32,
                detector_hash: info.detector_hash.clone(),
                training: info.training.clone(),
                limits: Some(LimitsMessage {
                    max_images_per_request: limits.max_images_per_request as u32,
                    max_batch: limits.max_batch as u32,
                    max_delay_ms: limits.max_delay_ms as u32,
                    queue_capacity: limits.queue_capacity as u32,
                    max_attack_images: limits.max_attack_images as u32,
                    max_attack_steps: limits.max_attack_steps as u32,
                    max_message_bytes: limits.max_message_bytes as u64,
                    max_queued_images: limits.max_queued_images as u32,
                }),
                device: info.device.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, rpc: &str, code: &str) -> u64 {
        metrics.requests.with_label_values(&[rpc, code]).get()
    }

    #[tokio::test]
    async fn every_outcome_is_counted_panics_and_abandoned_calls_included() {
        let service = ScreeningService::new(None, Arc::new(Metrics::new()));
        let metrics = service.metrics.clone();
        // A panic inside a handler: INTERNAL, counted, and the caller gets an answer.
        let status = service.observed("Screen", None, async { panic!("boom") as Result<(), Status> }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(count(&metrics, "Screen", "INTERNAL"), 1);
        // A call dropped before it finished (the client went away): CANCELLED.
        let pending = service.observed("Screen", None, std::future::pending::<Result<(), Status>>());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(10), pending).await.is_err());
        assert_eq!(count(&metrics, "Screen", "CANCELLED"), 1);
        // Dropped at its deadline: DEADLINE_EXCEEDED.
        let deadline = Some(Instant::now() + std::time::Duration::from_millis(10));
        let pending = service.observed("Screen", deadline, std::future::pending::<Result<(), Status>>());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(10), pending).await.is_err());
        assert_eq!(count(&metrics, "Screen", "DEADLINE_EXCEEDED"), 1);
        // Errors are bounded; successes counted as OK.
        let long = service.observed("Screen", None, async { Err::<(), _>(Status::invalid_argument("x".repeat(1 << 20))) });
        assert!(long.await.unwrap_err().message().len() < 2 * bounded::MAX_MESSAGE_BYTES);
        service.observed("Screen", None, async { Ok(()) }).await.unwrap();
        assert_eq!(count(&metrics, "Screen", "OK"), 1);
        // Once a shutdown begins, new calls are refused, and the refusal is counted.
        service.drain.begin();
        let status = service.call("Screen", None, async { Ok(()) }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(count(&metrics, "Screen", "UNAVAILABLE"), 1);
        // At the end of the shutdown grace period, calls still running answer UNAVAILABLE.
        service.drain.abort();
        let status = service.observed("Screen", None, std::future::pending::<Result<(), Status>>()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
