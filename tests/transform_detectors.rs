//! The input-transformation detectors (issue 27): feature squeezing (Xu et al., NDSS 2018) and
//! MagNet (Meng and Chen, CCS 2017). Squeezers against hand-computed values, scores against
//! direct computations, a briefly trained MagNet autoencoder against noise, fit -> save -> reload
//! bit for bit, the CLI (calibrate, detect, adaptive attack) and its refusals naming the flag.
//! Real data: MNIST digits and the zoo LeNet5.

mod common;
use common::{json_result, libre, ok};
use libre::detect::classic::{Classic, ClassicConfig, ClassicKind, ClassicParams, FitSet};
use libre::detect::detector::{DetectorMeta, DETECTOR_FORMAT};
use libre::detect::transform::magnet::{self, Arch, Autoencoder, MagnetConfig, SubDetector};
use libre::detect::transform::squeeze::{self, Squeezer};
use libre::detect::transform::TransformConfig;
use libre::detect::{Detector, Score};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const CAL: &str = "mnist:train[55000:55500]";

fn img(v: &[f32], h: i64, w: i64) -> Tensor {
    Tensor::from_slice(v).view([1, 1, h, w])
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn bit_depth_matches_hand_computed_values() {
    let x = img(&[0.0, 0.2, 0.5, 0.51, 0.8, 1.0], 2, 3);
    // 1 bit: round(x); NumPy's round half to even sends 0.5 to 0.
    assert_eq!(
        values(&Squeezer::BitDepth(1).apply(&x)),
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    );
    // 2 bits: round(3x) / 3: 0, 0.6 -> 1, 1.5 -> 2 (half to even), 1.53 -> 2, 2.4 -> 2, 3.
    let want = [0.0f32, 1.0, 2.0, 2.0, 2.0, 3.0].map(|v| v / 3.0);
    let got = values(&Squeezer::BitDepth(2).apply(&x));
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-7, "{got:?}");
    }
    // 8 bits leaves 8-bit images unchanged.
    let x8 = Tensor::arange(256, (Kind::Float, Device::Cpu)).view([1, 1, 16, 16]) / 255.0;
    assert!(Squeezer::BitDepth(8).apply(&x8).equal(&x8));
}

#[test]
fn median_filter_matches_hand_computed_values() {
    let x = img(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 3, 3);
    // SciPy median_filter(size=2, mode='reflect'): the window of (i, j) is rows i-1..i, columns
    // j-1..j, the border repeats the edge, the upper middle of the 4 values is taken. E.g. (1, 1):
    // {1, 2, 4, 5} -> 4; (0, 1): {1, 2, 1, 2} -> 2; (2, 2): {5, 6, 8, 9} -> 8.
    assert_eq!(
        values(&squeeze::median_filter(&x, 2)),
        [1.0, 2.0, 3.0, 4.0, 4.0, 5.0, 7.0, 7.0, 8.0]
    );
    // size 3: (0, 0): {1,1,2,1,1,2,4,4,5} -> 2; (0, 2): {2,3,3,2,3,3,5,6,6} -> 3; (1, 1): 5;
    // (2, 2): {5,6,6,8,9,9,8,9,9} -> 8.
    let m3 = values(&squeeze::median_filter(&x, 3));
    assert_eq!([m3[0], m3[2], m3[4], m3[8]], [2.0, 3.0, 5.0, 8.0]);
    assert_eq!(m3, [2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.0, 8.0]);
    // Channels and images are filtered independently.
    let two = Tensor::cat(&[&x, &(&x * 10.0)], 1);
    let m = squeeze::median_filter(&two, 2);
    assert!(m
        .select(1, 1)
        .equal(&(squeeze::median_filter(&x, 2).select(1, 0) * 10.0)));
    // Names parse back; bad ones name the setting.
    for s in ["bits-1", "bits-8", "median-2x2", "median-5x5"] {
        assert_eq!(s.parse::<Squeezer>().unwrap().name(), s);
    }
    for s in ["bits-0", "bits-9", "median-2x3", "median-6x6", "blur"] {
        let e = s.parse::<Squeezer>().unwrap_err().to_string();
        assert!(e.contains("squeezers") && e.contains(s), "{e}");
    }
    let e = squeeze::parse_squeezers("bits-1,bits-1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("squeezers") && e.contains("twice"), "{e}");
}

/// The first `n` MNIST test digits.
fn digits(n: usize) -> Tensor {
    let test = libre::data::open("mnist:test[0:200]", None, &mut |_| {}).unwrap();
    test.batch(0, n).unwrap().0
}

fn zoo() -> std::path::PathBuf {
    libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut |_| {}).unwrap()
}

fn logits(det: &Detector, x: &Tensor) -> Tensor {
    det.model()
        .forward_mc(x, &libre::bayes::ForwardMode::Deterministic)
        .unwrap()
        .select(1, 0)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A MagNet detector fitted on 500 training digits (a short training: the numbers, not the
/// quality, are under test here).
fn small_magnet(det: &Detector, reformer: bool) -> Classic {
    let fit = libre::data::open("mnist:train[0:500]", None, &mut |_| {}).unwrap();
    let cfg = ClassicParams {
        transform: Some(TransformConfig::Magnet(MagnetConfig {
            detectors: vec![SubDetector::L2, SubDetector::L1, SubDetector::Jsd10],
            reformer,
            epochs: 2,
            batch_size: 64,
            ..MagnetConfig::default()
        })),
        ..ClassicParams::new(ClassicKind::Magnet)
    }
    .check()
    .unwrap();
    tch::manual_seed(0);
    let fit = FitSet {
        data: &fit,
        name: "mnist:train[0:500]",
    };
    Classic::fit_transform(det.model(), &cfg, Some(fit), 100, Device::Cpu).unwrap()
}

#[test]
fn squeeze_score_equals_a_direct_computation() {
    let x = digits(64);
    let mut det = Detector::load(&zoo(), Device::Cpu, None).unwrap();
    let cfg = ClassicParams {
        transform: Some(TransformConfig::Squeeze {
            squeezers: vec![
                Squeezer::BitDepth(1),
                Squeezer::Median(2),
                Squeezer::Median(3),
            ],
        }),
        ..ClassicParams::new(ClassicKind::Squeeze)
    }
    .check()
    .unwrap();
    det.set_classic(Classic::fit_transform(det.model(), &cfg, None, 100, Device::Cpu).unwrap());
    let (pred, s) = det.score(&x, &[Score::Squeeze]).unwrap();
    // Direct: max over squeezers of sum_k |softmax(l(x))_k - softmax(l(squeezed))_k|, in f64.
    let p = logits(&det, &x).softmax(-1, Kind::Double);
    let bits = x.round();
    let med2 = squeeze::median_filter(&x, 2);
    let med3 = squeeze::median_filter(&x, 3);
    let d = |q: &Tensor| {
        (&p - logits(&det, q).softmax(-1, Kind::Double))
            .abs()
            .sum_dim_intlist(-1, false, Kind::Double)
    };
    let want = d(&bits).maximum(&d(&med2)).maximum(&d(&med3));
    assert!(max_abs(&s[0], &want) < 1e-6, "{}", max_abs(&s[0], &want));
    // The prediction is the classifier's on the input itself.
    assert!(pred.class.equal(&p.argmax(-1, false)));
    // Adversarially: the BPDA score has the same value, and a gradient (the identity through the
    // squeezers) that is not zero.
    let c = det.classic().unwrap();
    let xg = x.copy().set_requires_grad(true);
    let st = c
        .score_tensor_for(Score::Squeeze, det.model(), &xg)
        .unwrap();
    assert!(max_abs(&st, &s[0]) < 1e-6);
    let g = Tensor::run_backward(&[st.sum(Kind::Float)], &[&xg], false, false).remove(0);
    assert!(g.abs().sum(Kind::Double).double_value(&[]) > 0.0);
}

#[test]
fn magnet_scores_equal_direct_computations() {
    let x = digits(48);
    for reformer in [false, true] {
        let mut det = Detector::load(&zoo(), Device::Cpu, None).unwrap();
        let c = small_magnet(&det, reformer);
        let fit = match c.meta.transform.clone().unwrap() {
            libre::detect::transform::TransformFit::Magnet(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!((fit.n_train, fit.n_held_out), (450, 50));
        // Rebuild the autoencoders from the fitted tensors to compute directly.
        let tensors: std::collections::HashMap<String, Tensor> = c
            .to_tensors()
            .into_iter()
            .map(|(n, t)| (n.strip_prefix("transform/").unwrap().to_string(), t))
            .collect();
        let sub = |p: &str| {
            tensors
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(p)
                        .map(|r| (r.to_string(), t.shallow_clone()))
                })
                .collect()
        };
        let ae1 = Autoencoder::from_tensors(Arch::I, 1, &sub("ae1/"), Device::Cpu).unwrap();
        let ae2 = Autoencoder::from_tensors(Arch::II, 1, &sub("ae2/"), Device::Cpu).unwrap();
        det.set_classic(c);
        let all = [
            Score::Magnet,
            Score::MagnetL1,
            Score::MagnetL2,
            Score::MagnetJsd10,
            Score::MagnetJsd40,
        ];
        let (pred, s) = det.score(&x, &all).unwrap();
        let r1 = ae1.forward(&x);
        let r2 = ae2.forward(&x);
        let l2 = (&x - &r1)
            .square()
            .mean_dim(&[1i64, 2, 3][..], false, Kind::Double);
        let l1 = (&x - &r2)
            .abs()
            .mean_dim(&[1i64, 2, 3][..], false, Kind::Double);
        // JSD by its definition, 0.5 KL(P || M) + 0.5 KL(Q || M), M = (P + Q) / 2.
        let jsd = |t: f64| {
            let p = (logits(&det, &x) / t).softmax(-1, Kind::Double);
            let q = (logits(&det, &r1) / t).softmax(-1, Kind::Double);
            let m = (&p + &q) * 0.5;
            let kl = |a: &Tensor| (a * (a / &m).log()).sum_dim_intlist(-1, false, Kind::Double);
            (kl(&p) + kl(&q)) * 0.5
        };
        let (j10, j40) = (jsd(10.0), jsd(40.0));
        assert!(max_abs(&s[1], &l1) < 1e-6, "l1 {}", max_abs(&s[1], &l1));
        assert!(max_abs(&s[2], &l2) < 1e-6, "l2 {}", max_abs(&s[2], &l2));
        assert!(
            max_abs(&s[3], &j10) < 1e-6,
            "jsd10 {}",
            max_abs(&s[3], &j10)
        );
        assert!(
            max_abs(&s[4], &j40) < 1e-6,
            "jsd40 {}",
            max_abs(&s[4], &j40)
        );
        // The union: max over l2, l1, jsd10 of score / held-out 99th percentile.
        let n = fit.normalisers; // l1, l2, jsd10, jsd40
        let want = (&l2 / n[1]).maximum(&(&l1 / n[0])).maximum(&(&j10 / n[2]));
        assert!(
            max_abs(&s[0], &want) < 1e-5,
            "union {}",
            max_abs(&s[0], &want)
        );
        // The prediction: the classifier's on the reconstruction with the reformer, else on x.
        let seen = if reformer { &r1 } else { &x };
        let p = logits(&det, seen).softmax(-1, Kind::Float);
        assert!(max_abs(&pred.probs, &p) < 1e-6, "reformer {reformer}");
        // Differentiated (adaptive attacks): the same values, through the autoencoders.
        let c = det.classic().unwrap();
        let xg = x.copy().set_requires_grad(true);
        let st = c.score_tensor_for(Score::Magnet, det.model(), &xg).unwrap();
        assert!(max_abs(&st, &s[0]) < 1e-5);
        assert!(st.requires_grad());
    }
}

#[test]
fn a_briefly_trained_autoencoder_reconstructs_digits_better_than_noise() {
    tch::manual_seed(0);
    let fit = libre::data::open("mnist:train[0:2000]", None, &mut |_| {}).unwrap();
    let (x, _) = fit.batch(0, 2000).unwrap();
    let clean = digits(200);
    let noise = Tensor::rand([200, 1, 28, 28], (Kind::Float, Device::Cpu));
    let err = |ae: &Autoencoder, t: &Tensor| -> f64 {
        tch::no_grad(|| {
            (ae.forward(t) - t)
                .square()
                .mean(Kind::Double)
                .double_value(&[])
        })
    };
    // 2000 digits in steps of 64: 32 steps an epoch, 10 epochs = 320 steps.
    let cfg = MagnetConfig {
        epochs: 10,
        batch_size: 64,
        ..MagnetConfig::default()
    };
    for arch in [Arch::I, Arch::II] {
        let mut ae = Autoencoder::new(arch, 1, Device::Cpu);
        let before = err(&ae, &clean);
        let loss = ae.train(&x, &cfg).unwrap();
        let (c, n) = (err(&ae, &clean), err(&ae, &noise));
        eprintln!("{arch:?}: clean MSE {before:.4} -> {c:.4} (train loss {loss:.4}), noise {n:.4}");
        assert!(c < 0.5 * before, "{arch:?}: {before} -> {c}");
        assert!(c < 0.25 * n, "{arch:?}: clean {c} vs noise {n}");
    }
}

#[test]
fn fit_save_reload_scores_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let x = digits(64);
    let zoo = zoo();
    for (name, kind) in [
        ("squeeze", ClassicKind::Squeeze),
        ("magnet", ClassicKind::Magnet),
    ] {
        let mut det = Detector::load(&zoo, Device::Cpu, None).unwrap();
        let c = match kind {
            ClassicKind::Magnet => small_magnet(&det, true),
            _ => Classic::fit_transform(
                det.model(),
                &ClassicConfig::new(kind).unwrap(),
                None,
                100,
                Device::Cpu,
            )
            .unwrap(),
        };
        det.set_classic(c);
        let scores = det.available_scores();
        let (pred, fresh) = det.score(&x, &scores).unwrap();
        let own = Score::of_classic(kind);
        let v = Vec::<f64>::try_from(fresh[0].to_kind(Kind::Double)).unwrap();
        let meta = DetectorMeta {
            format: DETECTOR_FORMAT,
            score: own,
            samples: 1,
            calibration: libre::detect::calibrate(&v, 0.05).unwrap(),
            data: "mnist:test[0:64]".into(),
            weights: "zoo:lenet5-mnist".into(),
            seed: 0,
            libre_version: libre::VERSION.into(),
            calibration_scores: v,
            mc_dropout: None,
            classic: det.classic().map(|c| c.meta.clone()),
            precision: Default::default(),
        };
        let path = tmp.path().join(format!("{name}.safetensors"));
        det.save(&path, &meta).unwrap();
        let back = Detector::load(&path, Device::Cpu, None).unwrap();
        assert_eq!(back.available_scores(), scores, "{name}");
        assert_eq!(back.default_score(), own);
        let (pred2, loaded) = back.score(&x, &scores).unwrap();
        assert!(pred.probs.equal(&pred2.probs), "{name}: prediction");
        for (s, (a, b)) in scores.iter().zip(fresh.iter().zip(&loaded)) {
            assert!(a.equal(b), "{name}: {s} differs after reload");
        }
    }
}

fn calibrate(dir: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    libre()
        .args([
            "--json",
            "calibrate",
            "--weights",
            "zoo:lenet5-mnist",
            "--data",
            CAL,
        ])
        .arg("--out")
        .arg(dir.join(format!("{name}.safetensors")))
        .args(extra)
        .output()
        .unwrap()
}

fn refused(out: std::process::Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected a refusal");
    let e = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(e.contains(n), "{needles:?} not in: {e}");
    }
}

/// The CLI: calibrate both, `libre detect` reads them (score columns named after the detector),
/// the adaptive attacker lowers the score it follows, and bad settings are refused by flag.
#[test]
fn cli_calibrates_detects_attacks_and_refuses_by_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let r = json_result(calibrate(
        d,
        "sq",
        &["--detector", "squeeze", "--squeezers", "bits-1,median-3x3"],
    ));
    assert_eq!(r["score"], "squeeze", "{r}");
    let r = json_result(calibrate(
        d,
        "mg",
        &[
            "--detector",
            "magnet",
            "--fit-data",
            "mnist:train[0:600]",
            "--ae-epochs",
            "2",
            "--ae-batch-size",
            "64",
            "--magnet-detectors",
            "l2,jsd10",
        ],
    ));
    assert_eq!(r["score"], "magnet", "{r}");
    let r = json_result(calibrate(
        d,
        "mg-l1",
        &[
            "--detector",
            "magnet",
            "--fit-data",
            "mnist:train[0:300]",
            "--ae-epochs",
            "1",
            "--score",
            "magnet-l1",
            "--reformer",
        ],
    ));
    assert_eq!(r["score"], "magnet-l1", "{r}");
    for (name, header) in [
        ("sq", vec!["squeeze"]),
        (
            "mg",
            vec![
                "magnet",
                "magnet-l1",
                "magnet-l2",
                "magnet-jsd10",
                "magnet-jsd40",
            ],
        ),
    ] {
        let o = ok(libre()
            .args([
                "-q",
                "detect",
                "mnist:test[0:10]",
                "--format",
                "csv",
                "--weights",
            ])
            .arg(d.join(format!("{name}.safetensors")))
            .output()
            .unwrap());
        let text = String::from_utf8_lossy(&o.stdout);
        let cols: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        assert_eq!(&cols[4..4 + header.len()], &header[..], "{name}: {cols:?}");
        assert_eq!(text.lines().count(), 11);
    }

    // The adaptive attacker follows the score's gradient (BPDA for squeezing, the autoencoders
    // for MagNet): with C = 10 its examples score lower than with C = 0.
    let mean_score = |det: &str, c: &str| -> f64 {
        let adv = d.join(format!("{det}-ad{c}.safetensors"));
        common::mean_adaptive_score(&d.join(format!("{det}.safetensors")), &adv, c)
    };
    for det in ["sq", "mg"] {
        let (plain, adaptive) = (mean_score(det, "0"), mean_score(det, "10"));
        assert!(
            adaptive < plain,
            "{det}: adaptive {adaptive} vs plain {plain}"
        );
    }

    // Refusals name the flag.
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--detector", "squeeze", "--fit-data", "mnist:train[0:100]"],
            vec!["--fit-data", "squeeze"],
        ),
        (
            vec!["--detector", "squeeze", "--reformer"],
            vec!["--reformer"],
        ),
        (
            vec!["--detector", "squeeze", "--squeezers", "bits-9"],
            vec!["--squeezers", "bits-9"],
        ),
        (
            vec![
                "--detector",
                "kd",
                "--fit-data",
                "mnist:train[0:100]",
                "--squeezers",
                "bits-1",
            ],
            vec!["--squeezers"],
        ),
        (vec!["--detector", "magnet"], vec!["--fit-data"]),
        (
            vec![
                "--detector",
                "magnet",
                "--fit-data",
                "mnist:train[0:300]",
                "--magnet-detectors",
                "l3",
            ],
            vec!["--magnet-detectors", "l3"],
        ),
        (
            vec![
                "--detector",
                "magnet",
                "--fit-data",
                "mnist:train[0:300]",
                "--ae-epochs",
                "0",
            ],
            vec!["--ae-epochs"],
        ),
        (
            vec![
                "--detector",
                "magnet",
                "--fit-data",
                "mnist:train[0:300]",
                "--ae-lr",
                "0",
            ],
            vec!["--ae-lr"],
        ),
        (
            vec!["--detector", "magnet", "--fit-data", "mnist:train[0:50]"],
            vec!["--fit-data", "100"],
        ),
        (
            vec![
                "--detector",
                "magnet",
                "--fit-data",
                "mnist:train[55000:55100]",
            ],
            vec!["--fit-data", "disjoint"],
        ),
        (
            vec!["--detector", "squeeze", "--score", "magnet"],
            vec!["magnet", "squeeze"],
        ),
        (
            vec!["--detector", "squeeze", "--precision", "bf16"],
            vec!["--precision"],
        ),
    ];
    for (args, needles) in cases {
        refused(calibrate(d, "bad", &args), &needles);
    }
    // `libre detect` refuses a score the file was not fitted for.
    refused(
        libre()
            .args([
                "detect",
                "mnist:test[0:2]",
                "--score",
                "squeeze",
                "--weights",
            ])
            .arg(d.join("mg.safetensors"))
            .output()
            .unwrap(),
        &["squeeze", "magnet"],
    );
    let _ = magnet::parse_detectors("l1").unwrap();
}
