//! The Open Inference Protocol over HTTP/JSON (KServe v2 REST: what `tritonclient.http`,
//! KServe's probes and `curl` speak), with the binary tensor data extension. An infer request
//! becomes the same `ModelInferRequest` as over gRPC and runs through
//! [`InferenceService::infer`]: the same validation, worker, batching, limits and metrics.
//! Errors are the protocol's `{"error": "..."}`: 400 for bad input, 404 for an unknown model,
//! 413 for an oversized body, 503 when loading or overloaded.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tonic::{Code, Request, Status};

use super::inference::grpc_inference_service_server::GrpcInferenceService;
use super::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::inference::*;
use super::kserve::InferenceService;

/// The header of the binary tensor extension: the JSON part's length in bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct Rest {
    inference: InferenceService,
    max_body_bytes: usize,
}

/// The `/v2` routes; `max_body_bytes` bounds a request body (the gRPC message limit).
pub fn routes(inference: InferenceService, max_body_bytes: usize) -> Router {
    let rest = Rest { inference, max_body_bytes };
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .with_state(rest)
}

/// An error answer: the protocol's JSON body with the HTTP status of the gRPC code.
struct HttpError(StatusCode, String);

impl From<Status> for HttpError {
    fn from(s: Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError(status, s.message().to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: String) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message)
}

/// 200 when `ok`, else 503 with the reason (health bodies are otherwise empty).
fn health(ok: bool, what: &str) -> Response {
    if ok {
        StatusCode::OK.into_response()
    } else {
        HttpError(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: the model is still loading")).into_response()
    }
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(rest): State<Rest>) -> Response {
    let screening = &rest.inference.screening;
    if screening.drain.stopping() {
        return HttpError(StatusCode::SERVICE_UNAVAILABLE, "not ready: the server is shutting down".into()).into_response();
    }
    health(screening.workers().is_ok(), "not ready")
}

async fn server_metadata(State(rest): State<Rest>) -> Result<Response, HttpError> {
    let m = rest.inference.server_metadata(Request::new(ServerMetadataRequest {})).await?.into_inner();
    Ok(axum::Json(json!({ "name": m.name, "version": m.version, "extensions": ["binary_tensor_data"] })).into_response())
}

async fn model_metadata(state: State<Rest>, Path(name): Path<String>) -> Result<Response, HttpError> {
    model_metadata_version(state, Path((name, String::new()))).await
}

async fn model_metadata_version(
    State(rest): State<Rest>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let m = rest.inference.model_metadata(Request::new(ModelMetadataRequest { name, version })).await?.into_inner();
    let tensors = |ts: &[model_metadata_response::TensorMetadata]| -> Vec<Value> {
        ts.iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
    };
    Ok(axum::Json(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    }))
    .into_response())
}

async fn model_ready(state: State<Rest>, Path(name): Path<String>) -> Result<Response, HttpError> {
    model_ready_version(state, Path((name, String::new()))).await
}

async fn model_ready_version(State(rest): State<Rest>, Path((name, version)): Path<(String, String)>) -> Result<Response, HttpError> {
    let r = rest.inference.model_ready(Request::new(ModelReadyRequest { name, version })).await?.into_inner();
    Ok(health(r.ready && !rest.inference.screening.drain.stopping(), "model not ready"))
}

async fn infer(state: State<Rest>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, HttpError> {
    infer_version(state, Path((name, String::new())), headers, body).await
}

async fn infer_version(
    State(rest): State<Rest>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let limit = rest.max_body_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        HttpError(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than the limit of {limit} bytes"))
    })?;
    let ParsedInfer { request, binary_outputs, data_field } = parse_infer(&body, &headers, name, version)?;
    let response = rest
        .inference
        .screening
        .call("HttpInfer", None, rest.inference.infer(request, None))
        .await
        // The shared validation names the gRPC fields; the JSON's are the same but for
        // the raw contents, which are where this request put them.
        .map_err(|s| Status::new(s.code(), s.message().replace("raw_input_contents", &data_field)))?;
    Ok(infer_response(response, &binary_outputs))
}

/// The header of the binary extension, if present: the JSON part's length.
fn json_length(headers: &HeaderMap, body_len: usize) -> Result<Option<usize>, HttpError> {
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| bad_request(format!("{HEADER_LENGTH}: {value:?} is not a byte count")))?;
    if length > body_len {
        return Err(bad_request(format!("{HEADER_LENGTH}: {length} is longer than the {body_len}-byte body")));
    }
    Ok(Some(length))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Vec<OutputBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Numbers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A tensor's `data`: numbers, flat or nested in row-major order, read straight into one
/// vector (no JSON tree of a million nodes).
struct Numbers(Vec<f64>);

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Flatten<'a>(&'a mut Vec<f64>);
        impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> Visitor<'de> for Flatten<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("numbers, or arrays of them")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
                self.0.push(v);
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
                self.visit_f64(v as f64)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }
        let mut values = Vec::new();
        de::DeserializeSeed::deserialize(Flatten(&mut values), deserializer)?;
        Ok(Numbers(values))
    }
}

fn flag(parameters: &Map<String, Value>, key: &str, at: &str) -> Result<bool, HttpError> {
    match parameters.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad_request(format!("{at}.parameters.{key}: {other} is not true or false"))),
    }
}

/// The JSON values of input `i` as little-endian bytes of its datatype.
fn json_bytes(i: usize, datatype: &str, values: &[f64]) -> Result<Vec<u8>, HttpError> {
    match datatype {
        "FP32" => Ok(values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()),
        "UINT8" => values
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                    Ok(v as u8)
                } else {
                    Err(bad_request(format!("inputs[{i}].data[{j}]: {v} is not a UINT8 (an integer in 0..=255)")))
                }
            })
            .collect(),
        other => Err(bad_request(format!("inputs[{i}].datatype: {other:?}; use FP32 or UINT8"))),
    }
}

/// An HTTP infer request as the protocol's gRPC message.
struct ParsedInfer {
    request: ModelInferRequest,
    /// The outputs to answer in binary.
    binary_outputs: Vec<String>,
    /// Where the body put the first input's data, for error messages: `inputs[0].data`, or
    /// its binary part.
    data_field: String,
}

fn parse_infer(body: &Bytes, headers: &HeaderMap, model_name: String, model_version: String) -> Result<ParsedInfer, HttpError> {
    let json_len = json_length(headers, body.len())?;
    let (json_part, mut binary) = match json_len {
        Some(n) => (&body[..n], &body[n..]),
        None => (&body[..], &[][..]),
    };
    let parsed: InferBody =
        serde_json::from_slice(json_part).map_err(|e| bad_request(format!("the request is not a valid inference request: {e}")))?;
    let mut raw = Vec::with_capacity(parsed.inputs.len());
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    let mut data_field = "inputs[0].data".to_string();
    for (i, input) in parsed.inputs.into_iter().enumerate() {
        if i == 0 && input.parameters.contains_key("binary_data_size") {
            data_field = "the binary data of inputs[0] (after the JSON part)".into();
        }
        let bytes = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(_), Some(_)) => return Err(bad_request(format!("inputs[{i}]: both data and binary_data_size; use one"))),
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .map(|s| s as usize)
                    .ok_or_else(|| bad_request(format!("inputs[{i}].parameters.binary_data_size: {size} is not a byte count")))?;
                if size > binary.len() {
                    return Err(bad_request(format!(
                        "inputs[{i}].parameters.binary_data_size: {size} bytes, but only {} binary bytes are left in the body",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                mine.to_vec()
            }
            (None, Some(Numbers(values))) => json_bytes(i, &input.datatype, &values)?,
            (None, None) => return Err(bad_request(format!("inputs[{i}]: no data; give data or parameters.binary_data_size"))),
        };
        raw.push(bytes);
        inputs.push(InferInputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            parameters: HashMap::new(),
            contents: None,
        });
    }
    if !binary.is_empty() {
        return Err(bad_request(format!("{} bytes of binary data that no input claims", binary.len())));
    }
    let all_binary = flag(&parsed.parameters, "binary_data_output", "")?;
    let mut binary_outputs = Vec::new();
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    for (i, output) in parsed.outputs.into_iter().enumerate() {
        if all_binary || flag(&output.parameters, "binary_data", &format!("outputs[{i}]"))? {
            binary_outputs.push(output.name.clone());
        }
        outputs.push(InferRequestedOutputTensor { name: output.name, parameters: HashMap::new() });
    }
    if all_binary && outputs.is_empty() {
        binary_outputs.push("*".into());
    }
    let request = ModelInferRequest {
        model_name,
        model_version,
        id: parsed.id,
        parameters: HashMap::new(),
        inputs,
        outputs,
        raw_input_contents: raw,
    };
    Ok(ParsedInfer { request, binary_outputs, data_field })
}

/// JSON values of one raw output tensor.
fn json_values(datatype: &str, bytes: &[u8]) -> Vec<Value> {
    match datatype {
        "FP32" => bytes.chunks_exact(4).map(|c| json!(f32::from_le_bytes(c.try_into().expect("4 bytes")))).collect(),
        "INT64" => bytes.chunks_exact(8).map(|c| json!(i64::from_le_bytes(c.try_into().expect("8 bytes")))).collect(),
        _ => bytes.iter().map(|&b| json!(b != 0)).collect(),
    }
}

/// The answer: JSON, or JSON followed by the binary outputs (the binary extension).
fn infer_response(response: ModelInferResponse, binary_outputs: &[String]) -> Response {
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (tensor, bytes) in response.outputs.iter().zip(&response.raw_output_contents) {
        let mut out = json!({ "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape });
        if binary_outputs.iter().any(|b| b == "*" || *b == tensor.name) {
            out["parameters"] = json!({ "binary_data_size": bytes.len() });
            binary.extend_from_slice(bytes);
        } else {
            out["data"] = Value::Array(json_values(&tensor.datatype, bytes));
        }
        outputs.push(out);
    }
    let mut head = json!({ "model_name": response.model_name, "model_version": response.model_version, "outputs": outputs });
    if !response.id.is_empty() {
        head["id"] = json!(response.id);
    }
    let head = serde_json::to_vec(&head).expect("JSON serialises");
    if binary.is_empty() {
        return ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], head).into_response();
    }
    let json_len = head.len();
    let mut body = head;
    body.extend_from_slice(&binary);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(json_len)),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8], json_len: Option<usize>) -> Result<(ModelInferRequest, Vec<String>), String> {
        parse_all(body, json_len).map(|p| (p.request, p.binary_outputs))
    }

    fn parse_all(body: &[u8], json_len: Option<usize>) -> Result<ParsedInfer, String> {
        let mut headers = HeaderMap::new();
        if let Some(n) = json_len {
            headers.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        parse_infer(&Bytes::copy_from_slice(body), &headers, "pathguard".into(), String::new()).map_err(|e| e.1)
    }

    #[test]
    fn nested_and_flat_data_give_the_same_bytes() {
        let nested = br#"{"inputs": [{"name": "images", "shape": [1, 2, 2], "datatype": "FP32", "data": [[0.5, 1], [0, 0.25]]}]}"#;
        let flat = br#"{"inputs": [{"name": "images", "shape": [1, 2, 2], "datatype": "FP32", "data": [0.5, 1, 0, 0.25]}]}"#;
        let (a, _) = parse(nested, None).unwrap();
        let (b, _) = parse(flat, None).unwrap();
        assert_eq!(a.raw_input_contents, b.raw_input_contents);
        let expected: Vec<u8> = [0.5f32, 1.0, 0.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(a.raw_input_contents[0], expected);
    }

    #[test]
    fn binary_tensors_follow_the_json_and_outputs_can_ask_for_binary() {
        let json = br#"{"inputs": [{"name": "images", "shape": [3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}}], "outputs": [{"name": "adversarial_score", "parameters": {"binary_data": true}}, {"name": "predicted_class"}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[7, 8, 9]);
        let (request, binary) = parse(&body, Some(json.len())).unwrap();
        assert_eq!(request.raw_input_contents, vec![vec![7u8, 8, 9]]);
        assert_eq!(binary, vec!["adversarial_score".to_string()]);
        // Errors about the pixels then name the binary part, not a "data" field it lacks.
        assert!(parse_all(&body, Some(json.len())).unwrap().data_field.contains("binary data of inputs[0]"));
        let flat = br#"{"inputs": [{"name": "images", "shape": [1], "datatype": "UINT8", "data": [1]}]}"#;
        assert_eq!(parse_all(flat, None).unwrap().data_field, "inputs[0].data");
        // Bytes no input claims, or fewer than claimed, are errors.
        let mut extra = body.clone();
        extra.push(1);
        assert!(parse(&extra, Some(json.len())).unwrap_err().contains("no input claims"));
        assert!(parse(&body[..body.len() - 1], Some(json.len())).unwrap_err().contains("only 2 binary bytes"));
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"inputs": [{"name": "images", "shape": [1], "datatype": "UINT8", "data": [1.5]}]}"#, "inputs[0].data[0]: 1.5"),
            (br#"{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32"}]}"#, "inputs[0]: no data"),
            (br#"{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": ["x"]}]}"#, "numbers"),
            (br#"{"inputs": [], "surprise": 1}"#, "unknown field `surprise`"),
            (br#"{"inputs": [], "outputs": [{"name": "x", "parameters": {"binary_data": 1}}]}"#, "outputs[0].parameters.binary_data"),
        ];
        for (body, needle) in cases {
            let message = parse(body, None).unwrap_err();
            assert!(message.contains(needle), "{}: {message}", String::from_utf8_lossy(body));
        }
    }
}
