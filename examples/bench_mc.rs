//! Parallel-MC inference cost as a ratio to one DNN forward (issue 3 benchmark; docs/design.md
//! section 13 has the reference's ratios): ResNet-50, S = 20, (a) last block as an ensemble,
//! (b) last block mean-field, (c) the whole net mean-field, sequential; the mean-field cases also
//! with `--mc-draws local-reparam`.
//!
//! `[BENCH_THREADS=n] cargo run --release --example bench_mc -- [batch] [size] [reps]`
//! (defaults 16, 32, 5).

use libre::bayes::{Family, ForwardMode, PosteriorConfig};
use libre::models::{self, BayesModel, ModelConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn time(m: &dyn BayesModel, x: &Tensor, mode: &ForwardMode, reps: usize) -> f64 {
    let _ = tch::no_grad(|| m.forward_mc(x, mode)).unwrap(); // warm-up
    let t = Instant::now();
    for _ in 0..reps {
        let _ = tch::no_grad(|| m.forward_mc(x, mode)).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    // The allocator settings of the `libre` binary (LIBRE_MALLOC_TUNING=0 turns them off).
    eprintln!(
        "allocator: {:?}",
        libre::runtime::alloc::keep_freed_memory()
    );
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (batch, size, reps) = (
        *args.first().unwrap_or(&16),
        *args.get(1).unwrap_or(&32),
        *args.get(2).unwrap_or(&5),
    );
    // BENCH_THREADS=n pins libtorch's intra-op threads (a busy 2-core machine oversubscribes).
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("BENCH_THREADS must be a number"));
    }
    let device = Device::cuda_if_available();
    let cfg = ModelConfig::resnet(50, 1000, size as i64, false);
    let x = Tensor::rand(
        [batch as i64, 3, size as i64, size as i64],
        (Kind::Float, device),
    );
    let s = 20;
    let build = || models::build(&cfg, device).unwrap();
    let dnn = build();
    let base = time(dnn.as_ref(), &x, &ForwardMode::Deterministic, reps);
    println!(
        "device {device:?}, ResNet-50, batch {batch}, {size} px, S = {s}, threads {}",
        tch::get_num_threads()
    );
    println!("DNN forward: {base:.1} ms");
    // Folded BatchNorm and 1x1 matmuls against the plain forward, interleaved A B A B.
    let (mut fused, mut plain) = (vec![], vec![]);
    for _ in 0..reps.max(3) {
        fused.push(time(dnn.as_ref(), &x, &ForwardMode::Deterministic, 1));
        libre::bayes::set_fast_paths(false);
        plain.push(time(dnn.as_ref(), &x, &ForwardMode::Deterministic, 1));
        libre::bayes::set_fast_paths(true);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[0], v[v.len() / 2])
    };
    let ((fmin, fmed), (pmin, pmed)) = (med(&mut fused), med(&mut plain));
    println!(
        "    DNN folded min {fmin:.1} / median {fmed:.1} ms; unfused (fast paths off) {pmin:.1} / \
         {pmed:.1} ms"
    );
    let cases = [
        (
            "(a) last block ensemble, parallel",
            Family::Ensemble,
            "last-block",
            false,
        ),
        (
            "(b) last block mean-field, parallel",
            Family::MeanField,
            "last-block",
            false,
        ),
        (
            "(c) whole net mean-field, sequential",
            Family::MeanField,
            "all",
            true,
        ),
        (
            "(c') whole net mean-field, parallel",
            Family::MeanField,
            "all",
            false,
        ),
    ];
    for (name, fam, sel, seq) in cases {
        let mut m = build();
        m.convert(&sel.parse().unwrap(), &PosteriorConfig::new(fam, s))
            .unwrap();
        let mode = if seq {
            ForwardMode::SequentialMc { samples: s }
        } else {
            ForwardMode::ParallelMc { samples: s }
        };
        let ms = time(m.as_ref(), &x, &mode, if seq { 1 } else { reps });
        println!("{name}: {ms:.1} ms ({:.2}x)", ms / base);
        if !seq && fam == Family::MeanField {
            // The same posterior with local reparameterisation where it is exact.
            m.set_mc_draws(libre::bayes::McDraws::LocalReparam);
            let local = time(m.as_ref(), &x, &mode, reps);
            m.set_mc_draws(libre::bayes::McDraws::Weights);
            println!(
                "    --mc-draws local-reparam: {local:.1} ms ({:.2}x)",
                local / base
            );
        }
        if !seq && sel == "last-block" {
            // The same forward through the grouped-conv oracle (fast paths off), then the DNN
            // again: side by side under the same load.
            libre::bayes::set_fast_paths(false);
            let off = time(m.as_ref(), &x, &mode, reps);
            libre::bayes::set_fast_paths(true);
            let again = time(dnn.as_ref(), &x, &ForwardMode::Deterministic, reps);
            println!(
                "    fast paths off: {off:.1} ms ({:.2}x); DNN again {again:.1} ms; fast/off {:.2}",
                off / base,
                ms / off
            );
        }
    }
}
