//! A ResNet-style decoupled network on the user's own colour images, end to end as a new user
//! would run it: `train --arch resnet8 --normalize-input` on a 32x32 RGB image folder of PNG
//! and JPEG files,
//! `fit-detector`, `serve` with no flag beyond `--model`, then screening over gRPC (encoded
//! PNG and JPEG, and `pathguard screen --server`) and the Open Inference Protocol over REST.

use std::path::{Path, PathBuf};

use pathguard::service::proto::{images::Source, EncodedImages, GetInfoRequest, Images, ScreenRequest};
use serde_json::Value;

use crate::data_formats::{colour_folder, pathguard};
use crate::http::post_json;
use crate::service::Server;

/// Re-saves every third image of the folder as JPEG (the PNG removed): a folder of both.
fn mix_in_jpegs(root: &Path) -> usize {
    let mut converted = 0;
    for split in ["train", "test"] {
        for class in std::fs::read_dir(root.join(split)).unwrap() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(class.unwrap().path()).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for png in files.iter().step_by(3) {
                image::open(png).unwrap().to_rgb8().save(png.with_extension("jpg")).unwrap();
                std::fs::remove_file(png).unwrap();
                converted += 1;
            }
        }
    }
    converted
}

/// `[3, H, W]` floats in [0, 1] of an image file, as the server decodes it.
fn chw_pixels(path: &Path) -> Vec<f32> {
    let image = image::open(path).unwrap().to_rgb8();
    let (w, h) = image.dimensions();
    let mut values = vec![0f32; (3 * w * h) as usize];
    for (x, y, pixel) in image.enumerate_pixels() {
        for c in 0..3 {
            values[(c * h * w + y * w + x) as usize] = pixel[c as usize] as f32 / 255.0;
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resnet_trains_on_an_rgb_folder_fits_its_detector_and_serves_grpc_and_open_inference() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("colours");
    colour_folder(&data, (60, 10), (32, 32));
    assert!(mix_in_jpegs(&data) >= 60);
    let model = dir.path().join("model");
    let train = pathguard(
        &["train", "--arch", "resnet8", "--normalize-input", "--epochs", "4", "--batch-size", "16", "--device", "cpu", "--out"],
        &[&model, Path::new("--data"), &data],
    );
    assert!(train.status.success(), "{}", String::from_utf8_lossy(&train.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let layers = config["architecture"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 7);
    assert_eq!((layers[2]["residual_from"].as_u64(), layers[3]["stride"].as_i64()), (Some(1), Some(2)));
    assert_eq!(config["architecture"]["normalized_input"], true);

    // The detector, on attacks strong enough to fool a model of this easy task.
    let fit = pathguard(
        &["fit-detector", "--device", "cpu", "--methods", "fgsm,pgd", "--eps", "0.5", "--pgd-steps", "10", "--model"],
        &[&model, Path::new("--data"), &data],
    );
    assert!(fit.status.success(), "{}", String::from_utf8_lossy(&fit.stderr));
    assert!(model.join("detector.json").exists());

    // Served with no flag beyond --model: shape, classes and gates come from the checkpoint.
    let server = Server::start_model(&model, &[]);
    server.wait_serving().await;
    let mut client = server.client().await;
    let info = client.get_info(GetInfoRequest::default()).await.unwrap().into_inner();
    assert_eq!(info.input_shape, vec![3, 32, 32]);
    assert_eq!(info.class_names, ["blue", "green", "red"]);
    assert_eq!(info.gated_layers.len(), 6);
    assert!(info.pixel_convention.contains("standardised per channel inside the model"), "{}", info.pixel_convention);

    // gRPC: the test split's PNG and JPEG files as they are.
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    for (label, class) in ["blue", "green", "red"].iter().enumerate() {
        for entry in std::fs::read_dir(data.join("test").join(class)).unwrap() {
            files.push((entry.unwrap().path(), label));
        }
    }
    files.sort();
    assert!(files.iter().any(|(f, _)| f.extension().unwrap() == "jpg") && files.iter().any(|(f, _)| f.extension().unwrap() == "png"));
    let encoded = files.iter().map(|(f, _)| std::fs::read(f).unwrap()).collect();
    let request = ScreenRequest { images: Some(Images { source: Some(Source::Encoded(EncodedImages { files: encoded })) }), ..Default::default() };
    let screened = client.screen(request).await.unwrap().into_inner().results;
    assert_eq!(screened.len(), files.len());
    let correct = screened.iter().zip(&files).filter(|(r, (_, label))| r.predicted_class as usize == *label).count();
    assert!(correct * 10 >= files.len() * 8, "{correct} of {} test images right", files.len());

    // The Open Inference Protocol over REST, the same images as FP32 tensors: same answers.
    let pixels: Vec<f32> = files.iter().flat_map(|(f, _)| chw_pixels(f)).collect();
    let body = serde_json::json!({
        "inputs": [{ "name": "images", "shape": [files.len(), 3, 32, 32], "datatype": "FP32", "data": pixels }],
    });
    let body_file = dir.path().join("request.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let (code, answer) = post_json(server.http, "/v2/models/pathguard/infer", &format!("@{}", body_file.display()));
    assert_eq!(code, 200, "{answer}");
    let output = |name: &str| answer["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap()["data"].clone();
    let (classes, scores) = (output("predicted_class"), output("adversarial_score"));
    for (i, r) in screened.iter().enumerate() {
        assert_eq!(classes[i].as_i64(), Some(r.predicted_class as i64), "image {i}");
        let score = scores[i].as_f64().unwrap();
        assert!((score - r.adversarial_score as f64).abs() < 1e-5, "image {i}: {score} vs {}", r.adversarial_score);
    }

    // And the command-line client over gRPC, on the folder of files.
    let screen = pathguard(&["screen", "--server", &server.url()], &[&data.join("test")]);
    assert!(screen.status.success(), "{}", String::from_utf8_lossy(&screen.stderr));
    let records: Vec<Value> = String::from_utf8_lossy(&screen.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), files.len());
}
