//! examples/python/screen_folder.py (grpcio, stubs generated from our proto) against a real
//! server gives the same answers as our own client.

use std::path::PathBuf;
use std::process::Command;

use crate::service::{tensor_request, test_images, Server};

/// The clients' virtualenv Python (grpcio, grpcio-tools, tritonclient): set by `make test`,
/// else the default place.
pub fn client_python() -> PathBuf {
    std::env::var_os("PATHGUARD_CLIENT_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME is set");
        PathBuf::from(home).join(".cache/pathguard/venv-clients/bin/python")
    })
}

/// Writes the first `n` test images as 8-bit grey PNG files `000.png`, ... into `dir`.
pub fn write_pngs(dir: &std::path::Path, n: usize) -> tch::Tensor {
    let (images, _) = test_images(n);
    let bytes = Vec::<u8>::try_from(images.multiply_scalar(255.0).round().to_kind(tch::Kind::Uint8).flatten(0, -1)).unwrap();
    for i in 0..n {
        let file = std::fs::File::create(dir.join(format!("{i:03}.png"))).unwrap();
        let mut encoder = png::Encoder::new(file, 28, 28);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.write_header().unwrap().write_image_data(&bytes[i * 784..(i + 1) * 784]).unwrap();
    }
    // What the server sees: the PNG's 8-bit pixels.
    tch::Tensor::from_slice(&bytes).view([n as i64, 1, 28, 28]).to_kind(tch::Kind::Float) / 255.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_screens_a_folder_like_our_client() {
    let python = client_python();
    assert!(python.exists(), "{} missing: run `make test` (it creates the clients' virtualenv)", python.display());
    let server = Server::start(&[]);
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let images = write_pngs(dir.path(), 20);
    let script = crate::repo_root().join("examples/python/screen_folder.py");
    let run = Command::new(&python)
        .arg(&script)
        .args(["--server", &server.addr.to_string(), "--batch-size", "8"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&run.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 20);
    let ours = server.client().await.screen(tensor_request(&images)).await.unwrap().into_inner();
    for (i, (line, r)) in lines.iter().zip(&ours.results).enumerate() {
        assert!(line["id"].as_str().unwrap().ends_with(&format!("{i:03}.png")), "{line}");
        assert_eq!(line["predicted_class"].as_i64().unwrap(), r.predicted_class as i64);
        assert!((line["adversarial_score"].as_f64().unwrap() - r.adversarial_score as f64).abs() < 1e-5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_cli_through_a_server_and_in_process_agree_and_gate_a_pipeline() {
    let server = Server::start(&[]);
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("pngs/nested");
    std::fs::create_dir_all(&pngs).unwrap();
    let _ = write_pngs(&pngs, 12);
    let pathguard = || Command::new(env!("CARGO_BIN_EXE_pathguard"));
    let remote_out = dir.path().join("remote.jsonl");
    let remote = pathguard()
        .args(["screen", "--server", &server.url(), "--batch-size", "5", "--out"])
        .arg(&remote_out)
        .arg(dir.path().join("pngs"))
        .output()
        .unwrap();
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    let summary = String::from_utf8_lossy(&remote.stderr);
    assert!(summary.contains("screened 12 images"), "{summary}");
    let local = pathguard()
        .args(["screen", "--device", "cpu", "--model"])
        .arg(crate::default_model_dir())
        .arg(dir.path().join("pngs"))
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let parse = |text: &str| -> Vec<serde_json::Value> { text.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let remote_records = parse(&std::fs::read_to_string(&remote_out).unwrap());
    let local_records = parse(&String::from_utf8_lossy(&local.stdout));
    assert_eq!(remote_records.len(), 12);
    // The same service code in process and over gRPC (batches of 5 versus 64 images: the
    // floats may differ in the last digit).
    assert_eq!(local_records.len(), 12);
    for (r, l) in remote_records.iter().zip(&local_records) {
        for key in ["id", "predicted_class", "predicted_name", "flagged", "threshold", "open_fraction", "template_deviation", "fired_by"] {
            assert_eq!(r[key], l[key], "{key}");
        }
        let (a, b) = (r["adversarial_score"].as_f64().unwrap(), l["adversarial_score"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        // The verdict says why: each expert's score, and (the shipped model has a
        // distribution.json) how far out the image is.
        assert_eq!(r["expert_scores"].as_object().unwrap().len(), 2, "{r}");
        let (a, b) = (r["distribution_percentile"].as_f64().unwrap(), l["distribution_percentile"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&a) && (a - b).abs() < 2e-3, "{a} vs {b}");
    }

    // CSV, and --fail-on-flag on PGD images: exit status 2.
    let csv = pathguard()
        .args(["screen", "--server", &server.url(), "--format", "csv"])
        .arg(dir.path().join("pngs"))
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.starts_with("id,predicted_class,predicted_name,adversarial_score,flagged,threshold,fired_by,distribution_percentile\n"), "{csv}");
    assert_eq!(csv.lines().count(), 13);
    let attack = pathguard()
        .args(["attack", "--device", "cpu", "--method", "pgd", "--eps", "0.1", "--steps", "20", "--limit", "16", "--out"])
        .arg(dir.path().join("pgd"))
        .output()
        .unwrap();
    assert!(attack.status.success(), "{}", String::from_utf8_lossy(&attack.stderr));
    let gate = pathguard()
        .args(["screen", "--server", &server.url(), "--fail-on-flag"])
        .arg(dir.path().join("pgd/images.npy"))
        .output()
        .unwrap();
    assert_eq!(gate.status.code(), Some(2), "{}", String::from_utf8_lossy(&gate.stderr));
    let records = parse(&String::from_utf8_lossy(&gate.stdout));
    assert_eq!(records.len(), 16);
    assert!(records[3]["id"].as_str().unwrap().ends_with("images.npy#3"));
}
