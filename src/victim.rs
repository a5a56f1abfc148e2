//! A [`BayesModel`] seen as a [`libre_attacks::Victim`]: the attacks crate knows nothing of the
//! Bayesian internals, only logits (with the MC sample axis) and an optional detector score.

use crate::bayes::ForwardMode;
use crate::models::BayesModel;
use libre_attacks::Victim;
use tch::Tensor;

/// A model under attack in one forward mode.
///
/// # Shapes
/// `logits`: `[B, K]` for the deterministic mode, `[B, S, K]` for `ParallelMc { samples: S }`
/// (the attack then ascends the loss of the MC-averaged predictive).
pub struct ModelVictim<'a> {
    pub model: &'a dyn BayesModel,
    pub mode: ForwardMode,
}

impl Victim for ModelVictim<'_> {
    fn logits(&self, x: &Tensor) -> Tensor {
        // Inputs were validated against the model before the attack started; a failure here is a
        // broken invariant, not user error.
        let l = self
            .model
            .forward_mc(x, &self.mode)
            .expect("model forward failed"); // [B, S, K]
        match self.mode {
            ForwardMode::ParallelMc { .. } | ForwardMode::SequentialMc { .. } => l,
            _ => l.squeeze_dim(1), // [B, K]
        }
    }

    fn is_stochastic(&self) -> bool {
        matches!(self.mode, ForwardMode::Train(_))
    }
}
