//! Adversarial attack generators for tch classifiers, deterministic or Bayesian (docs/design.md
//! section 8).
//!
//! - [`Victim`]: the model under attack, images in [0, 1] -> logits `[B, K]` or, with a
//!   Monte-Carlo sample axis, `[B, S, K]`; optionally a detector score for adaptive attacks.
//! - [`Objective`]: the loss ascended (cross-entropy or margin; MC-averaged predictive or
//!   BayesAdapter's weighted samples; EoT; `- c * score`; targeted).
//! - [`Attack`]: one trait, one module per attack; [`by_name`] builds them from a name and JSON
//!   overrides of the defaults (docs/design.md section 8).
//! - [`AttackReport`]: clean / robust accuracy, success rate and perturbation sizes.
//!
//! Randomness comes from [`rng::SeededRng`], seeded by the `seed` argument of
//! [`Attack::perturb`]: the same seed gives the same output for a deterministic victim, on any
//! thread (libtorch's global generator is not used).
//!
//! Conventions: inputs `[B, C, H, W]` float in [0, 1] (normalisation lives inside the victim) and
//! labels `[B]` int64 (target classes for targeted attacks); the input is never modified; outputs
//! lie in [0, 1] and in the eps-ball; eps = 0 returns a copy of the input. For l_2 attacks eps and
//! the step are per-coordinate: radius eps * sqrt(D), D = C * H * W (the reference's convention).
//!
//! Transfer attacks need nothing special: perturb with the surrogate victim, then report with the
//! target ([`ReportAccumulator::add`] takes any victim).

pub mod adaptive;
pub mod bim;
pub mod cw;
pub mod cw_l2;
pub mod deepfool;
pub mod di_mim;
pub mod error;
pub mod fgsm;
pub mod geometry;
pub mod iterative;
pub mod mim;
pub mod objective;
pub mod pgd;
pub mod registry;
pub mod report;
pub mod rng;
pub mod spsa;
pub mod tim;
pub mod victim;

use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use adaptive::{Adaptive, AdaptiveConfig, AdaptiveMode, Schedule, ScoreForm};
pub use error::{AttackError, Result};
pub use geometry::{l2_scale, Norm};
pub use iterative::IterativeConfig;
pub use objective::{LossKind, McMode, Objective};
pub use registry::{by_name, ADAPTIVE_NAMES, ATTACK_NAMES};
pub use report::{AttackReport, ReportAccumulator};
pub use victim::{predict, predictive_log_probs, FnVictim, ModuleVictim, Victim};

/// The threat model of a norm-bounded attack. `eps` is per-coordinate: the l_2 radius is
/// `eps * sqrt(D)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub norm: Norm,
    pub eps: f64,
}

/// An adversarial attack.
pub trait Attack {
    /// Registry name (`pgd`, `pgd-l2`, ...).
    fn name(&self) -> &str;

    /// The validated settings, for metadata next to the adversarial batch.
    fn config_json(&self) -> serde_json::Value;

    /// The eps-ball, or `None` for minimal-perturbation attacks (CW-l2, DeepFool).
    fn budget(&self) -> Option<Budget>;

    /// True when `y` holds target classes.
    fn targeted(&self) -> bool;

    /// Adversarial version of `x`.
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]` in [0, 1]; `y`: `[B]` int64 (labels, or targets when targeted)
    /// -> `[B, C, H, W]` in [0, 1], within [`Attack::budget`].
    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, seed: u64) -> Result<Tensor>;
}
