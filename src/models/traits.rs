//! The model API: a network body ([`Net`]) and the object-safe [`BayesModel`] that training,
//! LiBRe, attacks and checkpoints use, with the named activations of a forward ([`Tap`]).

use super::{ModelConfig, PosteriorMeta};
use crate::bayes::PosteriorConfig;
use crate::bayes::{Act, BayesLayer, Ctx, Family, ForwardMode, LayerSelection, McDraws, McDropout};
use crate::runtime::precision::Precision;
use crate::Result;
use tch::{nn, Tensor};

/// A network body: named sub-modules, a forward over [`Act`]s, and access to its layers.
pub trait Net {
    /// The forward from normalised input to logits.
    ///
    /// # Shapes
    /// `[B, C, H, W]` -> `[B, K]` or `[B, S, K]` (sample axis from the first Bayesian layer on).
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act>;
    /// All layers that may become Bayesian, in forward order.
    fn layers(&self) -> Vec<&dyn BayesLayer>;
    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer>;
    /// The paths that `last-block` selects.
    fn last_block(&self) -> Vec<String>;
}

/// One named activation of a forward (see [`BayesModel::forward_taps`]).
#[derive(Debug)]
pub struct Tap {
    /// The block's name after its last module (`conv2`, `layer4.1`, `avgpool`, `logits`).
    pub name: String,
    /// `[B, S, ...]`.
    pub value: Tensor,
    /// Whether the block comes at or after the first Bayesian layer, so that its output varies
    /// over the samples; before it a parallel MC forward computes one activation per image.
    pub sampled: bool,
}

/// The model API others use (training, LiBRe, attacks, checkpoints).
pub trait BayesModel {
    fn config(&self) -> &ModelConfig;
    fn var_store(&self) -> &nn::VarStore;
    fn var_store_mut(&mut self) -> &mut nn::VarStore;

    /// Logits under `mode`.
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]` in `[0, 1]` -> `[B, S, K]` with S = `mode.samples()` (1 for the
    /// deterministic and training modes).
    fn forward_mc(&self, x: &Tensor, mode: &ForwardMode) -> Result<Tensor> {
        Ok(self.forward_mc_with_features(x, mode)?.0)
    }

    /// Logits `[B, S, K]` and, from the same forward, the features at the output of the block
    /// holding the last Bayesian layer, `[B, S, ...]` (a model without Bayesian layers: the
    /// classifier head's input). LiBRe's detection score is their variance over S.
    fn forward_mc_with_features(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Tensor)>;

    /// Logits `[B, S, K]` and the activation at every block boundary from the same forward (the
    /// net's named taps in forward order, e.g. LeNet5's `conv1`, `conv2`, `linear1`, then
    /// `logits`), each `[B, S, ...]`. The classic detectors (KD, LID, Mahalanobis) read these.
    fn forward_taps(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Vec<Tap>)>;

    /// Paths of every convertible layer in forward order (`layer4.2.conv1`, ...).
    fn layer_paths(&self) -> Vec<String>;
    /// Each layer's current family.
    fn layer_families(&self) -> Vec<(String, Family)>;
    /// What `--layers last-block` selects.
    fn last_block(&self) -> Vec<String>;

    /// Converts the selected layers in place; returns the converted paths. All-or-nothing: fails
    /// before changing anything when a layer is already Bayesian or the family differs from an
    /// earlier conversion.
    fn convert(&mut self, sel: &LayerSelection, cfg: &PosteriorConfig) -> Result<Vec<String>>;
    /// Every layer back to a point estimate (means; ensembles: member average).
    fn to_deterministic(&mut self) -> Result<()>;
    /// The current posterior, None for a DNN.
    fn posterior(&self) -> Option<&PosteriorMeta>;

    /// Keeps dropout on at the named blocks in the MC forward modes (None: off). Errors, naming
    /// the valid names, for a block the model does not have.
    fn set_mc_dropout(&mut self, d: Option<McDropout>) -> Result<()>;
    fn mc_dropout(&self) -> Option<&McDropout>;

    /// How parallel MC forwards draw mean-field layers ([`McDraws`]; default: weight samples).
    fn set_mc_draws(&mut self, d: McDraws);
    fn mc_draws(&self) -> McDraws;

    /// Computes in `p` from now on ([`Precision`]): bf16 casts the weights (keeping their float32
    /// values, restored exactly by going back to f32). Inference only: converting, saving and
    /// training need f32, and refuse otherwise. Errors for bf16 on a device without bf16 kernels.
    fn set_precision(&mut self, p: Precision) -> Result<()>;
    fn precision(&self) -> Precision;
}

impl std::fmt::Debug for dyn BayesModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BayesModel")
            .field("config", self.config())
            .field("posterior", &self.posterior())
            .finish()
    }
}
