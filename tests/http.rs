//! The HTTP side of `pathguard serve`: the Open Inference Protocol over REST with plain curl
//! and stock tritonclient.http (JSON and binary tensors), its errors, and the page in headless
//! Chromium; every answer is checked against `pathguard screen` on the same images.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::python_client::client_python;
use crate::service::{test_images, Server};

/// `curl` a path of the HTTP address: (HTTP status, body). `args` go before the URL.
pub fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "120"])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = curl(addr, path, &["-H", "Content-Type: application/json", "--data-binary", body]);
    (code, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// `pathguard screen` in process on an NPY file: one JSON record per image.
fn screen_in_process(npy: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["screen", "--device", "cpu", "--model"])
        .arg(crate::default_model_dir())
        .arg(npy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_npy(path: &Path, images: &tch::Tensor) {
    let n = images.size()[0] as usize;
    let values = Vec::<f32>::try_from(images.flatten(0, -1)).unwrap();
    ndarray_npy::write_npy(path, &ndarray::Array4::from_shape_vec((n, 1, 28, 28), values).unwrap()).unwrap();
}

/// Checks OIP outputs (by name, as JSON arrays) against `pathguard screen`'s records.
fn assert_outputs_match(outputs: &Value, expected: &[Value], what: &str) {
    let classes = outputs["predicted_class"].as_array().unwrap();
    let scores = outputs["adversarial_score"].as_array().unwrap();
    let flags = outputs["is_adversarial"].as_array().unwrap();
    let probabilities = outputs["probabilities"].as_array().unwrap();
    assert_eq!(classes.len(), expected.len(), "{what}");
    for (i, e) in expected.iter().enumerate() {
        assert_eq!(classes[i].as_i64(), e["predicted_class"].as_i64(), "{what}: image {i}");
        let (a, b) = (scores[i].as_f64().unwrap(), e["adversarial_score"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-5, "{what}: image {i}: score {a} vs {b}");
        assert_eq!(flags[i].as_bool(), e["flagged"].as_bool(), "{what}: image {i}");
        // probabilities: [N, 10] nested (tritonclient) or flat row-major (our JSON).
        let row: Vec<f64> = match &probabilities[0] {
            Value::Array(_) => probabilities[i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
            _ => probabilities[i * 10..(i + 1) * 10].iter().map(|v| v.as_f64().unwrap()).collect(),
        };
        for (p, q) in row.iter().zip(e["probabilities"].as_array().unwrap()) {
            assert!((p - q.as_f64().unwrap()).abs() < 1e-5, "{what}: image {i}: probabilities {row:?} vs {}", e["probabilities"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_rest_with_curl_and_tritonclient_http_answers_like_pathguard_screen() {
    let server = Server::start(&[]);
    let http = server.http;
    // Live at once; ready only once the model has loaded.
    assert_eq!(curl(http, "/v2/health/live", &[]).0, 200);
    server.wait_serving().await;
    assert_eq!(curl(http, "/v2/health/ready", &[]).0, 200);
    assert_eq!(curl(http, "/v2/models/pathguard/ready", &[]).0, 200);
    let (code, meta) = curl(http, "/v2/models/pathguard", &[]);
    assert_eq!(code, 200, "{meta}");
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["inputs"][0]["name"], "images");
    assert_eq!(meta["outputs"].as_array().unwrap().len(), 4);

    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("images.npy");
    let (images, _) = test_images(6);
    write_npy(&npy, &images);
    let expected = screen_in_process(&npy);

    // curl with JSON tensors (nested data, as numpy's tolist() gives).
    let values = Vec::<f32>::try_from(images.flatten(0, -1)).unwrap();
    let nested: Vec<Vec<Vec<Vec<f32>>>> =
        values.chunks(784).map(|image| vec![image.chunks(28).map(|row| row.to_vec()).collect()]).collect();
    let body = serde_json::json!({
        "id": "curl-1",
        "inputs": [{ "name": "images", "shape": [6, 1, 28, 28], "datatype": "FP32", "data": nested }],
    })
    .to_string();
    let body_file = dir.path().join("request.json");
    std::fs::write(&body_file, &body).unwrap();
    let (code, answer) = post_json(http, "/v2/models/pathguard/infer", &format!("@{}", body_file.display()));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["id"], "curl-1");
    let outputs: serde_json::Map<String, Value> =
        answer["outputs"].as_array().unwrap().iter().map(|o| (o["name"].as_str().unwrap().to_string(), o["data"].clone())).collect();
    assert_outputs_match(&Value::Object(outputs), &expected, "curl JSON");

    // Stock tritonclient.http, JSON and binary tensors.
    let python = client_python();
    assert!(python.exists(), "{} missing: run `make test`", python.display());
    let run = Command::new(&python)
        .arg(crate::repo_root().join("tests/python/tritonclient_http_check.py"))
        .arg(http.to_string())
        .arg(&npy)
        .output()
        .unwrap();
    assert!(run.status.success(), "tritonclient.http failed: {}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["metadata"]["name"], "pathguard");
    assert!(report["server"]["extensions"].as_array().unwrap().iter().any(|e| e == "binary_tensor_data"));
    for encoding in ["json", "binary"] {
        assert_outputs_match(&report["results"][encoding], &expected, &format!("tritonclient.http {encoding}"));
    }
    let error = report["error"].as_str().expect("a wrong shape is an error");
    assert!(error.contains("28"), "{error}");

    // Errors: 4xx with the protocol's {"error": ...}, and the server stays up.
    let cases: [(&str, &str, u16, &str); 5] = [
        ("/v2/models/pathguard/infer", "{\"inputs\": [", 400, "not a valid inference request"),
        ("/v2/models/pathguard/infer", r#"{"inputs": [{"name": "images", "shape": [1, 1, 27, 28], "datatype": "FP32", "data": [0.5]}]}"#, 400, "shape"),
        ("/v2/models/pathguard/infer", r#"{"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "INT32", "data": [1]}]}"#, 400, "use FP32 or UINT8"),
        ("/v2/models/pathguard/infer", r#"{"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [300]}]}"#, 400, "UINT8"),
        ("/v2/models/nope/infer", r#"{"inputs": []}"#, 404, "nope"),
    ];
    for (path, body, status, needle) in cases {
        let (code, answer) = post_json(http, path, body);
        assert_eq!(code, status, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_else(|| panic!("no error message: {answer}"));
        assert!(message.contains(needle), "{body}: {message}");
    }
    // Binary extension: a header longer than the body.
    let (code, answer) = curl(http, "/v2/models/pathguard/infer", &["-H", "Inference-Header-Content-Length: 999", "--data-binary", "{}"]);
    assert_eq!(code, 400, "{answer}");
    // A body over the message limit (4 MiB) is refused before it is parsed.
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 5 << 20]).unwrap();
    let (code, answer) = curl(http, "/v2/models/pathguard/infer", &["--data-binary", &format!("@{}", big.display())]);
    assert_eq!(code, 413, "{answer}");
    assert!(answer.contains("limit"), "{answer}");
    assert_eq!(curl(http, "/v2/health/ready", &[]).0, 200, "and the server is still up");
    let metrics = curl(http, "/metrics", &[]).1;
    assert!(metrics.contains(r#"pathguard_requests_total{code="OK",rpc="HttpInfer"}"#), "{metrics}");
    assert!(metrics.contains(r#"pathguard_requests_total{code="INVALID_ARGUMENT",rpc="HttpInfer"}"#), "{metrics}");

    // The Grafana dashboard asks only for metrics the server exports.
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(crate::repo_root().join("deploy/grafana/pathguard.json")).unwrap()).unwrap();
    let exprs: Vec<&str> =
        dashboard["panels"].as_array().unwrap().iter().flat_map(|p| p["targets"].as_array().unwrap()).map(|t| t["expr"].as_str().unwrap()).collect();
    assert!(exprs.len() >= 8);
    for expr in exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("pathguard_")) {
            assert!(metrics.contains(&format!("\n{word}")) || metrics.contains(&format!("\n{word}{{")), "{word} (in {expr}) is not exported");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_headless_chromium_shows_the_apis_verdict() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(chromium.exists(), "chromium missing: run `make test` (it installs Debian's chromium)");
    let server = Server::start(&[]);
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    let _ = crate::python_client::write_pngs(&pngs, 3);
    let png = pngs.join("002.png");
    // What the API says of the image, and what `pathguard screen` says.
    let (code, api) = curl(server.http, "/api/screen", &["--data-binary", &format!("@{}", png.display())]);
    assert_eq!(code, 200, "{api}");
    let api: Value = serde_json::from_str(&api).unwrap();
    let screened = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["screen", "--device", "cpu", "--model"])
        .arg(crate::default_model_dir())
        .arg(&png)
        .output()
        .unwrap();
    let screened: Value = serde_json::from_slice(&screened.stdout).unwrap();
    assert_eq!(api["predicted_class"], screened["predicted_class"]);
    assert!((api["adversarial_score"].as_f64().unwrap() - screened["adversarial_score"].as_f64().unwrap()).abs() < 1e-5);
    assert_eq!(api["path"].as_array().unwrap().len(), api["template"].as_array().unwrap().len());
    // A file that is not an image: 400 with a message.
    let (code, answer) = curl(server.http, "/api/screen", &["--data-binary", "not an image"]);
    assert_eq!(code, 400, "{answer}");

    let shot = std::env::var_os("PATHGUARD_PAGE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("page.png"));
    let run = Command::new(client_python())
        .arg(crate::repo_root().join("tests/python/page_check.py"))
        .arg(chromium)
        .arg(format!("http://{}/", server.http))
        .arg(&png)
        .arg(&shot)
        .output()
        .unwrap();
    assert!(run.status.success(), "page check failed: {}", String::from_utf8_lossy(&run.stderr));
    let shown: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(shown["state"], "done", "{shown}");
    assert_eq!(shown["predicted_class"], api["predicted_class"], "{shown}");
    let (a, b) = (shown["score"].as_f64().unwrap(), api["adversarial_score"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-6, "page shows {a}, the API says {b}");
    assert!(shown["verdict"].as_str().unwrap().contains(api["predicted_name"].as_str().unwrap()), "{shown}");
    assert!(shown["stats"].as_str().unwrap().contains("screened"), "{shown}");
    let png_bytes = std::fs::read(&shot).unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG") && png_bytes.len() > 20_000, "screenshot of {} bytes", png_bytes.len());
}
