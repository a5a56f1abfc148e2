//! Forward modes (docs/design.md section 3): how a Bayesian forward draws its weights
//! ([`ForwardMode`], with [`TrainSampling`], [`McSampling`], [`Routing`] in training and
//! [`McDraws`] in a parallel MC forward) and MC dropout ([`McDropout`]).
//!
//! A [`Ctx`] is built from a mode for one forward and handed to every layer (`ctx.rs`); the
//! layers pass [`Act`]s, a tensor plus an optional MC sample axis (`act.rs`).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a Bayesian forward draws its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardMode {
    /// Means (ensembles: member average); BatchNorm uses running statistics. Logits `[B, 1, K]`.
    Deterministic,
    /// Means with BatchNorm in training mode (batch statistics, running stats updated): DNN
    /// training. Logits `[B, 1, K]`.
    DeterministicTrain,
    /// Stochastic training forward, BatchNorm in training mode. Logits `[B, 1, K]`.
    Train(TrainSampling),
    /// One forward evaluating S samples shared across the batch (BatchNorm: running stats).
    /// Logits `[B, S, K]`.
    ParallelMc { samples: usize },
    /// S full forwards with the same draws `ParallelMc` makes from the same seed (a test oracle
    /// and a low-memory fallback). Logits `[B, S, K]`.
    SequentialMc { samples: usize },
}

impl ForwardMode {
    /// The number of samples along the output's sample axis.
    pub fn samples(&self) -> usize {
        match self {
            ForwardMode::ParallelMc { samples } | ForwardMode::SequentialMc { samples } => *samples,
            _ => 1,
        }
    }

    /// Checks the sample count, routing ids and batch rows.
    pub fn validate(&self) -> Result<()> {
        match self {
            ForwardMode::ParallelMc { samples: 0 } | ForwardMode::SequentialMc { samples: 0 } => {
                Err(Error::param(
                    "mc_samples",
                    0,
                    "the MC sample count S must be >= 1",
                ))
            }
            ForwardMode::Train(TrainSampling {
                routing: Routing::Given(ids),
                ..
            }) if ids.iter().any(|&i| i < 0) => Err(Error::invalid(format!(
                "routing ids must be >= 0, got {ids:?}"
            ))),
            ForwardMode::Train(TrainSampling {
                rows: Some(rows), ..
            }) if rows.is_empty() || rows.iter().any(|&i| i < 0) => Err(Error::invalid(
                "batch rows must be a non-empty list of input rows (>= 0)",
            )),
            _ => Ok(()),
        }
    }
}

/// Training-time sampling: mean-field draw scheme plus ensemble / low-rank routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSampling {
    /// How mean-field layers draw.
    pub sampling: McSampling,
    /// Which member / component each example goes through.
    pub routing: Routing,
    /// The training batch as rows of an input that holds each distinct image once: example `i`
    /// of the batch is input row `rows[i]` (LiBRe sends copies of an image through different
    /// members). The layers before the first Bayesian one (or the first block holding one) then
    /// run once per distinct image; their batch norms compute training statistics over the
    /// whole batch, copies counted, so outputs and gradients equal those of the forward over
    /// `input[rows]` (docs/design.md section 16). None: the input is the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<i64>>,
}

impl Default for TrainSampling {
    fn default() -> Self {
        TrainSampling {
            sampling: McSampling::PerExample,
            routing: Routing::Random,
            rows: None,
        }
    }
}

/// How mean-field layers draw in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum McSampling {
    /// One weight sample per example (grouped conv / batched matmul).
    PerExample,
    /// One weight sample for the whole batch.
    PerBatch,
    /// Output mean from mu, output variance from x^2 and sigma^2 (Linear, Conv2d; other layers
    /// fall back to per-example samples).
    LocalReparam,
    /// One weight perturbation decorrelated per example by random sign flips (per example and
    /// channel for convs). Linear, Conv2d; other layers fall back to per-example samples.
    Flipout,
}

/// How a parallel MC forward ([`ForwardMode::ParallelMc`]) draws mean-field weights
/// (docs/design.md section 3).
///
/// Both give every example S draws from the same predictive distribution; they differ only in
/// how draws are correlated across the examples of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum McDraws {
    /// S weight samples, each shared by the whole batch (the reference's estimator; the
    /// default, so documented results reproduce draw for draw).
    #[default]
    Weights,
    /// Local reparameterisation (Kingma, Salimans & Welling 2015) wherever it is exact: a
    /// mean-field Linear layer, or a mean-field conv whose input and output maps are 1x1 (the last
    /// ResNet stage at 32 px). The layer's output for each example and sample is drawn from its
    /// Gaussian (mean `x mu^T`, variance `x^2 sigma^2^T`), which is the distribution a weight
    /// sample gives that example: each output unit reads its own weights, so the units are
    /// independent given the input. Costs two matmuls instead of drawing S full weight tensors
    /// (20 x 4.5 M normals for ResNet-50's last block). Every example gets independent draws,
    /// so examples of one batch no longer share a weight sample. Other layers (convs on larger
    /// maps, where positions share a weight) draw weights as in `Weights`.
    LocalReparam,
}

impl McDraws {
    /// The name `FromStr` reads (`weights`, `local-reparam`).
    pub fn name(self) -> &'static str {
        match self {
            McDraws::Weights => "weights",
            McDraws::LocalReparam => "local-reparam",
        }
    }
}

impl std::fmt::Display for McDraws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for McDraws {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "weights" => Ok(McDraws::Weights),
            "local-reparam" => Ok(McDraws::LocalReparam),
            _ => Err(Error::invalid(format!(
                "MC draws '{s}': expected 'weights' or 'local-reparam'"
            ))),
        }
    }
}

/// Which ensemble member / low-rank component each example goes through in training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Uniformly random per example (drawn once per forward, shared by all layers).
    Random,
    /// Every example through this member.
    Fixed(usize),
    /// One id per example (length B).
    Given(Vec<i64>),
}

/// MC dropout (Gal & Ghahramani 2016, the LiBRe paper's baseline; Feinman et al. 2017's "Bayesian
/// uncertainty"): dropout kept on at test time at the outputs of the named blocks (the model's tap
/// names, e.g. LeNet5's `conv2`, `linear1`), S masks per image in one parallel forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McDropout {
    /// Block (tap) names whose outputs are dropped.
    pub layers: Vec<String>,
    /// Drop probability, in (0, 1); kept units are scaled by 1 / (1 - p).
    pub p: f64,
    /// Masks per image (the MC sample count).
    pub samples: usize,
}

impl McDropout {
    /// Checks p in (0, 1), at least one block and at least 2 samples.
    pub fn validate(&self) -> Result<()> {
        if !(self.p > 0.0 && self.p < 1.0) {
            return Err(Error::invalid(format!(
                "dropout probability {}: must lie in (0, 1)",
                self.p
            )));
        }
        if self.layers.is_empty() {
            return Err(Error::invalid("MC dropout needs at least one layer"));
        }
        if self.samples < 2 {
            return Err(Error::invalid(format!(
                "MC dropout with {} sample(s): needs at least 2",
                self.samples
            )));
        }
        Ok(())
    }
}
