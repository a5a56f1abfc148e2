//! Per-image costs at ImageNet size, the inputs of the cluster cost model in docs/cluster.md
//! (issue "Beyond one machine"): ResNet-50, 224 px, 1000 classes, as a DNN and with its last
//! block (layer4.2) as a 20-member ensemble, measured A B A B interleaved, min and median.
//!
//! - detect: `Detector::score` (prediction + every score, one parallel forward), no gradient.
//! - attack step: forward + backward to the input of the cross-entropy of the predictive (the
//!   BNN's MC-averaged softmax over S = 20), what one PGD iteration costs.
//!
//! Weights are the random initialisation (timing only: a forward's cost does not depend on the
//! weights' values); inputs are uniform noise images.
//!
//! `[BENCH_THREADS=n] cargo run --release --example bench_cost -- [batch] [rounds] [cpu|cuda]`

use libre::bayes::{Family, ForwardMode, LayerSelection, PosteriorConfig};
use libre::detect::{Detector, Score};
use libre::models::{self, BayesModel, ModelConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn timed(device: Device, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// One attack step: forward, cross-entropy of the MC-averaged predictive, backward to the input.
fn step(m: &dyn BayesModel, x: &Tensor, y: &Tensor, mode: &ForwardMode) {
    let x = x.detach().set_requires_grad(true);
    let logits = m.forward_mc(&x, mode).unwrap(); // [B, S, K]
    let logp = logits
        .softmax(-1, Kind::Float)
        .mean_dim(1, false, Kind::Float)
        .log();
    let loss = logp.nll_loss(y);
    let g = Tensor::run_backward(&[loss], &[&x], false, false);
    let _ = g[0].sum(Kind::Float).double_value(&[]);
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn main() {
    // The allocator settings of the `libre` binary (LIBRE_MALLOC_TUNING=0 turns them off).
    eprintln!(
        "allocator: {:?}",
        libre::runtime::alloc::keep_freed_memory()
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batch: i64 = args.first().map(|s| s.parse().unwrap()).unwrap_or(4);
    let rounds: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(3);
    let device = match args.get(2).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("BENCH_THREADS must be a number"));
    }
    let s = 20;
    let cfg = ModelConfig::resnet(50, 1000, 224, false).with_imagenet_normalization();
    tch::manual_seed(0);
    let d = models::build(&cfg, device).unwrap();
    let mut b = models::build(&cfg, device).unwrap();
    b.convert(
        &LayerSelection::LastBlock,
        &PosteriorConfig::new(Family::Ensemble, s),
    )
    .unwrap();
    let (dd, bd) = (
        Detector::new(d, None).unwrap(),
        Detector::new(b, None).unwrap(),
    );
    let x = Tensor::rand([batch, 3, 224, 224], (Kind::Float, device));
    let y = Tensor::randint(1000, [batch], (Kind::Int64, device));
    let sb = Score::available(s);
    let (dm, bm) = (
        ForwardMode::Deterministic,
        ForwardMode::ParallelMc { samples: s },
    );
    let mut runs: Vec<(&str, Box<dyn FnMut()>)> = vec![
        (
            "detect DNN (msp)",
            Box::new(|| drop(dd.score(&x, &[Score::Msp]).unwrap())),
        ),
        (
            "detect LiBRe S=20 (all scores)",
            Box::new(|| drop(bd.score(&x, &sb).unwrap())),
        ),
        (
            "attack step DNN",
            Box::new(|| step(dd.model(), &x, &y, &dm)),
        ),
        (
            "attack step LiBRe S=20",
            Box::new(|| step(bd.model(), &x, &y, &bm)),
        ),
    ];
    for (_, f) in runs.iter_mut() {
        f(); // warm-up
    }
    let mut t: Vec<Vec<f64>> = vec![vec![]; runs.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in runs.iter_mut().enumerate() {
            t[i].push(timed(device, f.as_mut()));
        }
    }
    println!(
        "ResNet-50 224 px, batch {batch}, {rounds} interleaved rounds, {device:?}, {} threads",
        tch::get_num_threads()
    );
    for ((name, _), v) in runs.iter().zip(t) {
        let (min, med) = stats(v);
        println!(
            "{name:32} ms/image min {:9.2} median {:9.2}",
            min / batch as f64,
            med / batch as f64
        );
    }
}
