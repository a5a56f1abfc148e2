//! `libre metrics` and `libre report`: run the real binary on CSVs written in a temp dir.
mod common;
use common::libre;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

fn result_line(stdout: &[u8]) -> Value {
    let s = String::from_utf8_lossy(stdout);
    let last: Value = serde_json::from_str(s.lines().last().expect("no output")).unwrap();
    assert_eq!(last["type"], "result");
    last["data"].clone()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn metrics_json_hand_computed() {
    let dir = tempfile::tempdir().unwrap();
    // Pairs: 0.35 beats 0.1 but not 0.4; 0.8 beats both: AUROC 3/4 (see detection unit tests).
    let p = write(
        dir.path(),
        "s.csv",
        "id,y,s\na,0,0.1\nb,0,0.4\nc,1,0.35\nd,1,0.8\n",
    );
    let out = libre()
        .args([
            "--json",
            "metrics",
            "--label-col",
            "y",
            "--score-col",
            "s",
            "--scores",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = result_line(&out.stdout);
    assert!((d["auroc"].as_f64().unwrap() - 0.75).abs() < 1e-12);
    assert!((d["aupr_out"].as_f64().unwrap() - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
    for k in ["0.01", "0.05", "0.10"] {
        assert!(d["tpr_at_fpr"][k].is_number(), "tpr_at_fpr.{k}: {d}");
    }
    for k in ["aupr_in", "tnr_at_tpr95", "detection_accuracy"] {
        assert!(d[k].is_number(), "{k}: {d}");
    }
    assert_eq!(
        (d["n_pos"].as_u64(), d["n_neg"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(d.get("ci").is_none());
    assert_eq!(d["subset"], "all");
}

#[test]
fn metrics_grouped_with_bootstrap_and_human_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("attack,label,score\n");
    for i in 0..200 {
        let x = (i * 37 % 200) as f64 / 200.0;
        let _ = writeln!(text, "fgsm,{},{}", i % 2, x + (i % 2) as f64 * 0.3);
        let _ = writeln!(text, "pgd,{},{}", i % 2, x + (i % 2) as f64 * 0.05);
    }
    let p = write(dir.path(), "s.csv", &text);
    let run = |seed: &str| {
        let out = libre()
            .args([
                "--json",
                "metrics",
                "--group-by",
                "attack",
                "--bootstrap",
                "100",
            ])
            .args(["--seed", seed, "--scores"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        result_line(&out.stdout)
    };
    let d = run("7");
    let groups = d["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["group"], "fgsm");
    let (a0, a1) = (
        groups[0]["auroc"].as_f64().unwrap(),
        groups[1]["auroc"].as_f64().unwrap(),
    );
    assert!(a0 > a1, "fgsm is the easier group: {a0} vs {a1}");
    let ci = &groups[0]["ci"];
    assert!(ci["auroc"]["lo"].as_f64().unwrap() <= a0 && a0 <= ci["auroc"]["hi"].as_f64().unwrap());
    assert!(ci["tpr_at_fpr"]["0.05"]["hi"].is_number());
    // Same seed, same intervals; the bootstrap is deterministic.
    assert_eq!(run("7"), d);

    let out = libre()
        .args(["metrics", "--group-by", "attack", "--scores"])
        .arg(&p)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("AUROC") && s.contains("fgsm") && s.contains("pgd"),
        "{s}"
    );
    assert!(s.contains("all samples"), "the subset is printed: {s}");
}

#[test]
fn metrics_bad_input_exits_2_with_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("nan.csv", "label,score\n0,0.1\n1,0.2\n1,NaN\n", "line 4"),
        ("inf.csv", "label,score\n0,inf\n1,0.2\n", "line 2"),
        ("label.csv", "label,score\n0,0.1\nadv,0.2\n", "`adv`"),
        ("one.csv", "label,score\n1,0.1\n1,0.2\n", "only one class"),
        ("empty.csv", "", "empty"),
        ("header.csv", "label,score\n", "no data rows"),
        ("cols.csv", "label,uncertainty\n0,0.1\n", "--score-col"),
    ];
    for (name, text, needle) in cases {
        let p = write(dir.path(), name, text);
        let out = libre()
            .args(["metrics", "--scores"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("libre: ") && err.contains(needle),
            "{name}: {err}"
        );
        assert!(out.stdout.is_empty(), "{name}: no numbers on error");
    }
    // --subset successful without the columns it needs.
    let p = write(dir.path(), "ok.csv", "label,score\n0,0.1\n1,0.2\n");
    libre()
        .args(["metrics", "--subset", "successful", "--scores"])
        .arg(&p)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("clean_correct"));
    // With the columns: the misclassified clean row and the failed attack are dropped.
    let p = write(
        dir.path(),
        "sub.csv",
        "label,score,clean_correct,adv_success\n0,0.1,1,\n0,0.9,0,\n1,0.5,1,1\n1,0.05,1,0\n",
    );
    let out = libre()
        .args(["--json", "metrics", "--subset", "successful", "--scores"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = result_line(&out.stdout);
    assert_eq!(
        (d["n_pos"].as_u64(), d["n_neg"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(d["auroc"].as_f64(), Some(1.0));
    assert_eq!(d["subset"], "successful");
}

#[test]
fn report_renders_run_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("model,attack,eps,label,score\n");
    for model in ["dnn", "bnn"] {
        for i in 0..50 {
            let _ = writeln!(text, "{model},clean,,0,{}", i as f64 / 50.0);
            let _ = writeln!(text, "{model},pgd,0.03,1,{}", i as f64 / 50.0 + 0.2);
        }
    }
    write(dir.path(), "scores.csv", &text);
    write(
        dir.path(),
        "classification.csv",
        "model,n,top1,top5,nll,brier,ece\ndnn,100,0.9,0.99,0.3,0.1,0.05\n",
    );
    let out = libre()
        .args(["--json", "report"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = result_line(&out.stdout);
    assert_eq!(d["detection_groups"], 2);
    let html = std::fs::read_to_string(dir.path().join("report/index.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("AUROC") && html.contains("subset `all`"));
    assert!(dir.path().join("report/manifest.json").is_file());
    // A missing run directory is an error, not an empty report.
    libre()
        .args(["report"])
        .arg(dir.path().join("missing"))
        .assert()
        .code(2);
}

/// A missing file is named once with its cause, not the cause twice.
#[test]
fn missing_scores_file_names_the_cause_once() {
    let o = libre()
        .args(["metrics", "--scores", "/nonexistent/scores.csv"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/scores.csv"), "{err}");
}
