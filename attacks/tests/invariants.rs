//! Property tests for every registered attack (docs/design.md section 8 conventions): outputs in
//! [0, 1], inside the eps-ball (l_inf, or l_2 with radius eps * sqrt(D)) up to float rounding,
//! eps = 0 returns the input, the same seed gives the same output, and the input tensor is not
//! modified.
//! Victims: a linear model on 2x4x4 inputs, and a 3-member ensemble with logits `[B, S, K]`, each
//! with a detector score for the attacks on a detector.

mod common;

use common::{to_tensor, Ensemble, Linear};
use libre_attacks::{by_name, Norm, Victim, ATTACK_NAMES};
use proptest::prelude::*;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// Small settings so that each case runs in milliseconds.
fn fast_params(name: &str, eps: f64) -> Value {
    match name {
        "fgsm" | "fgsm-rs" | "fgsm-l2" => json!({ "eps": eps }),
        "cw-l2" => json!({ "binary_search_steps": 2, "max_iterations": 8 }),
        "deepfool" | "deepfool-linf" => json!({ "max_iter": 4 }),
        "spsa" => json!({ "eps": eps, "steps": 3, "samples": 8, "max_batch": 4 }),
        _ => json!({ "eps": eps, "steps": 3, "step_size": eps / 2.0 }),
    }
}

/// A victim with a positive detector score (the mean pixel plus 0.1), which the attacks on a
/// detector need and the others ignore.
struct WithScore(Box<dyn Victim>);

impl Victim for WithScore {
    fn logits(&self, x: &Tensor) -> Tensor {
        self.0.logits(x)
    }
    fn score(&self, x: &Tensor) -> Option<Tensor> {
        Some(x.flatten(1, -1).mean_dim(-1, false, Kind::Float) + 0.1)
    }
}

fn victim(bayes: bool) -> Box<dyn Victim> {
    let v: Box<dyn Victim> = if bayes {
        Box::new(Ensemble {
            members: (0..3)
                .map(|i| Linear::random(4, 32, 300 + i, 2.0))
                .collect(),
        })
    } else {
        Box::new(Linear::random(4, 32, 7, 2.0))
    };
    Box::new(WithScore(v))
}

fn inputs() -> impl Strategy<Value = (Vec<f64>, Vec<i64>)> {
    // Pixels from a mix of interior values and the exact box edges.
    let pixel = prop_oneof![6 => 0.0f64..=1.0, 1 => Just(0.0), 1 => Just(1.0)];
    (
        prop::collection::vec(pixel, 3 * 32),
        prop::collection::vec(0i64..4, 3),
    )
}

fn check_attack(name: &str, bayes: bool, x: &[f64], y: &[i64], eps: f64, seed: u64) {
    let v = victim(bayes);
    let attack = by_name(name, &fast_params(name, eps)).unwrap();
    let xt = to_tensor(x, &[3, 2, 4, 4]);
    let before = xt.copy();
    let yt = Tensor::from_slice(y);
    let adv = attack.perturb(v.as_ref(), &xt, &yt, seed).unwrap();
    assert_eq!(adv.size(), xt.size(), "{name}: shape");
    assert_eq!(
        (xt.to_kind(Kind::Double) - before.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]),
        0.0,
        "{name}: input modified"
    );
    assert!(
        adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0,
        "{name}: left [0, 1]"
    );
    let d = (&adv - &xt).to_kind(Kind::Double).flatten(1, -1);
    if let Some(b) = attack.budget() {
        match b.norm {
            Norm::Linf => {
                let m = d.abs().max().double_value(&[]);
                assert!(m <= b.eps + 1e-6, "{name}: linf {m} > eps {}", b.eps);
            }
            Norm::L2 => {
                let m = d
                    .square()
                    .sum_dim_intlist(1, false, Kind::Double)
                    .sqrt()
                    .max()
                    .double_value(&[]);
                let r = b.eps * 32f64.sqrt();
                assert!(m <= r + 1e-5, "{name}: l2 {m} > radius {r}");
            }
        }
    }
    let again = attack.perturb(v.as_ref(), &xt, &yt, seed).unwrap();
    assert_eq!(
        (&again - &adv).abs().max().double_value(&[]),
        0.0,
        "{name}: same seed, different output"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn every_attack_respects_its_threat_model(
        (x, y) in inputs(), eps in 0.0f64..0.3, seed in any::<u64>(), bayes in any::<bool>()
    ) {
        for name in ATTACK_NAMES {
            check_attack(name, bayes, &x, &y, eps, seed);
        }
    }

    #[test]
    fn eps_zero_returns_the_input((x, y) in inputs(), seed in any::<u64>(), bayes in any::<bool>()) {
        let v = victim(bayes);
        let xt = to_tensor(&x, &[3, 2, 4, 4]);
        let yt = Tensor::from_slice(&y);
        for name in ATTACK_NAMES {
            let attack = by_name(name, &fast_params(name, 0.0)).unwrap();
            if attack.budget().is_none() {
                continue; // minimal-perturbation attacks have no eps
            }
            let adv = attack.perturb(v.as_ref(), &xt, &yt, seed).unwrap();
            prop_assert_eq!((&adv - &xt).abs().max().double_value(&[]), 0.0, "{}", name);
        }
    }
}

#[test]
fn seeds_matter_for_random_starts() {
    let v = victim(false);
    let xt = Tensor::full([3, 2, 4, 4], 0.5, (Kind::Float, tch::Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2]);
    let a = by_name("pgd", &json!({"eps": 0.1, "steps": 1, "step_size": 0.01})).unwrap();
    let o1 = a.perturb(v.as_ref(), &xt, &y, 1).unwrap();
    let o2 = a.perturb(v.as_ref(), &xt, &y, 2).unwrap();
    assert!((&o1 - &o2).abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn bad_inputs_are_refused_with_named_errors() {
    let v = victim(false);
    let a = by_name("pgd", &Value::Null).unwrap();
    let y = Tensor::from_slice(&[0i64]);
    let x = Tensor::full([1, 2, 4, 4], 1.5, (Kind::Float, tch::Device::Cpu));
    let e = a.perturb(v.as_ref(), &x, &y, 0).unwrap_err().to_string();
    assert!(e.contains("[0, 1]"), "{e}");
    let x = Tensor::full([1, 32], 0.5, (Kind::Float, tch::Device::Cpu));
    let e = a.perturb(v.as_ref(), &x, &y, 0).unwrap_err().to_string();
    assert!(e.contains("[B, C, H, W]"), "{e}");
    let x = Tensor::full([2, 2, 4, 4], 0.5, (Kind::Float, tch::Device::Cpu));
    let e = a.perturb(v.as_ref(), &x, &y, 0).unwrap_err().to_string();
    assert!(e.contains("labels y"), "{e}");
}
