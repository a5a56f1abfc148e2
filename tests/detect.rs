//! The LiBRe detector end to end (issue "The LiBRe detector"): the training objective does its
//! job, calibration holds on fresh clean images, `libre detect` reads folders and batch files
//! alike and names bad files, the routed ensemble forward equals the per-member oracle in value
//! and gradient, and adaptive / EoT attacks are wired.

use libre::bayes::{
    Family, ForwardMode, LayerSelection, McSampling, PosteriorConfig, Routing, TrainSampling,
};
use libre::detect::{calibrate, Detector, Score};
use libre::models::{self, BayesModel, ModelConfig};
use libre_attacks::Victim;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

mod common;
use common::{diverse_ensemble, json_result, libre, ok};

/// Fine-tunes zoo:lenet5-mnist with the LiBRe recipe on a slice of MNIST; returns the checkpoint.
fn train_libre(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec![
        "-q",
        "finetune",
        "--recipe",
        "libre",
        "--weights",
        "zoo:lenet5-mnist",
        "--data",
        "mnist:train[0:50000]",
        "--limit",
        "8000",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--out",
    ];
    let o = out.to_str().unwrap().to_string();
    args.push(&o);
    args.extend_from_slice(extra);
    ok(libre().args(&args).output().unwrap());
    out.join("model.safetensors")
}

/// AUROC of positives vs negatives by direct pair counting (ties count one half).
fn auroc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut s = 0.0;
    for p in pos {
        for n in neg {
            s += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (pos.len() * neg.len()) as f64
}

fn scores_of(det: &Detector, x: &Tensor, score: Score) -> Vec<f64> {
    let (_, s) = det.score(x, &[score]).unwrap();
    Vec::<f64>::try_from(s[0].to_kind(Kind::Double)).unwrap()
}

/// The objective is implemented and does its job: after brief training, feature variance tells
/// uniform-noise images (e = 0.3) from clean ones far better than the alpha = 0 ablation does.
#[test]
fn libre_objective_makes_feature_variance_separate_noise_from_clean() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let best = train_libre(
        dir.path(),
        "best",
        &["--objective", "anchored", "--lr", "0.05"],
    );
    let ablation = train_libre(
        dir.path(),
        "alpha0",
        &["--objective", "anchored", "--lr", "0.05", "--alpha", "0"],
    );
    let ds = libre::data::open("mnist:train[50000:50400]", None, &mut |_| {}).unwrap();
    let (x, _) = ds.batch(0, ds.len()).unwrap();
    tch::manual_seed(7);
    let noisy = (&x + (Tensor::rand_like(&x) * 2.0 - 1.0) * 0.3).clamp(0.0, 1.0);
    let mut aurocs = vec![];
    for ck in [&best, &ablation] {
        let det = Detector::load(ck, Device::Cpu, None).unwrap();
        assert_eq!(det.samples(), 20);
        let clean = scores_of(&det, &x, Score::FeatureVariance);
        let pert = scores_of(&det, &noisy, Score::FeatureVariance);
        aurocs.push(auroc(&pert, &clean));
    }
    let (b, a0) = (aurocs[0], aurocs[1]);
    eprintln!("noise-vs-clean feature-variance AUROC: LiBRe {b:.3}, alpha = 0 {a0:.3}");
    assert!(b >= 0.9, "trained LiBRe: noise-vs-clean AUROC {b:.3}");
    assert!(b >= a0 + 0.2, "LiBRe {b:.3} vs alpha = 0 {a0:.3}");
    // The run recorded its settings.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(best.parent().unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    let l = &cfg["train"]["libre"];
    assert_eq!(l["objective"], "anchored");
    assert_eq!(l["noise_eps"], serde_json::json!([0.15, 0.6]));
    assert_eq!(cfg["posterior"]["layers"], serde_json::json!(["linear1"]));
}

/// A threshold calibrated at 5% FPR on 2,000 clean test images flags a share of 2,000 other clean
/// test images inside the binomial 95% range of the target.
#[test]
fn calibrated_threshold_holds_on_fresh_clean_images() {
    let dir = tempfile::tempdir().unwrap();
    let det = dir.path().join("det.safetensors");
    let r = json_result(
        libre()
            .args([
                "--json",
                "calibrate",
                "--weights",
                "zoo:lenet5-mnist",
                "--score",
                "entropy",
            ])
            .args([
                "--data",
                "mnist:test[0:2000]",
                "--fpr",
                "0.05",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(&det)
            .output()
            .unwrap(),
    );
    assert_eq!(r["n"], 2000);
    assert!(r["achieved_fpr"].as_f64().unwrap() <= 0.05);
    let r = json_result(
        libre()
            .args(["--json", "detect", "--weights"])
            .arg(&det)
            .args([
                "mnist:test[2000:4000]",
                "--device",
                "cpu",
                "--format",
                "csv",
                "--out",
            ])
            .arg(dir.path().join("rows.csv"))
            .output()
            .unwrap(),
    );
    let flagged = r["flagged"].as_u64().unwrap() as usize;
    let (lo, hi) = calibrate::binomial_interval(2000, 0.05);
    assert!(
        (lo..=hi).contains(&flagged),
        "{flagged} flagged of 2000, expected {lo}..={hi}"
    );
    assert_eq!(r["score"], "entropy");
    // --fpr re-thresholds from the stored calibration scores.
    let r = json_result(
        libre()
            .args(["--json", "detect", "--weights"])
            .arg(&det)
            .args([
                "mnist:test[0:2000]",
                "--fpr",
                "0.2",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(dir.path().join("rows2.csv"))
            .output()
            .unwrap(),
    );
    let f = r["flagged"].as_u64().unwrap();
    assert!(
        (380..=400).contains(&f),
        "re-thresholded at 20% on the calibration set itself: {f}"
    );
    // A detector file is a checkpoint too.
    let r = json_result(
        libre()
            .args([
                "--json",
                "eval",
                "--data",
                "mnist:test[0:100]",
                "--device",
                "cpu",
                "--weights",
            ])
            .arg(&det)
            .output()
            .unwrap(),
    );
    assert_eq!(r["n"], 100);
}

/// `libre detect` gives the same rows for PNG files in a (nested) folder as for the same images
/// in a batch file; a corrupt PNG is named, and --skip-bad keeps its place as a skipped row.
#[test]
fn detect_reads_folders_like_batch_files_and_names_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let ds = libre::data::open("mnist:test[0:40]", None, &mut |_| {}).unwrap();
    let (x, y) = ds.batch(0, 40).unwrap();
    let batch = dir.path().join("batch.safetensors");
    libre::data::write_batch_file(&batch, &x, Some(&y), Default::default()).unwrap();
    let imgs = dir.path().join("imgs");
    let bytes = Vec::<u8>::try_from((&x * 255.0).round().to_kind(Kind::Uint8).view([-1])).unwrap();
    for i in 0..40usize {
        let sub = imgs.join(if i < 20 { "a" } else { "b" });
        std::fs::create_dir_all(&sub).unwrap();
        let px = bytes[i * 784..(i + 1) * 784].to_vec();
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(sub.join(format!("{i:03}.png")))
            .unwrap();
    }
    // A converted ensemble whose members differ, so feature variance is not trivially zero.
    let model = diverse_ensemble(dir.path());
    let detect_csv = || {
        let mut c = libre();
        c.args([
            "detect",
            "--format",
            "csv",
            "--device",
            "cpu",
            "--batch-size",
            "16",
        ])
        .arg("--weights")
        .arg(&model);
        c
    };
    let parse = |stdout: &[u8]| -> Vec<Vec<String>> {
        csv::Reader::from_reader(stdout)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    };
    let rows = |input: &Path, extra: &[&str]| -> Vec<Vec<String>> {
        parse(&ok(detect_csv().arg(input).args(extra).output().unwrap()).stdout)
    };
    let a = rows(&imgs, &[]);
    let b = rows(&batch, &[]);
    assert_eq!(a.len(), 40);
    assert_eq!(b.len(), 40);
    for (ra, rb) in a.iter().zip(&b) {
        assert!(ra[0].ends_with(".png"), "{}", ra[0]);
        // pred, confidence and every score agree (columns 2..); class is unknown for files.
        assert_eq!(
            ra[2..ra.len() - 2],
            rb[2..rb.len() - 2],
            "{} vs {}",
            ra[0],
            rb[0]
        );
    }
    let fv: f64 = a[0][4].parse().unwrap();
    assert!(fv > 0.0, "feature variance of a diverse ensemble");
    // `-` reads one image from standard input: the file's row, named `-`; an undecodable stream
    // is named as standard input.
    let piped = |bytes: &[u8]| {
        libre()
            .args(["detect", "--format", "csv", "--device", "cpu", "--weights"])
            .arg(&model)
            .arg("-")
            .write_stdin(bytes.to_vec())
            .output()
            .unwrap()
    };
    let one = imgs.join("a").join("003.png");
    let out = ok(piped(&std::fs::read(&one).unwrap()));
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = text.lines().nth(1).unwrap().split(',').collect();
    // The same batch of one image (scores of other batch sizes differ by round-off).
    let file_row = &rows(&one, &[])[0];
    assert_eq!(row[0], "-");
    assert_eq!(row[1..], file_row[1..], "stdin vs the file");
    let out = piped(b"not an image");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input: cannot decode"), "{err}");
    // --files-from: the same images listed (NUL-separated, as `find -print0` writes them, in the
    // folder's order) give the folder's rows; a listed path that does not exist is named with
    // its line.
    let mut list = Vec::new();
    for r in &a {
        list.extend_from_slice(r[0].as_bytes());
        list.push(0);
    }
    let out = detect_csv()
        .args(["--files-from", "-", "--null"])
        .write_stdin(list)
        .output()
        .unwrap();
    let listed = parse(&ok(out).stdout);
    assert_eq!(listed, a, "--files-from vs the folder");
    let list_file = dir.path().join("list.txt");
    std::fs::write(
        &list_file,
        format!("{}\n\n{}/gone.png\n", a[0][0], imgs.display()),
    )
    .unwrap();
    let out = libre()
        .args(["detect", "--device", "cpu", "--weights"])
        .arg(&model)
        .arg("--files-from")
        .arg(&list_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("list.txt: line 3:") && err.contains("gone.png: no such file"),
        "{err}"
    );
    // A corrupt PNG is named; --skip-bad keeps going with a skipped row.
    std::fs::write(imgs.join("a").join("005x.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let out = libre()
        .args(["detect", "--device", "cpu", "--format", "csv", "--weights"])
        .arg(&model)
        .arg(&imgs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("005x.png") && err.contains("decode"), "{err}");
    let out = ok(libre()
        .args([
            "detect",
            "--device",
            "cpu",
            "--format",
            "csv",
            "--skip-bad",
            "--weights",
        ])
        .arg(&model)
        .arg(&imgs)
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 42);
    assert!(text
        .lines()
        .any(|l| l.contains("005x.png") && l.contains("skipped")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 skipped"));
    // A wrongly sized image is named with the fix.
    image::GrayImage::new(30, 30)
        .save(imgs.join("a").join("005x.png"))
        .unwrap();
    let out = libre()
        .args(["detect", "--device", "cpu", "--weights"])
        .arg(&model)
        .arg(&imgs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("005x.png") && err.contains("--resize"),
        "{err}"
    );
    assert!(ok(libre()
        .args(["detect", "--device", "cpu", "--resize", "--weights"])
        .arg(&model)
        .arg(&imgs)
        .output()
        .unwrap())
    .status
    .success());
    // Scores a DNN cannot give are refused before any work.
    let out = libre()
        .args([
            "detect",
            "--weights",
            "zoo:lenet5-mnist",
            "--score",
            "feature-variance",
        ])
        .arg(&batch)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("feature-variance"));
    // --fail-on-detect: exit 1 when anything is flagged.
    let out = libre()
        .args([
            "detect",
            "--device",
            "cpu",
            "--threshold",
            "0",
            "--fail-on-detect",
            "--weights",
        ])
        .arg(&model)
        .arg(&batch)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The routed ensemble forward (one batched op over members) equals running each example through
/// its member alone, in outputs and in the gradients of every member, also when a member gets no
/// example.
#[test]
fn routed_ensemble_forward_matches_the_per_member_oracle() {
    tch::set_num_threads(1);
    tch::manual_seed(11);
    let cfg = ModelConfig::lenet5();
    let mut m = models::build(&cfg, Device::Cpu).unwrap();
    m.convert(
        &"conv2,linear1".parse::<LayerSelection>().unwrap(),
        &PosteriorConfig::new(Family::Ensemble, 5),
    )
    .unwrap();
    tch::no_grad(|| {
        for (n, mut t) in m.var_store().variables() {
            if n.ends_with("_members") {
                let _ = t.g_add_(&(t.randn_like() * 0.05));
            }
        }
    });
    let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu));
    let ids = vec![3i64, 0, 3, 1, 0, 3]; // member 2 and 4 get nothing
    let routed = ForwardMode::Train(TrainSampling {
        sampling: McSampling::PerExample,
        routing: Routing::Given(ids.clone()),
        rows: None,
    });
    let grads = |m: &dyn BayesModel| -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = m
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    m.var_store().variables().values().for_each(|t| {
        if t.grad().defined() {
            let _ = t.grad().zero_();
        }
    });
    let (y, f) = m.forward_mc_with_features(&x, &routed).unwrap();
    (y.square().sum(Kind::Float) + f.sum(Kind::Float)).backward();
    let g_routed = grads(m.as_ref());
    m.var_store().variables().values().for_each(|t| {
        if t.grad().defined() {
            let _ = t.grad().zero_();
        }
    });
    let mut ys = vec![];
    for (i, &k) in ids.iter().enumerate() {
        let mode = ForwardMode::Train(TrainSampling {
            sampling: McSampling::PerExample,
            routing: Routing::Fixed(k as usize),
            rows: None,
        });
        let (yi, fi) = m
            .forward_mc_with_features(&x.narrow(0, i as i64, 1), &mode)
            .unwrap();
        (yi.square().sum(Kind::Float) + fi.sum(Kind::Float)).backward();
        ys.push(yi);
    }
    let y_oracle = Tensor::cat(&ys, 0);
    let d = (&y - &y_oracle).abs().max().double_value(&[]);
    assert!(d < 1e-4, "outputs differ by {d}");
    for ((n, a), (_, b)) in g_routed.iter().zip(grads(m.as_ref()).iter()) {
        if a.numel() == 0 {
            continue;
        }
        let d = (a - b).abs().max().double_value(&[]);
        let scale = b.abs().max().double_value(&[]).max(1.0);
        assert!(d / scale < 1e-4, "{n}: gradients differ by {d}");
    }
}

/// EoT averages over weight draws for a sampling (mean-field) victim and not for an ensemble, and
/// the adaptive objective reads the detector score from the same forward.
#[test]
fn victims_report_sampling_and_give_scores() {
    tch::set_num_threads(1);
    let cfg = ModelConfig::lenet5();
    let mut mf = models::build(&cfg, Device::Cpu).unwrap();
    mf.convert(
        &"linear1".parse().unwrap(),
        &PosteriorConfig::new(Family::MeanField, 4),
    )
    .unwrap();
    let v = libre::detect::victim::ModelVictim::new(
        mf.as_ref(),
        ForwardMode::ParallelMc { samples: 4 },
    );
    assert!(
        v.is_stochastic(),
        "mean-field MC draws new weights per forward"
    );
    let mut en = models::build(&cfg, Device::Cpu).unwrap();
    en.convert(
        &"linear1".parse().unwrap(),
        &PosteriorConfig::new(Family::Ensemble, 4),
    )
    .unwrap();
    let mut v = libre::detect::victim::ModelVictim::new(
        en.as_ref(),
        ForwardMode::ParallelMc { samples: 4 },
    );
    assert!(!v.is_stochastic(), "an ensemble is enumerated, not sampled");
    assert!(v
        .score(&Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)))
        .is_none());
    v.score = Some(Score::FeatureVariance);
    let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    let (l, s) = v.logits_and_score(&x);
    assert_eq!(l.size(), [3, 4, 10]);
    assert_eq!(s.unwrap().size(), [3]);
}

/// Attack options that used to panic or do nothing now fail cleanly or take effect.
#[test]
fn attack_validates_samples_and_runs_adaptive() {
    let dir = tempfile::tempdir().unwrap();
    let out = libre()
        .args([
            "attack",
            "--weights",
            "zoo:lenet5-mnist",
            "--data",
            "mnist:test[0:4]",
        ])
        .args([
            "--attack",
            "fgsm",
            "--mc-samples",
            "0",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(dir.path().join("a.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mc-samples"));
    let r = json_result(
        libre()
            .args([
                "--json",
                "attack",
                "--weights",
                "zoo:lenet5-mnist",
                "--data",
            ])
            .args([
                "mnist:test[0:8]",
                "--attack",
                "pgd",
                "--eps",
                "0.3",
                "--steps",
                "5",
            ])
            .args([
                "--step-size",
                "0.05",
                "--adaptive",
                "1",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(dir.path().join("b.safetensors"))
            .output()
            .unwrap(),
    );
    assert_eq!(r["config"]["adaptive_c"], 1.0, "{r}");
    assert_eq!(r["n"], 8);
}
