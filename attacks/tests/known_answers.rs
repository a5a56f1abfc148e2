//! Known answers on closed-form victims; the derivations are in `known_answers.md` beside this
//! file. Hand computations run in f64 on plain vectors, independent of the crate's tensor code.

mod common;

use std::cell::Cell;

use common::{softmax, table, to_tensor, to_vec, Cycling, Ensemble, Linear, Scored};
use libre_attacks::bim::Bim;
use libre_attacks::cw_l2::{CwL2, CwL2Config};
use libre_attacks::deepfool::{DeepFool, DeepFoolConfig};
use libre_attacks::fgsm::{Fgsm, FgsmConfig};
use libre_attacks::iterative::gaussian_kernel;
use libre_attacks::mim::{Mim, MimConfig};
use libre_attacks::pgd::Pgd;
use libre_attacks::spsa::{Spsa, SpsaConfig};
use libre_attacks::{
    predict, Attack, AttackError, AttackReport, IterativeConfig, LossKind, McMode, Norm, Objective,
    Victim,
};
use tch::{Kind, Tensor};

const SHAPE: [i64; 4] = [1, 2, 4, 4];
const D: usize = 32;

/// An input in [0.3, 0.7] so that small steps never touch the pixel box.
fn mid_input(seed: u64) -> Vec<f64> {
    table(D, seed).iter().map(|v| 0.5 + 0.2 * v).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn label(y: i64) -> Tensor {
    Tensor::from_slice(&[y])
}

#[test]
fn fgsm_on_a_linear_model_is_the_signed_softmax_gradient() {
    let model = Linear::random(3, D, 11, 1.0);
    // Inputs that touch the box, to check the clamp as well.
    let x: Vec<f64> = table(D, 5)
        .iter()
        .map(|v| (0.5 + 0.6 * v).clamp(0.0, 1.0))
        .collect();
    let eps = 0.1;
    for y in 0..3 {
        let g = model.ce_grad_f64(&x, y);
        let want: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(xi, gi)| (xi + eps * sign(*gi)).clamp(0.0, 1.0))
            .collect();
        let fgsm = Fgsm::new(FgsmConfig {
            eps,
            ..FgsmConfig::default()
        })
        .unwrap();
        let adv = fgsm
            .perturb(&model, &to_tensor(&x, &SHAPE), &label(y as i64), 0)
            .unwrap();
        assert_close(&to_vec(&adv), &want, 1e-6, "fgsm");
        // Targeted at t: descend CE(t), i.e. step along -sign(W^T (p - e_t)).
        let t = (y + 1) % 3;
        let gt = model.ce_grad_f64(&x, t);
        let want_t: Vec<f64> = x
            .iter()
            .zip(&gt)
            .map(|(xi, gi)| (xi - eps * sign(*gi)).clamp(0.0, 1.0))
            .collect();
        let cfg = FgsmConfig {
            eps,
            objective: Objective {
                targeted: true,
                ..Objective::default()
            },
            ..FgsmConfig::default()
        };
        let adv = Fgsm::new(cfg)
            .unwrap()
            .perturb(&model, &to_tensor(&x, &SHAPE), &label(t as i64), 0)
            .unwrap();
        assert_close(&to_vec(&adv), &want_t, 1e-6, "targeted fgsm");
    }
}

#[test]
fn pgd_on_a_binary_linear_model_saturates_at_the_signed_corner() {
    let model = Linear::random(2, D, 21, 1.0);
    let x = mid_input(3);
    let (eps, step, steps) = (0.1, 0.03, 10); // steps * step >= 2 eps: any start saturates
    let dir: Vec<f64> = (0..D).map(|i| sign(model.w[D + i] - model.w[i])).collect(); // y = 0
    let want: Vec<f64> = x.iter().zip(&dir).map(|(xi, s)| xi + eps * s).collect();
    let cfg = IterativeConfig {
        eps,
        step_size: step,
        steps,
        ..IterativeConfig::spec_default(true)
    };
    for seed in [0, 1, 99] {
        let adv = Pgd::new(cfg.clone())
            .unwrap()
            .perturb(&model, &to_tensor(&x, &SHAPE), &label(0), seed)
            .unwrap();
        assert_close(&to_vec(&adv), &want, 1e-6, "pgd linf");
    }
    // l2 BIM from x: every step moves along w' / ||w'||, the projection stops it at the radius.
    let wd: Vec<f64> = (0..D).map(|i| model.w[D + i] - model.w[i]).collect();
    let norm = wd.iter().map(|v| v * v).sum::<f64>().sqrt();
    let eps_l2 = 0.02; // radius 0.02 * sqrt(32) = 0.113, far from the box
    let radius = eps_l2 * (D as f64).sqrt();
    let want: Vec<f64> = x
        .iter()
        .zip(&wd)
        .map(|(xi, w)| xi + radius * w / norm)
        .collect();
    let cfg = IterativeConfig {
        eps: eps_l2,
        step_size: 0.01,
        steps: 5,
        norm: Norm::L2,
        ..IterativeConfig::spec_default(false)
    };
    let adv = Bim::new(cfg)
        .unwrap()
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(0), 0)
        .unwrap();
    assert_close(&to_vec(&adv), &want, 1e-5, "bim l2");
}

#[test]
fn deepfool_takes_the_closed_form_minimal_step_on_an_affine_binary_model() {
    // Random weights, bias chosen so that z_0 - z_1 = 0.3: the step stays inside the pixel box.
    let r = Linear::random(2, D, 31, 0.5);
    let x = mid_input(7);
    let z = Linear::new(2, D, r.w.clone(), vec![0.0, 0.0]).logits_f64(&x);
    let model = Linear::new(2, D, r.w, vec![0.0, z[0] - z[1] - 0.3]);
    let z = model.logits_f64(&x);
    let y = 0;
    let o = 1 - y;
    let wd: Vec<f64> = (0..D)
        .map(|i| model.w[o * D + i] - model.w[y * D + i])
        .collect();
    let f = (z[o] - z[y]).abs();
    // l2: r = (|f| + 1e-4) w' / ||w'||^2, scaled by 1 + overshoot.
    let n2: f64 = wd.iter().map(|v| v * v).sum();
    let want: Vec<f64> = x
        .iter()
        .zip(&wd)
        .map(|(xi, w)| xi + 1.02 * (f + 1e-4) * w / n2)
        .collect();
    let adv = DeepFool::default()
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(y as i64), 0)
        .unwrap();
    assert_close(&to_vec(&adv), &want, 1e-5, "deepfool l2");
    assert_eq!(predict(&model, &adv).int64_value(&[0]), o as i64);
    // l_inf: r = (|f| + 1e-4) sign(w') / ||w'||_1.
    let n1: f64 = wd.iter().map(|v| v.abs()).sum();
    let want: Vec<f64> = x
        .iter()
        .zip(&wd)
        .map(|(xi, w)| xi + 1.02 * (f + 1e-4) * sign(*w) / n1)
        .collect();
    let df = DeepFool::new(DeepFoolConfig {
        norm: Norm::Linf,
        ..DeepFoolConfig::default()
    })
    .unwrap();
    let adv = df
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(y as i64), 0)
        .unwrap();
    assert_close(&to_vec(&adv), &want, 1e-5, "deepfool linf");
    // An input already misclassified is returned unchanged.
    let adv = DeepFool::default()
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(o as i64), 0)
        .unwrap();
    assert_close(&to_vec(&adv), &x, 1e-7, "deepfool on a misclassified input");
}

fn ensemble(s: usize) -> Ensemble {
    Ensemble {
        members: (0..s)
            .map(|i| Linear::random(3, D, 100 + i as u64, 1.0))
            .collect(),
    }
}

/// Gradient of -log(mean_s p_s(y)): sum_s [p_s(y) / sum p(y)] W_s^T (p_s - e_y).
fn predictive_grad(members: &[Linear], x: &[f64], y: usize) -> Vec<f64> {
    let py: Vec<f64> = members
        .iter()
        .map(|m| softmax(&m.logits_f64(x))[y])
        .collect();
    let total: f64 = py.iter().sum();
    let mut g = vec![0.0; D];
    for (m, p) in members.iter().zip(&py) {
        for (gi, gs) in g.iter_mut().zip(m.ce_grad_f64(x, y)) {
            *gi += p / total * gs;
        }
    }
    g
}

#[test]
fn mc_averaged_objective_matches_the_hand_gradient_and_weighted_samples_agree() {
    let victim = ensemble(4);
    let x = mid_input(9);
    let xt = to_tensor(&x, &SHAPE);
    for y in 0..3 {
        let want = predictive_grad(&victim.members, &x, y);
        let obj = Objective::default();
        let got = to_vec(
            &obj.gradient("test", &victim, &xt, &label(y as i64), None)
                .unwrap(),
        );
        assert_close(&got, &want, 1e-5, "predictive gradient");
        let weighted = Objective {
            mc_mode: McMode::WeightedSamples,
            ..Objective::default()
        };
        let got = to_vec(
            &weighted
                .gradient("test", &victim, &xt, &label(y as i64), None)
                .unwrap(),
        );
        assert_close(&got, &want, 1e-5, "weighted-samples gradient");
        // ... and FGSM on the ensemble steps along its sign.
        let eps = 0.05;
        let adv = Fgsm::new(FgsmConfig {
            eps,
            ..FgsmConfig::default()
        })
        .unwrap()
        .perturb(&victim, &xt, &label(y as i64), 0)
        .unwrap();
        let want_adv: Vec<f64> = x
            .iter()
            .zip(&want)
            .map(|(xi, g)| xi + eps * sign(*g))
            .collect();
        assert_close(&to_vec(&adv), &want_adv, 1e-6, "fgsm on the ensemble");
    }
    // The margin differs between the two modes: the predictive margin uses log mean p.
    let margin = Objective {
        loss: LossKind::Margin,
        ..Objective::default()
    };
    let logits = victim.logits(&xt);
    let got = margin
        .per_example("test", &logits, &label(0))
        .unwrap()
        .double_value(&[0]);
    let mean_p: Vec<f64> = (0..3)
        .map(|k| {
            victim
                .members
                .iter()
                .map(|m| softmax(&m.logits_f64(&x))[k])
                .sum::<f64>()
                / 4.0
        })
        .collect();
    let want = (mean_p[1].max(mean_p[2]) + 1e-10).ln() - (mean_p[0] + 1e-10).ln();
    assert!(
        (got - want).abs() < 1e-5,
        "predictive margin {got} vs {want}"
    );
    // The wrong-class confidence: log of the largest wrong class's predictive probability, for
    // every label (the attack on confidence-thresholding detectors).
    let conf = Objective {
        loss: LossKind::WrongConfidence,
        ..Objective::default()
    };
    for y in 0..3usize {
        let got = conf
            .per_example("test", &logits, &label(y as i64))
            .unwrap()
            .double_value(&[0]);
        let want = (0..3)
            .filter(|&k| k != y)
            .map(|k| (mean_p[k] + 1e-10).ln())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            (got - want).abs() < 1e-5,
            "wrong-class confidence, label {y}: {got} vs {want}"
        );
    }
}

#[test]
fn eot_averages_independent_draws_of_a_sampling_victim() {
    let members: Vec<Linear> = (0..3).map(|i| Linear::random(3, D, 200 + i, 1.0)).collect();
    let x = mid_input(13);
    let want: Vec<f64> = (0..D)
        .map(|i| members.iter().map(|m| m.ce_grad_f64(&x, 1)[i]).sum::<f64>() / 3.0)
        .collect();
    let victim = Cycling {
        members,
        next: Cell::new(0),
    };
    let obj = Objective {
        eot_samples: 3,
        ..Objective::default()
    };
    let got = to_vec(
        &obj.gradient("test", &victim, &to_tensor(&x, &SHAPE), &label(1), None)
            .unwrap(),
    );
    assert_close(&got, &want, 1e-5, "EoT gradient");
    // Without EoT a single draw (the next member) is used.
    victim.next.set(2);
    let single = to_vec(
        &Objective::default()
            .gradient("test", &victim, &to_tensor(&x, &SHAPE), &label(1), None)
            .unwrap(),
    );
    assert_close(
        &single,
        &victim.members[2].ce_grad_f64(&x, 1),
        1e-5,
        "single draw",
    );
}

#[test]
fn adaptive_objective_subtracts_c_times_the_score_gradient() {
    let model = Linear::random(3, D, 41, 1.0);
    let v: Vec<f64> = table(D, 42);
    let x = mid_input(17);
    let ce = model.ce_grad_f64(&x, 2);
    let victim = Scored {
        model,
        v: v.clone(),
    };
    let c = 0.7;
    let obj = Objective {
        adaptive_c: c,
        ..Objective::default()
    };
    let got = to_vec(
        &obj.gradient("test", &victim, &to_tensor(&x, &SHAPE), &label(2), None)
            .unwrap(),
    );
    let want: Vec<f64> = ce.iter().zip(&v).map(|(g, vi)| g - c * vi).collect();
    assert_close(&got, &want, 1e-5, "adaptive gradient");
    // A victim without a score is refused, naming the problem.
    let plain = Linear::random(3, D, 41, 1.0);
    let err = obj
        .gradient("pgd", &plain, &to_tensor(&x, &SHAPE), &label(2), None)
        .unwrap_err();
    assert!(matches!(err, AttackError::NoScore { .. }), "{err}");
}

#[test]
fn one_step_mim_equals_fgsm() {
    let model = Linear::random(3, D, 51, 1.0);
    let x = to_tensor(&mid_input(19), &SHAPE);
    let eps = 0.03;
    let base = IterativeConfig {
        eps,
        step_size: eps,
        steps: 1,
        ..IterativeConfig::spec_default(false)
    };
    let mim = Mim::new(MimConfig { base, decay: 1.0 })
        .unwrap()
        .perturb(&model, &x, &label(0), 0)
        .unwrap();
    let fgsm = Fgsm::new(FgsmConfig {
        eps,
        ..FgsmConfig::default()
    })
    .unwrap()
    .perturb(&model, &x, &label(0), 0)
    .unwrap();
    assert_close(&to_vec(&mim), &to_vec(&fgsm), 1e-7, "mim-1 vs fgsm");
}

#[test]
fn tim_kernel_is_the_normalised_gaussian_outer_product() {
    let k = gaussian_kernel(7, 3.0);
    assert_eq!(k.size(), [7, 7]);
    // linspace(-3, 3, 7) = -3..=3, so the 1-D weights are exp(-t^2 / 2) at integers.
    let one_d: Vec<f64> = (-3..=3)
        .map(|t: i32| (-0.5 * (t * t) as f64).exp())
        .collect();
    let s: f64 = one_d.iter().sum();
    let kv = to_vec(&k);
    for i in 0..7 {
        for j in 0..7 {
            let want = one_d[i] * one_d[j] / (s * s);
            assert!((kv[i * 7 + j] - want).abs() < 1e-7, "kernel[{i},{j}]");
        }
    }
    assert!((kv.iter().sum::<f64>() - 1.0).abs() < 1e-6);
}

#[test]
fn cw_l2_finds_a_near_minimal_perturbation_on_an_affine_binary_model() {
    let model = Linear::random(2, D, 61, 0.5);
    let x = mid_input(23);
    let z = model.logits_f64(&x);
    let y = if z[0] >= z[1] { 0usize } else { 1 };
    let wd: Vec<f64> = (0..D)
        .map(|i| model.w[(1 - y) * D + i] - model.w[y * D + i])
        .collect();
    let minimal = (z[0] - z[1]).abs() / wd.iter().map(|v| v * v).sum::<f64>().sqrt();
    let cfg = CwL2Config {
        max_iterations: 300,
        binary_search_steps: 6,
        initial_const: 1.0,
        learning_rate: 0.05,
        ..CwL2Config::default()
    };
    let adv = CwL2::new(cfg)
        .unwrap()
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(y as i64), 0)
        .unwrap();
    assert_eq!(
        predict(&model, &adv).int64_value(&[0]),
        1 - y as i64,
        "cw-l2 must fool the model"
    );
    let l2 = to_vec(&adv)
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        l2 >= minimal * 0.999 && l2 <= minimal * 1.15,
        "l2 {l2} vs minimal {minimal}"
    );
}

#[test]
fn spsa_fools_a_linear_model_and_stops_at_the_first_misclassification() {
    let model = Linear::random(2, D, 71, 0.5);
    let x = mid_input(29);
    let z = model.logits_f64(&x);
    let y = if z[0] >= z[1] { 0i64 } else { 1 };
    let cfg = SpsaConfig {
        eps: 0.2,
        steps: 40,
        samples: 32,
        ..SpsaConfig::default()
    };
    let spsa = Spsa::new(cfg).unwrap();
    let adv = spsa
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(y), 3)
        .unwrap();
    assert_eq!(predict(&model, &adv).int64_value(&[0]), 1 - y);
    // Early stop: an input misclassified from the start is untouched.
    let adv = spsa
        .perturb(&model, &to_tensor(&x, &SHAPE), &label(1 - y), 3)
        .unwrap();
    assert_close(&to_vec(&adv), &x, 1e-7, "spsa on a misclassified input");
}

#[test]
fn report_counts_match_a_hand_tally() {
    // Two classes decided by the first pixel: class 1 iff x0 > 0.5.
    let model = Linear::new(2, 2, vec![0.0, 0.0, 1.0, 0.0], vec![0.0, -0.5]);
    let x = to_tensor(&[0.2, 0.0, 0.8, 0.0, 0.4, 0.0, 0.9, 0.0], &[4, 1, 1, 2]);
    let adv = to_tensor(&[0.6, 0.0, 0.8, 0.3, 0.45, 0.0, 0.9, 0.0], &[4, 1, 1, 2]);
    let y = Tensor::from_slice(&[0i64, 1, 1, 1]);
    // clean preds 0,1,0,1 -> 3 of 4 correct; adv preds 1,1,0,1 -> 2 of 4; fooled among the clean
    // correct (0, 1, 3): example 0 only.
    let r = AttackReport::compute(&model, &x, &adv, &y, None).unwrap();
    assert_eq!(r.n, 4);
    assert!((r.clean_accuracy - 0.75).abs() < 1e-12);
    assert!((r.robust_accuracy - 0.5).abs() < 1e-12);
    assert!((r.success_rate - 1.0 / 3.0).abs() < 1e-12);
    assert!((r.max_linf - 0.4).abs() < 1e-6);
    assert!((r.mean_linf - (0.4 + 0.3 + 0.05) / 4.0).abs() < 1e-6);
    assert!((r.max_l2 - 0.4).abs() < 1e-6);
    let _ = Kind::Float;
}
