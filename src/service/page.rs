//! The screening page at `/` of the HTTP address: drop an image, see the verdict, the path
//! against the predicted class's template and the layers that pushed the score up, plus the
//! service's live counters. Plain HTML/CSS/JS served by the binary (`page.html`); it calls
//! `POST /api/screen` (one PNG, JPEG or NPY file as the body, through the same screening as
//! every RPC; `?model=NAME` picks one of the served models, default the first) and
//! `GET /api/stats` (which also lists the models, for the page's model choice).

use crate::data::InputSpec;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::core::Collector;
use serde_json::json;

use super::grpc::ScreeningService;
use super::proto::{images::Source, DataType, EncodedImages, Images, ScreenRequest, Tensor};

const PAGE: &str = include_str!("page.html");
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// The `model` of a `?model=NAME` query: a served model's name; absent or empty, the default.
/// Model names are letters, digits, '-', '_' and '.', so there is nothing to percent-decode
/// (an encoded name matches no model and is answered 404).
fn model_of(uri: &Uri) -> String {
    uri.query().unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("model=")).unwrap_or("").to_string()
}

#[derive(Clone)]
struct Page {
    screening: ScreeningService,
    max_body_bytes: usize,
}

pub fn routes(screening: ScreeningService, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/screen", post(screen))
        .route("/api/stats", get(stats))
        .with_state(Page { screening, max_body_bytes })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The first image of an NPY array of images of the model's shape, in [0, 1].
fn npy_image(bytes: &[u8], spec: &InputSpec) -> Result<Images, String> {
    let (shape, values) = crate::data::image::npy_values(bytes).map_err(|e| format!("not a readable NPY array: {e}"))?;
    let per_image = spec.values_per_image();
    let [c, s, _] = spec.image_shape();
    let fits = shape.len() >= 2 && shape[shape.len() - 2..] == [s as usize, s as usize];
    if !fits || values.len() < per_image || values.len() % per_image != 0 {
        return Err(format!("the NPY array has shape {shape:?}; give {} images ([N, {c}, {s}, {s}])", spec.describe()));
    }
    let data = values[..per_image].iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Images { source: Some(Source::Tensor(Tensor { dtype: DataType::Float32 as i32, shape: vec![1, c, s, s], data })) })
}

async fn screen(State(page): State<Page>, uri: Uri, body: Body) -> Response {
    let model = model_of(&uri);
    let limit = page.max_body_bytes;
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the file is larger than the limit of {limit} bytes")),
    };
    if bytes.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no file: send one PNG, JPEG or NPY file as the request body");
    }
    let workers = match page.screening.model(&model) {
        Ok(workers) => workers.clone(),
        Err(s) if s.code() == tonic::Code::NotFound => return error(StatusCode::NOT_FOUND, s.message()),
        Err(s) => return error(StatusCode::SERVICE_UNAVAILABLE, s.message()),
    };
    let images = if bytes.starts_with(NPY_MAGIC) {
        let spec = workers.info.input;
        match npy_image(&bytes, &spec) {
            Ok(images) => images,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    } else {
        Images { source: Some(Source::Encoded(EncodedImages { files: vec![bytes.to_vec()] })) }
    };
    let request = ScreenRequest { images: Some(images), return_path_bits: true, model, ..Default::default() };
    let screening = page.screening.clone();
    let answer = page.screening.call("PageScreen", None, async move { screening.screen_request(request, None).await }).await;
    let response = match answer {
        Ok(r) => r,
        Err(s) => {
            let status = match s.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, s.message().replace("images.encoded.files[0]", "the file"));
        }
    };
    let info = &workers.info;
    let Some(r) = response.results.first() else { return error(StatusCode::INTERNAL_SERVER_ERROR, "no result") };
    let path = r.path.clone().unwrap_or_default();
    let bits: Vec<u8> = (0..path.bit_count as usize).map(|i| (path.packed_bits[i / 8] >> (i % 8)) & 1).collect();
    let template = info.templates.get(r.predicted_class as usize).cloned().unwrap_or_default();
    axum::Json(json!({
        "predicted_class": r.predicted_class,
        "predicted_name": r.predicted_name,
        "class_names": info.class_names,
        "probabilities": r.probabilities,
        "adversarial_score": r.adversarial_score,
        "threshold": r.threshold,
        "flagged": r.flagged,
        "experts": r.experts.iter().map(|e| json!({ "name": e.name, "score": e.score, "fired": e.fired })).collect::<Vec<_>>(),
        "distribution_percentile": r.distribution.as_ref().map(|d| d.percentile),
        "gate_sizes": info.gate_sizes,
        "path": bits,
        "template": template,
        "open_fraction": path.open_fraction,
        "template_deviation": path.template_deviation,
        "layer_evidence": path.layer_evidence,
        "model_hash": response.model_hash,
    }))
    .into_response()
}

/// The upper bound of the histogram bucket holding quantile `q` of the screening calls'
/// latency, in ms (None before any call).
fn latency_quantile(families: &[prometheus::proto::MetricFamily], q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut total = 0u64;
    for family in families {
        for metric in family.get_metric() {
            let rpc = metric.get_label().iter().find(|l| l.name() == "rpc").map(|l| l.value()).unwrap_or("");
            if rpc == "GenerateAttack" || rpc == "GetInfo" {
                continue;
            }
            let h = metric.get_histogram();
            total += h.get_sample_count();
            for (i, b) in h.get_bucket().iter().enumerate() {
                if buckets.len() <= i {
                    buckets.push((b.upper_bound(), 0));
                }
                buckets[i].1 += b.cumulative_count();
            }
        }
    }
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    Some(buckets.iter().find(|(_, count)| *count >= rank).map(|(bound, _)| bound * 1000.0).unwrap_or(f64::INFINITY))
}

/// A counter summed over its labels (every model).
fn total(counter: &prometheus::IntCounterVec) -> u64 {
    counter.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
}

async fn stats(State(page): State<Page>) -> Response {
    let m = &page.screening.metrics;
    let families = m.latency.collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "screened": total(&m.images_screened),
            "flagged": total(&m.images_flagged),
            "models": page.screening.models().map(|m| m.names().to_vec()).unwrap_or_default(),
            "p50_ms_at_most": latency_quantile(&families, 0.5),
            "p99_ms_at_most": latency_quantile(&families, 0.99),
            "ready": page.screening.workers().is_ok(),
        })),
    )
        .into_response()
}
