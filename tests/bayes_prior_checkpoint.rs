//! The prior regulariser against autograd of the closed-form KL / L2 (docs/design.md section 5),
//! and libre checkpoints: bit-exact round trips, rebuilding from metadata alone, and clear errors
//! for NaN weights, another architecture and mismatched names.

use libre::bayes::prior::{PriorConfig, PriorRegularizer};
use libre::bayes::{Family, ForwardMode, LayerSelection, PosteriorConfig};
use libre::models::{self, BayesModel, ModelConfig};
use libre::weights::checkpoint;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    // One intra-op thread: these tests run small tensors, where libtorch's thread pool costs
    // more than it gains on a busy 2-core machine (measured 760 ms vs 45 ms per ResNet forward).
    tch::set_num_threads(1);
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn sel(s: &str) -> LayerSelection {
    s.parse().unwrap()
}

fn sorted(m: &dyn BayesModel) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = m.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Zeroes the grads, runs the regulariser, and returns name -> grad.
fn prior_grads(m: &dyn BayesModel, cfg: PriorConfig) -> HashMap<String, Tensor> {
    let reg = PriorRegularizer::new(m.var_store(), cfg).unwrap();
    // A zero loss touching every variable defines all grads as zeros.
    let vars = sorted(m);
    let zero: Tensor = vars
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(_, t)| t.sum(Kind::Float) * 0.0)
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    for (_, t) in &vars {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    zero.backward();
    reg.apply(m.var_store()).unwrap();
    vars.into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (n, t.grad().copy()))
        .collect()
}

/// Autograd of the closed-form objective on detached copies.
fn autograd(
    vars: &[(String, Tensor)],
    f: impl Fn(&HashMap<String, Tensor>) -> Tensor,
) -> HashMap<String, Tensor> {
    let leaves: HashMap<String, Tensor> = vars
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_kind(Kind::Double).set_requires_grad(true),
            )
        })
        .collect();
    f(&leaves).backward();
    leaves
        .into_iter()
        .map(|(n, t)| (n, t.grad().to_kind(Kind::Float)))
        .collect()
}

fn assert_close(got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (n, w) in want {
        let g = &got[n];
        let d = (g - w).abs().max().double_value(&[]);
        let scale = w.abs().max().double_value(&[]).max(1e-6);
        assert!(
            d <= 1e-4 * scale + 1e-9,
            "{what}: {n} off by {d} (scale {scale})"
        );
    }
}

const LAMBDA: f64 = 5e-3;
const N: usize = 1000;

#[test]
fn mean_field_prior_gradient_is_the_kl_gradient() {
    let _rng = rng_lock();
    let mut m = models::build(&ModelConfig::mlp(1, 4, vec![8], 3), Device::Cpu).unwrap();
    m.convert(&sel("fc1"), &PosteriorConfig::new(Family::MeanField, 2))
        .unwrap();
    let vars = sorted(m.as_ref());
    for moped in [false, true] {
        let centres: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().to_kind(Kind::Double)))
            .collect();
        let got = prior_grads(
            m.as_ref(),
            PriorConfig {
                decay: LAMBDA,
                num_data: N,
                moped,
            },
        );
        // KL(N(mu, e^{2psi}) || N(c, 1/(λN))) / N for mean-field tensors, λ/2 ||w||² for points.
        let want = autograd(&vars, |v| {
            let mut total = Tensor::zeros([], (Kind::Double, Device::Cpu));
            let ln = LAMBDA * N as f64;
            for (n, t) in v {
                if n.ends_with("_psi") {
                    let mu_name = n.trim_end_matches("_psi");
                    let mu = &v[mu_name];
                    let d = if moped {
                        mu - &centres[mu_name]
                    } else {
                        mu.shallow_clone()
                    };
                    let kl = (-t - 0.5 * ln.ln() + ((t * 2.0).exp() + &d * &d) * (ln / 2.0) - 0.5)
                        .sum(Kind::Double);
                    total += kl / N as f64;
                } else if !v.contains_key(&format!("{n}_psi")) {
                    total += (t * t).sum(Kind::Double) * (LAMBDA / 2.0);
                }
            }
            total
        });
        assert_close(&got, &want, &format!("mean-field moped={moped}"));
    }
}

#[test]
fn ensemble_and_low_rank_prior_gradients_match_autograd() {
    let _rng = rng_lock();
    for fam in [Family::Ensemble, Family::LowRank] {
        let mut m = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
        let cfg = PosteriorConfig {
            rank: 2,
            ..PosteriorConfig::new(fam, 3)
        };
        m.convert(&sel("conv2,linear2"), &cfg).unwrap();
        let vars = sorted(m.as_ref());
        let got = prior_grads(
            m.as_ref(),
            PriorConfig {
                decay: LAMBDA,
                num_data: N,
                moped: false,
            },
        );
        let want = autograd(&vars, |v| {
            let mut total = Tensor::zeros([], (Kind::Double, Device::Cpu));
            for (n, t) in v {
                if n.ends_with("_members") {
                    // λ/(2S) Σ_s ||w_s||²
                    total += (t * t).sum(Kind::Double) * (LAMBDA / (2.0 * 3.0));
                } else if let (Some(a), Some(b)) =
                    (v.get(&format!("{n}_lr_a")), v.get(&format!("{n}_lr_b")))
                {
                    // λ/(2S) Σ_s ||mu ⊙ (A_s B_s)||²
                    let out = t.size()[0];
                    let w = t.reshape([1, out, -1]) * a.bmm(b);
                    total += (&w * &w).sum(Kind::Double) * (LAMBDA / (2.0 * 3.0));
                } else if !n.ends_with("_lr_a") && !n.ends_with("_lr_b") {
                    total += (t * t).sum(Kind::Double) * (LAMBDA / 2.0);
                }
            }
            total
        });
        assert_close(&got, &want, &format!("{fam}"));
    }
}

fn converted_lenet(fam: Family) -> Box<dyn BayesModel> {
    let mut m = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    m.convert(&sel("conv2,linear1"), &PosteriorConfig::new(fam, 3))
        .unwrap();
    // Train-like drift so that nothing equals its initial value.
    tch::no_grad(|| {
        for (_, mut t) in m.var_store().variables() {
            if t.is_floating_point() {
                let _ = t.g_add_(&(t.randn_like() * 0.01));
            }
        }
    });
    m
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    for fam in [
        Family::Point,
        Family::MeanField,
        Family::Ensemble,
        Family::LowRank,
    ] {
        let m = if fam == Family::Point {
            let mut m = models::build(&ModelConfig::resnet(18, 10, 16, true), Device::Cpu).unwrap();
            let x = Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu));
            // Move BatchNorm running stats and num_batches_tracked away from their init.
            let _ = m.forward_mc(&x, &ForwardMode::DeterministicTrain).unwrap();
            m.convert(&sel("layer4.1"), &PosteriorConfig::new(Family::Ensemble, 2))
                .unwrap();
            m
        } else {
            converted_lenet(fam)
        };
        let path = dir.path().join(format!("{fam}.safetensors"));
        checkpoint::save(&path, m.as_ref()).unwrap();
        let (back, meta) = checkpoint::load(&path, Device::Cpu).unwrap();
        assert_eq!(meta.model, *m.config());
        assert_eq!(meta.posterior.as_ref(), m.posterior());
        assert_eq!(meta.libre_version, libre::VERSION);
        let (a, b) = (sorted(m.as_ref()), sorted(back.as_ref()));
        assert_eq!(a.len(), b.len());
        for ((n1, t1), (n2, t2)) in a.iter().zip(&b) {
            assert_eq!(n1, n2);
            assert_eq!(t1.kind(), t2.kind(), "{n1}");
            assert!(t1.equal(t2), "{fam}: {n1} differs after the round trip");
        }
        let c = m.config();
        let x = Tensor::rand(
            [2, c.in_channels, c.image_size, c.image_size],
            (Kind::Float, Device::Cpu),
        );
        tch::manual_seed(5);
        let y1 = m
            .forward_mc(&x, &ForwardMode::ParallelMc { samples: 2 })
            .unwrap();
        tch::manual_seed(5);
        let y2 = back
            .forward_mc(&x, &ForwardMode::ParallelMc { samples: 2 })
            .unwrap();
        assert!(y1.equal(&y2), "{fam}: logits differ after the round trip");
        // No temporary files left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.len() <= 4);
    }
}

#[test]
fn checkpoint_rejects_nan_other_arch_and_mismatched_names() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = converted_lenet(Family::MeanField);
    let good = dir.path().join("good.safetensors");
    checkpoint::save(&good, m.as_ref()).unwrap();

    // Another architecture.
    let other = models::build(&ModelConfig::digitcnn(), Device::Cpu).unwrap();
    let e = checkpoint::load_into(&good, other.as_ref())
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds a lenet5 model, not digitcnn"), "{e}");

    // NaN weights: nothing written on save; rejected on load.
    let nan_path = dir.path().join("nan.safetensors");
    tch::no_grad(|| {
        let w = m.var_store().variables()["linear2.weight"].shallow_clone();
        let _ = w.get(0).get(0).fill_(f64::NAN);
    });
    let e = checkpoint::save(&nan_path, m.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("non-finite") && e.contains("linear2.weight"),
        "{e}"
    );
    assert!(!nan_path.exists());
    let (meta, mut tensors) = checkpoint::read(&good).unwrap();
    for (n, t) in tensors.iter_mut() {
        if n == "conv1.bias" {
            let _ = t.get(3).fill_(f64::NAN);
        }
    }
    let e = checkpoint::from_state_dict(meta.model.clone(), tensors, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite") && e.contains("conv1.bias"), "{e}");

    // A state_dict with a missing, an unexpected and a wrongly shaped name: each named.
    let fresh = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
    let mut sd: Vec<(String, Tensor)> = sorted(fresh.as_ref());
    sd.retain(|(n, _)| n != "conv2.bias");
    sd.push((
        "conv3.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    for (n, t) in sd.iter_mut() {
        if n == "linear2.weight" {
            *t = Tensor::zeros([5, 200], (Kind::Float, Device::Cpu));
        }
    }
    let e = checkpoint::from_state_dict(ModelConfig::lenet5(), sd, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing: conv2.bias"), "{e}");
    assert!(e.contains("unexpected: conv3.weight"), "{e}");
    assert!(
        e.contains("wrong shape: linear2.weight (file [5, 200], model [10, 200])"),
        "{e}"
    );

    // A clean state_dict (advertorch names, float64) imports and evaluates like its source.
    let sd: Vec<(String, Tensor)> = sorted(fresh.as_ref())
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Double)))
        .collect();
    let imported = checkpoint::from_state_dict(ModelConfig::lenet5(), sd, Device::Cpu).unwrap();
    let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let d = (fresh.forward_mc(&x, &ForwardMode::Deterministic).unwrap()
        - imported
            .forward_mc(&x, &ForwardMode::Deterministic)
            .unwrap())
    .abs()
    .max()
    .double_value(&[]);
    assert_eq!(d, 0.0);

    // Not a libre checkpoint.
    let plain = dir.path().join("plain.safetensors");
    std::fs::write(&plain, b"garbage").unwrap();
    let e = checkpoint::load(&plain, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("plain.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
}
