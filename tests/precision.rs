//! bf16 inference (docs/design.md section 15): a bf16 forward stays close to the float32 one on
//! every model family, returns float32, and going back to f32 restores the weights and the f32
//! outputs bit for bit; saving and converting refuse a bf16 model; `libre calibrate --precision
//! bf16` records the precision and keeps float32 weights, and `libre detect` honours it.

use libre::bayes::{Family, ForwardMode, LayerSelection, PosteriorConfig};
use libre::models::{self, BayesModel, ModelConfig};
use libre::runtime::precision::Precision;
use tch::{Device, Kind, Tensor};

mod common;
use common::{json_result, libre};

/// libtorch's generator is process-wide: the tests of this binary take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Members / variances that differ from the means (a fresh conversion copies the means).
fn perturb(m: &dyn BayesModel, scale: f64) {
    tch::no_grad(|| {
        for (n, mut t) in m.var_store().variables() {
            if n.ends_with("_members") || n.contains("_lr_") {
                let _ = t.g_add_(&(t.randn_like() * scale));
            }
        }
    });
}

/// One forward at `p`: logits and features (float32), with the generator reseeded so sampling
/// posteriors draw alike at both precisions' calls of the same precision.
fn forward(m: &dyn BayesModel, x: &Tensor, mode: &ForwardMode) -> (Tensor, Tensor) {
    tch::manual_seed(7);
    tch::no_grad(|| m.forward_mc_with_features(x, mode)).unwrap()
}

#[test]
fn bf16_forward_is_close_returns_f32_and_restores_exactly() {
    let _serial = serial();
    tch::manual_seed(0);
    let cases: Vec<(ModelConfig, Option<(Family, &str)>, [i64; 4])> = vec![
        (ModelConfig::lenet5(), None, [6, 1, 28, 28]),
        (
            ModelConfig::lenet5(),
            Some((Family::Ensemble, "linear1")),
            [6, 1, 28, 28],
        ),
        // BatchNorm folded into the convs, the centre-tap matmuls of 1x1 maps, packed members.
        (
            ModelConfig::resnet(18, 10, 32, false),
            Some((Family::Ensemble, "last-block")),
            [3, 3, 32, 32],
        ),
        (
            ModelConfig::resnet(18, 10, 32, false),
            Some((Family::LowRank, "last-block")),
            [3, 3, 32, 32],
        ),
        (
            ModelConfig::resnet(18, 10, 32, false),
            Some((Family::MeanField, "last-block")),
            [3, 3, 32, 32],
        ),
    ];
    for (cfg, post, shape) in cases {
        let mut m = models::build(&cfg, Device::Cpu).unwrap();
        let mode = match post {
            Some((family, layers)) => {
                m.convert(
                    &layers.parse::<LayerSelection>().unwrap(),
                    &PosteriorConfig::new(family, 4),
                )
                .unwrap();
                perturb(m.as_ref(), 0.05);
                // A sampling posterior draws other numbers at bf16: compare its mean forward.
                if family == Family::MeanField {
                    ForwardMode::Deterministic
                } else {
                    ForwardMode::ParallelMc { samples: 4 }
                }
            }
            None => ForwardMode::Deterministic,
        };
        let what = format!("{} {post:?}", cfg.arch.name());
        let x = Tensor::rand(shape, (Kind::Float, Device::Cpu));
        let weights: Vec<(String, Tensor)> = m
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let (y32, f32_) = forward(m.as_ref(), &x, &mode);
        m.set_precision(Precision::Bf16).unwrap();
        assert_eq!(m.precision(), Precision::Bf16);
        let (y16, f16) = forward(m.as_ref(), &x, &mode);
        assert_eq!(
            y16.kind(),
            Kind::Float,
            "{what}: logits come back as float32"
        );
        assert_eq!(f16.kind(), Kind::Float, "{what}");
        assert_eq!(y16.size(), y32.size(), "{what}");
        // bf16 keeps 8 significant bits: a few parts in a hundred of the output's scale.
        let (dy, dyr) = (max_abs(&(&y16 - &y32)), max_abs(&y32));
        let (df, dfr) = (max_abs(&(&f16 - &f32_)), max_abs(&f32_));
        assert!(
            dy <= 0.05 * dyr + 1e-3,
            "{what}: logits {dy} vs scale {dyr}"
        );
        assert!(
            df <= 0.05 * dfr + 1e-3,
            "{what}: features {df} vs scale {dfr}"
        );
        assert!(dy > 0.0, "{what}: the bf16 forward did not run in bf16");
        if post.is_some_and(|(f, _)| f == Family::MeanField) {
            // Its sampled forward at bf16 (draws made in float32 and cast): finite float32 logits.
            let (ys, _) = forward(m.as_ref(), &x, &ForwardMode::ParallelMc { samples: 4 });
            assert_eq!(ys.size(), [shape[0], 4, 10]);
            assert_eq!(ys.kind(), Kind::Float);
            assert!(ys.isfinite().all().int64_value(&[]) == 1, "{what}");
        }
        // Saving or converting a bf16 model would lose the float32 weights: refused.
        let dir = tempfile::tempdir().unwrap();
        let e = libre::weights::checkpoint::save(dir.path().join("m.safetensors"), m.as_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32") && e.contains("bf16"), "{e}");
        assert!(!dir.path().join("m.safetensors").exists());
        assert!(m.to_deterministic().is_err(), "{what}");
        // Back to f32: the same weights and the same outputs, bit for bit (caches rebuilt).
        m.set_precision(Precision::F32).unwrap();
        for (n, t) in &weights {
            let v = &m.var_store().variables()[n];
            assert_eq!(v.kind(), t.kind(), "{what}: {n}");
            assert!(v.equal(t), "{what}: {n} not restored exactly");
        }
        let (y, f) = forward(m.as_ref(), &x, &mode);
        assert!(
            y.equal(&y32) && f.equal(&f32_),
            "{what}: f32 outputs changed"
        );
    }
}

#[test]
fn bf16_attack_gradients_and_input_checks_still_work() {
    let _serial = serial();
    tch::manual_seed(1);
    let mut m = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    m.set_precision(Precision::Bf16).unwrap();
    // Input gradients flow through a bf16 forward (float32 at the input).
    let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = m.forward_mc(&x, &ForwardMode::Deterministic).unwrap();
    y.sum(Kind::Float).backward();
    let g = x.grad();
    assert_eq!(g.kind(), Kind::Float);
    assert!(max_abs(&g) > 0.0);
    // The API still takes float32 pixels only.
    let e = m
        .forward_mc(
            &x.detach().to_kind(Kind::BFloat16),
            &ForwardMode::Deterministic,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("float32"), "{e}");
    m.set_precision(Precision::F32).unwrap();
    assert_eq!(
        m.var_store().variables()["linear1.weight"].kind(),
        Kind::Float
    );
}

/// `libre calibrate --precision bf16` records bf16 and writes the float32 weights it read;
/// `libre detect` scores at bf16 without being told, refuses f32 with the bf16 threshold, and
/// takes f32 with a threshold of its own.
#[test]
fn calibrate_records_bf16_and_detect_honours_it() {
    let dir = tempfile::tempdir().unwrap();
    let det = dir.path().join("det.safetensors");
    let r = json_result(
        libre()
            .args(["--json", "-q", "calibrate", "--weights", "zoo:lenet5-mnist"])
            .args(["--data", "mnist:test[0:500]", "--device", "cpu"])
            .args(["--precision", "bf16", "--out"])
            .arg(&det)
            .output()
            .unwrap(),
    );
    assert_eq!(r["precision"], "bf16");
    let zoo = libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut |_| {}).unwrap();
    let (a, _) = libre::weights::checkpoint::load_or_build(&zoo, None, Device::Cpu).unwrap();
    let (b, _) = libre::weights::checkpoint::load_or_build(&det, None, Device::Cpu).unwrap();
    let (va, vb) = (a.var_store().variables(), b.var_store().variables());
    assert_eq!(va.len(), vb.len());
    for (n, t) in &va {
        assert_eq!(vb[n].kind(), Kind::Float, "{n}");
        assert!(vb[n].equal(t), "{n}: the detector file changed the weights");
    }
    let rows = dir.path().join("rows.csv");
    let detect = |extra: &[&str]| {
        libre()
            .args(["--json", "-q", "detect", "--weights"])
            .arg(&det)
            .args(["mnist:test[500:700]", "--device", "cpu", "--out"])
            .arg(&rows)
            .args(extra)
            .output()
            .unwrap()
    };
    let r = json_result(detect(&[]));
    assert_eq!(r["precision"], "bf16");
    assert_eq!(r["n"], 200);
    let out = detect(&["--precision", "f32"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("calibrated at bf16") && e.contains("--threshold"),
        "{e}"
    );
    let r = json_result(detect(&["--precision", "f32", "--threshold", "0.5"]));
    assert_eq!(r["precision"], "f32");
    // Classic detectors are fitted in float32: refused before any fitting, nothing written.
    let kd = dir.path().join("kd.safetensors");
    let out = libre()
        .args([
            "calibrate",
            "--weights",
            "zoo:lenet5-mnist",
            "--detector",
            "kd",
        ])
        .args([
            "--fit-data",
            "mnist:train[0:100]",
            "--data",
            "mnist:test[0:100]",
        ])
        .args(["--device", "cpu", "--precision", "bf16", "--out"])
        .arg(&kd)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("classic detectors (kd)"), "{e}");
    assert!(!kd.exists());
    let out = libre()
        .args([
            "eval",
            "--weights",
            "zoo:lenet5-mnist",
            "--data",
            "mnist:test[0:10]",
        ])
        .args(["--device", "cpu", "--precision", "f16"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected f32 or bf16"));
}

/// `libre attack --precision bf16` attacks the model at bf16: FGSM's gradient signs agree with
/// the f32 attack's on most pixels, and the result and batch file record the precision.
#[test]
fn attack_at_bf16_follows_the_f32_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let run = |p: &str| {
        let f = dir.path().join(format!("fgsm-{p}.safetensors"));
        let r = json_result(
            libre()
                .args(["--json", "-q", "attack", "--weights", "zoo:lenet5-mnist"])
                .args([
                    "--data",
                    "mnist:test[0:40]",
                    "--attack",
                    "fgsm",
                    "--eps",
                    "0.1",
                ])
                .args(["--device", "cpu", "--precision", p, "--out"])
                .arg(&f)
                .output()
                .unwrap(),
        );
        assert_eq!(r["precision"], p);
        let t = Tensor::read_safetensors(&f).unwrap();
        t.into_iter()
            .find(|(n, _)| n == "images")
            .expect("an images tensor")
            .1
            .to_kind(Kind::Float)
    };
    let (a, b) = (run("f32"), run("bf16"));
    assert_eq!(a.size(), b.size());
    let same = (&a - &b)
        .abs()
        .le(1e-3)
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    let same = same.double_value(&[]);
    assert!(same > 0.9, "only {same} of the pixels agree");
    // ... but not all (99.3 % when written): the gradient was computed at bf16.
    assert!(
        same < 1.0,
        "the bf16 attack equals the f32 one: it did not run at bf16"
    );
}

/// An evaluation plan's model may be attacked and scored at bf16: its cells record it, and its
/// clean and adversarial accuracies stay within a few images of the same model at f32.
#[test]
fn evaluate_runs_a_model_at_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let plan = r#"data = "mnist:test[0:64]"
seed = 1
batch_size = 32
[[model]]
name = "dnn32"
weights = "zoo:lenet5-mnist"
scores = ["msp"]
[[model]]
name = "dnn16"
weights = "zoo:lenet5-mnist"
scores = ["msp"]
precision = "bf16"
[[attack]]
name = "fgsm"
eps = [0.1]
"#;
    let exp = dir.path().join("exp.toml");
    std::fs::write(&exp, plan).unwrap();
    let out = dir.path().join("out");
    let o = libre()
        .args(["-q", "evaluate", "--device", "cpu", "--out"])
        .arg(&out)
        .arg(&exp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut acc = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(out.join("cells")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            let model = v["model"].as_str().unwrap().to_string();
            let want = if model == "dnn16" { "bf16" } else { "f32" };
            assert_eq!(v["precision"], want, "{}", p.display());
            let key = (v["attack"].to_string(), model);
            acc.insert(key, v["accuracy"].as_f64().unwrap());
        }
    }
    assert_eq!(acc.len(), 4, "{acc:?}");
    for attack in ["null", "\"fgsm\""] {
        let a = acc[&(attack.to_string(), "dnn32".to_string())];
        let b = acc[&(attack.to_string(), "dnn16".to_string())];
        assert!((a - b).abs() <= 3.0 / 64.0, "{attack}: f32 {a} vs bf16 {b}");
    }
}
