//! The Open Inference Protocol (KServe v2 / Triton gRPC): each served model by name (the
//! first also as `pathguard`), with input
//! `images` and outputs `probabilities`, `predicted_class`, `adversarial_score` and
//! `is_adversarial`. Requests go through the same validation, worker, batching and metrics
//! as `Screen`.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::bounded::quoted;
use super::deadline::deadline_of;
use super::grpc::ScreeningService;
use super::inference::grpc_inference_service_server::GrpcInferenceService;
use super::inference::model_infer_request::InferInputTensor;
use super::inference::model_infer_response::InferOutputTensor;
use super::inference::model_metadata_response::TensorMetadata;
use super::inference::*;
use super::proto::{images::Source, DataType, Images, ScreenRequest, Tensor};

pub use super::models::{DEFAULT_ALIAS as MODEL_NAME, MODEL_VERSION};
pub const INPUT: &str = "images";
pub const OUTPUTS: [&str; 4] = ["probabilities", "predicted_class", "adversarial_score", "is_adversarial"];

#[derive(Clone)]
pub struct InferenceService {
    pub screening: ScreeningService,
}

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

/// The `images` input as our Images message (raw bytes or typed contents, not both).
fn input_images(request: &ModelInferRequest) -> Result<Images, Status> {
    if request.inputs.len() != 1 {
        return Err(invalid(format!("inputs: {} inputs; the model takes exactly one, {INPUT:?}", request.inputs.len())));
    }
    let input: &InferInputTensor = &request.inputs[0];
    if input.name != INPUT {
        return Err(invalid(format!("inputs[0].name: {}; the model's input is {INPUT:?}", quoted(&input.name))));
    }
    let dtype = match input.datatype.as_str() {
        "FP32" => DataType::Float32,
        "UINT8" => DataType::Uint8,
        other => return Err(invalid(format!("inputs[0].datatype: {}; use FP32 or UINT8", quoted(other)))),
    };
    let raw = &request.raw_input_contents;
    let data = match (&input.contents, raw.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                "inputs[0].contents and raw_input_contents are both set; use one representation".into(),
            ))
        }
        (None, false) if raw.len() != request.inputs.len() => {
            return Err(invalid(format!(
                "raw_input_contents: {} entries for {} inputs",
                raw.len(),
                request.inputs.len()
            )))
        }
        (None, false) => raw[0].clone(),
        (Some(contents), true) => match dtype {
            DataType::Float32 => {
                if contents.fp32_contents.is_empty() && !contents.uint_contents.is_empty() {
                    return Err(invalid("inputs[0].contents: FP32 data belongs in fp32_contents".into()));
                }
                contents.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            _ => {
                if let Some((i, v)) = contents.uint_contents.iter().enumerate().find(|(_, v)| **v > 255) {
                    return Err(invalid(format!("inputs[0].contents.uint_contents[{i}]: {v} does not fit UINT8")));
                }
                contents.uint_contents.iter().map(|&v| v as u8).collect()
            }
        },
        (None, true) => return Err(invalid("inputs[0]: no data; set raw_input_contents or contents".into())),
    };
    Ok(Images { source: Some(Source::Tensor(Tensor { dtype: dtype as i32, shape: input.shape.clone(), data })) })
}

/// The outputs asked for, in request order (all, when none are named).
fn requested_outputs(request: &ModelInferRequest) -> Result<Vec<&'static str>, Status> {
    if request.outputs.is_empty() {
        return Ok(OUTPUTS.to_vec());
    }
    request
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            OUTPUTS.iter().copied().find(|name| *name == o.name).ok_or_else(|| {
                invalid(format!("outputs[{i}].name: {} is not an output; the outputs are {}", quoted(&o.name), OUTPUTS.join(", ")))
            })
        })
        .collect()
}

fn tensor_metadata(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
}

impl InferenceService {
    pub(crate) async fn infer(&self, request: ModelInferRequest, deadline: Option<Instant>) -> Result<ModelInferResponse, Status> {
        let served = self.screening.models()?.get_named(&request.model_name, &request.model_version)?.0.to_string();
        // The name asked for (clients compare it), or the default's when the request named none.
        let answered_name = if request.model_name.is_empty() { served } else { request.model_name.clone() };
        let outputs = requested_outputs(&request)?;
        let images = input_images(&request)?;
        let model = request.model_name.clone();
        let screened = self
            .screening
            .screen_request(ScreenRequest { images: Some(images), model, ..Default::default() }, deadline)
            .await
            // Our validation names our fields; name the protocol's instead.
            .map_err(|s| Status::new(s.code(), s.message().replacen("images.tensor", "inputs[0]", 1)))?;
        let results = &screened.results;
        let n = results.len() as i64;
        let classes = results.first().map(|r| r.probabilities.len()).unwrap_or(0) as i64;
        let mut tensors = Vec::new();
        let mut raw = Vec::new();
        for name in outputs {
            let (datatype, shape, bytes): (&str, Vec<i64>, Vec<u8>) = match name {
                "probabilities" => (
                    "FP32",
                    vec![n, classes],
                    results.iter().flat_map(|r| r.probabilities.iter().flat_map(|p| p.to_le_bytes())).collect(),
                ),
                "predicted_class" => {
                    ("INT64", vec![n], results.iter().flat_map(|r| (r.predicted_class as i64).to_le_bytes()).collect())
                }
                "adversarial_score" => {
                    ("FP32", vec![n], results.iter().flat_map(|r| r.adversarial_score.to_le_bytes()).collect())
                }
                _ => ("BOOL", vec![n], results.iter().map(|r| r.flagged as u8).collect()),
            };
            tensors.push(InferOutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                parameters: Default::default(),
                contents: None,
            });
            raw.push(bytes);
        }
        Ok(ModelInferResponse {
            model_name: answered_name,
            model_version: MODEL_VERSION.into(),
            id: request.id,
            parameters: Default::default(),
            outputs: tensors,
            raw_output_contents: raw,
        })
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.screening.workers().is_ok() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        // Before the models load, their names are not known here: not ready.
        let ready = match self.screening.models() {
            Ok(models) => models.get(&r.name, &r.version).map(|_| true)?,
            Err(_) => false,
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "pathguard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let models = self.screening.models()?;
        let (served, workers) = models.get_named(&r.name, &r.version)?;
        let answered_name = if r.name.is_empty() { served.to_string() } else { r.name.clone() };
        let info = &workers.info;
        let classes = info.class_names.len() as i64;
        let [c, h, w] = info.input.image_shape();
        Ok(Response::new(ModelMetadataResponse {
            // The name asked for (clients compare it), or the default's when none was.
            name: answered_name,
            versions: vec![MODEL_VERSION.into()],
            platform: "pathguard".into(),
            inputs: vec![tensor_metadata(INPUT, "FP32", &[-1, c, h, w])],
            outputs: vec![
                tensor_metadata("probabilities", "FP32", &[-1, classes]),
                tensor_metadata("predicted_class", "INT64", &[-1]),
                tensor_metadata("adversarial_score", "FP32", &[-1]),
                tensor_metadata("is_adversarial", "BOOL", &[-1]),
            ],
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        let response = self.screening.call("ModelInfer", deadline, self.infer(request.into_inner(), deadline)).await?;
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, FileFailurePersistence};

    fn request(name: String, datatype: String, shape: Vec<i64>, raw: Vec<Vec<u8>>, fp32: Vec<f32>, outputs: Vec<String>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: MODEL_NAME.into(),
            inputs: vec![InferInputTensor {
                name,
                datatype,
                shape,
                parameters: Default::default(),
                contents: (!fp32.is_empty()).then(|| InferTensorContents { fp32_contents: fp32, ..Default::default() }),
            }],
            outputs: outputs
                .into_iter()
                .map(|name| model_infer_request::InferRequestedOutputTensor { name, parameters: Default::default() })
                .collect(),
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    fn long_or(short: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![Just(short.to_string()), Just("x".repeat(100_000)), "[a-zA-Z0-9_]{0,12}"]
    }

    proptest! {
        #![proptest_config(Config { cases: 2000, failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() })]

        /// ModelInfer's own validation (before the shared image validation): every request is
        /// answered, with a short INVALID_ARGUMENT (or NOT_FOUND) when it is wrong.
        #[test]
        fn model_infer_validation_answers_every_request(
            name in long_or(INPUT),
            datatype in long_or("FP32"),
            shape in prop::collection::vec(prop::sample::select(vec![-1i64, 0, 1, 28, i64::MAX]), 0..6),
            raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..3),
            fp32 in prop::collection::vec(any::<f32>(), 0..4),
            outputs in prop::collection::vec(long_or("probabilities"), 0..3),
            model in long_or(MODEL_NAME),
        ) {
            let mut request = request(name, datatype, shape, raw, fp32, outputs);
            request.model_name = model;
            let checked = super::super::models::resolve(&[MODEL_NAME.to_string()], &request.model_name, &request.model_version)
                .map(|_| ())
                .and_then(|_| requested_outputs(&request).map(|_| ()))
                .and_then(|_| input_images(&request).map(|_| ()));
            if let Err(status) = checked {
                prop_assert!(matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound));
                prop_assert!(status.message().len() <= 400, "{} bytes: {}", status.message().len(), &status.message()[..200]);
            }
        }
    }
}
