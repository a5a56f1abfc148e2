//! A [`BayesModel`] seen as a [`libre_attacks::Victim`]: the attacks crate knows nothing of the
//! Bayesian internals, only logits (with the MC sample axis) and an optional detector score.

use crate::bayes::{Family, ForwardMode};
use crate::detect::classic::Classic;
use crate::detect::Score;
use crate::models::BayesModel;
use libre_attacks::Victim;
use tch::Tensor;

/// A model under attack in one forward mode, optionally with the detector score an adaptive
/// attack pushes down.
///
/// # Shapes
/// `logits`: `[B, K]` for the deterministic mode, `[B, S, K]` for `ParallelMc { samples: S }`
/// (the attack then ascends the loss of the MC-averaged predictive); `score`: `[B]`.
pub struct ModelVictim<'a> {
    pub model: &'a dyn BayesModel,
    pub mode: ForwardMode,
    /// The detector score for adaptive attacks, computed from the same forward as the logits.
    pub score: Option<Score>,
    /// The fitted classic detector giving `score` when it is a classic score.
    pub classic: Option<&'a Classic>,
}

impl<'a> ModelVictim<'a> {
    /// A victim without a detector score.
    pub fn new(model: &'a dyn BayesModel, mode: ForwardMode) -> Self {
        ModelVictim {
            model,
            mode,
            score: None,
            classic: None,
        }
    }

    fn shape_logits(&self, l: Tensor) -> Tensor {
        match self.mode {
            ForwardMode::ParallelMc { .. } | ForwardMode::SequentialMc { .. } => l,
            _ => l.squeeze_dim(1), // [B, K]
        }
    }
}

impl Victim for ModelVictim<'_> {
    fn logits(&self, x: &Tensor) -> Tensor {
        // MagNet's reformer: the classifier sees the autoencoder's reconstruction (differentiable).
        let reformed = self.classic.and_then(|c| c.classifier_input(x));
        let x = reformed.as_ref().unwrap_or(x);
        // Inputs were validated against the model before the attack started; a failure here is a
        // broken invariant, not user error.
        let l = self
            .model
            .forward_mc(x, &self.mode)
            .expect("model forward failed"); // [B, S, K]
        self.shape_logits(l)
    }

    fn score(&self, x: &Tensor) -> Option<Tensor> {
        self.logits_and_score(x).1
    }

    fn logits_and_score(&self, x: &Tensor) -> (Tensor, Option<Tensor>) {
        let Some(score) = self.score else {
            return (self.logits(x), None);
        };
        if let (Some(_), Some(c)) = (score.classic(), self.classic) {
            // A classic detector reads the network's taps in its own forward. One forward could
            // give the logits too (as `Detector::score` does), but the attack's gradient would
            // then sum the two terms inside the network rather than at the input: other
            // round-off, and other adversarial images wherever the gradient's values matter
            // (l_2 PGD on MNIST: pixels up to 0.06 apart after 5 steps), so they stay apart.
            let s = c
                .score_tensor_for(score, self.model, x)
                .expect("classic score checked at build");
            return (self.logits(x), Some(s.to_kind(tch::Kind::Float)));
        }
        let reformed = self.classic.and_then(|c| c.classifier_input(x));
        let (l, f) = self
            .model
            .forward_mc_with_features(reformed.as_ref().unwrap_or(x), &self.mode)
            .expect("model forward failed");
        // The score's availability was checked when the victim was built.
        let (_, mut s) =
            crate::detect::scores::compute(&l, &f, &[score]).expect("score checked at build");
        (self.shape_logits(l), s.pop())
    }

    /// True when two forwards of the same input may differ: a training-mode forward, or MC
    /// sampling of a model with mean-field layers or MC dropout (which draw fresh weights or
    /// masks on every forward).
    /// Ensembles and low-rank components are enumerated, not sampled, so they are deterministic.
    fn is_stochastic(&self) -> bool {
        match self.mode {
            ForwardMode::Train(_) => true,
            ForwardMode::ParallelMc { .. } | ForwardMode::SequentialMc { .. } => {
                // MC dropout draws fresh masks on every forward, like mean-field weights.
                self.model.mc_dropout().is_some()
                    || self
                        .model
                        .layer_families()
                        .iter()
                        .any(|(_, f)| *f == Family::MeanField)
            }
            _ => false,
        }
    }
}
