//! Sharded `libre detect` (issue "Beyond one machine"): parts merged in any order equal the
//! unsharded output byte for byte, also for a posterior that samples its weights per batch; the
//! merge refuses missing, overlapping, changed and mismatched parts by name; the shard comes from
//! Slurm's or Kubernetes' variables when no flag is given. The real-Slurm test is
//! scripts/slurm/ci-test.sh (run by `make test`).

mod common;
use common::{libre, ok};
use std::path::{Path, PathBuf};

const INPUTS: [&str; 2] = ["mnist:test[0:300]", "mnist:test[500:550]"];

/// LeNet5 with a mean-field last block: scores depend on the weights drawn per batch.
fn mean_field(dir: &Path) -> PathBuf {
    let p = dir.join("mf.safetensors");
    ok(libre()
        .args(["-q", "convert", "--weights", "zoo:lenet5-mnist"])
        .args(["--posterior", "mean-field", "--layers", "last-block"])
        .args(["--mc-samples", "6", "--out"])
        .arg(&p)
        .output()
        .unwrap());
    p
}

fn detect(w: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    libre()
        .args(["-q", "detect"])
        .args(INPUTS)
        .arg("--weights")
        .arg(w)
        .args(["--threshold", "0.001", "--batch-size", "32", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap()
}

fn merge(files: &[PathBuf], out: &Path) -> std::process::Output {
    libre()
        .args(["detect", "merge"])
        .args(files)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn parts_merge_to_the_unsharded_output_and_bad_sets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let w = mean_field(d);
    let full = d.join("full.csv");
    ok(detect(&w, &full, &["--seed", "7"]));
    let parts: Vec<PathBuf> = (0..3)
        .map(|k| d.join(format!("p/rows.{k}-of-3.csv")))
        .collect();
    for k in 0..3 {
        ok(detect(
            &w,
            &d.join("p/rows.csv"),
            &["--seed", "7", "--shard", &format!("{k}/3")],
        ));
        assert!(parts[k].exists() && d.join(format!("p/rows.{k}-of-3.csv.part.json")).exists());
    }
    // Any order on the command line; the result is the unsharded file, byte for byte.
    let merged = d.join("merged.csv");
    ok(merge(
        &[parts[2].clone(), parts[0].clone(), parts[1].clone()],
        &merged,
    ));
    let (a, b) = (
        std::fs::read(&full).unwrap(),
        std::fs::read(&merged).unwrap(),
    );
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), 351); // header + 350 rows
    assert!(a == b, "merged parts differ from the unsharded output");

    // Refusals, each naming the problem; nothing is written.
    let bad = d.join("bad.csv");
    let o = merge(&parts[..2], &bad);
    assert!(
        !o.status.success() && stderr(&o).contains("shard(s) 2/3 missing"),
        "{}",
        stderr(&o)
    );
    let o = merge(
        &[parts[0].clone(), parts[0].clone(), parts[1].clone()],
        &bad,
    );
    assert!(stderr(&o).contains("given twice"), "{}", stderr(&o));
    ok(detect(
        &w,
        &d.join("q/rows.csv"),
        &["--seed", "8", "--shard", "1/3"],
    ));
    let o = merge(
        &[
            parts[0].clone(),
            d.join("q/rows.1-of-3.csv"),
            parts[2].clone(),
        ],
        &bad,
    );
    assert!(
        stderr(&o).contains("setting 'seed' differs"),
        "{}",
        stderr(&o)
    );
    std::fs::write(d.join("lone.csv"), "source\n").unwrap();
    let o = merge(&[d.join("lone.csv")], &bad);
    assert!(stderr(&o).contains("not a finished"), "{}", stderr(&o));
    let mut rows = std::fs::read(&parts[1]).unwrap();
    rows.extend_from_slice(b"x\n");
    std::fs::write(&parts[1], rows).unwrap();
    let o = merge(&parts, &bad);
    assert!(
        stderr(&o).contains("changed after shard 1/3"),
        "{}",
        stderr(&o)
    );
    assert!(!bad.exists());

    // A sharded run needs a file to write; table output cannot be merged.
    let o = libre()
        .args([
            "detect",
            "mnist:test[0:10]",
            "--weights",
            "zoo:lenet5-mnist",
        ])
        .args(["--shard", "0/2"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("needs --out"), "{}", stderr(&o));
    let o = detect(
        &w,
        &d.join("t.txt"),
        &["--shard", "0/2", "--format", "table"],
    );
    assert!(stderr(&o).contains("cannot be merged"), "{}", stderr(&o));
}

#[test]
fn the_shard_comes_from_the_scheduler_when_no_flag_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |envs: &[(&str, &str)], extra: &[&str]| {
        let mut c = libre();
        c.args([
            "detect",
            "mnist:test[0:40]",
            "--weights",
            "zoo:lenet5-mnist",
        ])
        .args(["--batch-size", "10", "--out"])
        .arg(d.join("r.csv"))
        .args(extra)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = ok(run(
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ],
        &[],
    ));
    assert!(stderr(&o).contains("shard 1/2 from the Slurm job array"));
    let man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("r.1-of-2.csv.part.json")).unwrap()).unwrap();
    assert_eq!(man["rows"], serde_json::json!([20, 40]));
    // A resubmitted single task (--array=3) keeps its index with --shard-count.
    ok(run(
        &[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ],
        &["--shard-count", "4"],
    ));
    assert!(d.join("r.3-of-4.csv.part.json").exists());
    // A Kubernetes Indexed Job gives the index, the flag the count.
    ok(run(
        &[("JOB_COMPLETION_INDEX", "0")],
        &["--shard-count", "3"],
    ));
    assert!(d.join("r.0-of-3.csv").exists());
    let o = run(&[("JOB_COMPLETION_INDEX", "0")], &[]);
    assert!(stderr(&o).contains("--shard-count"), "{}", stderr(&o));
    // The flag overrides the environment.
    ok(run(
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ],
        &["--shard", "4/5"],
    ));
    assert!(d.join("r.4-of-5.csv").exists());
}
