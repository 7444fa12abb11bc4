//! The gRPC service end to end: a real `pathguard serve` process on 127.0.0.1:0 with the
//! shipped model and detector, real Fashion-MNIST images, real tonic clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::service::input::float32_bytes;
use pathguard::service::proto::screening_client::ScreeningClient;
use pathguard::service::proto::{
    images::Source, AttackRequest, DataType, EncodedImages, GetInfoRequest, Images, ScreenRequest, Tensor,
};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// The HTTP address: Open Inference Protocol REST, the page, /metrics.
    pub http: SocketAddr,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_model(&crate::default_model_dir(), extra)
    }

    /// A server for the checkpoint in `model`.
    pub fn start_model(model: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pathguard"))
            .args(["serve", "--device", "cpu", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--model"])
            .arg(model)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut metrics, mut http) = (None, None, None);
        while addr.is_none() {
            let line = lines.next().expect("server printed its address").unwrap();
            if let Some(a) = line.strip_prefix("pathguard listening on ") {
                addr = Some(a.trim().parse().unwrap());
            }
            if let Some(m) = line.strip_prefix("pathguard metrics on http://") {
                metrics = Some(m.trim().trim_end_matches("/metrics").parse().unwrap());
            }
            if let Some(h) = line.strip_prefix("pathguard http on http://") {
                http = Some(h.trim().parse().unwrap());
            }
        }
        Server {
            child,
            addr: addr.unwrap(),
            metrics: metrics.expect("metrics address printed first"),
            http: http.expect("HTTP address printed first"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    pub async fn client(&self) -> ScreeningClient<Channel> {
        ScreeningClient::connect(self.url()).await.unwrap().max_decoding_message_size(64 << 20)
    }

    /// Waits until health says SERVING (the model loads in the background).
    pub async fn wait_serving(&self) -> Vec<ServingStatus> {
        let mut health = HealthClient::new(self.channel().await);
        let mut seen = Vec::new();
        let started = Instant::now();
        loop {
            let status = health
                .check(HealthCheckRequest { service: "pathguard.v1.Screening".into() })
                .await
                .unwrap()
                .into_inner()
                .status();
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == ServingStatus::Serving {
                return seen;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not serving after 60 s: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// Health of the screening service on a new connection.
    pub async fn health(&self) -> ServingStatus {
        let mut health = HealthClient::new(self.channel().await);
        health
            .check(HealthCheckRequest { service: "pathguard.v1.Screening".into() })
            .await
            .unwrap()
            .into_inner()
            .status()
    }

    /// Waits (at most 20 s) for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `n` test images and labels.
pub fn test_images(n: usize) -> (tch::Tensor, Vec<i64>) {
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(n);
    (test.images, Vec::<i64>::try_from(test.labels).unwrap())
}

/// PGD at eps 0.1 with `steps` iterations on `images`: slow on purpose.
pub fn pgd_request(images: &tch::Tensor, labels: Vec<i64>, steps: u32) -> AttackRequest {
    AttackRequest {
        images: Some(float32_images(images)),
        labels,
        method: "pgd".into(),
        eps: 0.1,
        steps: Some(steps),
        ..Default::default()
    }
}

pub fn tensor_request(images: &tch::Tensor) -> ScreenRequest {
    ScreenRequest { images: Some(float32_images(images)), ..Default::default() }
}

pub fn float32_images(images: &tch::Tensor) -> Images {
    Images {
        source: Some(Source::Tensor(Tensor {
            dtype: DataType::Float32 as i32,
            shape: images.size(),
            data: float32_bytes(images),
        })),
    }
}

fn raw(dtype: DataType, shape: Vec<i64>, data: Vec<u8>) -> ScreenRequest {
    ScreenRequest {
        images: Some(Images { source: Some(Source::Tensor(Tensor { dtype: dtype as i32, shape, data })) }),
        ..Default::default()
    }
}

pub fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn screening_round_trip_validation_concurrency_streaming_and_metrics() {
    let server = Server::start(&[]);
    server.wait_serving().await;
    let mut client = server.client().await;

    let info = client.get_info(GetInfoRequest::default()).await.unwrap().into_inner();
    assert_eq!(info.class_names.len(), 10);
    assert_eq!(info.gated_layers.len(), 5);
    assert_eq!(info.input_shape, vec![1, 28, 28]);
    assert_eq!(info.model_hash.len(), 64);
    assert!(info.threshold > 0.0 && info.threshold < 1.0);
    assert_eq!(info.device, "cpu");
    assert!(info.training.starts_with("clean training") && info.training.contains("test accuracy 0.9300"), "{}", info.training);

    // Clean images, and PGD versions of them made by the server itself.
    let (images, labels) = test_images(128);
    let mut request = tensor_request(&images);
    request.ids = (0..128).map(|i| format!("clean-{i}")).collect();
    request.return_path_bits = true;
    let clean = client.screen(request).await.unwrap().into_inner();
    assert_eq!(clean.results.len(), 128);
    for (i, r) in clean.results.iter().enumerate() {
        assert_eq!(r.id, format!("clean-{i}"), "results in request order");
        assert_eq!(r.probabilities.len(), 10);
        assert!((r.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!((0.0..=1.0).contains(&r.adversarial_score));
        assert_eq!(r.flagged, r.adversarial_score >= r.threshold);
        let path = r.path.as_ref().unwrap();
        assert_eq!(path.open_fraction.len(), 5);
        assert_eq!(path.bit_count, 624);
        assert_eq!(path.packed_bits.len(), 78);
    }
    let correct = clean.results.iter().zip(&labels).filter(|(r, &l)| r.predicted_class as i64 == l).count();
    assert!(correct >= 110, "{correct}/128 clean images classified correctly");

    let attack = client
        .generate_attack(AttackRequest {
            images: Some(float32_images(&images)),
            labels: labels.clone(),
            method: "pgd".into(),
            eps: 0.1,
            steps: Some(10),
            random_start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attack.results.len(), 128);
    assert!(attack.results.iter().all(|r| r.linf <= 0.1 + 1e-5), "perturbations within eps");
    let fooled = attack.results.iter().filter(|r| r.success).count();
    assert!(fooled > 100, "PGD fooled {fooled}/128");
    let adversarial = attack.adversarial.unwrap();
    assert_eq!(adversarial.shape, vec![128, 1, 28, 28]);
    let attacked = client
        .screen(ScreenRequest {
            images: Some(Images { source: Some(Source::Tensor(adversarial)) }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let clean_flag_rate = clean.results.iter().filter(|r| r.flagged).count() as f64 / 128.0;
    let attack_flag_rate = attacked.results.iter().filter(|r| r.flagged).count() as f64 / 128.0;
    assert!(clean_flag_rate < 0.2, "clean flagged {clean_flag_rate}");
    assert!(attack_flag_rate > 0.8, "PGD flagged {attack_flag_rate}");
    // GenerateAttack's verdicts are the screen's.
    for (a, s) in attack.results.iter().zip(&attacked.results) {
        assert!((a.adversarial_score - s.adversarial_score as f64).abs() < 1e-4, "{} vs {}", a.adversarial_score, s.adversarial_score);
        assert_eq!(a.flagged, a.adversarial_score >= attack.threshold);
        assert_eq!(a.evaded, a.success && !a.flagged);
    }
    // An attack that knows the detector gets through where PGD does not.
    let adaptive = client
        .generate_attack(AttackRequest {
            images: Some(float32_images(&images.narrow(0, 0, 16))),
            labels: labels[..16].to_vec(),
            method: "selective-pgd".into(),
            eps: 0.1,
            steps: Some(20),
            random_start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let evaded = adaptive.results.iter().filter(|r| r.evaded).count();
    let pgd_evaded = attack.results[..16].iter().filter(|r| r.evaded).count();
    assert!(evaded >= 8 && evaded > pgd_evaded, "selective PGD evaded {evaded}/16, PGD {pgd_evaded}/16");

    // uint8 tensors and PNG files give the same answers as float32 for the same pixels.
    let uint8 = images.narrow(0, 0, 4).multiply_scalar(255.0).round().to_kind(tch::Kind::Uint8);
    let as_u8 = Vec::<u8>::try_from(uint8.flatten(0, -1)).unwrap();
    let from_u8 = client.screen(raw(DataType::Uint8, vec![4, 28, 28], as_u8.clone())).await.unwrap().into_inner();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..4 {
        let path = dir.path().join(format!("{i}.png"));
        let file = std::fs::File::create(&path).unwrap();
        let mut encoder = png::Encoder::new(file, 28, 28);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.write_header().unwrap().write_image_data(&as_u8[i * 784..(i + 1) * 784]).unwrap();
        files.push(std::fs::read(&path).unwrap());
    }
    let from_png = client
        .screen(ScreenRequest {
            images: Some(Images { source: Some(Source::Encoded(EncodedImages { files })) }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (a, b) in from_u8.results.iter().zip(&from_png.results) {
        assert_eq!(a.predicted_class, b.predicted_class);
        assert!((a.adversarial_score - b.adversarial_score).abs() < 1e-6);
    }

    // Every bad input: INVALID_ARGUMENT naming the field, and the server keeps serving.
    let one = float32_bytes(&images.narrow(0, 0, 1));
    let mut nan = one.clone();
    nan[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut big = one.clone();
    big[0..4].copy_from_slice(&1.5f32.to_le_bytes());
    let bad: Vec<(ScreenRequest, &str)> = vec![
        (ScreenRequest::default(), "images: missing"),
        (raw(DataType::Float32, vec![1, 3, 28, 28], one.clone()), "images.tensor.shape"),
        (raw(DataType::Float32, vec![1, 1, 28, 28], one[..100].to_vec()), "images.tensor.data"),
        (raw(DataType::Unspecified, vec![1, 1, 28, 28], one.clone()), "images.tensor.dtype"),
        (raw(DataType::Float32, vec![1, 1, 28, 28], nan), "finite"),
        (raw(DataType::Float32, vec![1, 1, 28, 28], big), "outside [0, 1]"),
        (raw(DataType::Float32, vec![0, 1, 28, 28], vec![]), "empty batch"),
        (raw(DataType::Uint8, vec![2000, 28, 28], vec![0; 2000 * 784]), "the limit is 1024"),
        (
            ScreenRequest {
                images: Some(Images { source: Some(Source::Encoded(EncodedImages { files: vec![b"not a png".to_vec()] })) }),
                ..Default::default()
            },
            "images.encoded.files[0]",
        ),
        (ScreenRequest { threshold: Some(1.5), ..tensor_request(&images.narrow(0, 0, 1)) }, "threshold"),
        (ScreenRequest { ids: vec!["a".into(), "b".into()], ..tensor_request(&images.narrow(0, 0, 1)) }, "ids"),
    ];
    for (request, expected) in bad {
        let status = client.screen(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{expected}: {status:?}");
        assert!(status.message().contains(expected), "{:?} should mention {expected:?}", status.message());
    }
    let bad_attacks = [
        (AttackRequest { method: "nope".into(), ..Default::default() }, "method"),
        (AttackRequest { method: "pgd".into(), eps: -1.0, ..Default::default() }, "eps"),
        (AttackRequest { method: "pgd".into(), eps: 0.1, steps: Some(100_000), ..Default::default() }, "steps"),
        (AttackRequest { method: "pgd".into(), eps: 0.1, labels: vec![3, 4], ..Default::default() }, "labels"),
    ];
    for (mut request, expected) in bad_attacks {
        request.images = Some(float32_images(&images.narrow(0, 0, 1)));
        let status = client.generate_attack(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{expected}: {status:?}");
        assert!(status.message().contains(expected), "{:?} should mention {expected:?}", status.message());
    }
    let after = client.screen(tensor_request(&images.narrow(0, 0, 2))).await.unwrap().into_inner();
    assert_eq!(after.results.len(), 2, "a valid request right after the bad ones succeeds");

    // 32 concurrent clients x 20 requests, all answered with the right results.
    let expected: Vec<i32> = clean.results.iter().map(|r| r.predicted_class).collect();
    let mut tasks = Vec::new();
    for c in 0..32 {
        let url = server.url();
        let images = images.shallow_clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ScreeningClient::connect(url).await.unwrap();
            for k in 0..20 {
                let start = ((c * 20 + k) % 120) as i64;
                let response = client.screen(tensor_request(&images.narrow(0, start, 4))).await.unwrap().into_inner();
                let got: Vec<i32> = response.results.iter().map(|r| r.predicted_class).collect();
                assert_eq!(got, expected[start as usize..start as usize + 4]);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Streaming: one response per request, in order.
    let requests: Vec<ScreenRequest> = (0..12)
        .map(|k| ScreenRequest {
            ids: (0..3).map(|i| format!("s{k}-{i}")).collect(),
            ..tensor_request(&images.narrow(0, k * 3, 3))
        })
        .collect();
    let mut stream = client.screen_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut k = 0;
    while let Some(response) = tokio_stream::StreamExt::next(&mut stream).await {
        let ids: Vec<String> = response.unwrap().results.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, (0..3).map(|i| format!("s{k}-{i}")).collect::<Vec<_>>());
        k += 1;
    }
    assert_eq!(k, 12);

    // Reflection lists our service and health.
    let output = Command::new("sh").arg("-c").arg("command -v grpcurl").output().unwrap();
    if output.status.success() {
        let list = Command::new("grpcurl").args(["-plaintext", &server.addr.to_string(), "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.contains("pathguard.v1.Screening") && list.contains("grpc.health.v1.Health"), "{list}");
    }
    let services = reflection_services(&server).await;
    assert!(services.contains(&"pathguard.v1.Screening".to_string()), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health".to_string()), "{services:?}");

    // Requests whose deadline passes while queued are dropped before computing: behind a
    // 1,024-image request (8 forward passes of 128), ten 1-ms requests add no forward pass.
    let batches = |m: &str| -> u64 {
        m.lines().find(|l| l.starts_with("pathguard_batch_size_images_count")).unwrap().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (big_images, _) = test_images(1024);
    let before = batches(&http_get(server.metrics, "/metrics"));
    let big = {
        let mut client = server.client().await;
        let request = tensor_request(&big_images);
        tokio::spawn(async move { client.screen(request).await })
    };
    // The late requests are sent once the big one is computing (its first pass is counted), so
    // that they wait behind it however slow the machine is.
    let started = Instant::now();
    while batches(&http_get(server.metrics, "/metrics")) == before {
        assert!(started.elapsed() < Duration::from_secs(60), "the big request never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut late = Vec::new();
    for _ in 0..10 {
        let mut client = server.client().await;
        let mut request = tonic::Request::new(tensor_request(&images.narrow(0, 0, 2)));
        request.set_timeout(Duration::from_millis(1));
        late.push(tokio::spawn(async move { client.screen(request).await }));
    }
    for task in late {
        let status = task.await.unwrap().unwrap_err();
        assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");
    }
    assert_eq!(big.await.unwrap().unwrap().into_inner().results.len(), 1024);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = batches(&http_get(server.metrics, "/metrics"));
    assert_eq!(after - before, 8, "only the big request was computed");

    // Metrics count what happened.
    let metrics = http_get(server.metrics, "/metrics");
    assert!(metrics.contains(r#"pathguard_requests_total{code="OK",rpc="Screen"}"#), "{metrics}");
    assert!(metrics.contains(r#"pathguard_requests_total{code="INVALID_ARGUMENT",rpc="Screen"}"#));
    assert!(metrics.contains("pathguard_request_duration_seconds_bucket"));
    assert!(metrics.contains("pathguard_queue_wait_seconds_bucket"));
    assert!(metrics.contains("pathguard_batch_size_images_bucket"));
    // Every stage of a screening request was timed at least once.
    for stage in ["decode", "queue", "model", "detector", "encode"] {
        let count = metrics
            .lines()
            .find(|l| l.starts_with(&format!("pathguard_stage_duration_seconds_count{{stage=\"{stage}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {stage} stage in the metrics"));
        assert!(count >= 1.0, "{stage}: {count}");
    }
    assert!(metrics.contains("pathguard_images_flagged_total"));
}

async fn reflection_services(server: &Server) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = tokio_stream::StreamExt::next(&mut responses).await.unwrap().unwrap();
    match response.message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// `clients` clients, each on its own connection, screening `images` at the same time: per
/// client OK or the code and message of its error.
async fn concurrent_screens(server: &Server, images: &tch::Tensor, clients: usize) -> Vec<Result<(), (tonic::Code, String)>> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, request) = (server.url(), tensor_request(images));
        tasks.push(tokio::spawn(async move {
            let mut client = ScreeningClient::connect(url).await.unwrap().max_decoding_message_size(64 << 20);
            client.screen(request).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_resource_exhausted() {
    let server = Server::start(&["--queue", "1", "--max-batch", "64", "--max-delay-ms", "0"]);
    server.wait_serving().await;
    let (images, _) = test_images(1024);
    let codes: Vec<_> = concurrent_screens(&server, &images, 24).await.into_iter().map(|r| r.map_err(|(code, _)| code)).collect();
    let exhausted = codes.iter().filter(|c| **c == Err(tonic::Code::ResourceExhausted)).count();
    let ok = codes.iter().filter(|c| c.is_ok()).count();
    assert!(exhausted >= 1, "{codes:?}");
    assert!(ok >= 1, "{codes:?}");
    assert_eq!(exhausted + ok, codes.len(), "only OK or RESOURCE_EXHAUSTED: {codes:?}");
    // And it recovers.
    let mut client = server.client().await;
    assert!(client.screen(tensor_request(&images.narrow(0, 0, 8))).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_is_bounded_by_images_too() {
    // 1,024 images held at most: a second 1,024-image request waits for nothing, it is refused.
    let server = Server::start(&["--max-queued-images", "1024", "--max-batch", "64", "--max-delay-ms", "0"]);
    server.wait_serving().await;
    let (images, _) = test_images(1024);
    let codes = concurrent_screens(&server, &images, 6).await;
    let refused: Vec<_> = codes.iter().filter_map(|c| c.as_ref().err()).collect();
    assert!(!refused.is_empty() && codes.iter().any(|c| c.is_ok()), "{codes:?}");
    for (code, message) in refused {
        assert_eq!(*code, tonic::Code::ResourceExhausted);
        assert!(message.contains("limit of 1024"), "{message}");
    }
    let mut client = server.client().await;
    let info = client.get_info(GetInfoRequest::default()).await.unwrap().into_inner();
    assert_eq!(info.limits.unwrap().max_queued_images, 1024);
    let again = client.screen(tensor_request(&images.narrow(0, 0, 8))).await;
    assert!(again.is_ok(), "and it recovers at once, its answered images no longer held: {:?}", again.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_reports_not_serving_and_drains_an_in_flight_request() {
    // A long grace period: the in-flight request must finish however busy the machine is.
    let server = Server::start(&["--shutdown-grace-s", "600"]);
    let statuses = server.wait_serving().await;
    assert_eq!(statuses.last(), Some(&ServingStatus::Serving));
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest { service: "pathguard.v1.Screening".into() })
        .await
        .unwrap()
        .into_inner();
    let first = tokio_stream::StreamExt::next(&mut watch).await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    // A slow request (PGD-60 on 48 images, a few seconds on 2 cores) in flight...
    let (images, labels) = test_images(48);
    let mut client = server.client().await;
    let request = pgd_request(&images, labels, 60);
    let in_flight = tokio::spawn(async move { client.generate_attack(request).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    // ...when SIGTERM arrives: health goes NOT_SERVING, the request still completes, exit 0.
    server.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(30), tokio_stream::StreamExt::next(&mut watch)).await;
    let update = next.expect("a health update within 30 s").expect("stream open").expect("an update");
    assert_eq!(update.status(), ServingStatus::NotServing);
    // During the drain, a new connection still gets answers: NOT_SERVING, and UNAVAILABLE for
    // new work (not "connection refused").
    assert_eq!(server.health().await, ServingStatus::NotServing);
    let mut late = server.client().await;
    let refused = late.screen(tensor_request(&images.narrow(0, 0, 1))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    // A watch is an endless stream; the server gives it a moment after the drain, then exits.
    let response = in_flight.await.unwrap().expect("the in-flight request finishes").into_inner();
    assert_eq!(response.results.len(), 48);
    let mut server = server;
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_end_of_the_grace_period_calls_in_flight_answer_unavailable() {
    let mut server = Server::start(&["--shutdown-grace-s", "1"]);
    server.wait_serving().await;
    // An attack of several minutes (PGD-1000 on 64 images)...
    let (images, labels) = test_images(64);
    let mut client = server.client().await;
    let request = pgd_request(&images, labels, 1000);
    let in_flight = tokio::spawn(async move { client.generate_attack(request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal("TERM");
    // ...answers UNAVAILABLE with a message once the grace second is over, and the server
    // exits cleanly (the attack stops within an iteration of its caller's answer).
    let status = tokio::time::timeout(Duration::from_secs(30), in_flight).await.expect("answered").unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("grace period"), "{status:?}");
    let exit = server.wait_exit();
    assert!(exit.success(), "exit status {exit:?}");
}

/// Two models in one server (`--model DIR --model NAME=DIR`), each with its own workers:
/// GetInfo, Screen, the Open Inference Protocol and `pathguard screen` pick one by name, the
/// first is the default (also as "pathguard"), and an unknown name is NOT_FOUND naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_are_served_by_name() {
    let robust = crate::repo_root().join("models/robust");
    let server = Server::start(&["--model", &format!("hardened={}", robust.display())]);
    server.wait_serving().await;
    let mut client = server.client().await;
    let default = client.get_info(GetInfoRequest::default()).await.unwrap().into_inner();
    assert_eq!((default.model_name.as_str(), default.models.clone()), ("default", vec!["default".to_string(), "hardened".to_string()]));
    let hardened = client.get_info(GetInfoRequest { model: "hardened".into() }).await.unwrap().into_inner();
    assert_eq!(hardened.model_name, "hardened");
    assert_ne!(hardened.model_hash, default.model_hash);
    assert!(hardened.training.starts_with("adversarial"), "{}", hardened.training);

    let (images, _) = test_images(4);
    for (name, hash) in [("", &default.model_hash), ("pathguard", &default.model_hash), ("hardened", &hardened.model_hash)] {
        let request = ScreenRequest { model: name.into(), ..tensor_request(&images) };
        let response = client.screen(request).await.unwrap().into_inner();
        assert_eq!(&response.model_hash, hash, "model {name:?}");
        assert_eq!(response.results.len(), 4);
    }
    let missing = client.screen(ScreenRequest { model: "resnet".into(), ..tensor_request(&images) }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("\"default\", \"hardened\""), "{}", missing.message());

    // The Open Inference Protocol over REST, by name.
    let meta = http_get(server.http, "/v2/models/hardened");
    assert!(meta.starts_with("HTTP/1.0 200") || meta.starts_with("HTTP/1.1 200"), "{meta}");
    assert!(meta.contains("\"name\":\"hardened\""), "{meta}");
    assert!(http_get(server.http, "/v2/models/resnet").contains(" 404 "));

    // The command-line client, naming the server's model.
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("images.npy");
    let values = Vec::<f32>::try_from(images.flatten(0, -1)).unwrap();
    ndarray_npy::write_npy(&npy, &ndarray::Array4::from_shape_vec((4, 1, 28, 28), values).unwrap()).unwrap();
    let screen = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["screen", "--server", &server.url(), "--server-model", "hardened"])
        .arg(&npy)
        .output()
        .unwrap();
    assert!(screen.status.success(), "{}", String::from_utf8_lossy(&screen.stderr));
    let via_cli: Vec<serde_json::Value> = String::from_utf8_lossy(&screen.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let direct = client.screen(ScreenRequest { model: "hardened".into(), ..tensor_request(&images) }).await.unwrap().into_inner();
    for (record, result) in via_cli.iter().zip(&direct.results) {
        let score = record["adversarial_score"].as_f64().unwrap();
        assert!((score - result.adversarial_score as f64).abs() < 1e-6);
    }

    // The page screens with the model it names, lists the models, and the metrics count per model.
    let npy_bytes = std::fs::read(&npy).unwrap();
    let page = http_post(server.http, "/api/screen?model=hardened", &npy_bytes);
    assert!(page.contains(&format!("\"model_hash\":\"{}\"", hardened.model_hash)), "{page}");
    assert!(http_post(server.http, "/api/screen?model=resnet", &npy_bytes).contains(" 404 "));
    let stats = http_get(server.http, "/api/stats");
    assert!(stats.contains("\"models\":[\"default\",\"hardened\"]"), "{stats}");
    let metrics = http_get(server.metrics, "/metrics");
    assert!(metrics.contains("pathguard_images_screened_total{model=\"hardened\"}"), "{metrics}");
    assert!(metrics.contains("pathguard_images_screened_total{model=\"default\"}"), "{metrics}");
}
