//! The report end to end on a synthetic run directory: contents, atomic replacement, errors,
//! and byte-for-byte reproducibility.
use super::*;
use crate::rng::Xoshiro256pp;
use crate::tables::DetectionRow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A run directory with every table: two models, two attacks, two radii for PGD.
fn sample_run(dir: &Path) {
    let mut r = Xoshiro256pp::seed_from_u64(11);
    let mut s = String::from("model,attack,eps,label,score,clean_correct,adv_success\n");
    for model in ["dnn", "bnn"] {
        let gap = if model == "bnn" { 1.5 } else { 0.4 };
        for i in 0..300 {
            let _ = writeln!(
                s,
                "{model},clean,,0,{},{},",
                r.next_f64(),
                (i % 10 != 0) as u8
            );
        }
        for (attack, eps) in [("fgsm", "0.0627"), ("pgd", "0.0157"), ("pgd", "0.0627")] {
            let e: f64 = eps.parse().unwrap();
            for i in 0..200 {
                let sc = r.next_f64() + gap * e * 16.0;
                let _ = writeln!(s, "{model},{attack},{eps},1,{sc},1,{}", (i % 4 != 0) as u8);
            }
        }
    }
    std::fs::write(dir.join(SCORES_CSV), s).unwrap();
    std::fs::write(
        dir.join(CLASSIFICATION_CSV),
        "model,n,top1,top5,nll,brier,ece\ndnn,1000,0.9692,0.998,0.13,0.05,0.031\n\
         bnn,1000,0.9709,0.999,0.11,0.045,0.012\n",
    )
    .unwrap();
    let mut rel = String::from("model,bin,lo,hi,count,confidence,accuracy\n");
    for model in ["dnn", "bnn"] {
        for b in 0..15 {
            let (lo, hi) = (b as f64 / 15.0, (b + 1) as f64 / 15.0);
            let conf = 0.5 * (lo + hi);
            let acc = if model == "dnn" {
                conf * 0.85
            } else {
                conf * 0.98
            };
            let count = if b < 5 { 0 } else { 10 * b };
            let _ = writeln!(rel, "{model},{b},{lo},{hi},{count},{conf},{acc}");
        }
    }
    std::fs::write(dir.join(RELIABILITY_CSV), rel).unwrap();
    let mut mc = String::from("model,n_samples,top1,nll\ndnn,1,0.9692,0.13\n");
    for s in [1, 2, 5, 10, 20] {
        let _ = writeln!(
            mc,
            "bnn,{s},{},{}",
            0.96 + 0.0005 * s as f64,
            0.14 - 0.001 * s as f64
        );
    }
    std::fs::write(dir.join(MC_CURVE_CSV), mc).unwrap();
}

#[test]
fn full_report_is_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    sample_run(dir.path());
    let out = dir.path().join("report");
    let opts = ReportOptions {
        bootstrap: Some(BootstrapConfig {
            n_resamples: 50,
            seed: 1,
            level: 0.9,
        }),
        png: true,
        ..Default::default()
    };
    let s = render_run(dir.path(), &out, &opts).unwrap();
    assert_eq!(s.n_detection_groups, 6);
    for f in [
        "index.html",
        "summary.md",
        "manifest.json",
        DETECTION_CSV,
        MC_CURVE_CSV,
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for f in [
        "roc",
        "score_hist",
        "auroc_vs_eps",
        "reliability",
        "mc_curve",
    ] {
        assert!(
            out.join(format!("figures/{f}.svg")).is_file(),
            "{f}.svg missing"
        );
        assert!(
            out.join(format!("figures/{f}.png")).is_file(),
            "{f}.png missing"
        );
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 5, "figures are inlined");
    assert!(html.contains("subset `all`") && html.contains("AUROC 90% CI"));
    let rows: Vec<DetectionRow> = tables::read_rows(&out.join(DETECTION_CSV)).unwrap();
    assert_eq!(rows.len(), 6);
    // Shared clean rows: each group has its 200 adversarial and the model's 300 clean.
    assert!(rows.iter().all(|r| r.n_pos == 200 && r.n_neg == 300));
    // BNN separates better by construction.
    let auroc = |m: &str, a: &str, e: &str| {
        rows.iter()
            .find(|r| r.model == m && r.attack == a && r.eps == e)
            .unwrap()
            .auroc
    };
    assert!(auroc("bnn", "pgd", "0.0627") > auroc("dnn", "pgd", "0.0627"));
    assert!(rows
        .iter()
        .all(|r| r.auroc_lo.unwrap() <= r.auroc && r.auroc <= r.auroc_hi.unwrap()));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["options"]["seed"], 1);
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["inputs"][0]["sha256"].as_str().unwrap().len(), 64);

    // Re-render with the successful subset over the old report: replaced, no leftovers.
    let opts = ReportOptions {
        subset: Subset::Successful,
        ..Default::default()
    };
    let s = render_run(dir.path(), &out, &opts).unwrap();
    assert!(s.rows_dropped_by_subset > 0);
    let rows: Vec<DetectionRow> = tables::read_rows(&out.join(DETECTION_CSV)).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.subset == Subset::Successful && r.n_pos == 150));
    assert!(rows.iter().all(|r| r.n_neg == 270 && r.auroc_lo.is_none()));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn failed_report_leaves_previous_one_untouched() {
    let dir = tempfile::tempdir().unwrap();
    sample_run(dir.path());
    let out = dir.path().join("report");
    render_run(dir.path(), &out, &ReportOptions::default()).unwrap();
    let before = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Break the scores: a NaN on line 3.
    let p = dir.path().join(SCORES_CSV);
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "dnn,clean,,0,NaN,1,";
    std::fs::write(&p, lines.join("\n")).unwrap();
    let e = render_run(dir.path(), &out, &ReportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        before
    );
}

#[test]
fn group_without_clean_rows_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(SCORES_CSV),
        "model,attack,eps,label,score\nbnn,pgd,0.03,1,0.5\nbnn,pgd,0.03,1,0.7\n",
    )
    .unwrap();
    let e = render_run(dir.path(), &dir.path().join("r"), &ReportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model=bnn attack=pgd eps=0.03") && e.contains("no clean"),
        "{e}"
    );
    let e = render_run(
        &dir.path().join("nope"),
        &dir.path().join("r"),
        &Default::default(),
    );
    assert!(e.is_err());
}

#[test]
fn html_is_escaped() {
    assert_eq!(html_escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
}

/// Every file under `dir` by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

#[test]
fn same_run_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    sample_run(dir.path());
    let opts = ReportOptions {
        bootstrap: Some(BootstrapConfig {
            n_resamples: 50,
            seed: 1,
            level: 0.9,
        }),
        png: true,
        ..Default::default()
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    render_run(dir.path(), &a, &opts).unwrap();
    render_run(dir.path(), &b, &opts).unwrap();
    let (mut ta, mut tb) = (tree(&a), tree(&b));
    // The manifest records when it was written; everything else in it must agree.
    let manifest = Path::new("manifest.json");
    let without_time = |bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("\"created_unix\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (ma, mb) = (
        without_time(ta.remove(manifest).unwrap()),
        without_time(tb.remove(manifest).unwrap()),
    );
    assert_eq!(ma, mb);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    // 5 SVG + 5 PNG figures, index.html, summary.md and the 4 CSV tables.
    assert_eq!(ta.len(), 16, "{:?}", ta.keys().collect::<Vec<_>>());
    for (path, bytes) in &ta {
        assert!(
            tb[path] == *bytes,
            "{} differs between the two reports",
            path.display()
        );
    }
}
