//! Helpers shared by the integration tests that run the real `libre` binary.
#![allow(dead_code)]

use assert_cmd::Command;

/// The `libre` binary of this build.
pub fn libre() -> Command {
    Command::cargo_bin("libre").unwrap()
}

/// Asserts success, printing the exit code and stderr otherwise.
pub fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `data` of the final `{"type":"result"}` line of a successful `--json` run.
pub fn json_result(out: std::process::Output) -> serde_json::Value {
    let out = ok(out);
    let s = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
    assert_eq!(v["type"], "result", "{v}");
    v["data"].clone()
}

/// A small ensemble (linear1, 4 members) of the zoo LeNet5 whose members differ, so that spread
/// scores mean something.
pub fn diverse_ensemble(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("ens.safetensors");
    ok(libre()
        .args([
            "-q",
            "convert",
            "--weights",
            "zoo:lenet5-mnist",
            "--posterior",
            "ensemble",
        ])
        .args(["--layers", "linear1", "--mc-samples", "4", "--out"])
        .arg(&p)
        .output()
        .unwrap());
    let (m, _) = libre::weights::checkpoint::load(&p, tch::Device::Cpu).unwrap();
    tch::manual_seed(5);
    tch::no_grad(|| {
        for (n, mut t) in m.var_store().variables() {
            if n.ends_with("_members") {
                let _ = t.g_add_(&(t.randn_like() * 0.01));
            }
        }
    });
    libre::weights::checkpoint::save(&p, m.as_ref()).unwrap();
    p
}

/// Writes `toml` as `dir/exp.toml`, runs `libre -q evaluate --device cpu` on it into `dir/run`
/// (which must succeed) and returns the run directory.
pub fn evaluate_experiment(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let exp = dir.join("exp.toml");
    std::fs::write(&exp, toml).unwrap();
    let run = dir.join("run");
    ok(libre()
        .args(["-q", "evaluate", "--device", "cpu", "--out"])
        .arg(&run)
        .arg(&exp)
        .output()
        .unwrap());
    run
}

/// The `summary.json` of a finished `libre evaluate` run.
pub fn run_summary(run: &std::path::Path) -> serde_json::Value {
    let p = run.join("summary.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The mean of a detector's first score over adversarial images that a PGD (eps 0.3, 20 steps
/// of 0.03) with mimicry weight `c` crafts against it on the first 32 test digits, written to
/// `adv`: an adaptive attacker that follows the score's gradient makes this lower at C > 0.
#[allow(dead_code)]
pub fn mean_adaptive_score(weights: &std::path::Path, adv: &std::path::Path, c: &str) -> f64 {
    ok(libre()
        .args([
            "-q",
            "attack",
            "--data",
            "mnist:test[0:32]",
            "--attack",
            "pgd",
        ])
        .args([
            "--eps",
            "0.3",
            "--steps",
            "20",
            "--step-size",
            "0.03",
            "--adaptive",
            c,
        ])
        .arg("--weights")
        .arg(weights)
        .arg("--out")
        .arg(adv)
        .output()
        .unwrap());
    let o = ok(libre()
        .args(["-q", "detect", "--format", "csv", "--weights"])
        .arg(weights)
        .arg(adv)
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let v: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(4).unwrap().parse().unwrap())
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}
