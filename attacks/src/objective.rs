//! The loss an attack ascends, and its input gradient (docs/design.md section 8).
//!
//! - Cross-entropy, the margin loss `max_{j != y} log p_j - log p_y` (CW), or the confidence of
//!   the most likely wrong class `max_{j != y} log p_j` (the attack on confidence-thresholding
//!   detectors of Stutz et al. 2020, "Confidence-calibrated adversarial training": a detector
//!   that flags low confidence is evaded by a misclassification made confident).
//! - With an MC sample axis, either the loss of the predictive `log(mean_s softmax_s + 1e-10)`
//!   from one parallel forward (the reference's white-box attack, [`McMode::Predictive`]), or
//!   BayesAdapter's alternative: per-sample losses weighted by the normalised `p_s(y|x)`
//!   ([`McMode::WeightedSamples`]). For cross-entropy the two have the same gradient up to the
//!   1e-10 (d/dx -log mean_s p_s = -sum_s [p_s / sum p] d/dx log p_s); they differ for the margin.
//! - Expectation over Transformation: the average of `eot_samples` independent forwards of a victim
//!   that samples (a deterministic victim is forwarded once: more forwards would repeat it).
//! - Adaptive ("mimicry") attack: `loss - adaptive_c * score`, pushing the detector score down.
//! - Targeted: the labels are the targets and the attack ascends `-CE(target)` (or the target's
//!   margin `log p_t - max_{j != t} log p_j`).
//!
//! Losses are summed over the batch, so each example's gradient does not depend on the batch.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{check, AttackError, Result};
use crate::victim::{predictive_log_probs, Victim};

/// Per-example loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Cross-entropy of the (predictive) log-probabilities.
    CrossEntropy,
    /// `max_{j != y} log p_j - log p_y` (Carlini-Wagner margin, on log-probabilities).
    Margin,
    /// `max_{j != y} log p_j`: the log-probability of the most likely wrong class, which keeps
    /// rising after the label flips, towards a confident misclassification.
    WrongConfidence,
}

/// How a `[B, S, K]` victim output becomes one loss per example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum McMode {
    /// Loss on `log(mean_s softmax_s + 1e-10)`.
    Predictive,
    /// `sum_s w_s loss_s`, `w_s = p_s(y|x) / sum_s' p_s'(y|x)` held constant (BayesAdapter).
    WeightedSamples,
}

/// The attacker's objective; every gradient attack ascends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Objective {
    pub loss: LossKind,
    pub mc_mode: McMode,
    /// Independent forwards averaged per gradient (EoT); only used for stochastic victims.
    pub eot_samples: usize,
    /// Weight of the detector score subtracted from the loss (0 = not adaptive; LiBRe uses 1).
    pub adaptive_c: f64,
    /// Labels passed to the attack are target classes; the attack moves towards them.
    pub targeted: bool,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            loss: LossKind::CrossEntropy,
            mc_mode: McMode::Predictive,
            eot_samples: 1,
            adaptive_c: 0.0,
            targeted: false,
        }
    }
}

impl Objective {
    /// The margin objective of CW-linf.
    pub fn margin() -> Self {
        Objective {
            loss: LossKind::Margin,
            ..Objective::default()
        }
    }

    /// Checks `eot_samples >= 1` and a finite `adaptive_c`.
    pub fn validate(&self, attack: &str) -> Result<()> {
        check::at_least(attack, "eot_samples", self.eot_samples, 1)?;
        check::non_negative(attack, "adaptive_c", self.adaptive_c)
    }

    /// Per-example objective `[B]` from victim logits (differentiable).
    ///
    /// # Shapes
    /// `logits`: `[B, K]` or `[B, S, K]`; `y`: `[B]` int64 -> `[B]`
    pub fn per_example(&self, attack: &str, logits: &Tensor, y: &Tensor) -> Result<Tensor> {
        let b = y.size()[0];
        let size = logits.size();
        if !(size.len() == 2 || size.len() == 3) || size[0] != b {
            return Err(AttackError::shape(
                attack,
                "victim logits",
                size,
                &format!("[{b}, K] or [{b}, S, K]"),
            ));
        }
        let k = *size.last().unwrap_or(&0);
        if self.loss != LossKind::CrossEntropy && k < 2 {
            return Err(AttackError::shape(
                attack,
                "victim logits",
                size,
                "K >= 2 for a loss over the wrong classes",
            ));
        }
        let sign = if self.targeted { -1.0 } else { 1.0 };
        if size.len() == 3 && self.mc_mode == McMode::WeightedSamples {
            let s = size[1];
            let logp = logits.log_softmax(-1, Kind::Float); // [B, S, K]
            let ys = y.view([b, 1, 1]).expand([b, s, 1], false); // [B, S, 1]
            let logp_y = logp.gather(2, &ys, false).squeeze_dim(2); // [B, S]
                                                                    // softmax over s of log p_s(y) = p_s(y) / sum p, without underflow.
            let w = logp_y.detach().softmax(1, Kind::Float); // [B, S]
            let per_sample = match self.loss {
                LossKind::CrossEntropy => -logp_y,                      // [B, S]
                LossKind::Margin => margin_of(&logp, &ys, 2),           // [B, S]
                LossKind::WrongConfidence => best_wrong(&logp, &ys, 2), // [B, S]
            } * sign;
            return Ok((per_sample * w).sum_dim_intlist(1, false, Kind::Float));
        }
        let logp = predictive_log_probs(logits); // [B, K]
        let y1 = y.view([b, 1]);
        Ok(match self.loss {
            LossKind::CrossEntropy => -logp.gather(1, &y1, false).squeeze_dim(1) * sign,
            LossKind::Margin => margin_of(&logp, &y1, 1) * sign,
            LossKind::WrongConfidence => best_wrong(&logp, &y1, 1) * sign,
        })
    }

    /// Gradient of the summed objective with respect to the input, evaluated at `transform(x)`
    /// (DI-MIM's input diversity; identity for the others). One forward and one backward per EoT
    /// sample; the victim's parameters get no gradient.
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]`, `y`: `[B]` -> `[B, C, H, W]`
    pub fn gradient(
        &self,
        attack: &str,
        victim: &dyn Victim,
        x: &Tensor,
        y: &Tensor,
        transform: Option<&dyn Fn(&Tensor) -> Tensor>,
    ) -> Result<Tensor> {
        tch::with_grad(|| {
            // A fresh leaf aliasing x's storage: no copy, and x itself is never touched.
            let xg = x.detach().set_requires_grad(true);
            let input = match transform {
                Some(t) => t(&xg),
                None => xg.shallow_clone(),
            };
            let draws = if victim.is_stochastic() {
                self.eot_samples
            } else {
                1
            };
            let mut total: Option<Tensor> = None;
            for _ in 0..draws {
                let loss = self.loss_at(attack, victim, &input, y)?.sum(Kind::Float);
                total = Some(match total {
                    Some(t) => t + loss,
                    None => loss,
                });
            }
            let total = total.expect("draws >= 1") / draws as f64;
            let mut grads =
                Tensor::f_run_backward(&[total], &[&xg], false, false).map_err(|source| {
                    AttackError::Torch {
                        attack: attack.to_string(),
                        source,
                    }
                })?;
            Ok(grads.pop().expect("one input, one gradient"))
        })
    }

    /// Per-example objective at `x` including the adaptive term, from one forward.
    pub fn loss_at(
        &self,
        attack: &str,
        victim: &dyn Victim,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Tensor> {
        if self.adaptive_c == 0.0 {
            return self.per_example(attack, &victim.logits(x), y);
        }
        let (logits, score) = victim.logits_and_score(x);
        let score = score.ok_or(AttackError::NoScore {
            attack: attack.to_string(),
            c: self.adaptive_c,
        })?;
        let b = y.size()[0];
        if score.size() != [b] {
            return Err(AttackError::shape(
                attack,
                "victim score",
                score.size(),
                &format!("[{b}]"),
            ));
        }
        Ok(self.per_example(attack, &logits, y)? - score.to_kind(Kind::Float) * self.adaptive_c)
    }
}

/// `max_{j != y} logp_j - logp_y` along `dim`, with `y` already unsqueezed at `dim`.
fn margin_of(logp: &Tensor, y: &Tensor, dim: i64) -> Tensor {
    let ly = logp.gather(dim, y, false).squeeze_dim(dim);
    best_wrong(logp, y, dim) - ly
}

/// `max_{j != y} logp_j` along `dim` (`y` holds one index per row along `dim`, size 1 there).
fn best_wrong(logp: &Tensor, y: &Tensor, dim: i64) -> Tensor {
    let mask = logp
        .zeros_like()
        .scatter_value(dim, y, 1.0)
        .to_kind(Kind::Bool);
    logp.masked_fill(&mask, f64::NEG_INFINITY).amax(dim, false)
}
