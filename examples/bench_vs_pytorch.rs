//! The libre side of the libre-versus-PyTorch speed comparison (`scripts/bench_vs_pytorch.sh`
//! runs it interleaved with `scripts/bench_vs_pytorch.py`, which builds the same cases in plain
//! PyTorch).
//!
//! `[BENCH_THREADS=n] [BENCH_WARMUP=w] bench_vs_pytorch CASE REPS [BATCH]` builds CASE with random
//! weights (speed only), runs `w` warm-up forwards (default 1) and prints one line per timed
//! forward on stdout, `CASE MILLISECONDS`; a description of the case goes to stderr.
//!
//! CASE is `NET-SIZE:VARIANT`:
//! - NET `lenet5` (advertorch's MNIST LeNet5, input `[B, 1, SIZE, SIZE]`), `resnet18`, `resnet34`,
//!   `resnet50` (torchvision layout, ImageNet stem, 1000 classes, input `[B, 3, SIZE, SIZE]`) or
//!   `resnet18c` / `resnet50c` (CIFAR stem: 3x3 stride-1 `conv1`, no max-pool, 10 classes) or
//!   `resnet18c1` / `resnet50c1` (the same with one input channel, `[B, 1, SIZE, SIZE]`: what
//!   `libre train --model resnet18 --cifar-stem` builds for Fashion-MNIST);
//! - VARIANT `dnn` (the point net, `ForwardMode::Deterministic`), `ens-last` (the last block
//!   before the head as an S = 20 ensemble, LiBRe), `mf-last` (the last block mean-field, S = 20),
//!   `mf-all` (every layer mean-field, S = 20), all three as one parallel MC forward
//!   (`ForwardMode::ParallelMc`, docs/design.md section 3), or `mf-all-seq` (every layer
//!   mean-field, 20 sequential forwards with one weight sample each, `ForwardMode::SequentialMc`);
//! - or a training step, forward + backward + SGD update, batch norm in training mode:
//!   `dnn-train` (cross-entropy, `libre train`'s optimiser, `train::pretrain_groups`) or
//!   `ens-last-train` (one LiBRe step, `detect::objective::step`: the last block an S = 20
//!   ensemble, the anchored objective with the data set's default noise, the B clean images
//!   through one routed member each and copies of half of them clean and perturbed, 2.5 B
//!   routed images in all; `train::libre_groups`). The timed unit is one optimiser step of BATCH
//!   clean images; labels are `Tensor::randint`.
//!
//! The input is `Tensor::rand` after `tch::manual_seed(0)`; every forward variant runs under
//! `tch::no_grad` with batch norm on its running statistics (eval mode).
//!
//! `BENCH_DEVICE` (`cpu` by default, `cuda` or `cuda:N`) picks the device through
//! `libre::runtime::device::resolve` (which registers libtorch's CUDA backend, docs/design.md section 13);
//! on CUDA every timed forward ends with a device synchronisation. `BENCH_CUDNN_BENCHMARK=1` turns
//! on cuDNN's autotuner (the reference's GPU timings ran with it; give it warm-up forwards).
//! `BENCH_PRECISION=bf16` runs the forward in bfloat16 (`BayesModel::set_precision`, float32
//! input and outputs; docs/design.md section 15).

use libre::bayes::optim::Sgd;
use libre::bayes::{Family, ForwardMode, PosteriorConfig};
use libre::detect::objective::{self, customary_eps, LibreConfig, ObjectiveKind};
use libre::models::{self, BayesModel, ModelConfig};
use libre::train;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// MC samples / ensemble members of every Bayesian variant.
const S: usize = 20;

/// A parsed CASE: the architecture, the input shape, the conversion and the forward mode.
struct Case {
    cfg: ModelConfig,
    input: [i64; 4],
    convert: Option<(Family, &'static str)>,
    mode: ForwardMode,
    train: Option<Training>,
}

/// What a training case steps.
#[derive(Clone, Copy, PartialEq)]
enum Training {
    /// Cross-entropy on the point net (`ForwardMode::DeterministicTrain`).
    Dnn,
    /// One LiBRe step through the routed last-block ensemble.
    Libre,
}

fn parse_case(case: &str, batch: i64) -> Result<Case, String> {
    let usage = || {
        format!(
            "bad case {case:?}: expected NET-SIZE:VARIANT, NET lenet5|resnet18|resnet34|resnet50 \
             (suffix c: CIFAR stem, c1: CIFAR stem and one input channel), VARIANT \
             dnn|ens-last|mf-last|mf-all|mf-all-seq|dnn-train|ens-last-train \
             (e.g. resnet50-32:ens-last)"
        )
    };
    let (net, variant) = case.split_once(':').ok_or_else(usage)?;
    let (arch, size) = net.rsplit_once('-').ok_or_else(usage)?;
    let size: i64 = size.parse().map_err(|_| usage())?;
    let (cfg, channels) = match arch {
        "lenet5" => {
            let cfg = ModelConfig {
                image_size: size,
                ..ModelConfig::lenet5()
            };
            (cfg, 1)
        }
        _ => {
            let (name, cifar, channels) = if let Some(n) = arch.strip_suffix("c1") {
                (n, true, 1)
            } else if let Some(n) = arch.strip_suffix('c') {
                (n, true, 3)
            } else {
                (arch, false, 3)
            };
            let depth = match name {
                "resnet18" => 18,
                "resnet34" => 34,
                "resnet50" => 50,
                _ => return Err(usage()),
            };
            let classes = if cifar { 10 } else { 1000 };
            let cfg = ModelConfig {
                in_channels: channels,
                ..ModelConfig::resnet(depth, classes, size, cifar)
            };
            (cfg, channels)
        }
    };
    let par = ForwardMode::ParallelMc { samples: S };
    let mut train = None;
    let (convert, mode) = match variant {
        "dnn" => (None, ForwardMode::Deterministic),
        "ens-last" => (Some((Family::Ensemble, "last-block")), par),
        "mf-last" => (Some((Family::MeanField, "last-block")), par),
        "mf-all" => (Some((Family::MeanField, "all")), par),
        "mf-all-seq" => (
            Some((Family::MeanField, "all")),
            ForwardMode::SequentialMc { samples: S },
        ),
        "dnn-train" => {
            train = Some(Training::Dnn);
            (None, ForwardMode::DeterministicTrain)
        }
        "ens-last-train" => {
            train = Some(Training::Libre);
            // The step builds its own routed mode; this one is only printed.
            (
                Some((Family::Ensemble, "last-block")),
                ForwardMode::Train(Default::default()),
            )
        }
        _ => return Err(usage()),
    };
    Ok(Case {
        cfg,
        input: [batch, channels, size, size],
        convert,
        mode,
        train,
    })
}

fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
        Err(_) => Ok(default),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 || args[0] == "--help" || args[0] == "-h" {
        return Err(
            "usage: bench_vs_pytorch CASE REPS [BATCH]   (e.g. resnet50-32:ens-last 5 16)".into(),
        );
    }
    let case_name = args[0].as_str();
    let reps: usize = args[1]
        .parse()
        .map_err(|_| format!("REPS {:?} is not a number", args[1]))?;
    let batch: i64 = match args.get(2) {
        Some(b) => b
            .parse()
            .ok()
            .filter(|&b| b > 0)
            .ok_or_else(|| format!("BATCH {b:?} is not a positive number"))?,
        None => 16,
    };
    // BENCH_THREADS=n pins libtorch's intra-op threads, as in examples/bench_mc.rs.
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        let n: i32 = n
            .parse()
            .map_err(|_| format!("BENCH_THREADS={n:?} is not a number"))?;
        tch::set_num_threads(n);
    }
    let warmup = env_usize("BENCH_WARMUP", 1)?;
    let case = parse_case(case_name, batch)?;
    let device = match std::env::var("BENCH_DEVICE") {
        Ok(d) => {
            libre::runtime::device::resolve(d.parse().map_err(|e| format!("BENCH_DEVICE: {e}"))?)
                .map_err(|e| format!("BENCH_DEVICE: {e}"))?
        }
        Err(_) => Device::Cpu,
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    if std::env::var("BENCH_CUDNN_BENCHMARK").is_ok_and(|v| v == "1") {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(0);
    let mut m = models::build(&case.cfg, device).map_err(|e| format!("build: {e}"))?;
    let mut converted = 0;
    if let Some((family, sel)) = case.convert {
        let sel = sel.parse().map_err(|e| format!("layer selection: {e}"))?;
        converted = m
            .convert(&sel, &PosteriorConfig::new(family, S))
            .map_err(|e| format!("convert: {e}"))?
            .len();
    }
    let precision: libre::runtime::precision::Precision = match std::env::var("BENCH_PRECISION") {
        Ok(p) => p.parse().map_err(|e| format!("BENCH_PRECISION: {e}"))?,
        Err(_) => Default::default(),
    };
    m.set_precision(precision)
        .map_err(|e| format!("precision: {e}"))?;
    let x = Tensor::rand(case.input, (Kind::Float, device));
    eprintln!(
        "libre {case_name}: input {:?}, {converted} Bayesian layers, mode {:?}, device {}, \
         precision {precision}, threads {}, warm-up {warmup}, reps {reps}",
        case.input,
        case.mode,
        libre::runtime::device::name(device),
        tch::get_num_threads()
    );
    let mut unit: Box<dyn FnMut() -> Result<(), String>> = match case.train {
        None => Box::new(|| {
            let r = tch::no_grad(|| m.forward_mc(&x, &case.mode))
                .map(|_| ())
                .map_err(|e| format!("forward: {e}"));
            sync();
            r
        }),
        Some(kind) => {
            if precision != libre::runtime::precision::Precision::F32 {
                return Err("training cases run at f32 only (BENCH_PRECISION)".into());
            }
            let y = Tensor::randint(case.cfg.num_classes, [batch], (Kind::Int64, device));
            let steps = warmup + reps;
            let groups = match kind {
                Training::Dnn => train::pretrain_groups(0.05, 5e-4, steps),
                Training::Libre => {
                    train::libre_groups(Family::Ensemble, 0.05, 1e-4, 1e-4, S, steps)
                }
            };
            let mut opt =
                Sgd::new(m.var_store(), &groups).map_err(|e| format!("optimiser: {e}"))?;
            let shape = [
                case.input[1] as usize,
                case.input[2] as usize,
                case.input[3] as usize,
            ];
            let lcfg = LibreConfig::for_attack_eps(ObjectiveKind::Anchored, customary_eps(shape));
            let model: &dyn BayesModel = m.as_ref();
            Box::new(move || {
                let loss = match kind {
                    Training::Dnn => model
                        .forward_mc(&x, &ForwardMode::DeterministicTrain)
                        .map_err(|e| format!("forward: {e}"))?
                        .squeeze_dim(1)
                        .cross_entropy_for_logits(&y),
                    Training::Libre => {
                        objective::step(model, &x, &y, &lcfg)
                            .map_err(|e| format!("LiBRe step: {e}"))?
                            .loss
                    }
                };
                opt.zero_grad();
                loss.backward();
                opt.step();
                sync();
                Ok(())
            })
        }
    };
    for _ in 0..warmup {
        unit()?;
    }
    for _ in 0..reps {
        sync();
        let t = Instant::now();
        unit()?;
        println!("{case_name} {:.3}", t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

fn main() {
    // The same allocator settings as the `libre` binary (LIBRE_MALLOC_TUNING=0 turns them off).
    let tuning = libre::runtime::alloc::keep_freed_memory();
    eprintln!("allocator: {tuning:?}");
    if let Err(e) = run() {
        eprintln!("bench_vs_pytorch: {e}");
        std::process::exit(2);
    }
}
