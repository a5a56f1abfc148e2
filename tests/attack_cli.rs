//! `libre attack` on the real zoo models and MNIST: advertorch's normally trained LeNet5 falls to
//! PGD-40 (eps 0.3), the PGD-trained one keeps most of its accuracy.

mod common;
use common::libre;

fn attack(weights: &str, out: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let o = libre()
        .args([
            "--json",
            "attack",
            "--weights",
            weights,
            "--data",
            "mnist:test",
            "--limit",
            "100",
        ])
        .args(["--device", "cpu", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
    v["data"].clone()
}

#[test]
fn pgd40_breaks_the_normal_lenet5_but_not_the_adversarially_trained_one() {
    let d = tempfile::tempdir().unwrap();
    let pgd = [
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--step-size",
        "0.01",
        "--steps",
        "40",
    ];
    let a = attack("zoo:lenet5-mnist", &d.path().join("a.safetensors"), &pgd);
    assert!(a["clean_accuracy"].as_f64().unwrap() > 0.95, "{a}");
    assert!(a["robust_accuracy"].as_f64().unwrap() < 0.05, "{a}");
    assert!(a["max_linf"].as_f64().unwrap() <= 0.3 + 1e-6, "{a}");
    let b = attack(
        "zoo:lenet5-mnist-adv",
        &d.path().join("b.safetensors"),
        &pgd,
    );
    assert!(b["robust_accuracy"].as_f64().unwrap() > 0.8, "{b}");

    // The output is a batch file other commands read: evaluate the adversarial batch.
    let o = libre()
        .args(["--json", "eval", "--weights", "zoo:lenet5-mnist", "--data"])
        .arg(d.path().join("a.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
    assert_eq!(v["data"]["n"], 100);
    assert!(
        (v["data"]["top1"].as_f64().unwrap() - a["robust_accuracy"].as_f64().unwrap()).abs() < 1e-9
    );
}

#[test]
fn bad_attack_settings_are_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.safetensors");
    for (args, needle) in [
        (vec!["--attack", "pgd", "--eps", "-1"], "eps"),
        (vec!["--attack", "nope", "--eps", "0.1"], "unknown --attack"),
        (vec!["--attack", "pgd", "--steps", "0"], "steps"),
    ] {
        let o = libre()
            .args([
                "attack",
                "--weights",
                "zoo:lenet5-mnist",
                "--data",
                "mnist:test",
            ])
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists());
    }
}
