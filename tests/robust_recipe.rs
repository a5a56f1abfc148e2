//! `libre finetune --recipe libre-robust` (issue "A detector that holds against the adaptive
//! attacker"), at small scale (2,000 training digits, seed 0, every number from training images
//! only: fit, calibration and attack slices disjoint):
//! - started from the adversarially trained LeNet5, the recipe records its adversarial settings,
//!   and the detector it gives holds a fixed mimicry attack (C = 100) to a small evaded share of
//!   validation digits at its calibrated threshold;
//! - started from the plain LeNet5, adversarial LiBRe training lowers the evaded share of the same
//!   fixed mimicry attack well below what the noise-only objective (`--recipe libre`) leaves, by a
//!   margin the noise-only objective fails (measured when the test was written: 33.6% against
//!   52.0% of 256 validation digits at eps 0.3).
//!
//! Why the comparison starts from the plain LeNet5: from the adversarially trained one, 2,000 to
//! 6,000 digits of noise-only fine-tuning (even at a members' learning rate of 0.5) leave the
//! trunk's robustness in place (1.6% evaded on the same slice); the collapse docs/results.md
//! reports needs the README's 2 epochs on 50,000 digits. From the plain LeNet5 the difference
//! the adversarial copies make shows at this scale.

mod common;
use common::{evaluate_experiment, libre, ok, run_summary};
use std::path::Path;

/// Fine-tunes `base` with `recipe` on 2,000 training digits and calibrates it at 5% FPR on 400
/// others; the detector file's path.
fn finetune(dir: &Path, recipe: &str, base: &str) -> std::path::PathBuf {
    let out = dir.join(recipe);
    ok(libre()
        .args(["-q", "finetune", "--device", "cpu", "--recipe", recipe])
        .args(["--weights", base, "--data", "mnist:train[0:2000]"])
        .args(["--epochs", "1", "--mc-samples", "8", "--seed", "0", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    let det = dir.join(format!("{recipe}.det.safetensors"));
    ok(libre()
        .args(["-q", "calibrate", "--device", "cpu", "--weights"])
        .arg(out.join("model.safetensors"))
        .args([
            "--data",
            "mnist:train[55000:55400]",
            "--fpr",
            "0.05",
            "--out",
        ])
        .arg(&det)
        .output()
        .unwrap());
    det
}

#[test]
fn adversarial_libre_training_keeps_mimicry_evasion_small() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let robust = finetune(dir.path(), "libre-robust", "zoo:lenet5-mnist-adv");
    let config = std::fs::read_to_string(dir.path().join("libre-robust/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let adv = &config["train"]["libre"]["adversarial"];
    assert_eq!(adv["attack"], "selective", "{config}");
    assert_eq!(adv["steps"], 10);
    let ev = mimicry_evaded(dir.path(), 64, &[("robust", &robust)]);
    let evaded = ev[&("robust".to_string(), "mimicry".to_string())];
    assert!(
        evaded <= 10.0,
        "libre-robust let {evaded}% through the fixed mimicry attack"
    );
}

/// Runs one fixed mimicry attack (C = 100, 20 steps of 0.03, one random start, eps 0.3) on the
/// validation digits `mnist:train[50000:50000+n]` against each `(name, detector file)`, each at
/// its own calibrated threshold; evaded % by (model name, attack row: `mimicry` or `worst-case`).
fn mimicry_evaded(
    dir: &Path,
    n: usize,
    models: &[(&str, &Path)],
) -> std::collections::HashMap<(String, String), f64> {
    let mut toml = format!(
        "data = \"mnist:train[50000:{}]\"\nbatch_size = 128\n",
        50000 + n
    );
    for (name, det) in models {
        toml += &format!(
            "[[model]]\nname = \"{name}\"\nweights = \"{}\"\nscores = [\"feature-variance\"]\n",
            det.display()
        );
    }
    toml += r#"[[attack]]
name = "mimicry"
eps = [0.3]
steps = 20
step_size = 0.03
params = { adaptive_c = 100.0, restarts = 1 }
"#;
    let run = evaluate_experiment(dir, &toml);
    run_summary(&run)["robust_detection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let d = r["detector"].as_str().unwrap();
            let model = d.split('/').next().unwrap().to_string();
            let attack = r["attack"].as_str().unwrap().to_string();
            ((model, attack), r["evaded"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn adversarial_libre_training_beats_the_noise_objective_under_mimicry() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let noise = finetune(dir.path(), "libre", "zoo:lenet5-mnist");
    let robust = finetune(dir.path(), "libre-robust", "zoo:lenet5-mnist");
    // The same fixed attack on both, each at its own calibrated threshold; the worst case also
    // counts a clean digit misclassified and unflagged.
    let ev = mimicry_evaded(dir.path(), 256, &[("noise", &noise), ("robust", &robust)]);
    let worst = |m: &str| ev[&(m.to_string(), "worst-case".to_string())];
    let (n, r) = (worst("noise"), worst("robust"));
    // The margin: at least 10 points (of 256 digits: 26 images), which the noise-only detector
    // fails by construction of the comparison.
    assert!(
        r + 10.0 <= n,
        "libre-robust let {r}% through, the noise-only recipe {n}%: no 10-point margin"
    );
}

#[test]
fn adversarial_flags_belong_to_the_robust_recipe() {
    let o = libre()
        .args([
            "-q",
            "finetune",
            "--recipe",
            "libre",
            "--weights",
            "zoo:lenet5-mnist",
        ])
        .args([
            "--data",
            "mnist:train[0:10]",
            "--adv-steps",
            "3",
            "--out",
            "/nonexistent/x",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--adv-steps") && err.contains("libre-robust"),
        "{err}"
    );
    let o = libre()
        .args([
            "-q",
            "finetune",
            "--recipe",
            "libre-robust",
            "--weights",
            "zoo:lenet5-mnist",
        ])
        .args([
            "--data",
            "mnist:train[0:10]",
            "--adv-attack",
            "fgsm",
            "--out",
            "/nonexistent/x",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("selective, mimicry or pgd-restarts"));
}
