//! `libre evaluate` and `libre report merge` (issue "Research evaluation runs"): a killed run
//! resumes to the same report, shards merge to the unsharded report, the summary's AUROC equals
//! `libre metrics` on the same rows, and bad experiment files fail before any work.

use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;
use common::{diverse_ensemble, libre, ok};

fn experiment(dir: &Path, ens: &Path) -> PathBuf {
    let text = format!(
        r#"data = "mnist:test[0:64]"
seed = 3
bootstrap = 20
batch_size = 32
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp", "entropy"]
[[model]]
name = "ens"
weights = "{}"
scores = ["feature-variance", "mutual-information"]
[[attack]]
name = "fgsm"
eps = [0.1, 0.3]
[[attack]]
name = "pgd"
eps = [0.3]
steps = 5
step_size = 0.1
[[attack]]
name = "pgd"
eps = [0.3]
steps = 3
step_size = 0.1
adaptive = [1.0]
models = ["ens"]
"#,
        ens.display()
    );
    let p = dir.join("exp.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn evaluate(exp: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    libre()
        .args(["-q", "evaluate", "--device", "cpu", "--out"])
        .arg(out)
        .arg(exp)
        .args(extra)
        .output()
        .unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killed_runs_resume_and_shards_merge_to_the_same_report() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let ens = diverse_ensemble(dir.path());
    let exp = experiment(dir.path(), &ens);
    let full = dir.path().join("full");
    ok(evaluate(&exp, &full, &[]));
    for f in [
        "index.html",
        "scores.csv",
        "summary.json",
        "detection.csv",
        "timing.csv",
        "manifest.json",
    ] {
        assert!(full.join(f).exists(), "{f} missing");
    }
    let summary = read(&full.join("summary.json"));
    let scores = read(&full.join("scores.csv"));
    // 2 models x (64 clean + 64 per attack cell) x 2 scores.
    let rows = scores.lines().count() - 1;
    assert_eq!(rows, 2 * 64 * 2 + (3 * 64 * 2) + (4 * 64 * 2), "{rows}");

    // Kill a run after its first cells, then rerun: same summary and rows.
    let killed = dir.path().join("killed");
    let bin = assert_cmd::cargo::cargo_bin("libre");
    let mut child = std::process::Command::new(bin)
        .args(["-q", "evaluate", "--device", "cpu", "--out"])
        .arg(&killed)
        .arg(&exp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let done = std::fs::read_dir(killed.join("cells"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "json")
                })
                .count()
            })
            .unwrap_or(0);
        if done >= 3 || t0.elapsed().as_secs() > 300 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !killed.join("summary.json").exists(),
        "the run finished before the kill"
    );
    ok(evaluate(&exp, &killed, &[]));
    assert_eq!(read(&killed.join("summary.json")), summary);
    assert_eq!(read(&killed.join("scores.csv")), scores);

    // Two shards merged equal the unsharded run; an incomplete set is refused by name.
    let (s0, s1, merged) = (
        dir.path().join("s0"),
        dir.path().join("s1"),
        dir.path().join("m"),
    );
    ok(evaluate(&exp, &s0, &["--shard", "0/2"]));
    ok(evaluate(&exp, &s1, &["--shard", "1/2"]));
    let out = libre()
        .args(["report", "merge"])
        .arg(&s0)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    assert!(!merged.join("summary.json").exists());
    ok(libre()
        .args(["-q", "report", "merge"])
        .arg(&s0)
        .arg(&s1)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap());
    assert_eq!(read(&merged.join("summary.json")), summary);
    assert_eq!(read(&merged.join("scores.csv")), scores);

    // A directory of another experiment is refused, by evaluate and by merge.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, read(&exp).replace("seed = 3", "seed = 4")).unwrap();
    let out = evaluate(&other, &full, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different experiment"));
    let s2 = dir.path().join("s2");
    ok(evaluate(&other, &s2, &["--shard", "0/2"]));
    let out = libre()
        .args(["report", "merge"])
        .arg(&s0)
        .arg(&s2)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("different experiment"));

    // The summary's AUROC equals `libre metrics` on the same rows of scores.csv.
    let det: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let row = det["detection"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "ens/feature-variance" && r["attack"] == "pgd")
        .unwrap()
        .clone();
    let mut csv = String::from("label,score\n");
    for l in scores.lines().skip(1) {
        let c: Vec<&str> = l.split(',').collect();
        if c[1] == "ens/feature-variance" && (c[4] == "clean" || c[4] == "pgd") {
            csv += &format!("{},{}\n", c[6], c[7]);
        }
    }
    let f = dir.path().join("rows.csv");
    std::fs::write(&f, csv).unwrap();
    let out = ok(libre()
        .args(["--json", "metrics", "--scores"])
        .arg(&f)
        .output()
        .unwrap());
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(v["data"]["auroc"], row["auroc"], "{v} vs {row}");
}

#[test]
fn bad_experiment_files_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"data = "mnist:test[0:10]"
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp"]
[[attack]]
name = "fgsm"
eps = [0.3]
"#;
    for (bad, what) in [
        (
            good.replace("eps = [0.3]", "eps = [0.3]\nstepz = 3"),
            "line 9",
        ),
        (good.replace("\"fgsm\"", "\"fgsn\""), "line 7"),
        (
            good.replace("[\"msp\"]", "[\"feature-variance\"]"),
            "line 5",
        ),
        (
            good.replace("zoo:lenet5-mnist", "missing.safetensors"),
            "line 4",
        ),
        (
            good.replace(
                "scores = [\"msp\"]",
                "scores = [\"msp\"]\nprecision = \"f16\"",
            ),
            "line 6",
        ),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, &bad).unwrap();
        let out_dir = dir.path().join("out");
        let out = evaluate(&f, &out_dir, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(what) && err.contains("bad.toml"),
            "{what}: {err}"
        );
        assert!(!out_dir.exists(), "nothing is created for a bad file");
    }
    let out = ok(libre().args(["evaluate", "--example"]).output().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[[model]]") && text.contains("adaptive"));
}
