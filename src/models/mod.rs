//! Models with PyTorch parameter names whose layers can be converted to Bayesian ones
//! (docs/design.md sections 2 and 11): LeNet5 (advertorch keys), DigitCNN (ccexam keys), an MLP,
//! ResNet-18/34/50 (torchvision names, optional CIFAR stem) and WRN-28-10.
//!
//! A model is a struct of named sub-modules (a [`Net`]) wrapped with its `nn::VarStore` and
//! [`ModelConfig`] in a [`Model`], used through the object-safe [`BayesModel`] trait. Inputs are
//! always `[B, C, H, W]` pixels in `[0, 1]`; the normalisation lives inside the model.
//!
//! - `config`: the architecture and its options, the posterior a checkpoint records.
//! - `traits`: [`Net`], [`BayesModel`], [`Tap`].
//! - `model`: [`Model`] and [`build`]; `memory`: its parallel-MC memory check.
//! - `samples`: how many MC samples a forward uses, and its mode.
//! - `taps`: block names and activation shapes, measured once.
//! - one file per architecture.

mod config;
mod memory;
mod model;
mod samples;
mod taps;
mod traits;

pub mod digitcnn;
pub mod lenet;
pub mod mlp;
pub mod resnet;
pub mod wrn;

pub use config::{Arch, ModelConfig, PosteriorMeta};
pub use digitcnn::DigitCnn;
pub use lenet::LeNet5;
pub use mlp::Mlp;
pub(crate) use model::any_bayesian;
pub use model::{build, require_f32, Model};
pub use resnet::ResNet;
pub use samples::{mc_sample_count, mode_for, samples_for};
pub use taps::{tap_shapes, tap_shapes_at, TapShape};
pub use traits::{BayesModel, Net, Tap};
pub use wrn::WideResNet;
