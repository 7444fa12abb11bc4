//! `pathguard screen`: screens PNG and JPEG files, directories of them and NPY arrays, through a
//! server (streaming) or in process with the same service code, and writes one record per
//! image.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::grpc::ScreeningService;
use super::proto::screening_client::ScreeningClient;
use super::proto::{images::Source, DataType, EncodedImages, GetInfoRequest, Images, ScreenRequest, ScreenResponse, Tensor};
use crate::data::image::{image_kind, ImageKind};
use crate::data::{InputSpec, Resize};
use crate::error::{Error, Result};

/// One image to screen.
#[derive(Debug, Clone)]
pub struct Input {
    pub id: String,
    pub payload: Payload,
}

#[derive(Debug, Clone)]
pub enum Payload {
    /// A PNG or JPEG file's bytes, decoded by the server.
    Encoded(Vec<u8>),
    /// One image's C x S x S values in [0, 1] (from an NPY array).
    Pixels(Vec<f32>),
}

/// The inputs named by `paths`: PNG and JPEG files, NPY arrays of images of the model's
/// shape `spec` (one input per image, id `file#i`) and directories searched recursively for
/// them, in sorted order.
pub fn collect_inputs(paths: &[PathBuf], spec: &InputSpec) -> Result<Vec<Input>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files)?;
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(Error::InvalidInput(format!("{}: no such file or directory", path.display())));
        }
    }
    let mut inputs = Vec::new();
    for file in files {
        match image_kind(&file) {
            Some(ImageKind::Encoded) => {
                let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
                inputs.push(Input { id: file.display().to_string(), payload: Payload::Encoded(bytes) });
            }
            Some(ImageKind::Npy) => {
                let images = crate::data::image::read_npy(&file, spec)?;
                let n = images.size()[0];
                for i in 0..n {
                    let pixels = Vec::<f32>::try_from(images.get(i).flatten(0, -1))?;
                    let id = if n == 1 { file.display().to_string() } else { format!("{}#{i}", file.display()) };
                    inputs.push(Input { id, payload: Payload::Pixels(pixels) });
                }
            }
            None => {
                return Err(Error::InvalidInput(format!("{}: not a .png, .jpg, .jpeg or .npy file", file.display())));
            }
        }
    }
    if inputs.is_empty() {
        return Err(Error::InvalidInput("no .png, .jpg, .jpeg or .npy images found in the given paths".into()));
    }
    Ok(inputs)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk(&entry, files)?;
        } else if image_kind(&entry).is_some() {
            files.push(entry);
        }
    }
    Ok(())
}

/// A request for `inputs`: encoded files when all are PNG or JPEG, else a float32 tensor of
/// the model's shape `spec` (files decoded here by the same rules as the server's).
pub fn request_for(inputs: &[Input], spec: &InputSpec, threshold: Option<f32>, return_path_bits: bool) -> Result<ScreenRequest> {
    let source = if inputs.iter().all(|i| matches!(i.payload, Payload::Encoded(_))) {
        let files = inputs
            .iter()
            .map(|i| match &i.payload {
                Payload::Encoded(bytes) => bytes.clone(),
                Payload::Pixels(_) => unreachable!("all encoded"),
            })
            .collect();
        Source::Encoded(EncodedImages { files })
    } else {
        let mut data = Vec::with_capacity(inputs.len() * spec.values_per_image() * 4);
        for input in inputs {
            let pixels = match &input.payload {
                Payload::Pixels(p) => p.clone(),
                Payload::Encoded(bytes) => crate::data::image::decode_image(bytes, spec)
                    .map_err(|reason| Error::InvalidInput(format!("{}: {reason}", input.id)))?,
            };
            data.extend(pixels.iter().flat_map(|v| v.to_le_bytes()));
        }
        let [c, h, w] = spec.image_shape();
        Source::Tensor(Tensor { dtype: DataType::Float32 as i32, shape: vec![inputs.len() as i64, c, h, w], data })
    };
    Ok(ScreenRequest {
        images: Some(Images { source: Some(source) }),
        ids: inputs.iter().map(|i| i.id.clone()).collect(),
        threshold,
        return_path_bits,
        model: String::new(),
    })
}

/// Where requests go: a server (and which of its models; empty = its default), or a service
/// in this process.
pub enum Backend {
    Remote(ScreeningClient<Channel>, String),
    InProcess(ScreeningService),
}

impl Backend {
    pub async fn connect(url: &str, max_message_bytes: usize, model: &str) -> Result<Self> {
        let client = ScreeningClient::connect(url.to_string())
            .await
            .map_err(|e| Error::Service(format!("cannot connect to {url}: {e}")))?
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(Backend::Remote(client, model.to_string()))
    }

    /// What the model behind this backend takes (GetInfo's input shape and resize rule).
    pub async fn input_spec(&mut self) -> Result<InputSpec> {
        let status = |s: tonic::Status| Error::InvalidInput(format!("the server answered {:?}: {}", s.code(), s.message()));
        match self {
            Backend::InProcess(service) => Ok(service.workers().map_err(status)?.info.input),
            Backend::Remote(client, model) => {
                let info = client.get_info(GetInfoRequest { model: model.clone() }).await.map_err(status)?.into_inner();
                let resize = Resize::from_name(&info.resize).unwrap_or_default();
                match info.input_shape[..] {
                    [channels, size, w] if size == w && channels > 0 && size > 0 => Ok(InputSpec { channels, size, resize }),
                    _ => Err(Error::InvalidInput(format!("the server's model takes input_shape {:?}, not [C, S, S]", info.input_shape))),
                }
            }
        }
    }

    /// Screens `requests` in order, calling `on_response` for each answer. Remote: one
    /// `ScreenStream` call, at most a few requests in flight (flow control). Every request
    /// gets its answer with one result per image, or this fails naming the images that were
    /// not screened: a run never ends "done" with answers missing.
    pub async fn screen_all(
        &mut self,
        requests: Vec<ScreenRequest>,
        mut on_response: impl FnMut(ScreenResponse) -> Result<()>,
    ) -> Result<()> {
        let ids: Vec<Vec<String>> = requests.iter().map(|r| r.ids.clone()).collect();
        let mut answered = 0;
        let mut check = |response: ScreenResponse| -> Result<()> {
            let expected = ids.get(answered).map(Vec::len).unwrap_or(0);
            if response.results.len() != expected {
                return Err(Error::InvalidInput(format!(
                    "the server answered request {answered} with {} results for {expected} images",
                    response.results.len()
                )));
            }
            answered += 1;
            on_response(response)
        };
        let status = |s: tonic::Status| format!("the server answered {:?}: {}", s.code(), s.message());
        let failure: Option<String> = match self {
            Backend::InProcess(service) => {
                let mut failure = None;
                for request in requests {
                    match service.screen_request(request, None).await {
                        Ok(response) => check(response)?,
                        Err(s) => {
                            failure = Some(status(s));
                            break;
                        }
                    }
                }
                failure
            }
            Backend::Remote(client, model) => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let model = model.clone();
                tokio::spawn(async move {
                    for mut request in requests {
                        request.model = model.clone();
                        if tx.send(request).await.is_err() {
                            break;
                        }
                    }
                });
                match client.screen_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                    Err(s) => Some(status(s)),
                    Ok(responses) => {
                        let mut responses = responses.into_inner();
                        let mut failure = None;
                        while let Some(response) = responses.next().await {
                            match response {
                                Ok(response) => check(response)?,
                                Err(s) => {
                                    failure = Some(status(s));
                                    break;
                                }
                            }
                        }
                        failure
                    }
                }
            }
        };
        if answered == ids.len() {
            return Ok(());
        }
        let missing: Vec<&String> = ids[answered..].iter().flatten().collect();
        let named: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
        Err(Error::InvalidInput(format!(
            "{} of {} images were not screened (from {}{}): {}",
            missing.len(),
            ids.iter().map(Vec::len).sum::<usize>(),
            named.join(", "),
            if missing.len() > named.len() { ", ..." } else { "" },
            failure
                .map(|f| name_failed_file(&f, &ids[answered]))
                .unwrap_or_else(|| format!("the server ended the stream after {answered} of {} answers", ids.len())),
        )))
    }
}

/// A server message about `images.encoded.files[i]` or `images.tensor` with the input it means.
fn name_failed_file(message: &str, ids: &[String]) -> String {
    let index = message
        .split_once("images.encoded.files[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok());
    match index.and_then(|i| ids.get(i)) {
        Some(id) => format!("{message} (that is {id})"),
        None => message.to_string(),
    }
}

/// One output record (a JSON line or a CSV row).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub predicted_class: i32,
    pub predicted_name: String,
    pub adversarial_score: f32,
    pub flagged: bool,
    pub threshold: f32,
    pub probabilities: Vec<f32>,
    pub open_fraction: Vec<f32>,
    pub template_deviation: Vec<f32>,
    /// The detector experts whose score alone reaches the threshold.
    pub fired_by: Vec<String>,
    /// Each expert's score, by name.
    pub expert_scores: std::collections::BTreeMap<String, f32>,
    /// Share of held-out clean training images closer to the training distribution (absent
    /// when the model has no distribution.json).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution_percentile: Option<f32>,
}

impl Record {
    pub fn from_response(response: &ScreenResponse) -> Vec<Record> {
        response
            .results
            .iter()
            .map(|r| {
                let path = r.path.clone().unwrap_or_default();
                Record {
                    id: r.id.clone(),
                    predicted_class: r.predicted_class,
                    predicted_name: r.predicted_name.clone(),
                    adversarial_score: r.adversarial_score,
                    flagged: r.flagged,
                    threshold: r.threshold,
                    probabilities: r.probabilities.clone(),
                    open_fraction: path.open_fraction,
                    template_deviation: path.template_deviation,
                    fired_by: r.experts.iter().filter(|e| e.fired).map(|e| e.name.clone()).collect(),
                    expert_scores: r.experts.iter().map(|e| (e.name.clone(), e.score)).collect(),
                    distribution_percentile: r.distribution.as_ref().map(|d| d.percentile),
                }
            })
            .collect()
    }

    pub const CSV_HEADER: &'static str = "id,predicted_class,predicted_name,adversarial_score,flagged,threshold,fired_by,distribution_percentile";

    pub fn csv_row(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        format!(
            "{},{},{},{:.6},{},{:.6},{},{}",
            quote(&self.id),
            self.predicted_class,
            quote(&self.predicted_name),
            self.adversarial_score,
            self.flagged,
            self.threshold,
            // Several experts are joined with '+', so the column needs no quoting.
            self.fired_by.join("+"),
            self.distribution_percentile.map(|p| format!("{p:.4}")).unwrap_or_default()
        )
    }
}
