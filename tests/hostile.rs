//! Hostile requests against a real `pathguard serve`: each case once took the server down,
//! lost an answer while reporting success, stalled it, or ran on after its caller left
//! (issue 13). Each checks the answer's code, that the server stays SERVING, and that its
//! memory stays bounded.

use std::time::{Duration, Instant};

use pathguard::service::hostile::{giant_header_png, png_bomb, short_palette_png};
use pathguard::service::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use pathguard::service::inference::model_infer_request::InferInputTensor;
use pathguard::service::inference::ModelInferRequest;
use pathguard::service::proto::{images::Source, AttackRequest, DataType, EncodedImages, Images, ScreenRequest, Tensor};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::service::{float32_images, http_get, pgd_request, tensor_request, test_images, Server};

fn encoded(files: Vec<Vec<u8>>) -> Images {
    Images { source: Some(Source::Encoded(EncodedImages { files })) }
}

fn screen_files(files: Vec<Vec<u8>>) -> ScreenRequest {
    ScreenRequest { images: Some(encoded(files)), ..Default::default() }
}

fn grey_png(pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 28, 28);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.write_header().unwrap().write_image_data(pixels).unwrap();
    out
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).map(|v| v.parse().unwrap()).unwrap_or(0.0)
}

const MB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_images_and_fields_are_refused_and_the_server_stays_up() {
    let server = Server::start(&[]);
    server.wait_serving().await;
    let mut client = server.client().await;
    let (images, _) = test_images(8);
    client.screen(tensor_request(&images)).await.unwrap();
    let peak_before = server.peak_rss();

    // 1. Headers that claim gigapixels (once: the allocation failed and the process aborted).
    for (png, size) in [
        (giant_header_png(60_000, 60_000, 16, 6), "60000x60000"),
        (giant_header_png(1_000_000, 1_000_000, 8, 0), "1000000x1000000"),
    ] {
        assert!(png.len() < 100);
        let status = client.screen(screen_files(vec![png.clone()])).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("images.encoded.files[0]") && status.message().contains(size), "{status:?}");
        let attack = AttackRequest { images: Some(encoded(vec![png])), method: "fgsm".into(), eps: 0.1, ..Default::default() };
        let status = client.generate_attack(attack).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    // 2. Palettes of 1, 2 or 4 bytes (once: a panic in the decoder, answered CANCELLED).
    for len in [1, 2, 4] {
        let status = client.screen(screen_files(vec![short_palette_png(len)])).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{len}-byte palette: {status:?}");
        assert!(status.message().contains("images.encoded.files[0]"), "{status:?}");
    }

    // 3. A valid 20000x20000 PNG (390 KB, 400 MB decoded) is refused from its header, and
    // health checks stay prompt while two clients send it in a loop (once: decoded in full
    // on the runtime's threads, stalling everyone).
    let bomb = png_bomb(20_000);
    let stop = Instant::now() + Duration::from_secs(3);
    let mut bombers = Vec::new();
    for _ in 0..2 {
        let (mut client, bomb) = (server.client().await, bomb.clone());
        bombers.push(tokio::spawn(async move {
            let mut sent = 0;
            while Instant::now() < stop {
                let status = client.screen(screen_files(vec![bomb.clone()])).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                assert!(status.message().contains("20000x20000"), "{status:?}");
                sent += 1;
            }
            sent
        }));
    }
    let mut slowest = Duration::ZERO;
    while Instant::now() < stop {
        let started = Instant::now();
        assert_eq!(server.health().await, ServingStatus::Serving);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for bomber in bombers {
        assert!(bomber.await.unwrap() >= 3, "bombs are refused quickly");
    }
    // Generous against a busy CI machine; the decoded bomb stalled health for 11.8 s.
    assert!(slowest < Duration::from_secs(1), "a health check took {slowest:?} during the bombs");

    // 4. Unbounded fields are quoted by a bounded prefix (once: a 25 MB status header that
    // stock clients could not read).
    let shape = vec![7i64; 1_500_000];
    let request = ScreenRequest {
        images: Some(Images {
            source: Some(Source::Tensor(Tensor { dtype: DataType::Float32 as i32, shape, data: vec![0; 16] })),
        }),
        ..Default::default()
    };
    let status = client.screen(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{:?}", status.code());
    assert!(status.message().len() < 1024 && status.message().contains("1500000 dimensions"), "{}", status.message());
    let attack = AttackRequest {
        images: Some(float32_images(&images.narrow(0, 0, 1))),
        method: "p".repeat(1 << 20),
        ..Default::default()
    };
    let status = client.generate_attack(attack).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().len() < 1024 && status.message().contains("1048576 characters"), "{}", status.message());
    let mut inference = GrpcInferenceServiceClient::new(server.channel().await);
    for (model, datatype) in [("x".repeat(1 << 20), "FP32".to_string()), ("pathguard".into(), "y".repeat(1 << 20))] {
        let request = ModelInferRequest {
            model_name: model,
            inputs: vec![InferInputTensor {
                name: "images".into(),
                datatype,
                shape: vec![1, 1, 28, 28],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0; 784 * 4]],
            ..Default::default()
        };
        let status = inference.model_infer(request).await.unwrap_err();
        assert!(matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument), "{:?}", status.code());
        assert!(status.message().len() < 1024, "{} bytes", status.message().len());
    }

    // 5. Fields that decode to far more memory than they take on the wire: a million empty
    // inputs (2 MB) would be 300 MB of structs, a million empty ids 24 MB.
    let request = ModelInferRequest { model_name: "pathguard".into(), inputs: vec![InferInputTensor::default(); 1_000_000], ..Default::default() };
    let status = inference.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let request = ScreenRequest { ids: vec![String::new(); 1_000_000], ..tensor_request(&images.narrow(0, 0, 1)) };
    let status = client.screen(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most"), "{status:?}");

    // 6. Oversized metadata (hyper would take 16 MiB of headers per call) is refused.
    let mut request = tonic::Request::new(tensor_request(&images.narrow(0, 0, 1)));
    request.metadata_mut().insert("x-junk", "j".repeat(200 * 1024).parse().unwrap());
    let mut other = server.client().await;
    assert!(other.screen(request).await.is_err(), "200 KB of metadata is refused");

    // Still serving, honest requests still answered, and memory bounded.
    assert_eq!(server.health().await, ServingStatus::Serving);
    assert_eq!(client.screen(tensor_request(&images)).await.unwrap().into_inner().results.len(), 8);
    let growth = server.peak_rss().saturating_sub(peak_before);
    assert!(growth < 50 * MB, "peak memory grew by {} MB", growth / MB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_or_a_client_run_never_ends_ok_with_answers_missing() {
    let server = Server::start(&[]);
    server.wait_serving().await;
    let mut client = server.client().await;
    let (images, _) = test_images(2);
    let good: Vec<u8> = Vec::<f32>::try_from(images.get(0).flatten(0, -1))
        .unwrap()
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    // good, bad, good: one answer, then the stream ends with the error (once: status OK).
    let requests = vec![screen_files(vec![grey_png(&good)]), screen_files(vec![short_palette_png(2)]), screen_files(vec![grey_png(&good)])];
    let mut stream = client.screen_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut answers = 0;
    let mut end = None;
    while let Some(item) = tokio_stream::StreamExt::next(&mut stream).await {
        match item {
            Ok(_) => answers += 1,
            Err(status) => {
                end = Some(status);
                break;
            }
        }
    }
    assert_eq!(answers, 1);
    let end = end.expect("the stream ends with an error, not OK");
    assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");

    // `pathguard screen --server` exits non-zero and names the images it could not screen.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), grey_png(&good)).unwrap();
    std::fs::write(dir.path().join("b-bad.png"), short_palette_png(2)).unwrap();
    std::fs::write(dir.path().join("c.png"), grey_png(&good)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["screen", "--server", &server.url(), "--batch-size", "1", "--fail-on-flag"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit {:?}: {stderr}", output.status);
    assert_ne!(output.status.code(), Some(2), "not the 'flagged' status: {stderr}");
    assert!(stderr.contains("2 of 3 images were not screened") && stderr.contains("b-bad.png"), "{stderr}");
    assert_eq!(server.health().await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_attacks_stop_and_every_outcome_is_counted() {
    let server = Server::start(&[]);
    server.wait_serving().await;
    let (images, labels) = test_images(8);
    let long_attack = || pgd_request(&images, labels.clone(), 1000);
    // PGD-1000 on 8 images (over a minute on 2 cores), once with a 1 s deadline...
    let mut client = server.client().await;
    let mut request = tonic::Request::new(long_attack());
    request.set_timeout(Duration::from_secs(1));
    let status = client.generate_attack(request).await.unwrap_err();
    assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");
    // ...and once cancelled by its client after 1 s.
    let cancelled = {
        let (mut client, request) = (server.client().await, long_attack());
        tokio::spawn(async move { client.generate_attack(request).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancelled.abort();
    // Both stop within an iteration: the worker is free for the next attack at once.
    let mut client = server.client().await;
    let fgsm = AttackRequest { method: "fgsm".into(), eps: 0.1, steps: None, ..long_attack() };
    let mut request = tonic::Request::new(fgsm);
    request.set_timeout(Duration::from_secs(30));
    assert_eq!(client.generate_attack(request).await.unwrap().into_inner().results.len(), 8);
    let metrics = http_get(server.metrics, "/metrics");
    assert_eq!(metric(&metrics, "pathguard_attacks_abandoned_total"), 2.0, "{metrics}");
    // The client faults are counted by code (once: counted nowhere).
    let deadline = metric(&metrics, r#"pathguard_requests_total{code="DEADLINE_EXCEEDED",rpc="GenerateAttack"}"#);
    let cancel = metric(&metrics, r#"pathguard_requests_total{code="CANCELLED",rpc="GenerateAttack"}"#);
    assert_eq!((deadline, cancel), (1.0, 1.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"pathguard_requests_total{code="OK",rpc="GenerateAttack"}"#), 1.0);
}
