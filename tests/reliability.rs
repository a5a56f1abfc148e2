//! Issue 29 ("the 47 ways the new commands still lose data, panic or answer wrongly"): each class
//! of bad input ends with a clear error naming its cause, before any work where it can be checked
//! up front, and nothing the user had changes (every file under the test directory is compared
//! byte for byte before and after).

mod common;
use common::{diverse_ensemble, libre, ok};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// Every file under `dir` (following no links) with its bytes: what "unchanged" is checked on.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                m.insert(p.clone(), std::fs::read(&p).unwrap());
            } else {
                m.insert(p.clone(), Vec::new());
            }
        }
    }
    m
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A `width x height` grey PNG.
fn png(p: &Path, width: u32, height: u32) {
    image::GrayImage::from_pixel(width, height, image::Luma([90]))
        .save_with_format(p, image::ImageFormat::Png)
        .unwrap();
}

/// Runs every case in `dir`: exit status 2, the message names the cause, no panic, and `dir`
/// holds exactly what it held before.
fn refused_in(dir: &Path, cases: &[(Vec<String>, &str)]) {
    for (args, cause) in cases {
        let before = snapshot(dir);
        let o = libre().args(args).output().unwrap();
        let shown = args.join(" ");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{shown}: {err}");
        assert!(!err.contains("panicked"), "{shown}: {err}");
        assert!(
            err.contains(cause),
            "{shown}: the message does not name {cause}: {err}"
        );
        assert!(before == snapshot(dir), "{shown} changed {}", dir.display());
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A tiny experiment (16 digits, the zoo LeNet5, FGSM): two cells.
const EXPERIMENT: &str = r#"data = "mnist:test[0:16]"
seed = 1
batch_size = 16
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp", "entropy"]
[[attack]]
name = "fgsm"
eps = [0.1]
"#;

/// Data overwritten or lost: an output that is an input, holds one, or is a directory of other
/// files is refused before any work, and nothing changes.
#[test]
fn outputs_never_overwrite_inputs_or_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let img = d.join("x.png");
    png(&img, 28, 28);
    let weights = d.join("w.safetensors");
    std::fs::write(&weights, b"not really a model").unwrap();
    let list = d.join("list.txt");
    std::fs::write(&list, format!("{}\n", img.display())).unwrap();
    // An evaluation directory and a training run a user might point --out at.
    let eval = d.join("eval");
    std::fs::create_dir_all(eval.join("cells")).unwrap();
    std::fs::write(
        eval.join("scores.csv"),
        "model,label,score\nm,0,0.1\nm,1,0.9\n",
    )
    .unwrap();
    std::fs::write(eval.join("experiment.toml"), EXPERIMENT).unwrap();
    let mine = d.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("scores.csv"), "my own\n").unwrap();
    std::fs::write(mine.join("index.html"), "<p>my page</p>\n").unwrap();
    let file = d.join("notes.txt");
    std::fs::write(&file, "keep me\n").unwrap();
    let exp = d.join("exp.toml");
    std::fs::write(&exp, EXPERIMENT).unwrap();
    let detect = |extra: &[String]| -> Vec<String> {
        let mut v = strs(&["detect", "--weights", "zoo:lenet5-mnist", "--format", "csv"]);
        v.extend(extra.iter().cloned());
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (detect(&[s(&img), "--out".into(), s(&img)]), "is an input"),
        (
            strs(&[
                "detect",
                "--weights",
                &s(&weights),
                &s(&img),
                "--out",
                &s(&weights),
            ]),
            "the --weights file",
        ),
        (
            detect(&["--files-from".into(), s(&list), "--out".into(), s(&list)]),
            "the --files-from list",
        ),
        (
            detect(&["--files-from".into(), s(&list), "--out".into(), s(&img)]),
            "line 1 of the --files-from list",
        ),
        // An image inside a folder input, found once the folder is walked.
        (detect(&[s(d), "--out".into(), s(&img)]), "input image"),
        (
            strs(&[
                "calibrate",
                "--weights",
                "zoo:lenet5-mnist",
                "--data",
                &s(&weights),
            ])
            .into_iter()
            .chain(strs(&["--out", &s(&weights)]))
            .collect(),
            "the --data file",
        ),
        (
            strs(&["report", &s(&eval), "--out", &s(&eval)]),
            "that is RUN_DIR",
        ),
        (
            strs(&["report", &s(&eval), "--out", &s(d)]),
            "it holds RUN_DIR",
        ),
        (
            strs(&["report", &s(&eval), "--out", &s(&file)]),
            "exists and is not a directory",
        ),
        (
            strs(&["report", &s(&eval), "--out", &s(&mine)]),
            "index.html, scores.csv",
        ),
        (
            strs(&["evaluate", &s(&exp), "--out", &s(&mine)]),
            "not an earlier output",
        ),
        (
            strs(&["evaluate", &s(&exp), "--out", &s(&file)]),
            "notes.txt: exists and is not a directory",
        ),
        (
            strs(&["report", "merge", &s(&eval), "--out", &s(&mine)]),
            "--force",
        ),
        (
            strs(&["report", "merge", &s(&eval), "--out", &s(&file)]),
            "notes.txt: exists and is not a directory",
        ),
    ];
    refused_in(d, &cases);
    // A part file of `detect merge` is an input too.
    let part = d.join("rows.0-of-1.csv");
    std::fs::write(&part, "source\n").unwrap();
    refused_in(
        d,
        &[(
            strs(&["detect", "merge", &s(&part), "--out", &s(&part)]),
            "a part file",
        )],
    );
}

/// Evaluate and report refuse foreign directories, but rerun into their own earlier output, and
/// --force writes where the user says; report merge refuses a truncated cell.
#[test]
fn evaluation_directories_rerun_and_merges_check_their_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let exp = d.join("exp.toml");
    std::fs::write(&exp, EXPERIMENT).unwrap();
    let evaluate = |out: &Path, extra: &[&str]| {
        libre()
            .args(["-q", "evaluate", "--device", "cpu"])
            .arg(&exp)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let s0 = d.join("s0");
    let s1 = d.join("s1");
    ok(evaluate(&s0, &["--shard", "0/2"]));
    ok(evaluate(&s1, &["--shard", "1/2"]));
    // Rerunning into its own directory resumes.
    ok(evaluate(&s0, &["--shard", "0/2"]));
    // The merge writes a report; rendering it again into its own report directory is fine.
    let merged = d.join("merged");
    ok(libre()
        .args(["-q", "report", "merge"])
        .args([&s0, &s1])
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap());
    let rep = d.join("rep");
    for _ in 0..2 {
        ok(libre()
            .args(["-q", "report"])
            .arg(&merged)
            .arg("--out")
            .arg(&rep)
            .output()
            .unwrap());
    }
    // A user's file in the report directory: refused, then replaced only with --force.
    std::fs::write(rep.join("notes.txt"), "mine").unwrap();
    let o = libre()
        .args(["-q", "report"])
        .arg(&merged)
        .arg("--out")
        .arg(&rep)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("notes.txt") && rep.join("notes.txt").exists());
    ok(libre()
        .args(["-q", "report", "--force"])
        .arg(&merged)
        .arg("--out")
        .arg(&rep)
        .output()
        .unwrap());
    // No hidden leftovers beside the report.
    let hidden: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    // --force lets evaluate write into a directory of other files.
    let other = d.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("readme.txt"), "x").unwrap();
    ok(evaluate(&other, &["--shard", "0/2", "--force"]));
    assert!(other.join("readme.txt").exists() && other.join("experiment.toml").exists());
    // A shard's cell cut short (a killed copy) is refused by name.
    let cell = std::fs::read_dir(s1.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "csv"))
        .unwrap();
    let text = std::fs::read_to_string(&cell).unwrap();
    let cut: Vec<&str> = text.lines().collect();
    std::fs::write(&cell, cut[..cut.len() - 3].join("\n") + "\n").unwrap();
    let m2 = d.join("m2");
    refused_in(
        d,
        &[(
            vec![
                "report".into(),
                "merge".into(),
                s0.display().to_string(),
                s1.display().to_string(),
                "--out".into(),
                m2.display().to_string(),
            ],
            "truncated",
        )],
    );
}

/// Inputs that panicked, hung or ran forever end with a clear error (or, for a symbolic-link
/// loop, with each image scored once).
#[test]
fn panics_and_hangs_become_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // A 1 x 10,000,000 PNG (a few KB) that --resize would blow up to gigabytes.
    let thin = d.join("thin.png");
    png(&thin, 1, 10_000_000);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            strs(&[
                "detect",
                "--weights",
                "zoo:lenet5-mnist",
                "--resize",
                &s(&thin),
            ]),
            "more than the 64 MiB",
        ),
        (
            strs(&[
                "attack",
                "--weights",
                "zoo:lenet5-mnist",
                "--data",
                "mnist:test[0:2]",
            ])
            .into_iter()
            .chain(strs(&[
                "--attack",
                "pgd",
                "--eps",
                "0.3",
                "--steps",
                "1000000000",
            ]))
            .chain(strs(&["--out", &s(&d.join("adv.safetensors"))]))
            .collect(),
            "--steps 1000000000: at most 100000",
        ),
    ];
    refused_in(d, &cases);

    // Non-UTF-8 arguments, with --json: a clean error line, never a panic.
    let bad = std::ffi::OsStr::from_bytes(b"r\xffws.csv");
    let os = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|s| s.into()).collect() };
    for args in [
        [
            os(&[
                "--json",
                "detect",
                "--weights",
                "zoo:lenet5-mnist",
                &s(&thin),
                "--out",
            ]),
            vec![bad.to_os_string()],
        ]
        .concat(),
        [os(&["--json", "detect"]), vec![bad.to_os_string()]].concat(),
    ] {
        let o = libre().current_dir(d).args(&args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("r\\xFFws.csv") && err.contains("UTF-8"),
            "{err}"
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(last["type"], "error");
    }

    // A folder holding links to itself: walked once, one row.
    let loopy = d.join("loopy");
    std::fs::create_dir(&loopy).unwrap();
    png(&loopy.join("a.png"), 28, 28);
    std::os::unix::fs::symlink(".", loopy.join("self")).unwrap();
    std::os::unix::fs::symlink(".", loopy.join("again")).unwrap();
    let o = ok(libre()
        .args([
            "-q",
            "detect",
            "--weights",
            "zoo:lenet5-mnist",
            "--format",
            "csv",
        ])
        .arg(&loopy)
        .output()
        .unwrap());
    let rows = String::from_utf8_lossy(&o.stdout).lines().count() - 1;
    assert_eq!(rows, 1, "{}", String::from_utf8_lossy(&o.stdout));
}

/// Writes to a full disk are errors (exit 2), never a panic; a reader that goes away is a quiet
/// stop.
#[test]
fn failed_writes_to_stdout_and_stderr_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let scores = tmp.path().join("s.csv");
    std::fs::write(&scores, "label,score\n0,0.1\n1,0.9\n0,0.2\n1,0.8\n").unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let bin = assert_cmd::cargo::cargo_bin("libre");
    let raw = || std::process::Command::new(&bin);
    let cases: Vec<Vec<String>> = vec![
        strs(&["evaluate", "--example"]),
        strs(&["--json", "metrics", "--scores", scores.to_str().unwrap()]),
        strs(&["metrics", "--scores", scores.to_str().unwrap()]),
        strs(&["completions", "bash"]),
        strs(&["--help"]),
        strs(&["--json", "data", "list"]),
    ];
    for args in &cases {
        let o = raw().args(args).stdout(full()).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} > /dev/full: {err}");
        assert!(
            err.contains("No space left") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // stderr on a full disk: the error cannot be shown, but the status says it.
    let o = raw()
        .args(["metrics", "--scores", "/nonexistent.csv"])
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // /dev/null opened read-write (Python's subprocess.DEVNULL; also what a closed stdout
    // becomes before main runs): output deliberately discarded, exit 0.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" evaluate --example 1<>/dev/null")
        .arg(&bin)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The reader went away: quiet, no panic.
    let mut child = std::process::Command::new(&bin)
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
}

/// Settings that gave silently wrong results are refused, naming the rule.
#[test]
fn silently_wrong_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = d.join("det.safetensors");
    let o = out.to_str().unwrap();
    let cal = |extra: &[&str]| -> Vec<String> {
        let mut v = strs(&["calibrate", "--weights", "zoo:lenet5-mnist", "--out", o]);
        v.extend(strs(extra));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (cal(&["--data", "mnist:test[0:2]"]), "at least 20 images"),
        (
            cal(&["--data", "mnist:test[0:50]", "--fpr", "0.01"]),
            "at least 100 images",
        ),
        (
            cal(&["--detector", "kd", "--fit-data", "mnist:train[0:100]"])
                .into_iter()
                .chain(strs(&["--data", "mnist:train[0:100]"]))
                .collect(),
            "share images [0:100]",
        ),
        (
            cal(&["--detector", "kd", "--fit-data", "mnist:train[0:100]"])
                .into_iter()
                .chain(strs(&["--data", "mnist:train[50:200]"]))
                .collect(),
            "share images [50:100]",
        ),
        (
            cal(&[
                "--data",
                "mnist:test[0:100]",
                "--bandwidth",
                "5",
                "--lid-k",
                "3",
            ]),
            "--bandwidth (for kd, kd-bu); --lid-k (for lid)",
        ),
        (
            cal(&["--data", "mnist:test[0:100]", "--detector", "kd"])
                .into_iter()
                .chain(strs(&[
                    "--fit-data",
                    "mnist:train[0:100]",
                    "--noise",
                    "0.1",
                ]))
                .collect(),
            "--noise (for mahalanobis)",
        ),
    ];
    refused_in(d, &cases);
    assert!(!out.exists());

    // A detector calibrated at S = 4 refuses another --mc-samples without --threshold.
    let ens = diverse_ensemble(d);
    ok(libre()
        .args(["-q", "calibrate", "--weights"])
        .arg(&ens)
        .args(["--data", "mnist:test[0:100]", "--out", o])
        .output()
        .unwrap());
    let detect = |extra: &[&str]| {
        libre()
            .args([
                "-q",
                "detect",
                "--weights",
                o,
                "mnist:test[100:104]",
                "--format",
                "csv",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let r = detect(&["--mc-samples", "2"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        stderr(&r).contains("calibrated at S = 4") && stderr(&r).contains("--threshold"),
        "{}",
        stderr(&r)
    );
    ok(detect(&["--mc-samples", "2", "--threshold", "0.5"]));
    ok(detect(&["--mc-samples", "4"]));

    // A folder image whose name is not UTF-8: its source is escaped losslessly.
    let imgs = d.join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    png(
        &imgs.join(std::ffi::OsStr::from_bytes(b"a\xff.png")),
        28,
        28,
    );
    png(&imgs.join("b\\xFF.png"), 28, 28);
    let r = ok(libre()
        .args([
            "-q",
            "detect",
            "--weights",
            "zoo:lenet5-mnist",
            "--format",
            "csv",
        ])
        .arg(&imgs)
        .output()
        .unwrap());
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(text.contains("a\\xFF.png,"), "{text}");
    assert!(text.contains("b\\\\xFF.png,"), "{text}");
}

/// Messages that cost a user a minute: negative thresholds, CRLF lists, a folder as --out or
/// --weights, `--out -`, HOME unset.
#[test]
fn messages_name_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("x.png");
    png(&img, 28, 28);
    let detect = || {
        let mut c = libre();
        c.args([
            "-q",
            "detect",
            "--weights",
            "zoo:lenet5-mnist",
            "--format",
            "csv",
        ]);
        c
    };
    // --threshold -12: a number, not a flag (max-logit thresholds are negative).
    let o = ok(detect()
        .args(["--score", "max-logit", "--threshold", "-12"])
        .arg(&img)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).contains(",1,ok"));
    // A CRLF list reads like an LF one.
    let list = d.join("list.txt");
    std::fs::write(&list, format!("{}\r\n", img.display())).unwrap();
    let o = ok(detect().arg("--files-from").arg(&list).output().unwrap());
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    // --out -: standard output.
    let o = ok(detect().arg(&img).args(["--out", "-"]).output().unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("source,"));
    assert!(!d.join("-").exists());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let sub = d.join("outdir");
    std::fs::create_dir(&sub).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            strs(&[
                "detect",
                "--weights",
                "zoo:lenet5-mnist",
                &s(&img),
                "--out",
                &s(&sub),
            ]),
            "is a directory; name a file",
        ),
        (
            strs(&["detect", "--weights", "zoo:lenet5-mnist", &s(&img)])
                .into_iter()
                .chain(strs(&["--out", &format!("{}/", d.join("new").display())]))
                .collect(),
            "is a directory; name a file",
        ),
        (
            strs(&["detect", "--weights", &s(d), &s(&img)]),
            "is a directory; name a checkpoint",
        ),
        (
            strs(&["detect", "--weights", "zoo:lenet5-mnist", &s(&img)])
                .into_iter()
                .chain(strs(&["--shard", "0/2", "--out", "-"]))
                .collect(),
            "--out - (standard output) cannot be sharded",
        ),
    ];
    refused_in(d, &cases);
    // HOME unset: the cache is not the shared /tmp/.cache/libre, and the user is told where.
    let o = ok(libre()
        .args(["data", "list"])
        .env_remove("HOME")
        .env_remove("LIBRE_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap());
    let err = stderr(&o);
    assert!(err.contains("HOME is not set"), "{err}");
    assert!(!err.contains("/tmp/.cache"), "{err}");
}

/// No `unwrap` or `expect` on a path of I/O or user input in the binary's command paths
/// (src/main.rs, src/cli/): a bare `.unwrap()` is refused, and every `.expect(` must state one of
/// these invariants in its message.
#[test]
fn command_paths_unwrap_only_commented_invariants() {
    const INVARIANTS: &[&str] = &[
        // clap enforces the argument before the command runs.
        "clap requires",
        // An earlier check in the same function already returned otherwise.
        "checked above",
        "checked:",
        // The element was pushed just before.
        "pushed",
        // `data_chunk` yields a decoded image for every row of a data set.
        "data batches are never empty",
        // `libre::detect::calibrate` refused non-finite scores before.
        "finite, checked by calibrate",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("src/main.rs")];
    for e in std::fs::read_dir(root.join("src/cli")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests sit in a `#[cfg(test)]` module at the end of a file.
        let body = text.split("#[cfg(test)]").next().unwrap();
        let name = f.file_name().unwrap().to_string_lossy();
        for (i, line) in body.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if line.contains(".unwrap()") {
                bad.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
        for (at, _) in body.match_indices(".expect(") {
            let msg = body[at + ".expect(".len()..].trim_start();
            let ok = msg
                .strip_prefix('"')
                .is_some_and(|m| INVARIANTS.iter().any(|inv| m.starts_with(inv)));
            if !ok {
                let line = body[..at].lines().count();
                bad.push(format!(
                    "{name}:{line}: .expect({}",
                    &msg[..msg.len().min(40)]
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "unwrap/expect outside the allow-list:\n{}",
        bad.join("\n")
    );
}

/// A finished cell belongs to the weights it ran on: replacing the weights file under the same
/// experiment text recomputes the cells instead of keeping the old results.
#[test]
fn evaluation_cells_follow_the_weights_content() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w.safetensors");
    // Two weights files of the same shape: the plain conversion (members equal to the
    // pretrained weights) and a perturbed one.
    let o = libre()
        .args([
            "-q",
            "convert",
            "--weights",
            "zoo:lenet5-mnist",
            "--posterior",
            "ensemble",
        ])
        .args(["--layers", "linear1", "--mc-samples", "4", "--out"])
        .arg(&w)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let other = diverse_ensemble(&d);
    let exp = tmp.path().join("e.toml");
    std::fs::write(
        &exp,
        format!(
            "data = \"mnist:test[0:8]\"\n[[model]]\nname = \"m\"\nweights = \"{}\"\nscores = \
             [\"feature-variance\"]\n[[attack]]\nname = \"fgsm\"\neps = [0.3]\n",
            w.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let run = || {
        let o = libre()
            .args(["-q", "--json", "evaluate", "--device", "cpu", "--out"])
            .arg(&out)
            .arg(&exp)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        v["data"]["cells_run"].as_array().unwrap().len()
    };
    assert_eq!(run(), 2);
    assert_eq!(run(), 0, "same weights: nothing to recompute");
    std::fs::copy(&other, &w).unwrap();
    assert_eq!(run(), 2, "new weights: every cell recomputed");
}
