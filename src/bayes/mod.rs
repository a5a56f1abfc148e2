//! The Bayesian core (BayesAdapter, Deng et al. 2020, with ScalableBDL's plug-and-play API;
//! docs/design.md sections 2-6): posterior families, Bayesian layers, conversion of pretrained
//! models, forward modes incl. parallel MC, the prior regulariser and a parameter-group SGD.
//!
//! # Design note (stable API; others build on these names)
//!
//! - **Layers** ([`Linear`], [`Conv2d`], [`BatchNorm`], [`PRelu`], one file each) start as point
//!   estimates with numerics identical to tch's `nn` layers. Each learnable tensor is a
//!   [`BayesParam`] that is either `Point`, `MeanField { mu, psi }`, `Ensemble { members }` or
//!   `LowRank { mu, a, b }`. Conversion happens in place and edits the model's `nn::VarStore`:
//!   `weight` stays the mean (mean-field, low-rank) and extras get suffixed names:
//!   `weight_psi`, `bias_psi` (mean-field), `weight_members` / `bias_members` `[S, ...]`
//!   (ensemble; the plain `weight` is removed, so no dead parameter reaches the optimiser),
//!   `weight_lr_a` `[S, out, r]`, `weight_lr_b` `[S, r, in*k*k]` (low-rank). A torchvision
//!   state_dict therefore maps 1:1 onto a point model, and [`ParamGroup::of_name`] tells means
//!   from posterior-scale parameters by suffix alone.
//! - **Low-rank** applies to weights with >= 2 dims; biases and 1-d affine parameters stay point
//!   estimates (a rank-r factor of a vector is meaningless). Its deterministic weight is `mu`.
//! - **Ensemble in deterministic mode** uses the member average (the reference raises). Right after
//!   conversion every member equals the pretrained tensor, so this is the DNN.
//! - **Forward** ([`ForwardMode`]): `Deterministic` (means, BatchNorm running statistics),
//!   `DeterministicTrain` (means, BatchNorm batch statistics: DNN training), `Train(TrainSampling)`
//!   (one weight sample per example or per batch, local reparameterisation, flipout; ensemble /
//!   low-rank component routing random, fixed or given), `ParallelMc { samples }` (one forward, S
//!   samples shared across the batch) and `SequentialMc { samples }` (S forwards; same draws as
//!   `ParallelMc` from the same `tch::manual_seed`, because each layer draws its `[S, ...]` noise in
//!   the same order and sequential pass s uses slice s).
//! - **Activations** carry an optional sample axis ([`Act`]): `[B, ...]` until the first Bayesian
//!   layer (so the deterministic trunk runs once), `[B, S, ...]` after it. The first Bayesian layer
//!   uses one wide op (a conv with S*out channels, a matmul against `[S*out, in]`) instead of
//!   copying its input S times; later layers use grouped convs (groups = S*g) or batched matmuls;
//!   deterministic layers fold the sample axis into the batch.
//! - **Randomness** comes from libtorch's global generator: seed it with `tch::manual_seed`.
//! - **Prior** ([`prior::PriorRegularizer`]) is applied to gradients after backward, never added to
//!   the loss. **Optimiser** ([`optim::Sgd`]) is our own SGD on tch tensors (PyTorch semantics) with
//!   one group per [`ParamGroup`], so weight decay is never applied twice by accident.
//!
//! Files: `mode` (forward modes, MC dropout), `ctx` (the per-forward context), `act`
//! (activations), `route` (drawn weights to one form, per-member routing), `pool`, `fast` (the
//! fast-path switch), one file per layer kind, `posterior`, `prior`, `optim`, `select`.

pub mod act;
pub mod batchnorm;
pub mod conv;
pub mod ctx;
pub mod fast;
pub mod linear;
pub mod mode;
pub mod optim;
pub mod pool;
pub mod posterior;
pub mod prelu;
pub mod prior;
pub mod route;
pub mod select;

pub use act::Act;
pub use batchnorm::{batch_norm1d, batch_norm2d, BatchNorm, BatchNormConfig};
pub use conv::{conv2d, Conv2d, ConvConfig};
pub use ctx::Ctx;
pub use fast::{fast_paths, set_fast_paths};
pub use linear::{linear, Linear, LinearConfig};
pub use mode::{ForwardMode, McDraws, McDropout, McSampling, Routing, TrainSampling};
pub use posterior::{BayesParam, Family, ParamGroup, ParamState, PosteriorConfig};
pub use prelu::{prelu, PRelu};
pub use select::LayerSelection;

use crate::Result;

/// What kind of layer a [`BayesLayer`] is (for listings and checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayerKind {
    Linear,
    Conv2d,
    BatchNorm,
    PRelu,
}

/// A layer whose learnable tensors may carry a posterior. Object safe, so a model can hand out
/// all its layers for conversion and inspection.
pub trait BayesLayer {
    /// The module path in the PyTorch tree, e.g. `layer4.2.conv1`.
    fn path(&self) -> &str;
    fn kind(&self) -> LayerKind;
    /// The learnable tensors (`weight`, optionally `bias`).
    fn params(&self) -> Vec<&BayesParam>;
    fn params_mut(&mut self) -> Vec<&mut BayesParam>;

    /// The family of the layer (that of its weight; a point layer is `Family::Point`).
    fn family(&self) -> Family {
        self.params()
            .first()
            .map(|p| p.family())
            .unwrap_or(Family::Point)
    }

    /// Converts every learnable tensor in place; the pretrained value becomes the mean / every
    /// member. Errors when the layer already carries a posterior.
    fn convert(&mut self, vs: &tch::nn::VarStore, cfg: &PosteriorConfig) -> Result<()> {
        for p in self.params_mut() {
            p.convert(vs, cfg)?;
        }
        Ok(())
    }

    /// Back to a point estimate (mean / member average), removing the posterior extras.
    fn to_deterministic(&mut self, vs: &tch::nn::VarStore) -> Result<()> {
        for p in self.params_mut() {
            p.to_point(vs)?;
        }
        Ok(())
    }
}
