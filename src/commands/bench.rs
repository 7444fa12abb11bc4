//! `pathguard bench`: our side of bench/compare.sh, on the first test images. Prints JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use pathguard::attack_set::{run_attack, AttackParams, GateGradient};
use pathguard::data::{fashion_mnist, Split};
use pathguard::device::parse_device;
use pathguard::model::Checkpoint;
use pathguard::screener::Screener;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum What {
    /// Eval-mode forward pass (logits and path)
    Forward,
    /// Forward + path features + detector score (what the server computes per image)
    Screen,
    Fgsm,
    /// PGD-40 with random start
    Pgd,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    what: What,
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Test images to run on (the first N)
    #[arg(long, default_value_t = 2048)]
    images: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 0.1)]
    eps: f64,
    /// Gate gradients of the attacks: hard (the twin's, for a like-for-like comparison) or surrogate
    #[arg(long, default_value = "hard")]
    gates: GateGradient,
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.images == 0 || args.repeats == 0 {
        bail!("--batch, --images and --repeats must be at least 1");
    }
    let device = parse_device(&args.device)?;
    let test = fashion_mnist::load(&fashion_mnist::default_dir(), Split::Test)?.take(args.images);
    let n = test.len() as i64;
    let batches = |f: &mut dyn FnMut(&Tensor) -> Result<()>| -> Result<f64> {
        let started = Instant::now();
        for start in (0..n).step_by(args.batch) {
            f(&test.images.narrow(0, start, (args.batch as i64).min(n - start)).to_device(device))?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    };
    let json = match args.what {
        What::Forward => {
            let checkpoint = Checkpoint::load(&args.model, device)?;
            let rates = (0..args.repeats)
                .map(|_| batches(&mut |x| checkpoint.model.predict(x).map(|_| ()).map_err(Into::into)))
                .collect::<Result<Vec<_>>>()?;
            serde_json::json!({ "images_per_second": median(rates) })
        }
        What::Screen => {
            let screener = Screener::load(&args.model, device)?;
            let rates = (0..args.repeats)
                .map(|_| batches(&mut |x| screener.screen(x).map(|_| ()).map_err(Into::into)))
                .collect::<Result<Vec<_>>>()?;
            serde_json::json!({ "images_per_second": median(rates) })
        }
        What::Fgsm | What::Pgd => {
            let checkpoint = Checkpoint::load(&args.model, device)?;
            let params = match args.what {
                What::Fgsm => AttackParams::new("fgsm", args.eps),
                _ => AttackParams { steps: Some(40), random_start: true, ..AttackParams::new("pgd", args.eps) },
            };
            let indices = Tensor::arange(n, (Kind::Int64, Device::Cpu));
            let outcome = run_attack(&checkpoint.model, device, &test, &indices, &params, args.gates, args.batch, false)?;
            serde_json::json!({
                "images_per_second": outcome.stats.images_per_second,
                "success_rate_on_correct": outcome.stats.success_rate_on_correct,
            })
        }
    };
    println!("{json}");
    Ok(())
}
