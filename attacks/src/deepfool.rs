//! DeepFool (Moosavi-Dezfooli et al. 2016), l_2 and l_inf: linearise the victim around the current
//! point, step to the nearest linearised decision boundary among the `num_candidates` most likely
//! classes, repeat until the label changes; the final perturbation is scaled by 1 + overshoot
//! (0.02). Labels are the given `y` (an already misclassified input is returned unchanged); results
//! are clamped to [0, 1]. Untargeted, deterministic, unbounded (a minimal-perturbation attack).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{check, AttackError, Result};
use crate::geometry::{check_batch, Norm};
use crate::victim::predictive_log_probs;
use crate::{Attack, Budget, Victim};

/// DeepFool settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepFoolConfig {
    pub norm: Norm,
    pub overshoot: f64,
    pub max_iter: usize,
    /// The label and the `num_candidates - 1` most likely other classes are searched.
    pub num_candidates: usize,
}

impl Default for DeepFoolConfig {
    /// The original defaults: l_2, overshoot 0.02, 50 iterations, 10 candidate classes.
    fn default() -> Self {
        DeepFoolConfig {
            norm: Norm::L2,
            overshoot: 0.02,
            max_iter: 50,
            num_candidates: 10,
        }
    }
}

impl DeepFoolConfig {
    /// Checks overshoot >= 0, max_iter >= 1, num_candidates >= 2.
    pub fn validate(&self) -> Result<()> {
        check::non_negative("deepfool", "overshoot", self.overshoot)?;
        check::at_least("deepfool", "max_iter", self.max_iter, 1)?;
        check::at_least("deepfool", "num_candidates", self.num_candidates, 2)
    }
}

/// The DeepFool attack.
#[derive(Debug, Clone, Default)]
pub struct DeepFool {
    config: DeepFoolConfig,
}

impl DeepFool {
    /// Validates the config.
    pub fn new(config: DeepFoolConfig) -> Result<Self> {
        config.validate()?;
        Ok(DeepFool { config })
    }

    pub fn config(&self) -> &DeepFoolConfig {
        &self.config
    }
}

impl Attack for DeepFool {
    fn name(&self) -> &str {
        match self.config.norm {
            Norm::L2 => "deepfool",
            Norm::Linf => "deepfool-linf",
        }
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn budget(&self) -> Option<Budget> {
        None
    }

    fn targeted(&self) -> bool {
        false
    }

    /// # Shapes
    /// Each iteration takes one forward and `num_candidates` backwards of the `[B, K]` (or
    /// `[B, S, K]` -> predictive) output; `r_tot` is `[B, C, H, W]`.
    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, _seed: u64) -> Result<Tensor> {
        let name = self.name().to_string();
        check_batch(&name, x, y)?;
        let b = x.size()[0];
        if b == 0 {
            return Ok(x.copy());
        }
        let x = &x.detach();
        let cfg = &self.config;
        let y1 = y.view([b, 1]);
        let mut r_tot = x.zeros_like();
        let mut adv = x.shallow_clone();
        let mut active = Tensor::ones([b], (Kind::Bool, x.device()));
        let mut candidates: Option<Tensor> = None;
        for it in 0..=cfg.max_iter {
            let (z, xg) = tch::with_grad(|| {
                let xg = adv.detach().set_requires_grad(true);
                (victim.logits(&xg), xg)
            });
            let zs = z.size();
            if !(zs.len() == 2 || zs.len() == 3) || zs[0] != b || zs[zs.len() - 1] < 2 {
                return Err(AttackError::shape(
                    &name,
                    "victim logits",
                    zs,
                    &format!("[{b}, K] or [{b}, S, K], K >= 2"),
                ));
            }
            let z = tch::with_grad(|| predictive_log_probs(&z)); // [B, K]
            let k = z.size()[1];
            let pred = z.detach().argmax(1, false);
            active = active.logical_and(&pred.eq_tensor(y));
            // The last pass only checks the labels of the final step.
            if it == cfg.max_iter || !bool::try_from(active.any()).expect("bool") {
                break;
            }
            let cand = candidates.get_or_insert_with(|| {
                // y first, then the most likely other classes at the clean input.
                let nc = (cfg.num_candidates as i64).min(k);
                let mask = z
                    .zeros_like()
                    .scatter_value(1, &y1, 1.0)
                    .to_kind(Kind::Bool);
                let others = z
                    .detach()
                    .masked_fill(&mask, f64::NEG_INFINITY)
                    .topk(nc - 1, 1, true, true)
                    .1;
                Tensor::cat(&[y1.shallow_clone(), others], 1) // [B, nc]
            });
            let nc = cand.size()[1];
            let zc = tch::with_grad(|| z.gather(1, cand, false)); // [B, nc]
            let mut grads = Vec::with_capacity(nc as usize);
            for j in 0..nc {
                let out = tch::with_grad(|| zc.select(1, j).sum(Kind::Float));
                let g = Tensor::f_run_backward(&[&out], &[&xg], j + 1 < nc, false)
                    .map_err(|source| AttackError::Torch {
                        attack: name.clone(),
                        source,
                    })?
                    .pop()
                    .expect("one gradient");
                grads.push(g);
            }
            adv = tch::no_grad(|| {
                let zc = zc.detach();
                let g0 = &grads[0];
                let mut best_dist = Tensor::full([b], f64::INFINITY, (Kind::Float, x.device()));
                let mut best_r = x.zeros_like();
                for j in 1..nc as usize {
                    let w = &grads[j] - g0; // [B, C, H, W]
                    let f = (zc.select(1, j as i64) - zc.select(1, 0)).abs(); // [B]
                    let wn = match cfg.norm {
                        Norm::L2 => w
                            .square()
                            .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)
                            .sqrt(),
                        Norm::Linf => {
                            w.abs()
                                .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)
                        }
                    } + 1e-8;
                    let dist = &f / &wn;
                    // The step that reaches the linearised boundary (1e-4 pushes just past it).
                    let r = match cfg.norm {
                        Norm::L2 => &w * ((&f + 1e-4) / wn.square()).view([b, 1, 1, 1]),
                        Norm::Linf => w.sign() * ((&f + 1e-4) / &wn).view([b, 1, 1, 1]),
                    };
                    let closer = dist.lt_tensor(&best_dist);
                    best_dist = dist.where_self(&closer, &best_dist);
                    best_r = r.where_self(&closer.view([b, 1, 1, 1]), &best_r);
                }
                let act = active.view([b, 1, 1, 1]).to_kind(r_tot.kind());
                r_tot = &r_tot + best_r.to_kind(r_tot.kind()) * act;
                (x + &r_tot * (1.0 + cfg.overshoot)).clamp(0.0, 1.0)
            });
        }
        Ok(adv)
    }
}
