//! Throughput of the shipped model on this machine: eval-mode forward (logits + path) and
//! PGD-40 attacks, at batch 128. Run with `cargo bench --bench throughput` (or `make bench`).
//! Prints figures; timing belongs here, never in tests.

use std::time::Instant;

use pathguard::attack_set::{run_attack, GateGradient};
use pathguard::attack_spec::{AttackName, AttackParams};
use pathguard::data::fashion_mnist::{self, default_dir, Split};
use pathguard::model::Checkpoint;
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let device = Device::cuda_if_available();
    let checkpoint = Checkpoint::load(std::path::Path::new("models/default"), device).expect("shipped model");
    let test = fashion_mnist::load(&default_dir(), Split::Test).expect("Fashion-MNIST");
    println!("device {device:?}, torch threads {}", tch::get_num_threads());

    for batch in [1i64, 128] {
        let x = test.images.narrow(0, 0, batch).to_device(device);
        let reps = if batch == 1 { 500 } else { 40 };
        let _ = checkpoint.model.predict(&x).unwrap(); // warm-up
        let rates: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    let _ = checkpoint.model.predict(&x).unwrap();
                }
                (reps * batch) as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        println!("forward (logits + path), batch {batch:>3}: {:>8.0} images/s (median of 5)", median(rates));
    }

    let n = 256usize;
    let data = test.take(n);
    let indices = Tensor::arange(n as i64, (Kind::Int64, Device::Cpu));
    for method in [AttackName::Fgsm, AttackName::Pgd] {
        let params = AttackParams { random_start: method == AttackName::Pgd, ..AttackParams::new(method, 0.1) }.check().unwrap();
        let rates: Vec<f64> = (0..3)
            .map(|_| {
                let outcome =
                    run_attack(&checkpoint.model, device, &data, &indices, &params, GateGradient::Surrogate, 128, false)
                        .unwrap();
                outcome.stats.images_per_second
            })
            .collect();
        let label = if method == AttackName::Pgd { "PGD-40" } else { "FGSM" };
        println!("{label:>6} eps 0.1, batch 128, {n} images: {:>8.1} images/s (median of 3)", median(rates));
    }
}
