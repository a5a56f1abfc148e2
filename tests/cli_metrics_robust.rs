//! `libre metrics --robust`: the robust-detection table (evaded %, robust detection accuracy,
//! worst case per image) on hand-made scores CSVs, checked against direct counts.
mod common;
use common::{json_result, libre};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One hand-made row: (image, detector, attack, eps, score, correct).
type Row = (usize, &'static str, &'static str, &'static str, f64, bool);

fn write_csv(dir: &Path, name: &str, header: &str, rows: &[Row]) -> PathBuf {
    let mut s = format!("{header}\n");
    for &(img, det, attack, eps, score, correct) in rows {
        let label = (attack != "clean") as u8;
        writeln!(
            s,
            "{img},{det},{attack},{eps},{label},{score},{}",
            correct as u8
        )
        .unwrap();
    }
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

const HEADER: &str = "image,model,attack,eps,label,score,correct";

/// A small deterministic generator (xorshift64*), so the rows need no dependency.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Two detectors, 40 images, clean rows and three attacks at two eps.
fn random_rows() -> Vec<Row> {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut rows = Vec::new();
    for det in ["a/var", "b/kd"] {
        for img in 0..40 {
            rows.push((img, det, "clean", "", g.next(), g.next() < 0.9));
        }
        for eps in ["0.1", "0.3"] {
            for attack in ["pgd", "mimicry", "selective"] {
                for img in 0..40 {
                    rows.push((img, det, attack, eps, g.next() * 1.5, g.next() < 0.4));
                }
            }
        }
    }
    rows
}

fn pct(k: usize, n: usize) -> f64 {
    100.0 * k as f64 / n as f64
}

fn run_json(args: &[&str], csv: &Path) -> Value {
    json_result(
        libre()
            .args(["--json", "metrics", "--robust", "--scores"])
            .arg(csv)
            .args(args)
            .output()
            .unwrap(),
    )
}

fn find<'a>(data: &'a Value, det: &str, attack: &str, eps: &str) -> &'a Value {
    data["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["detector"] == det && r["attack"] == attack && r["eps"] == eps)
        .unwrap_or_else(|| panic!("no row {det} {attack} {eps}: {data}"))
}

/// Compares every attack row and every worst-case row with a direct count at `threshold(det)`.
fn check_against_direct_count(data: &Value, rows: &[Row], threshold: impl Fn(&str) -> f64) {
    let evaded = |r: &Row| !r.5 && r.4 < threshold(r.1);
    for det in ["a/var", "b/kd"] {
        for (attack, eps) in [
            ("clean", ""),
            ("pgd", "0.1"),
            ("mimicry", "0.1"),
            ("selective", "0.3"),
            ("pgd", "0.3"),
        ] {
            let g: Vec<&Row> = rows
                .iter()
                .filter(|r| r.1 == det && r.2 == attack && r.3 == eps)
                .collect();
            let n = g.len();
            let k_ev = g.iter().filter(|r| evaded(r)).count();
            let k_wrong = g.iter().filter(|r| !r.5).count();
            let k_flag = g.iter().filter(|r| r.4 >= threshold(det)).count();
            let got = find(data, det, attack, eps);
            assert_eq!(got["n"], n, "{got}");
            assert_eq!(got["evaded"].as_f64().unwrap(), pct(k_ev, n), "{got}");
            assert_eq!(
                got["robust_detection_accuracy"].as_f64().unwrap(),
                100.0 - pct(k_ev, n),
                "{got}"
            );
            assert_eq!(got["attack_success"].as_f64().unwrap(), pct(k_wrong, n));
            assert_eq!(got["flagged"].as_f64().unwrap(), pct(k_flag, n));
            assert_eq!(got["threshold"].as_f64().unwrap(), threshold(det));
        }
        // Worst case per eps = per image, any attack at that eps or the clean image evaded.
        for eps in ["0.1", "0.3"] {
            let k = (0..40)
                .filter(|&img| {
                    rows.iter().any(|r| {
                        r.0 == img && r.1 == det && (r.3 == eps || r.2 == "clean") && evaded(r)
                    })
                })
                .count();
            let w = find(data, det, "worst-case", eps);
            assert_eq!(w["evaded"].as_f64().unwrap(), pct(k, 40), "{w}");
            assert_eq!(
                w["robust_detection_accuracy"].as_f64().unwrap(),
                100.0 - pct(k, 40)
            );
            assert!(w["flagged"].is_null());
            // Never below any single attack at that eps.
            for attack in ["pgd", "mimicry", "selective"] {
                let a = find(data, det, attack, eps)["evaded"].as_f64().unwrap();
                assert!(a <= w["evaded"].as_f64().unwrap());
            }
        }
    }
}

#[test]
fn fixed_threshold_equals_a_direct_count() {
    let dir = tempfile::tempdir().unwrap();
    let rows = random_rows();
    let csv = write_csv(dir.path(), "s.csv", HEADER, &rows);
    let data = run_json(&["--threshold", "0.6"], &csv);
    // A negative threshold (max-logit-style scores) parses: everything is flagged.
    let neg = run_json(&["--threshold", "-2.5"], &csv);
    assert_eq!(
        find(&neg, "a/var", "pgd", "0.1")["flagged"].as_f64(),
        Some(100.0)
    );
    assert_eq!(data["threshold"].as_f64(), Some(0.6));
    assert!(data["fpr"].is_null());
    for t in data["thresholds"].as_array().unwrap() {
        assert_eq!(t["source"], "--threshold");
    }
    check_against_direct_count(&data, &rows, |_| 0.6);
    // 2 detectors x (clean + 3 attacks x 2 eps + 2 worst cases).
    assert_eq!(data["rows"].as_array().unwrap().len(), 2 * (1 + 6 + 2));
}

#[test]
fn fpr_threshold_is_fixed_once_per_detector_from_its_clean_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = random_rows();
    // Detector a's clean scores become 0, 1, ..., 39: at FPR 0.05 at most 2 of 40 reach the
    // threshold, so it is 38. Detector b keeps its random clean scores.
    for (i, r) in rows
        .iter_mut()
        .filter(|r| r.1 == "a/var" && r.2 == "clean")
        .enumerate()
    {
        r.4 = i as f64;
    }
    let csv = write_csv(dir.path(), "s.csv", HEADER, &rows);
    let data = run_json(&["--fpr", "0.05"], &csv);
    assert_eq!(data["fpr"].as_f64(), Some(0.05));
    let th: Vec<(String, f64, String)> = data["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["detector"].as_str().unwrap().to_string(),
                t["threshold"].as_f64().unwrap(),
                t["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(th[0], ("a/var".into(), 38.0, "clean-fpr-0.05".into()));
    // Detector b: the smallest value that at most floor(0.05 * 40) = 2 clean scores reach.
    let mut clean_b: Vec<f64> = rows
        .iter()
        .filter(|r| r.1 == "b/kd" && r.2 == "clean")
        .map(|r| r.4)
        .collect();
    clean_b.sort_by(f64::total_cmp);
    let tb = th[1].1;
    assert_eq!(th[1].0, "b/kd");
    assert_eq!(tb, clean_b[38], "the 39th of 40 distinct clean scores");
    check_against_direct_count(&data, &rows, |d| if d == "a/var" { 38.0 } else { tb });
    // --fpr defaults to 0.05 with --robust: the same table.
    let default = run_json(&[], &csv);
    assert_eq!(default["rows"], data["rows"]);
    // AUROC sits beside the attack rows (against the detector's clean rows), not the others.
    assert!(find(&data, "a/var", "pgd", "0.1")["auroc"].is_number());
    assert!(find(&data, "a/var", "clean", "")["auroc"].is_null());
    assert!(find(&data, "a/var", "worst-case", "0.1")["auroc"].is_null());
}

#[test]
fn hand_counted_rows_and_bootstrap() {
    // Threshold 1: flagged = score >= 1 (see reports/src/robust.rs for the same rows).
    let rows: Vec<Row> = vec![
        (0, "m/s", "clean", "", 0.2, true),
        (1, "m/s", "clean", "", 0.5, false), // clean-misclassified, not flagged: a failure
        (2, "m/s", "clean", "", 1.5, true),
        (3, "m/s", "clean", "", 0.1, true),
        (0, "m/s", "pgd", "0.3", 0.9, false), // evaded
        (1, "m/s", "pgd", "0.3", 1.2, false), // flagged
        (2, "m/s", "pgd", "0.3", 0.3, true),  // still correct
        (3, "m/s", "pgd", "0.3", 1.0, false), // score == threshold: flagged
        (0, "m/s", "sel", "0.3", 2.0, false),
        (1, "m/s", "sel", "0.3", 2.0, false),
        (2, "m/s", "sel", "0.3", 0.1, false), // evaded
        (3, "m/s", "sel", "0.3", 0.5, true),
    ];
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path(), "s.csv", HEADER, &rows);
    let data = run_json(
        &["--threshold", "1", "--bootstrap", "200", "--seed", "3"],
        &csv,
    );
    let pgd = find(&data, "m/s", "pgd", "0.3");
    assert_eq!(pgd["evaded"].as_f64(), Some(25.0));
    assert_eq!(pgd["robust_detection_accuracy"].as_f64(), Some(75.0));
    assert_eq!(pgd["flagged"].as_f64(), Some(50.0));
    let clean = find(&data, "m/s", "clean", "");
    assert_eq!(clean["evaded"].as_f64(), Some(25.0));
    // Images 0 (pgd), 1 (clean) and 2 (sel) evaded somewhere; image 3 never.
    let w = find(&data, "m/s", "worst-case", "0.3");
    assert_eq!(w["evaded"].as_f64(), Some(75.0));
    assert_eq!(w["robust_detection_accuracy"].as_f64(), Some(25.0));
    let (lo, hi) = (
        w["evaded_lo"].as_f64().unwrap(),
        w["evaded_hi"].as_f64().unwrap(),
    );
    assert!(lo <= 75.0 && 75.0 <= hi, "{w}");
    assert_eq!(data["bootstrap"], 200);
    // The human table names the worst case and the threshold's origin.
    let out = libre()
        .args(["metrics", "--robust", "--threshold", "1", "--scores"])
        .arg(&csv)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&common::ok(out).stdout).to_string();
    assert!(
        text.contains("worst-case") && text.contains("--threshold"),
        "{text}"
    );
    assert!(
        text.contains("evaded%") && text.contains("robust acc%"),
        "{text}"
    );
}

#[test]
fn detector_column_and_missing_eps() {
    // Another detector column, and no eps column: every attack shares one (empty) eps.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.csv");
    std::fs::write(
        &p,
        "image,det,attack,score,correct\n0,x,clean,0.1,1\n1,x,clean,0.2,1\n\
         0,x,pgd,0.1,0\n1,x,pgd,0.9,0\n0,x,cw,0.9,0\n1,x,cw,0.9,1\n",
    )
    .unwrap();
    let data = run_json(&["--detector-col", "det", "--threshold", "0.5"], &p);
    assert_eq!(find(&data, "x", "pgd", "")["evaded"].as_f64(), Some(50.0));
    assert_eq!(find(&data, "x", "cw", "")["evaded"].as_f64(), Some(0.0));
    assert_eq!(
        find(&data, "x", "worst-case", "")["evaded"].as_f64(),
        Some(50.0)
    );
    // Without --detector-col the default `model` is missing: the error names it and the flag.
    let out = libre()
        .args(["metrics", "--robust", "--threshold", "0.5", "--scores"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`model`") && err.contains("--detector-col"),
        "{err}"
    );
}

fn fails_with(args: &[&str], csv: &Path, needles: &[&str]) {
    let out = libre()
        .args(["metrics", "--scores"])
        .arg(csv)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(2), "{args:?}: usage errors exit 2");
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(out.stdout.is_empty(), "{args:?} printed a result");
}

#[test]
fn bad_values_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path(), "s.csv", HEADER, &random_rows());
    for f in ["0", "1", "1.5", "-0.1", "nan", "abc"] {
        fails_with(&["--robust", "--fpr", f], &csv, &["--fpr"]);
    }
    fails_with(&["--robust", "--threshold", "inf"], &csv, &["--threshold"]);
    fails_with(
        &["--robust", "--threshold", "1", "--fpr", "0.1"],
        &csv,
        &["--fpr", "--threshold"],
    );
    // The robust flags need --robust; --robust does not mix with the AUROC table's grouping.
    fails_with(&["--fpr", "0.1"], &csv, &["--robust"]);
    fails_with(&["--threshold", "0.1"], &csv, &["--robust"]);
    fails_with(&["--robust", "--group-by", "attack"], &csv, &["--group-by"]);
    fails_with(&["--robust", "--bootstrap", "1"], &csv, &["--bootstrap"]);

    // No `correct` column: the error names it.
    let no_correct = dir.path().join("nc.csv");
    std::fs::write(
        &no_correct,
        "image,model,attack,eps,label,score\n0,m,clean,,0,0.1\n0,m,pgd,0.3,1,0.4\n",
    )
    .unwrap();
    let out = libre()
        .args(["metrics", "--robust", "--scores"])
        .arg(&no_correct)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no column `correct`") && err.contains("--robust"),
        "{err}"
    );

    // A `correct` cell that is not 0/1: the line and the column.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("{HEADER}\n0,m,clean,,0,0.1,1\n0,m,pgd,0.3,1,0.4,2\n"),
    )
    .unwrap();
    let out = libre()
        .args(["metrics", "--robust", "--scores"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("`correct`"), "{err}");

    // --fpr without clean rows for a detector: says what is missing and what to do instead.
    let no_clean = dir.path().join("noclean.csv");
    std::fs::write(&no_clean, format!("{HEADER}\n0,m,pgd,0.3,1,0.4,0\n")).unwrap();
    let out = libre()
        .args(["metrics", "--robust", "--scores"])
        .arg(&no_clean)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clean") && err.contains("--threshold"),
        "{err}"
    );
}

#[test]
fn without_robust_the_auroc_table_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Row> = vec![
        (0, "m", "clean", "", 0.1, true),
        (1, "m", "clean", "", 0.4, true),
        (0, "m", "pgd", "0.3", 0.35, false),
        (1, "m", "pgd", "0.3", 0.8, false),
    ];
    let csv = write_csv(dir.path(), "s.csv", HEADER, &rows);
    let data = json_result(
        libre()
            .args(["--json", "metrics", "--scores"])
            .arg(&csv)
            .output()
            .unwrap(),
    );
    // The AUROC of detection unit tests' pairs: 3/4.
    assert!(
        (data["auroc"].as_f64().unwrap() - 0.75).abs() < 1e-12,
        "{data}"
    );
    assert!(
        data.get("rows").is_none() && data.get("robust").is_none(),
        "{data}"
    );
}

#[test]
fn help_documents_the_robust_flags() {
    let out = common::ok(libre().args(["metrics", "--help"]).output().unwrap());
    let s = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--robust",
        "--threshold",
        "--fpr",
        "--detector-col",
        "--bootstrap",
    ] {
        assert!(s.contains(flag), "metrics --help lacks {flag}: {s}");
    }
    assert!(s.contains("evaded") && s.contains("worst case"), "{s}");
}
