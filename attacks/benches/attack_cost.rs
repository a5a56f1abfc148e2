//! Cost of the attacks (a benchmark, not a test; `cargo bench -p libre-attacks`):
//! 1. PGD-k time over the time of k forward + input-backward passes of the same small CNN and
//!    batch (target <= 1.1: the attack adds no passes and little bookkeeping);
//! 2. PGD-k against an S-member victim (`[B, S, K]` from one stacked forward) over the same attack
//!    against one member.
//!
//! Set LIBRE_BENCH_DEVICE=cuda to run on the GPU.

use std::time::Instant;

use libre_attacks::pgd::Pgd;
use libre_attacks::{Attack, IterativeConfig, Victim};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

struct Cnn {
    seq: nn::Sequential,
}

impl Cnn {
    fn new(p: &nn::Path) -> Cnn {
        let seq = nn::seq()
            .add(nn::conv2d(
                p / "c1",
                3,
                32,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ))
            .add_fn(|x| x.relu().max_pool2d_default(2))
            .add(nn::conv2d(
                p / "c2",
                32,
                64,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ))
            .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
            .add(nn::linear(p / "fc", 64 * 8 * 8, 10, Default::default()));
        Cnn { seq }
    }
}

struct Single<'a>(&'a Cnn);
impl Victim for Single<'_> {
    fn logits(&self, x: &Tensor) -> Tensor {
        self.0.seq.forward(x)
    }
}

/// S members, stacked into `[B, S, K]` (what a BNN's parallel forward returns).
struct Members<'a>(&'a [Cnn]);
impl Victim for Members<'_> {
    fn logits(&self, x: &Tensor) -> Tensor {
        let outs: Vec<Tensor> = self.0.iter().map(|m| m.seq.forward(x)).collect();
        Tensor::stack(&outs, 1)
    }
}

/// Best-of-`reps` wall time of `f` (the minimum filters out interference from other processes).
fn time<F: FnMut()>(reps: usize, mut f: F, device: Device) -> f64 {
    f(); // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        let t = Instant::now();
        f();
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let device = match std::env::var("LIBRE_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    // One intra-op thread: the ratio is about passes, not about how busy the other cores are.
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let cnn = Cnn::new(&vs.root());
    let b = if device == Device::Cpu { 16 } else { 256 };
    let x = Tensor::rand([b, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(10, [b], (Kind::Int64, device));
    let reps = 7;
    println!("device {device:?}, batch {b} x 3 x 32 x 32, small CNN (2 conv + fc), best of {reps}");
    for k in [10usize, 20] {
        let passes = time(
            reps,
            || {
                for _ in 0..k {
                    let xg = x.detach().set_requires_grad(true);
                    let loss = cnn.seq.forward(&xg).cross_entropy_for_logits(&y);
                    let g = Tensor::run_backward(&[loss], &[&xg], false, false);
                    std::hint::black_box(g);
                }
            },
            device,
        );
        let cfg = IterativeConfig {
            eps: 8.0 / 255.0,
            step_size: 2.0 / 255.0,
            steps: k,
            ..IterativeConfig::spec_default(true)
        };
        let pgd = Pgd::new(cfg).unwrap();
        let attack = time(
            reps,
            || {
                drop(std::hint::black_box(
                    pgd.perturb(&Single(&cnn), &x, &y, 0).unwrap(),
                ));
            },
            device,
        );
        println!(
            "PGD-{k}: {:.1} ms; {k} x (forward + input backward): {:.1} ms; ratio {:.3}",
            attack * 1e3,
            passes * 1e3,
            attack / passes
        );
    }
    let s = 8;
    let members: Vec<Cnn> = (0..s)
        .map(|i| Cnn::new(&(vs.root() / format!("m{i}"))))
        .collect();
    let k = 10;
    let cfg = IterativeConfig {
        eps: 8.0 / 255.0,
        step_size: 2.0 / 255.0,
        steps: k,
        ..IterativeConfig::spec_default(true)
    };
    let pgd = Pgd::new(cfg).unwrap();
    let single = time(
        reps,
        || {
            drop(std::hint::black_box(
                pgd.perturb(&Single(&members[0]), &x, &y, 0).unwrap(),
            ));
        },
        device,
    );
    let bnn = time(
        reps,
        || {
            drop(std::hint::black_box(
                pgd.perturb(&Members(&members), &x, &y, 0).unwrap(),
            ));
        },
        device,
    );
    println!(
        "PGD-{k} on an S = {s} member victim: {:.1} ms; on one member: {:.1} ms; ratio {:.2} (S = {s})",
        bnn * 1e3,
        single * 1e3,
        bnn / single
    );
}
