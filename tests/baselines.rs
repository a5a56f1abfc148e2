//! The classic detectors and MC dropout as detector files (issue "Classic detector baselines"):
//! fitted by `libre calibrate --detector ...`, reloaded exactly, read by `libre detect` (the score
//! column named after the detector) and `libre evaluate`; bad settings refused by name. The
//! numerics are tested against direct computations in src/detect/classic/.

mod common;
use common::{json_result, libre, ok};
use libre::detect::classic::{ClassicKind, ClassicParams, FitData, FitSet, LogisticSets};
use libre::detect::{Detector, Score};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

const FIT: &str = "mnist:train[0:2000]";
const CAL: &str = "mnist:train[55000:55500]";

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
        .args(["--out"])
        .arg(dir.join(format!("{name}.safetensors")))
        .args(extra)
        .output()
        .unwrap()
}

/// FGSM examples of 300 training digits (disjoint from the fit and calibration images).
fn adversarial(dir: &Path) -> PathBuf {
    let p = dir.join("adv.safetensors");
    ok(libre()
        .args(["-q", "attack", "--weights", "zoo:lenet5-mnist"])
        .args([
            "--data",
            "mnist:train[50000:50300]",
            "--attack",
            "fgsm",
            "--eps",
            "0.3",
        ])
        .arg("--out")
        .arg(&p)
        .output()
        .unwrap());
    p
}

#[test]
fn every_detector_fits_reloads_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let adv = adversarial(d);
    let adv_s = adv.to_str().unwrap();
    let lr = [
        "--fit-adversarial",
        adv_s,
        "--fit-clean",
        "mnist:train[50000:50300]",
    ];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("kd", vec!["--detector", "kd", "--fit-data", FIT], "kd"),
        (
            "maha",
            vec![
                "--detector",
                "mahalanobis",
                "--fit-data",
                FIT,
                "--noise",
                "0.001",
            ],
            "mahalanobis",
        ),
        (
            "maha-lr",
            [&["--detector", "mahalanobis", "--fit-data", FIT][..], &lr].concat(),
            "mahalanobis",
        ),
        (
            "lid",
            [&["--detector", "lid", "--fit-data", FIT][..], &lr].concat(),
            "lid",
        ),
        (
            "kd-bu",
            [
                &[
                    "--detector",
                    "kd-bu",
                    "--fit-data",
                    FIT,
                    "--dropout",
                    "linear1",
                ][..],
                &lr,
            ]
            .concat(),
            "kd-bu",
        ),
        (
            "mcd",
            vec![
                "--detector",
                "mc-dropout",
                "--dropout",
                "conv2,linear1",
                "--mc-samples",
                "8",
            ],
            "feature-variance",
        ),
        (
            "bu",
            vec![
                "--detector",
                "bu",
                "--dropout",
                "conv2,linear1",
                "--mc-samples",
                "8",
            ],
            "softmax-variance",
        ),
    ];
    for (name, args, score) in &cases {
        let r = json_result(calibrate(d, name, args));
        assert_eq!(r["score"], *score, "{name}: {r}");
        // detect reads it: the flagging score is the detector's, its column named after it.
        let o = ok(libre()
            .args([
                "-q",
                "detect",
                "mnist:test[0:20]",
                "--format",
                "csv",
                "--weights",
            ])
            .arg(d.join(format!("{name}.safetensors")))
            .output()
            .unwrap());
        let text = String::from_utf8_lossy(&o.stdout);
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        assert_eq!(header[4], *score, "{name}: {header:?}");
        assert_eq!(text.lines().count(), 21);
    }

    // The adaptive attacker follows the classic score's gradient: with C = 10 its examples
    // score lower (look cleaner) to the detector than with C = 0.
    let mean_score = |c: &str| -> f64 {
        let adv = d.join(format!("ad{c}.safetensors"));
        common::mean_adaptive_score(&d.join("maha.safetensors"), &adv, c)
    };
    let (plain, adaptive) = (mean_score("0"), mean_score("10"));
    assert!(adaptive < plain, "adaptive {adaptive} vs plain {plain}");

    // Reloaded exactly: the file scores what the freshly fitted detector scores.
    let fit = libre::data::open(FIT, None, &mut |_| {}).unwrap();
    let test = libre::data::open("mnist:test[0:64]", None, &mut |_| {}).unwrap();
    let (x, _) = test.batch(0, 64).unwrap();
    let zoo = libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut |_| {}).unwrap();
    let mut det = Detector::load(&zoo, Device::Cpu, None).unwrap();
    let cfg = ClassicParams::new(ClassicKind::Kd);
    let clean = Some(FitSet {
        data: &fit,
        name: FIT,
    });
    let data = FitData {
        clean,
        logistic: None,
    };
    det.fit_classic(&cfg.clone().check().unwrap(), data, 500, Device::Cpu)
        .unwrap();
    let (_, fresh) = det.score(&x, &[Score::Kd]).unwrap();
    let file = Detector::load(&d.join("kd.safetensors"), Device::Cpu, None).unwrap();
    let (_, loaded) = file.score(&x, &[Score::Kd]).unwrap();
    assert!(fresh[0].equal(&loaded[0]));
    // The same for a logistic-regression form (its parameters travel as JSON metadata).
    let advds = libre::data::open(adv_s, None, &mut |_| {}).unwrap();
    let cleands = libre::data::open("mnist:train[50000:50300]", None, &mut |_| {}).unwrap();
    let mut det2 = Detector::load(&zoo, Device::Cpu, None).unwrap();
    let cfg2 = ClassicParams {
        kind: ClassicKind::Mahalanobis,
        ..cfg
    };
    let logistic = Some(LogisticSets {
        adversarial: FitSet {
            data: &advds,
            name: adv_s,
        },
        clean: FitSet {
            data: &cleands,
            name: "mnist:train[50000:50300]",
        },
    });
    let data2 = FitData { clean, logistic };
    det2.fit_classic(&cfg2.check().unwrap(), data2, 500, Device::Cpu)
        .unwrap();
    let (_, fresh2) = det2.score(&x, &[Score::Mahalanobis]).unwrap();
    let file2 = Detector::load(&d.join("maha-lr.safetensors"), Device::Cpu, None).unwrap();
    let (_, loaded2) = file2.score(&x, &[Score::Mahalanobis]).unwrap();
    assert!(fresh2[0].equal(&loaded2[0]));
    // Plain uncertainty scores still come from the same file, in the order asked.
    let (_, both) = file.score(&x, &[Score::Msp, Score::Kd]).unwrap();
    assert!(both[1].equal(&loaded[0]) && both[0].kind() == Kind::Float);
}

#[test]
fn bad_settings_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fails = |args: &[&str], want: &str| {
        let o = calibrate(d, "bad", args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!d.join("bad.safetensors").exists());
    };
    fails(&["--detector", "kd"], "--fit-data");
    fails(
        &["--detector", "lid", "--fit-data", FIT],
        "--fit-adversarial",
    );
    fails(&["--detector", "kd-bu", "--fit-data", FIT], "--dropout");
    fails(&["--detector", "mc-dropout"], "conv1, conv2, linear1");
    fails(&["--detector", "mc-dropout", "--dropout", "fc7"], "fc7");
    fails(
        &[
            "--detector",
            "mahalanobis",
            "--fit-data",
            FIT,
            "--layers",
            "conv9",
        ],
        "conv9",
    );
    fails(
        &["--detector", "kd", "--fit-data", FIT, "--bandwidth", "0"],
        "bandwidth",
    );
    fails(&["--detector", "knn"], "--detector knn: unknown detector");
    // A DNN cannot give a classic score without the fitted file.
    let o = libre()
        .args([
            "detect",
            "mnist:test[0:2]",
            "--weights",
            "zoo:lenet5-mnist",
            "--score",
            "lid",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("libre calibrate") && err.contains("detector lid"),
        "{err}"
    );
}

#[test]
fn evaluate_runs_a_classic_detector() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(calibrate(d, "kd", &["--detector", "kd", "--fit-data", FIT]));
    let exp = d.join("exp.toml");
    std::fs::write(
        &exp,
        format!(
            "title = \"kd\"\ndata = \"mnist:test[0:40]\"\nseed = 1\nbootstrap = 0\nbatch_size = 40\n\
             [[model]]\nname = \"kd\"\nweights = \"{}\"\nscores = [\"kd\", \"msp\"]\n\
             [[attack]]\nname = \"fgsm\"\neps = [0.3]\n",
            d.join("kd.safetensors").display()
        ),
    )
    .unwrap();
    let r = json_result(
        libre()
            .args(["--json", "evaluate"])
            .arg(&exp)
            .arg("--out")
            .arg(d.join("eval"))
            .output()
            .unwrap(),
    );
    assert!(r["out"].is_string(), "{r}");
    let summary = std::fs::read_to_string(d.join("eval/summary.json")).unwrap();
    assert!(summary.contains("kd/kd"), "{summary}");
    // A classic score on a model without the fitted detector is refused before any work.
    std::fs::write(
        &exp,
        "title = \"x\"\ndata = \"mnist:test[0:4]\"\n[[model]]\nname = \"dnn\"\n\
         weights = \"zoo:lenet5-mnist\"\nscores = [\"mahalanobis\"]\n[[attack]]\nname = \"fgsm\"\neps = [0.1]\n",
    )
    .unwrap();
    let o = libre()
        .arg("evaluate")
        .arg(&exp)
        .arg("--out")
        .arg(d.join("eval2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line"), "{err}");
    assert!(!d.join("eval2").exists());
}
