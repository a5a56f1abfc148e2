//! Known-answer and property tests of the adaptive attacks (`pgd-restarts`, `mimicry`,
//! `mimicry-log`, `selective`, `orthogonal`) on closed-form victims: a linear classifier with a
//! linear detector score `v . x`, whose gradients are known by hand.

mod common;

use common::{table, to_tensor, to_vec, Linear, Scored};
use libre_attacks::adaptive::project_out;
use libre_attacks::{by_name, AttackError, Victim};
use serde_json::json;
use tch::{Kind, Tensor};

const SHAPE: [i64; 4] = [1, 2, 4, 4];
const D: usize = 32;

/// An input well inside (0.3, 0.7) so that small steps never touch the pixel box.
fn mid(seed: u64) -> Vec<f64> {
    table(D, seed).iter().map(|v| 0.5 + 0.2 * v).collect()
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

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// One step of `step` from `x` with no random start, no early stop, a constant step, and a
/// threshold that flags everything (so a misclassified start is not already a success and the
/// step's iterate, at a lower score, is the one kept).
fn one_step(name: &str, victim: &dyn Victim, x: &[f64], y: i64, step: f64) -> Vec<f64> {
    let a = by_name(
        name,
        &json!({"eps": 0.1, "step_size": step, "steps": 1, "restarts": 1, "random_start": false,
                "early_stop": false, "schedule": "constant", "threshold": -1e9}),
    )
    .unwrap();
    let adv = a
        .perturb(victim, &to_tensor(x, &SHAPE), &Tensor::from_slice(&[y]), 0)
        .unwrap();
    to_vec(&adv)
        .iter()
        .zip(x)
        .map(|(a, b)| (a - b) / step)
        .collect()
}

fn scored(seed: u64) -> Scored {
    Scored {
        model: Linear::random(3, D, seed, 1.0),
        v: table(D, seed + 7),
    }
}

#[test]
fn projecting_out_leaves_a_vector_orthogonal_to_the_other() {
    let a = to_tensor(&table(2 * D, 1), &[2, 2, 4, 4]);
    let b = to_tensor(&table(2 * D, 2), &[2, 2, 4, 4]);
    let p = project_out(&a, &b);
    let dots = to_vec(&(&p * &b).sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float));
    let scale = to_vec(&(&a * &a).sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float));
    for (d, s) in dots.iter().zip(&scale) {
        assert!(d.abs() < 1e-5 * s, "<p, b> = {d}");
    }
    // Removing a component twice changes nothing.
    let twice = to_vec(&project_out(&p, &b));
    for (u, v) in twice.iter().zip(to_vec(&p)) {
        assert!((u - v).abs() < 1e-5);
    }
}

#[test]
fn orthogonal_steps_along_the_projected_classifier_gradient_while_correct() {
    let v = scored(3);
    let x = mid(4);
    let y = argmax(&v.model.logits_f64(&x)) as i64; // classified correctly
    let g_cls = v.model.ce_grad_f64(&x, y as usize);
    // The detector's descent direction is -grad(v . x) = -v.
    let g_det: Vec<f64> = v.v.iter().map(|a| -a).collect();
    let dot: f64 = g_cls.iter().zip(&g_det).map(|(a, b)| a * b).sum();
    let nn: f64 = g_det.iter().map(|a| a * a).sum();
    let want: Vec<f64> = g_cls
        .iter()
        .zip(&g_det)
        .map(|(a, b)| sign(a - dot / nn * b))
        .collect();
    let got = one_step("orthogonal", &v, &x, y, 1e-3);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-3, "pixel {i}: step {g}, want {w}");
    }
    // Once misclassified (label != prediction) it descends the score orthogonal to the loss.
    let wrong = (y + 1) % 3;
    let g_cls = v.model.ce_grad_f64(&x, wrong as usize);
    let dot: f64 = g_cls.iter().zip(&g_det).map(|(a, b)| a * b).sum();
    let cc: f64 = g_cls.iter().map(|a| a * a).sum();
    let want: Vec<f64> = g_det
        .iter()
        .zip(&g_cls)
        .map(|(a, b)| sign(a - dot / cc * b))
        .collect();
    let got = one_step("orthogonal", &v, &x, wrong, 1e-3);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-3, "pixel {i}: step {g}, want {w}");
    }
}

#[test]
fn selective_switches_objective_when_the_label_flips() {
    let v = scored(5);
    let x = mid(6);
    let y = argmax(&v.model.logits_f64(&x)) as i64;
    // Correct: the sign of the loss gradient.
    let got = one_step("selective", &v, &x, y, 1e-3);
    let want: Vec<f64> = v
        .model
        .ce_grad_f64(&x, y as usize)
        .iter()
        .map(|&g| sign(g))
        .collect();
    assert_eq!(got.iter().map(|g| g.round()).collect::<Vec<_>>(), want);
    // Misclassified: down the score, sign(-v), whatever the loss says.
    let got = one_step("selective", &v, &x, (y + 1) % 3, 1e-3);
    let want: Vec<f64> = v.v.iter().map(|&a| sign(-a)).collect();
    assert_eq!(got.iter().map(|g| g.round()).collect::<Vec<_>>(), want);
}

#[test]
fn mimicry_log_divides_the_score_gradient_by_the_score() {
    // loss - C log s has gradient g_ce - C v / s: with C = s the step is that of loss - score.
    let v = scored(8);
    let x = mid(9);
    let s: f64 = v.v.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>().abs() + 0.0;
    // Make the score positive by flipping v if needed.
    let sign_s = sign(v.v.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>());
    let v = Scored {
        model: v.model,
        v: v.v.iter().map(|a| a * sign_s).collect(),
    };
    let y = argmax(&v.model.logits_f64(&x)) as i64;
    let ce = v.model.ce_grad_f64(&x, y as usize);
    let want: Vec<f64> = ce.iter().zip(&v.v).map(|(g, a)| sign(g - a)).collect();
    let a = by_name(
        "mimicry-log",
        &json!({"eps": 0.1, "step_size": 1e-3, "steps": 1, "restarts": 1, "random_start": false,
                "early_stop": false, "schedule": "constant", "adaptive_c": s}),
    )
    .unwrap();
    let adv = a
        .perturb(&v, &to_tensor(&x, &SHAPE), &Tensor::from_slice(&[y]), 0)
        .unwrap();
    let got: Vec<f64> = to_vec(&adv)
        .iter()
        .zip(&x)
        .map(|(a, b)| ((a - b) / 1e-3).round())
        .collect();
    assert_eq!(got, want);
}

/// A batch of 16 inputs spread over [0, 1] and labels from a random linear model.
fn batch(seed: u64) -> (Tensor, Tensor) {
    let n = 16;
    let x: Vec<f64> = table(n * D, seed).iter().map(|v| 0.5 + 0.5 * v).collect();
    let x = to_tensor(&x, &[n as i64, 2, 4, 4]);
    let y = Tensor::from_slice(
        &table(n, seed + 1)
            .iter()
            .map(|v| ((v + 1.0) * 1.5) as i64 % 3)
            .collect::<Vec<_>>(),
    );
    (x, y)
}

#[test]
fn every_adaptive_attack_stays_in_the_ball_and_the_box() {
    let v = scored(11);
    let (x, y) = batch(12);
    for name in libre_attacks::ADAPTIVE_NAMES {
        for norm in ["linf", "l2"] {
            let a = by_name(
                name,
                &json!({"eps": 0.05, "step_size": 0.02, "steps": 20, "norm": norm, "threshold": 0.0}),
            )
            .unwrap();
            let adv = a.perturb(&v, &x, &y, 3).unwrap();
            let d = &adv - &x;
            let lo = adv.min().double_value(&[]);
            let hi = adv.max().double_value(&[]);
            assert!(lo >= 0.0 && hi <= 1.0, "{name} {norm}: [{lo}, {hi}]");
            if norm == "linf" {
                let m = d.abs().max().double_value(&[]);
                assert!(m <= 0.05 + 1e-6, "{name}: l_inf {m}");
            } else {
                let r = 0.05 * (D as f64).sqrt();
                let n = d
                    .square()
                    .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)
                    .sqrt()
                    .max()
                    .double_value(&[]);
                assert!(n <= r * (1.0 + 1e-5), "{name}: l_2 {n} > {r}");
            }
        }
    }
}

fn evaded(v: &Scored, adv: &Tensor, y: &Tensor, threshold: f64) -> Vec<bool> {
    let pred = v.logits(adv).argmax(-1, false);
    let wrong: Vec<bool> = Vec::try_from(pred.ne_tensor(y)).unwrap();
    let s: Vec<f64> = to_vec(&v.score(adv).unwrap());
    wrong
        .iter()
        .zip(&s)
        .map(|(&w, &s)| w && s < threshold)
        .collect()
}

#[test]
fn plain_restarts_equal_pgd_where_pgd_fails_and_fool_at_least_as_often() {
    let model = Linear::random(3, D, 21, 0.3);
    let (x, y) = batch(22);
    let pgd = by_name(
        "pgd",
        &json!({"eps": 0.03, "step_size": 0.005, "steps": 10}),
    )
    .unwrap();
    let ours = by_name(
        "pgd-restarts",
        &json!({"eps": 0.03, "step_size": 0.005, "steps": 10, "restarts": 1,
                "early_stop": false, "schedule": "constant"}),
    )
    .unwrap();
    let a = pgd.perturb(&model, &x, &y, 7).unwrap();
    let b = ours.perturb(&model, &x, &y, 7).unwrap();
    let fooled = |adv: &Tensor| -> Vec<bool> {
        Vec::try_from(model.logits(adv).argmax(-1, false).ne_tensor(&y)).unwrap()
    };
    let (fa, fb) = (fooled(&a), fooled(&b));
    let mut n_fail = 0;
    for i in 0..fa.len() {
        assert!(
            !fa[i] || fb[i],
            "image {i}: PGD fooled it, pgd-restarts did not"
        );
        if !fb[i] {
            n_fail += 1;
            let same = a.get(i as i64).equal(&b.get(i as i64));
            assert!(
                same,
                "image {i}: not fooled by either, yet the iterates differ"
            );
        }
    }
    assert!(
        n_fail > 0 && n_fail < fa.len(),
        "the case must mix fooled and not: {n_fail}"
    );
}

#[test]
fn more_steps_never_lower_evasion_and_early_stop_keeps_evaded_images() {
    let v = scored(31);
    let (x, y) = batch(32);
    let thr = 0.5;
    let run = |name: &str, steps: usize, early: bool| -> Vec<bool> {
        let a = by_name(
            name,
            &json!({"eps": 0.1, "step_size": 0.01, "steps": steps, "restarts": 1,
                    "schedule": "constant", "threshold": thr, "early_stop": early}),
        )
        .unwrap();
        evaded(&v, &a.perturb(&v, &x, &y, 5).unwrap(), &y, thr)
    };
    for name in ["selective", "orthogonal", "mimicry"] {
        let short = run(name, 5, true);
        let long = run(name, 20, true);
        for i in 0..short.len() {
            assert!(
                !short[i] || long[i],
                "{name}: image {i} evaded in 5 steps, not in 20"
            );
        }
        // Without early stop the kept iterate is still an evaded one.
        let full = run(name, 20, false);
        assert_eq!(
            long, full,
            "{name}: early stop changed which images are evaded"
        );
        assert!(
            long.iter().any(|&e| e),
            "{name}: the case must evade somewhere"
        );
    }
}

#[test]
fn bad_settings_are_refused_naming_the_parameter() {
    let cases = [
        ("mimicry", json!({"adaptive_c": -1.0}), "adaptive_c"),
        ("selective", json!({"steps": 0}), "steps"),
        ("orthogonal", json!({"restarts": 0}), "restarts"),
        ("pgd-restarts", json!({"steps": 1_000_000_000u64}), "steps"),
        ("selective", json!({"adaptive_c": 10.0}), "adaptive_c"),
        ("mimicry", json!({"mode": "selective"}), "mode"),
        ("pgd", json!({"adaptive_c": -2.0}), "adaptive_c"),
    ];
    for (name, p, param) in cases {
        let e = by_name(name, &p)
            .err()
            .unwrap_or_else(|| panic!("{name} {p} accepted"))
            .to_string();
        assert!(e.contains(param), "{name} {p}: {e}");
    }
    // An attack on a detector refuses a victim without a score.
    let plain = Linear::random(3, D, 41, 1.0);
    let (x, y) = batch(42);
    let e = by_name("selective", &json!({"steps": 2}))
        .unwrap()
        .perturb(&plain, &x, &y, 0)
        .unwrap_err();
    assert!(matches!(e, AttackError::NoDetector { .. }), "{e}");
}
