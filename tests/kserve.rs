//! The Open Inference Protocol: stock tritonclient (from PyPI, in the clients' virtualenv)
//! against a real server, and the protocol's validation rules from a Rust client.

use std::process::Command;

use pathguard::service::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use pathguard::service::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use pathguard::service::inference::{InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, ServerReadyRequest};

use crate::python_client::client_python;
use crate::service::{test_images, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_tritonclient_screens_like_pathguard_screen() {
    let python = client_python();
    assert!(python.exists(), "{} missing: run `make test`", python.display());
    let server = Server::start(&[]);
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("images.npy");
    let (images, _) = test_images(16);
    let values = Vec::<f32>::try_from(images.flatten(0, -1)).unwrap();
    ndarray_npy::write_npy(&npy, &ndarray::Array4::from_shape_vec((16, 1, 28, 28), values).unwrap()).unwrap();

    let run = Command::new(&python)
        .arg(crate::repo_root().join("tests/python/tritonclient_check.py"))
        .arg(server.addr.to_string())
        .arg(&npy)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let triton: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let metadata = &triton["metadata"];
    assert_eq!(metadata["name"], "pathguard");
    assert_eq!(metadata["inputs"][0]["name"], "images");
    assert_eq!(metadata["inputs"][0]["datatype"], "FP32");
    let output_names: Vec<&str> = metadata["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(output_names, ["probabilities", "predicted_class", "adversarial_score", "is_adversarial"]);
    assert_eq!(triton["id"], "batch-1");
    assert_eq!(triton["only_outputs"], serde_json::json!(["adversarial_score"]));
    assert!(triton["bad_output_error"].as_str().unwrap().contains("nope"), "{}", triton["bad_output_error"]);
    assert!(
        triton["unimplemented_error"].as_str().unwrap().to_lowercase().contains("unimplemented"),
        "{}",
        triton["unimplemented_error"]
    );

    let screen = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["screen", "--server", &server.url()])
        .arg(&npy)
        .output()
        .unwrap();
    assert!(screen.status.success(), "{}", String::from_utf8_lossy(&screen.stderr));
    let records: Vec<serde_json::Value> =
        String::from_utf8_lossy(&screen.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 16);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(triton["predicted_class"][i], record["predicted_class"]);
        let (a, b) = (triton["adversarial_score"][i].as_f64().unwrap(), record["adversarial_score"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "image {i}: {a} vs {b}");
        assert_eq!(triton["is_adversarial"][i], record["flagged"]);
        for k in 0..10 {
            let (p, q) = (triton["probabilities"][i][k].as_f64().unwrap(), record["probabilities"][k].as_f64().unwrap());
            assert!((p - q).abs() < 1e-6);
        }
    }
    assert_eq!(triton["uint8_predicted_class"].as_array().unwrap().len(), 16);
}

fn image_input(n: i64, datatype: &str, contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor { name: "images".into(), datatype: datatype.into(), shape: vec![n, 1, 28, 28], parameters: Default::default(), contents }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_rules_are_enforced() {
    let server = Server::start(&[]);
    server.wait_serving().await;
    let mut client = GrpcInferenceServiceClient::new(server.channel().await);
    assert!(client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let unknown = client.model_ready(ModelReadyRequest { name: "resnet".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let (images, _) = test_images(2);
    let values = Vec::<f32>::try_from(images.flatten(0, -1)).unwrap();
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let typed = InferTensorContents { fp32_contents: values.clone(), ..Default::default() };
    let request = |inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>| ModelInferRequest {
        model_name: "pathguard".into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    };
    // Typed contents work and agree with raw bytes.
    let from_typed = client.model_infer(request(vec![image_input(2, "FP32", Some(typed.clone()))], vec![])).await.unwrap().into_inner();
    let from_raw = client.model_infer(request(vec![image_input(2, "FP32", None)], vec![raw.clone()])).await.unwrap().into_inner();
    assert_eq!(from_typed.raw_output_contents, from_raw.raw_output_contents);
    assert_eq!(from_raw.outputs.len(), 4);
    // Answers carry the name asked for, or the default's served name when none was given.
    assert_eq!(from_raw.model_name, "pathguard");
    let unnamed = ModelInferRequest { model_name: String::new(), ..request(vec![image_input(2, "FP32", None)], vec![raw.clone()]) };
    let unnamed = client.model_infer(unnamed).await.unwrap().into_inner();
    assert_eq!((unnamed.model_name.as_str(), &unnamed.raw_output_contents), ("default", &from_raw.raw_output_contents));
    let metadata = client.model_metadata(ModelMetadataRequest { name: String::new(), version: String::new() }).await.unwrap();
    assert_eq!(metadata.into_inner().name, "default");

    let bad = [
        (request(vec![image_input(2, "FP32", Some(typed.clone()))], vec![raw.clone()]), "both set"),
        (request(vec![image_input(2, "FP32", None), image_input(2, "FP32", None)], vec![raw.clone()]), "exactly one"),
        (request(vec![image_input(2, "FP32", None)], vec![raw.clone(), raw.clone()]), "raw_input_contents: 2 entries"),
        (request(vec![image_input(3, "FP32", None)], vec![raw.clone()]), "bytes"),
        (request(vec![image_input(2, "FP16", None)], vec![raw.clone()]), "datatype"),
        (
            ModelInferRequest {
                outputs: vec![InferRequestedOutputTensor { name: "logits".into(), parameters: Default::default() }],
                ..request(vec![image_input(2, "FP32", None)], vec![raw.clone()])
            },
            "outputs[0].name",
        ),
    ];
    for (req, expected) in bad {
        let status = client.model_infer(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{expected}: {status:?}");
        assert!(status.message().contains(expected), "{:?} should mention {expected:?}", status.message());
    }
    let unknown_model = client
        .model_infer(ModelInferRequest { model_name: "other".into(), ..request(vec![image_input(2, "FP32", None)], vec![raw]) })
        .await
        .unwrap_err();
    assert_eq!(unknown_model.code(), tonic::Code::NotFound);
}
