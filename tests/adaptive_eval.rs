//! `libre evaluate` scores detectors as the field does (issue "Adaptive attacks as the field
//! scores detectors"): evaded % and robust detection accuracy at the threshold fixed once on
//! clean data equal a direct count on the run's own rows, the worst case is the per-image "any"
//! over the attacks and the clean image, and every attack row carries the one calibrated
//! threshold. The adaptive attacks on a real network: at eps 1 the suite fools everything it is
//! allowed to, and `pgd-restarts` fools every image PGD fools.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

mod common;
use common::{evaluate_experiment, libre, ok, run_summary};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (image, detector, attack, eps, score, correct) of scores.csv.
fn rows(csv_path: &Path) -> Vec<(String, String, String, String, f64, bool)> {
    let mut r = csv::Reader::from_path(csv_path).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (ci, cm, ca, ce, cs, cc) = (
        col("image"),
        col("model"),
        col("attack"),
        col("eps"),
        col("score"),
        col("correct"),
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[ci].to_string(),
                rec[cm].to_string(),
                rec[ca].to_string(),
                rec[ce].to_string(),
                rec[cs].parse().unwrap(),
                &rec[cc] == "1",
            )
        })
        .collect()
}

#[test]
fn robust_table_equals_a_direct_count_at_the_calibrated_threshold() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    // A DNN detector calibrated on clean held-out digits: its msp threshold is fixed here, once.
    let det = dir.path().join("dnn.safetensors");
    let out = ok(libre()
        .args([
            "--json",
            "calibrate",
            "--device",
            "cpu",
            "--weights",
            "zoo:lenet5-mnist",
            "--data",
            "mnist:train[55000:55400]",
            "--fpr",
            "0.05",
            "--score",
            "msp",
            "--out",
        ])
        .arg(&det)
        .output()
        .unwrap());
    let text = String::from_utf8(out.stdout).unwrap();
    let cal: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let threshold = cal["data"]["threshold"].as_f64().unwrap();
    let run = evaluate_experiment(
        dir.path(),
        &format!(
            r#"data = "mnist:test[0:48]"
seed = 1
bootstrap = 50
batch_size = 24
[[model]]
name = "dnn"
weights = "{}"
scores = ["msp", "entropy"]
[[model]]
name = "dnn16"
weights = "{}"
scores = ["msp"]
precision = "bf16"
[[attack]]
name = "fgsm"
eps = [0.1, 0.3]
[[attack]]
name = "selective"
eps = [0.1, 0.3]
steps = 10
step_size = 0.05
params = {{ restarts = 1 }}
"#,
            det.display(),
            det.display()
        ),
    );
    let summary = run_summary(&run);
    let th: HashMap<String, (f64, String)> = summary["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["detector"].as_str().unwrap().to_string(),
                (
                    t["threshold"].as_f64().unwrap(),
                    t["source"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    // msp was calibrated in the file; entropy gets 5% FPR of its clean rows.
    assert_eq!(th["dnn/msp"], (threshold, "calibrated".to_string()));
    assert_eq!(th["dnn/entropy"].1, "clean-fpr-0.05");
    // The file was calibrated at f32: run at bf16 its threshold no longer holds, so the bf16
    // model's comes from its own clean rows.
    assert_eq!(th["dnn16/msp"].1, "clean-fpr-0.05");
    let all = rows(&run.join("scores.csv"));
    let clean_ent: Vec<f64> = all
        .iter()
        .filter(|r| r.1 == "dnn/entropy" && r.2 == "clean")
        .map(|r| r.4)
        .collect();
    let t_ent = th["dnn/entropy"].0;
    let flagged = clean_ent.iter().filter(|&&s| s >= t_ent).count();
    assert!(flagged <= (0.05 * clean_ent.len() as f64) as usize);
    assert!(
        clean_ent.contains(&t_ent) || flagged == 0,
        "a clean score, or above them all"
    );
    // Every row: a direct count at that detector's one threshold.
    let robust = summary["robust_detection"].as_array().unwrap();
    assert!(!robust.is_empty());
    let mut seen_worst = 0;
    for r in robust {
        let d = r["detector"].as_str().unwrap();
        let a = r["attack"].as_str().unwrap();
        let e = r["eps"].as_str().unwrap();
        let t = th[d].0;
        assert_eq!(r["threshold"].as_f64().unwrap(), t, "{d} {a} {e}");
        // image -> evaded by that input
        let mut per_image: BTreeMap<&str, bool> = BTreeMap::new();
        for x in all.iter().filter(|x| x.1 == d) {
            let member = if a == "worst-case" {
                x.2 == "clean" || x.3 == e
            } else {
                x.2 == a && (a == "clean" || x.3 == e)
            };
            if member {
                *per_image.entry(&x.0).or_insert(false) |= !x.5 && x.4 < t;
            }
        }
        let n = per_image.len();
        let evaded = 100.0 * per_image.values().filter(|&&v| v).count() as f64 / n as f64;
        assert_eq!(r["n"].as_u64().unwrap() as usize, n, "{d} {a} {e}");
        assert!(
            (r["evaded"].as_f64().unwrap() - evaded).abs() < 1e-9,
            "{d} {a} {e}"
        );
        assert!((r["robust_detection_accuracy"].as_f64().unwrap() - (100.0 - evaded)).abs() < 1e-9);
        if a == "worst-case" {
            seen_worst += 1;
        } else {
            let (lo, hi) = (
                r["evaded_lo"].as_f64().unwrap(),
                r["evaded_hi"].as_f64().unwrap(),
            );
            assert!(
                lo <= evaded && evaded <= hi,
                "{d} {a} {e}: {lo} {evaded} {hi}"
            );
        }
    }
    assert_eq!(seen_worst, 6, "three detectors x two eps");
    // The report leads with the table; the CLI's text has the worst case too.
    let html = read(&run.join("index.html"));
    let lead = html.find("Robust detection").unwrap();
    assert!(lead < html.find("<h2>Adversarial detection").unwrap());
    // The selective attack knows msp's threshold: against the detector it was aimed at it
    // evades at least as often as FGSM at the same eps.
    let ev = |a: &str, e: &str| {
        robust
            .iter()
            .find(|r| r["detector"] == "dnn/msp" && r["attack"] == a && r["eps"] == e)
            .unwrap()["evaded"]
            .as_f64()
            .unwrap()
    };
    assert!(ev("selective", "0.3") >= ev("fgsm", "0.3"));
}

#[test]
fn at_eps_one_the_suite_fools_every_digit_and_restarts_fool_what_pgd_fools() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    // A gradient-masking check: with the whole pixel box allowed, an honest attack on an
    // undefended classifier misclassifies every digit. Both attacks start at the clean image, so
    // their trajectories agree and the engine's best-iterate bookkeeping can only add successes.
    let run = evaluate_experiment(
        dir.path(),
        r#"data = "mnist:test[0:24]"
batch_size = 24
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp"]
[[attack]]
name = "pgd"
eps = [0.1, 1.0]
steps = 10
step_size = 0.02
params = { random_start = false }
[[attack]]
name = "pgd-restarts"
eps = [0.1, 1.0]
steps = 10
step_size = 0.02
params = { restarts = 1, schedule = "constant", early_stop = false, random_start = false }
"#,
    );
    let all = rows(&run.join("scores.csv"));
    let fooled = |a: &str, e: &str| -> Vec<bool> {
        all.iter()
            .filter(|r| r.2 == a && r.3 == e)
            .map(|r| !r.5)
            .collect()
    };
    assert!(
        fooled("pgd-restarts", "1").iter().all(|&f| f),
        "eps 1 must fool every digit"
    );
    let (p, r) = (fooled("pgd", "0.1"), fooled("pgd-restarts", "0.1"));
    assert_eq!(p.len(), 24);
    for i in 0..p.len() {
        assert!(
            !p[i] || r[i],
            "image {i}: PGD fooled it, pgd-restarts did not"
        );
    }
}
