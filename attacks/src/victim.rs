//! The model under attack, seen through the smallest interface the attacks need (docs/design.md
//! section 8).
//!
//! A victim maps images in [0, 1] to logits, either deterministic `[B, K]` or with a Monte-Carlo
//! sample axis `[B, S, K]` (a Bayesian network's S posterior samples from one parallel forward).
//! It may also expose a detector score (higher = more suspicious, docs/design.md section 9), which
//! the adaptive ("mimicry") objective pushes down. Normalisation (mean/std) belongs inside the
//! victim: attacks work in pixel space.

use tch::nn::ModuleT;
use tch::{Kind, Tensor};

/// A classifier under attack.
///
/// # Shapes
/// - input `x`: `[B, C, H, W]`, float, in [0, 1]
/// - `Victim::logits`: `[B, K]`, or `[B, S, K]` with an MC sample axis of S draws
/// - `Victim::score`: `[B]`
pub trait Victim {
    /// Logits of a batch; must be differentiable with respect to `x`.
    fn logits(&self, x: &Tensor) -> Tensor;

    /// Detector score per input, higher = more suspicious; `None` when the victim has no detector.
    fn score(&self, _x: &Tensor) -> Option<Tensor> {
        None
    }

    /// Logits and score of one batch. The default runs two forwards; a victim whose score comes
    /// from the same forward (LiBRe's feature variance) should override it so adaptive attacks
    /// cost one forward per step.
    fn logits_and_score(&self, x: &Tensor) -> (Tensor, Option<Tensor>) {
        (self.logits(x), self.score(x))
    }

    /// True when two forwards of the same input may differ (the victim samples weights inside
    /// `logits`). Expectation over Transformation averages only over such victims.
    fn is_stochastic(&self) -> bool {
        false
    }
}

/// A victim from a closure `x -> logits` (deterministic).
pub struct FnVictim<F: Fn(&Tensor) -> Tensor>(pub F);

impl<F: Fn(&Tensor) -> Tensor> Victim for FnVictim<F> {
    fn logits(&self, x: &Tensor) -> Tensor {
        (self.0)(x)
    }
}

/// A deterministic victim from any `tch` module, run in evaluation mode (`train = false`).
pub struct ModuleVictim<'a, M: ModuleT>(pub &'a M);

impl<M: ModuleT> Victim for ModuleVictim<'_, M> {
    fn logits(&self, x: &Tensor) -> Tensor {
        self.0.forward_t(x, false)
    }
}

/// Per-class log-probabilities `[B, K]` of the victim's prediction.
///
/// `[B, K]` logits give `log_softmax`; `[B, S, K]` give the log of the MC-averaged softmax,
/// `log(mean_s softmax_s + 1e-10)` (docs/design.md section 8: the Bayesian model is attacked
/// through its predictive). Differentiable.
///
/// # Shapes
/// `logits`: `[B, K]` or `[B, S, K]` -> `[B, K]`
pub fn predictive_log_probs(logits: &Tensor) -> Tensor {
    match logits.dim() {
        3 => (logits
            .softmax(-1, Kind::Float)
            .mean_dim(1, false, Kind::Float)
            + 1e-10)
            .log(),
        _ => logits.log_softmax(-1, Kind::Float),
    }
}

/// Predicted classes `[B]` (int64) of the victim's predictive, without building a graph.
pub fn predict(victim: &dyn Victim, x: &Tensor) -> Tensor {
    tch::no_grad(|| predictive_log_probs(&victim.logits(x)).argmax(-1, false))
}
