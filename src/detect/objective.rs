//! LiBRe's training objective (docs/detection.md, "Training"; Deng et al., CVPR 2021, sec. 3.3).
//!
//! No adversarial example is crafted. Half of each clean batch is copied and perturbed with
//! uniform noise U(-e, e), one e per step from `noise_eps`; with probability `blur_prob` per image
//! the noise is low-pass filtered first. The clean images go through one random ensemble member
//! and each perturbed image through two distinct members, all in one routed forward, and
//!
//! `loss = CE(clean) + alpha * mean_i hinge_i`, with `d_i = mean_f (f_m1(x_i) - f_m2(x_i))^2` the
//! disagreement of the two members' outputs of the Bayesian block, and per [`ObjectiveKind`]:
//! - `reference`: `hinge = ReLU(gamma - d_pert)` (the published recipe);
//! - `relative`: `hinge = ReLU(gamma - (d_pert - d_clean))`, the clean source image also going
//!   through two distinct members (the authors' object-detection variant);
//! - `anchored`: `hinge = ReLU(gamma - d_pert) + d_clean`: disagree on noise, agree on clean
//!   images (this project's variant; docs/results.md has the study that motivated it).

use crate::bayes::{ForwardMode, McSampling, Routing, TrainSampling};
use crate::models::BayesModel;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which disagreement hinge the objective uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveKind {
    Reference,
    Relative,
    Anchored,
}

impl ObjectiveKind {
    pub const NAMES: [&'static str; 3] = ["reference", "relative", "anchored"];

    /// Whether clean images also go through two members (for `d_clean`).
    fn pairs_clean(self) -> bool {
        self != ObjectiveKind::Reference
    }
}

impl std::str::FromStr for ObjectiveKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "reference" => ObjectiveKind::Reference,
            "relative" => ObjectiveKind::Relative,
            "anchored" => ObjectiveKind::Anchored,
            _ => {
                return Err(Error::param(
                    "objective",
                    format!("'{s}'"),
                    format!("must be one of {}", ObjectiveKind::NAMES.join(", ")),
                ))
            }
        })
    }
}

/// Every setting of the LiBRe objective; saved in the run's config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibreConfig {
    pub objective: ObjectiveKind,
    pub alpha: f64,
    pub gamma: f64,
    /// Noise magnitude range `[min, max]` in pixel units; one e ~ U[min, max] per step.
    pub noise_eps: (f64, f64),
    /// Per-image probability of low-pass filtering the noise.
    pub blur_prob: f64,
    /// Members start at the pretrained weights plus Gaussian noise of this many standard
    /// deviations of each weight tensor (0 = the reference's identical copies). Identical members
    /// give every disagreement term a zero gradient (d and its gradient vanish together), so only
    /// the noise of routing different images to different members can separate them.
    #[serde(default)]
    pub member_init_std: f64,
    /// Adversarial LiBRe (`--recipe libre-robust`): the perturbed copies are adversarial examples
    /// crafted against the current model and detector instead of uniform noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial: Option<AdversarialConfig>,
}

/// How `--recipe libre-robust` crafts the perturbed copies of each step, and how much the
/// members' classification of them weighs (docs/detection.md, "Adversarial LiBRe training").
///
/// The attack is one of the adaptive evaluation's (`attacks/src/adaptive.rs`) aimed at the
/// current model's 20-sample predictive and its feature variance, so training sees what the
/// evaluation's attacker finds: `selective` (the default) returns, per image, the misclassified
/// iterate with the lowest feature variance (else the last). The copies then enter the objective
/// twice: the hinge asks the two members they pass through to disagree on them (as on noise), and
/// `ce_weight` times their cross-entropy through those members keeps the classifier robust
/// (Madry et al. 2018's adversarial training, on the Bayesian block and the trunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdversarialConfig {
    /// `selective`, `mimicry` or `pgd-restarts`.
    pub attack: String,
    pub eps: f64,
    pub steps: usize,
    pub step_size: f64,
    /// Mimicry's C (only for `attack = mimicry`).
    pub c: f64,
    /// Weight of the members' cross-entropy on the adversarial copies.
    pub ce_weight: f64,
    /// Ask for disagreement only on the copies that one of their two members misclassifies
    /// (the inputs a detector must flag); the others only enter the cross-entropy.
    #[serde(default)]
    pub hinge_misclassified_only: bool,
}

impl AdversarialConfig {
    /// The defaults for a data set whose customary attack eps is `eps`: selective, 10 steps of
    /// eps / 4, C 10 (for mimicry), cross-entropy weight 1, disagreement asked on the
    /// misclassified copies only (candidate C of docs/results.md, chosen on validation data).
    pub fn for_attack_eps(eps: f64) -> Self {
        AdversarialConfig {
            attack: "selective".into(),
            eps,
            steps: 10,
            step_size: eps / 4.0,
            c: 10.0,
            ce_weight: 1.0,
            hinge_misclassified_only: true,
        }
    }

    /// The attack that crafts the copies (checked: a name of the three, a valid budget).
    pub fn build(&self) -> Result<Box<dyn libre_attacks::Attack>> {
        if !["selective", "mimicry", "pgd-restarts"].contains(&self.attack.as_str()) {
            return Err(Error::invalid(format!(
                "adversarial training attack '{}': use selective, mimicry or pgd-restarts",
                self.attack
            )));
        }
        if !(self.ce_weight.is_finite() && self.ce_weight >= 0.0) {
            return Err(Error::invalid(format!(
                "adversarial cross-entropy weight {}: must be finite and >= 0",
                self.ce_weight
            )));
        }
        let mut p = serde_json::json!({
            "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
            "restarts": 1, "early_stop": false, "schedule": "constant",
            // Flags every input: the attack keeps the misclassified iterate of lowest score.
            "threshold": f64::MIN,
        });
        if self.attack == "mimicry" {
            p["adaptive_c"] = serde_json::json!(self.c);
        }
        libre_attacks::by_name(&self.attack, &p)
            .map_err(|e| Error::invalid(format!("adversarial training: {e}")))
    }
}

impl LibreConfig {
    /// The defaults for a data set whose customary attack eps is `attack_eps`: noise e in
    /// [0.5, 2] x eps, alpha 1, gamma 0.5, blur 0.03 (the paper's ImageNet recipe, scaled).
    pub fn for_attack_eps(objective: ObjectiveKind, attack_eps: f64) -> LibreConfig {
        LibreConfig {
            objective,
            alpha: 1.0,
            gamma: 0.5,
            noise_eps: (0.5 * attack_eps, (2.0 * attack_eps).min(1.0)),
            blur_prob: 0.03,
            member_init_std: 0.0,
            adversarial: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let (lo, hi) = self.noise_eps;
        if !(lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(Error::param(
                "noise_eps",
                format!("{lo}:{hi}"),
                "need 0 < MIN <= MAX <= 1 (pixel units)",
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::param("alpha", self.alpha, "must be finite and >= 0"));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(Error::param("gamma", self.gamma, "must be finite and >= 0"));
        }
        if !(self.member_init_std.is_finite() && self.member_init_std >= 0.0) {
            return Err(Error::param(
                "member_init_std",
                self.member_init_std,
                "must be finite and >= 0",
            ));
        }
        if let Some(a) = &self.adversarial {
            a.build()?;
        }
        if !(0.0..=1.0).contains(&self.blur_prob) {
            return Err(Error::param(
                "blur_prob",
                self.blur_prob,
                "must be in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// The customary l_inf attack eps of a data set of this shape: 0.3 for 1-channel 28 px digits
/// (MNIST, Fashion-MNIST), 8/255 for small colour images (CIFAR-10), 16/255 for ImageNet-size.
pub fn customary_eps(shape: [usize; 3]) -> f64 {
    match shape {
        [1, h, _] if h <= 32 => 0.3,
        [_, h, _] if h <= 64 => 8.0 / 255.0,
        _ => 16.0 / 255.0,
    }
}

/// A normalised 2-d Gaussian kernel `[k, k]`.
fn gaussian_kernel(k: i64, sigma: f64) -> Tensor {
    let sigma = sigma.max(1e-3);
    let r = (k / 2) as f64;
    let x = Tensor::arange(k, (Kind::Float, Device::Cpu)) - r;
    let g = (-(&x * &x) / (2.0 * sigma * sigma)).exp();
    let g2 = g.unsqueeze(1) * g.unsqueeze(0);
    &g2 / g2.sum(Kind::Float)
}

/// LiBRe's perturbation of a batch: uniform noise U(-e, e), each image's noise low-pass filtered
/// with probability `blur_prob` (kernel size from {3,5,7,9,11}, sigma ~ U[0, 5]), clamped to
/// [0, 1]. Uses libtorch's global generator.
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, H, W]`
pub fn perturb(x: &Tensor, eps: f64, blur_prob: f64) -> Tensor {
    let noise = (Tensor::rand_like(x) * 2.0 - 1.0) * eps;
    let b = x.size()[0];
    let mut noise = noise;
    if blur_prob > 0.0 {
        let draws = Tensor::rand([b, 3], (Kind::Double, Device::Cpu));
        let d: Vec<f64> = Vec::<f64>::try_from(draws.view([-1])).expect("cpu doubles");
        let c = x.size()[1];
        let mut rows = Vec::with_capacity(b as usize);
        let mut any = false;
        for i in 0..b as usize {
            let n = noise.get(i as i64);
            if d[3 * i] < blur_prob {
                any = true;
                let k = [3i64, 5, 7, 9, 11][((d[3 * i + 1] * 5.0) as usize).min(4)];
                let sigma = d[3 * i + 2] * 5.0;
                let w = gaussian_kernel(k, sigma)
                    .to_device(x.device())
                    .view([1, 1, k, k])
                    .repeat([c, 1, 1, 1]);
                let blurred = n
                    .unsqueeze(0)
                    .conv2d(&w, None::<Tensor>, [1, 1], [k / 2, k / 2], [1, 1], c)
                    .squeeze_dim(0);
                rows.push(blurred);
            } else {
                rows.push(n);
            }
        }
        if any {
            noise = Tensor::stack(&rows, 0);
        }
    }
    (x + noise).clamp(0.0, 1.0)
}

/// Spreads the ensemble members of a freshly converted model: every `*_members` tensor
/// `[S, ...]` gets Gaussian noise of `rel_std` times the standard deviation of one member's
/// values (the pretrained tensor). Uses libtorch's global generator.
pub fn spread_members(model: &dyn BayesModel, rel_std: f64) -> Result<()> {
    if rel_std == 0.0 {
        return Ok(());
    }
    tch::no_grad(|| -> Result<()> {
        for (name, t) in model.var_store().variables() {
            if name.ends_with("_members") && t.size()[0] > 1 {
                let scale = t.get(0).std(true).double_value(&[]) * rel_std;
                let noise = t.randn_like() * scale;
                let mut t = t;
                let _ = t.f_add_(&noise)?;
            }
        }
        Ok(())
    })
}

/// Per-example squared disagreement of two feature tensors, averaged over the feature dims.
///
/// # Shapes
/// `[N, ...]`, `[N, ...]` -> `[N]`
pub fn disagreement(f1: &Tensor, f2: &Tensor) -> Tensor {
    let n = f1.size()[0];
    (f1 - f2)
        .square()
        .reshape([n, -1])
        .mean_dim(1, false, Kind::Float)
}

/// What one LiBRe step computed (the loss carries the graph).
pub struct StepOutput {
    pub loss: Tensor,
    /// Clean logits `[B, K]` (through one random member each), for accuracy.
    pub clean_logits: Tensor,
    /// Mean d on the perturbed and (when computed) clean pairs, for logs.
    pub d_perturbed: f64,
    pub d_clean: Option<f64>,
}

/// Random member ids `[n]` in `0..s`, and a second set distinct from the first per position.
fn distinct_pair(n: i64, s: i64) -> (Tensor, Tensor) {
    let m1 = Tensor::randint(s, [n], (Kind::Int64, Device::Cpu));
    let shift = Tensor::randint_low(1, s, [n], (Kind::Int64, Device::Cpu));
    let m2 = (&m1 + shift).remainder(s);
    (m1, m2)
}

/// Adversarial copies of `src` against the model's S-sample predictive and feature variance,
/// seeded from libtorch's global generator (so a seeded run repeats). Parameters get no gradient.
///
/// # Shapes
/// `src`: `[h, C, H, W]` in [0, 1], `y`: `[h]` -> `[h, C, H, W]`
fn craft(
    model: &dyn BayesModel,
    src: &Tensor,
    y: &Tensor,
    a: &AdversarialConfig,
    samples: usize,
) -> Result<Tensor> {
    let attack = a.build()?;
    let victim = crate::detect::victim::ModelVictim {
        model,
        mode: crate::models::mode_for(model, samples),
        score: Some(crate::detect::Score::FeatureVariance),
        classic: None,
    };
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
    let adv = attack
        .perturb(&victim, &src.detach(), y, seed)
        .map_err(|e| Error::invalid(format!("adversarial training: {e}")))?;
    Ok(adv.detach())
}

/// One LiBRe training forward and its loss for a clean batch `x` with labels `y`.
///
/// The model must carry an ensemble posterior with S >= 2 members (routed: each pass through a
/// chosen member) or a mean-field posterior (each example draws its own weights by local
/// reparameterisation, so the two copies of an image see two independent posterior samples).
///
/// # Shapes
/// `x`: `[B, C, H, W]` in [0, 1], `y`: `[B]` int64.
pub fn step(
    model: &dyn BayesModel,
    x: &Tensor,
    y: &Tensor,
    cfg: &LibreConfig,
) -> Result<StepOutput> {
    let post = model.posterior().ok_or_else(|| {
        Error::invalid("the LiBRe objective needs a Bayesian model (an ensemble posterior)")
    })?;
    let family = post.config.family;
    let routed = family == crate::bayes::Family::Ensemble;
    if !(routed || family == crate::bayes::Family::MeanField) || (routed && post.config.samples < 2)
    {
        return Err(Error::invalid(format!(
            "the LiBRe objective needs an ensemble of at least 2 members or a mean-field \
             posterior, got {family} with S = {}",
            post.config.samples
        )));
    }
    let s = (post.config.samples as i64).max(2);
    let b = x.size()[0];
    let h = (b / 2).max(1);
    let e = {
        let u = Tensor::rand([1], (Kind::Double, Device::Cpu)).double_value(&[0]);
        cfg.noise_eps.0 + (cfg.noise_eps.1 - cfg.noise_eps.0) * u
    };
    let src = x.narrow(0, 0, h);
    let xp = match &cfg.adversarial {
        None => perturb(&src, e, cfg.blur_prob),
        Some(a) => craft(model, &src, &y.narrow(0, 0, h), a, s as usize)?,
    };
    let r = Tensor::randint(s, [b], (Kind::Int64, Device::Cpu));
    let (p1, p2) = distinct_pair(h, s);
    let pairs_clean = cfg.objective.pairs_clean();
    // Routed batch: [clean (B) | clean copies through a second member (h, optional) | perturbed
    // through member 1 (h) | perturbed through member 2 (h)].
    let mut ids = vec![r.shallow_clone()];
    if pairs_clean {
        let r_head = r.narrow(0, 0, h);
        let shift = Tensor::randint_low(1, s, [h], (Kind::Int64, Device::Cpu));
        ids.push((&r_head + shift).remainder(s));
    }
    ids.push(p1);
    ids.push(p2);
    let ids: Vec<i64> = Vec::<i64>::try_from(Tensor::cat(&ids, 0)).expect("cpu int64");
    // The batch holds 1.5 B distinct images: the model gets each once, with the batch as rows
    // of [clean (B) | perturbed (h)], so the deterministic layers before the Bayesian block
    // run on 1.5 B images instead of 2.5 B (TrainSampling::rows; same outputs and gradients).
    // With the fast paths off, the oracle: the expanded batch itself.
    let mut rows: Vec<i64> = (0..b).collect();
    if pairs_clean {
        rows.extend(0..h);
    }
    rows.extend((b..b + h).chain(b..b + h));
    let (input, rows) = if crate::bayes::fast_paths() {
        (Tensor::cat(&[x.shallow_clone(), xp], 0), Some(rows))
    } else {
        let idx = Tensor::from_slice(&rows).to_device(x.device());
        (
            Tensor::cat(&[x.shallow_clone(), xp], 0).index_select(0, &idx),
            None,
        )
    };
    let mode = if routed {
        ForwardMode::Train(TrainSampling {
            sampling: McSampling::PerExample,
            routing: Routing::Given(ids),
            rows,
        })
    } else {
        ForwardMode::Train(TrainSampling {
            sampling: McSampling::LocalReparam,
            routing: Routing::Random,
            rows,
        })
    };
    let (logits, feats) = model.forward_mc_with_features(&input, &mode)?;
    let (logits, feats) = (logits.squeeze_dim(1), feats.squeeze_dim(1)); // [N, K], [N, ...]
    let clean_logits = logits.narrow(0, 0, b);
    let ce = clean_logits.cross_entropy_for_logits(y);
    let mut at = b;
    let d_clean = if pairs_clean {
        let d = disagreement(&feats.narrow(0, 0, h), &feats.narrow(0, b, h));
        at += h;
        Some(d)
    } else {
        None
    };
    let d_pert = disagreement(&feats.narrow(0, at, h), &feats.narrow(0, at + h, h));
    // The disagreement asked of each perturbed copy: all of them, or (adversarial training
    // with `hinge_misclassified_only`) those one of their two members gets wrong, each then
    // weighted h / (number asked).
    let ask = match cfg
        .adversarial
        .as_ref()
        .filter(|a| a.hinge_misclassified_only)
    {
        Some(_) => {
            let ys = y.narrow(0, 0, h);
            let wrong = |at: i64| logits.narrow(0, at, h).argmax(-1, false).ne_tensor(&ys);
            let m = wrong(at)
                .logical_or(&wrong(at + h))
                .to_kind(Kind::Float)
                .detach();
            // Weighted so that the hinge's mean is the mean over the asked copies.
            let n = m.sum(Kind::Float).clamp_min(1.0);
            m * (h as f64) / n
        }
        None => d_pert.ones_like(),
    };
    let hinge = match cfg.objective {
        ObjectiveKind::Reference => (cfg.gamma - &d_pert).relu() * &ask,
        ObjectiveKind::Relative => {
            (cfg.gamma - (&d_pert - d_clean.as_ref().expect("paired"))).relu() * &ask
        }
        ObjectiveKind::Anchored => {
            (cfg.gamma - &d_pert).relu() * &ask + d_clean.as_ref().expect("paired")
        }
    };
    let mut loss = ce + hinge.mean(Kind::Float) * cfg.alpha;
    if let Some(a) = cfg.adversarial.as_ref().filter(|a| a.ce_weight > 0.0) {
        // Each adversarial copy through its two members: both must still classify it.
        let ys = y.narrow(0, 0, h);
        let adv_ce = (logits.narrow(0, at, h).cross_entropy_for_logits(&ys)
            + logits.narrow(0, at + h, h).cross_entropy_for_logits(&ys))
            * 0.5;
        loss += adv_ce * a.ce_weight;
    }
    Ok(StepOutput {
        loss,
        clean_logits: clean_logits.detach(),
        d_perturbed: d_pert.mean(Kind::Float).double_value(&[]),
        d_clean: d_clean.map(|d| d.mean(Kind::Float).double_value(&[])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbation_stays_in_the_ball_and_in_range() {
        let _rng = crate::rng_lock();
        tch::manual_seed(3);
        let x = Tensor::rand([16, 1, 12, 12], (Kind::Float, Device::Cpu));
        let xp = perturb(&x, 0.2, 1.0); // every image blurred
        assert_eq!(xp.size(), x.size());
        let d = f64::try_from((&xp - &x).abs().max()).unwrap();
        assert!(d <= 0.2 + 1e-6, "{d}");
        assert!(f64::try_from(xp.min()).unwrap() >= 0.0);
        assert!(f64::try_from(xp.max()).unwrap() <= 1.0);
        let xp0 = perturb(&x, 0.2, 0.0);
        assert!(f64::try_from((&xp0 - &x).abs().max()).unwrap() > 0.05);
    }

    #[test]
    fn gaussian_kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel(5, 1.0);
        assert!((f64::try_from(k.sum(Kind::Float)).unwrap() - 1.0).abs() < 1e-6);
        assert!(k.allclose(&k.transpose(0, 1), 1e-6, 1e-7, false));
        assert!(k.allclose(&k.flip([0]), 1e-6, 1e-7, false));
    }

    #[test]
    fn distinct_pairs_differ_everywhere() {
        let _rng = crate::rng_lock();
        tch::manual_seed(1);
        let (a, b) = distinct_pair(1000, 2);
        assert_eq!(i64::try_from(a.eq_tensor(&b).sum(Kind::Int64)).unwrap(), 0);
        assert!(i64::try_from(a.max()).unwrap() < 2 && i64::try_from(b.min()).unwrap() >= 0);
    }

    #[test]
    fn validates_settings() {
        let _rng = crate::rng_lock();
        let ok = LibreConfig::for_attack_eps(ObjectiveKind::Reference, 0.3);
        assert_eq!(ok.noise_eps, (0.15, 0.6));
        ok.validate().unwrap();
        for bad in [
            LibreConfig {
                noise_eps: (0.0, 0.1),
                ..ok.clone()
            },
            LibreConfig {
                noise_eps: (0.3, 0.1),
                ..ok.clone()
            },
            LibreConfig {
                alpha: f64::NAN,
                ..ok.clone()
            },
            LibreConfig {
                blur_prob: 2.0,
                ..ok.clone()
            },
            LibreConfig {
                member_init_std: -1.0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(customary_eps([1, 28, 28]), 0.3);
        assert!((customary_eps([3, 32, 32]) - 8.0 / 255.0).abs() < 1e-12);
    }
}
