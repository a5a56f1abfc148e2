//! Failure classes found by trying libre as a new user would (signals, folders, misleading
//! hints): each must end cleanly, say what happened, and leave nothing behind.

mod common;
use common::{libre, ok};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// SIGTERM (Slurm's scancel, a container stop) and Ctrl-C while `attack --out` streams its batch
/// file: the hidden temporary goes, the process dies of the signal, nothing else is written.
#[test]
fn signals_remove_the_temporary_output() {
    // Make sure the data and the model are cached, so the run below is busy attacking.
    ok(libre()
        .args(["-q", "data", "fetch", "mnist", "lenet5-mnist"])
        .output()
        .unwrap());
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempfile::tempdir().unwrap();
        let bin = assert_cmd::cargo::cargo_bin("libre");
        let mut child = std::process::Command::new(bin)
            .args(["-q", "attack", "--weights", "zoo:lenet5-mnist"])
            .args(["--data", "mnist:test", "--attack", "pgd", "--eps", "0.3"])
            .args(["--steps", "100", "--batch-size", "16", "--out"])
            .arg(dir.path().join("adv.safetensors"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the temporary exists (the run is writing), then signal.
        let t0 = Instant::now();
        while std::fs::read_dir(dir.path()).unwrap().count() == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no temporary appeared"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the attack ended early"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{name}: {status:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
}

/// An image folder says how its class names map to label ids, and a classes.txt sets the order.
#[test]
fn folder_classes_are_printed_and_can_be_ordered() {
    let dir = tempfile::tempdir().unwrap();
    for (cls, v) in [("seven", 200u8), ("one", 30u8)] {
        std::fs::create_dir(dir.path().join(cls)).unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([v]))
            .save(dir.path().join(cls).join("a.png"))
            .unwrap();
    }
    let spec = format!("folder:{}", dir.path().display());
    let eval = || {
        let o = ok(libre()
            .args(["eval", "--weights", "zoo:lenet5-mnist", "--data", &spec])
            .output()
            .unwrap());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = eval();
    assert!(
        e.contains("0=one, 1=seven") && e.contains("sorted folder names"),
        "{e}"
    );
    std::fs::write(dir.path().join("classes.txt"), "seven\none\n").unwrap();
    let e = eval();
    assert!(
        e.contains("0=seven, 1=one") && e.contains("classes.txt"),
        "{e}"
    );
    std::fs::write(dir.path().join("classes.txt"), "seven\n").unwrap();
    let o = libre()
        .args(["eval", "--weights", "zoo:lenet5-mnist", "--data", &spec])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("does not list the sub-folder 'one'"), "{e}");
}

/// `libre report` has no --group-by: its errors must not suggest it (`libre metrics` does).
#[test]
fn report_errors_suggest_only_its_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scores.csv"), "label,score\n1,0.5\n0,0.2\n").unwrap();
    let o = libre().arg("report").arg(dir.path()).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("no column `model`") && !e.contains("--group-by"),
        "{e}"
    );
    let o = libre()
        .args(["metrics", "--group-by", "model", "--scores"])
        .arg(dir.path().join("scores.csv"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--group-by"), "{e}");
}

/// The failure classes of the hardening issue, one invocation each: exit 2, a message that names
/// the cause, no panic, nothing created at the output path, and with --json a final error line.
#[test]
fn bad_invocations_fail_cleanly_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let st = dir.path().join("x.safetensors");
    let st = st.to_str().unwrap();
    let lenet = ["--weights", "zoo:lenet5-mnist"];
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<&str> = vec!["train", "--model", "lenet5", "--data", "mnist:train"];
        v.extend(["--limit", "64", "--out", o]);
        v.extend(extra);
        v.into_iter().map(String::from).collect()
    };
    let finetune = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<&str> = vec!["finetune", "--weights", "zoo:lenet5-mnist"];
        v.extend([
            "--posterior",
            "mean-field",
            "--data",
            "mnist:train",
            "--limit",
            "64",
        ]);
        v.extend(["--out", o]);
        v.extend(extra);
        v.into_iter().map(String::from).collect()
    };
    let owned = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (train(&["--batch-size", "0"]), "--batch-size"),
        (finetune(&["--batch-size", "0"]), "--batch-size"),
        (train(&["--epochs", "0"]), "epochs"),
        (train(&["--lr", "NaN"]), "lr"),
        (
            owned(&[
                "train",
                "--model",
                "lenet7",
                "--data",
                "mnist:train",
                "--out",
                o,
            ]),
            "lenet7",
        ),
        // usage errors (clap's) also end with the JSON error line
        (train(&["--epochs", "1", "--epochs", "2"]), "--epochs"),
        (finetune(&["--mc-samples", "0"]), "samples"),
        (
            owned(&[
                "train",
                "--model",
                "lenet5",
                "--data",
                "mnist:nope",
                "--out",
                o,
            ]),
            "mnist",
        ),
        (owned(&["train", "--resume", o]), o),
        (
            owned(&[&["attack"][..], &lenet, &["--data", "mnist:test[0:4]"]].concat())
                .into_iter()
                .chain(owned(&[
                    "--attack",
                    "fgsm",
                    "--eps",
                    "0.1",
                    "--mc-samples",
                    "0",
                ]))
                .chain(owned(&["--out", st]))
                .collect(),
            "--mc-samples",
        ),
        (
            owned(&[&["attack"][..], &lenet, &["--data", "mnist:test[0:4]"]].concat())
                .into_iter()
                .chain(owned(&["--attack", "pgd", "--eps", "inf", "--out", st]))
                .collect(),
            "--eps",
        ),
        (
            owned(
                &[
                    &["eval"][..],
                    &lenet,
                    &["--data", "mnist:test[0:4]", "--batch-size", "0"],
                ]
                .concat(),
            ),
            "--batch-size",
        ),
        (
            owned(&[
                "metrics",
                "--scores",
                "/nonexistent.csv",
                "--bootstrap",
                "1000000000",
            ]),
            "bootstrap",
        ),
        (
            owned(
                &[
                    &["convert"][..],
                    &lenet,
                    &["--posterior", "low-rank", "--rank", "0", "--out", st],
                ]
                .concat(),
            ),
            "rank",
        ),
        (
            owned(
                &[
                    &["convert"][..],
                    &lenet,
                    &["--posterior", "gaussian", "--out", st],
                ]
                .concat(),
            ),
            "gaussian",
        ),
        (
            owned(&["eval", "--weights", "/", "--data", "mnist:test"]),
            "/",
        ),
        (
            owned(&["import", "/nonexistent.pt", "--out", st]),
            "nonexistent",
        ),
    ];
    for (args, cause) in &cases {
        let run = libre().arg("--json").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        let shown = args.join(" ");
        assert_eq!(run.status.code(), Some(2), "{shown}: {err}");
        assert!(!err.contains("panicked"), "{shown}: {err}");
        assert!(
            err.contains(cause),
            "{shown}: the message does not name {cause}: {err}"
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
            .unwrap_or_else(|e| panic!("{shown}: last stdout line is not JSON ({e}): {stdout}"));
        assert_eq!(last["type"], "error", "{shown}: {stdout}");
        assert!(!out.exists(), "{shown} created {o}");
        assert!(!std::path::Path::new(st).exists(), "{shown} created {st}");
    }
}
