//! Fitting time and scoring throughput of every detector (issue "Classic detector baselines",
//! benchmark): zoo LeNet5 on MNIST; the density / Gaussian / LID-reference fit on
//! train[0:10000], the logistic regressions on FGSM (eps 0.3) examples of train[50000:51000]
//! made here, scoring on test[0:2000]; LiBRe (if a checkpoint is given) and the DNN's msp beside
//! them; feature squeezing (nothing to fit) and MagNet (its autoencoders trained on the same
//! 10000). Each scoring run is repeated `rounds` times (min and median).
//!
//! `[BENCH_THREADS=n] [BENCH_ONLY=kd,squeeze,...] cargo run --release --example bench_baselines --
//!  [LIBRE.safetensors | ""] [rounds]` (an empty first argument: no LiBRe row)

use libre::bayes::mode::McDropout;
use libre::bayes::ForwardMode;
use libre::data::Dataset;
use libre::detect::classic::{ClassicKind, ClassicParams, FitData, FitSet, LogisticSets};
use libre::detect::victim::ModelVictim;
use libre::detect::{Detector, Score};
use std::time::Instant;
use tch::Device;

/// FGSM (eps 0.3) examples of `ds` on the DNN, as a batch file opened as a data set.
fn fgsm(weights: &std::path::Path, ds: &Dataset, dir: &std::path::Path, dev: Device) -> Dataset {
    let det = Detector::load(weights, dev, None).unwrap();
    let victim = ModelVictim::new(det.model(), ForwardMode::Deterministic);
    let atk = libre_attacks::by_name("fgsm", &serde_json::json!({ "eps": 0.3 })).unwrap();
    let (x, y) = ds.batch(0, ds.len()).unwrap();
    let adv = atk.perturb(&victim, &x, &y, 0).unwrap();
    let p = dir.join("adv.safetensors");
    libre::data::write_batch_file(&p, &adv, Some(&y), Default::default()).unwrap();
    libre::data::open(p.to_str().unwrap(), None, &mut |_| {}).unwrap()
}

fn main() {
    // The allocator settings of the `libre` binary (LIBRE_MALLOC_TUNING=0 turns them off).
    eprintln!(
        "allocator: {:?}",
        libre::runtime::alloc::keep_freed_memory()
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(3);
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("BENCH_THREADS must be a number"));
    }
    let dev = Device::Cpu;
    let note = &mut |m: &str| eprintln!("{m}");
    let fit = libre::data::open("mnist:train[0:10000]", None, note).unwrap();
    let lr_clean = libre::data::open("mnist:train[50000:51000]", None, note).unwrap();
    let test = libre::data::open("mnist:test[0:2000]", None, note).unwrap();
    let zoo = libre::weights::zoo::resolve("zoo:lenet5-mnist", note).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let adv = fgsm(&zoo, &lr_clean, dir.path(), dev);
    let base = ClassicParams::new(ClassicKind::Kd);
    let drop = McDropout {
        layers: vec!["conv2".into(), "linear1".into()],
        p: 0.5,
        samples: 20,
    };
    let cases: Vec<(&str, ClassicParams, bool)> = vec![
        ("kd", base.clone(), false),
        (
            "kd-bu",
            ClassicParams {
                kind: ClassicKind::KdBu,
                dropout: Some(drop.clone()),
                ..base.clone()
            },
            true,
        ),
        (
            "lid",
            ClassicParams {
                kind: ClassicKind::Lid,
                ..base.clone()
            },
            true,
        ),
        (
            "mahalanobis",
            ClassicParams {
                kind: ClassicKind::Mahalanobis,
                ..base.clone()
            },
            false,
        ),
        (
            "mahalanobis-lr",
            ClassicParams {
                kind: ClassicKind::Mahalanobis,
                ..base.clone()
            },
            true,
        ),
        (
            "mahalanobis-lr noise 0.001",
            ClassicParams {
                kind: ClassicKind::Mahalanobis,
                noise: 0.001,
                ..base.clone()
            },
            true,
        ),
        // Input-transformation detectors: squeezing fits nothing; MagNet trains its two
        // autoencoders (libre's defaults: 20 epochs on 9,000 of the 10,000 fit images).
        ("squeeze", ClassicParams::new(ClassicKind::Squeeze), false),
        ("magnet", ClassicParams::new(ClassicKind::Magnet), false),
    ];
    println!(
        "LeNet5 / MNIST, fit on 10000 clean (+ 1000 FGSM vs 1000 clean for LR forms), score 2000 \
         test images in batches of 500, {} libtorch threads, {rounds} rounds",
        tch::get_num_threads()
    );
    let score_all = |det: &Detector, s: Score| -> Vec<f64> {
        (0..rounds + 1)
            .map(|_| {
                let t = Instant::now();
                for b in (0..test.len()).step_by(500) {
                    let (x, _) = test.batch(b, (b + 500).min(test.len())).unwrap();
                    let _ = det.score(&x, &[s]).unwrap();
                }
                t.elapsed().as_secs_f64()
            })
            .skip(1) // warm-up
            .collect()
    };
    let report = |name: &str, fit_s: Option<f64>, mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (min, med) = (v[0], v[v.len() / 2]);
        println!(
            "{name:28} fit {:>8}  score min {:6.3} s median {:6.3} s  ({:7.0} images/s)",
            fit_s
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "-".into()),
            min,
            med,
            test.len() as f64 / med
        );
    };
    let dnn = Detector::load(&zoo, dev, None).unwrap();
    report("DNN msp", None, score_all(&dnn, Score::Msp));
    // BENCH_ONLY=squeeze,magnet: only these detectors (the DNN row always runs).
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    for (name, cfg, lr) in cases {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let mut det = Detector::load(&zoo, dev, None).unwrap();
        let t = Instant::now();
        let set = |data, name| FitSet { data, name };
        let data = FitData {
            clean: Some(set(&fit, "fit")),
            logistic: lr.then_some(LogisticSets {
                adversarial: set(&adv, "adv"),
                clean: set(&lr_clean, "clean"),
            }),
        };
        let kind = cfg.kind;
        det.fit_classic(&cfg.check().unwrap(), data, 500, dev)
            .unwrap();
        let fit_s = t.elapsed().as_secs_f64();
        let s = Score::of_classic(kind);
        report(name, Some(fit_s), score_all(&det, s));
    }
    let mcd = Detector::load(&zoo, dev, None)
        .unwrap()
        .with_mc_dropout(drop)
        .unwrap();
    report(
        "mc-dropout S=20 (fv)",
        None,
        score_all(&mcd, Score::FeatureVariance),
    );
    // An empty first argument (to give `rounds` without a LiBRe checkpoint) skips its row.
    if let Some(p) = args.first().filter(|p| !p.is_empty()) {
        let l = Detector::load(std::path::Path::new(p), dev, None).unwrap();
        report(
            "LiBRe S=20 (fv)",
            None,
            score_all(&l, Score::FeatureVariance),
        );
    }
}
