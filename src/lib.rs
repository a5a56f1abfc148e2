//! libre: practical Bayesian deep learning on pretrained image classifiers (BayesAdapter) and
//! adversarial detection with its predictive uncertainty (LiBRe), on tch / libtorch.
//!
//! Layout (one module per concern; the `libre` binary in `src/main.rs` + `src/cli/` is a thin layer
//! over this API):
//! - [`runtime`]: where and how the process computes: `--device auto|cpu|cuda[:N]`
//!   ([`runtime::device`]), float32 / bfloat16 forwards ([`runtime::precision`]), the allocator
//!   settings that keep freed activation memory ([`runtime::alloc`]).
//! - [`cache`]: the user cache, sha256-verified downloads through the registries' own clients,
//!   atomic writes.
//! - [`data`]: data set specs (`mnist:test`, `folder:DIR`, `FILE.safetensors`, ...), loaders and
//!   image decoding.
//! - [`weights`]: libre checkpoints ([`weights::checkpoint`]), PyTorch checkpoints read without
//!   Python ([`weights::import`]), pretrained weights fetched from package registries
//!   ([`weights::zoo`]).
//! - [`bayes`]: posterior families and Bayesian layers, conversion, priors, parallel MC.
//! - [`models`]: LeNet5, DigitCNN, MLP, ResNet, WRN with PyTorch parameter names; the one rule
//!   for MC sample counts.
//! - [`train`]: pre-training and Bayesian fine-tuning; [`accuracy`]: accuracy, NLL and
//!   calibration of a model's (MC-averaged) predictive on a data set.
//! - [`detect`]: LiBRe and the uncertainty scores, the classic and input-transformation
//!   detectors, calibration, the detector file, the model as an attack victim.
//! - [`evaluate`]: research evaluation runs (attacks x models x scores -> report).
//! - [`jobs`]: run directories with their provenance ([`jobs::run`]) and one job split into N
//!   parts for Slurm job arrays / Kubernetes Indexed Jobs ([`jobs::shard`]).
//!
//! Images enter every API as `[N, C, H, W]` float pixels in `[0, 1]`; normalisation lives inside
//! the models.

pub mod accuracy;
pub mod bayes;
pub mod cache;
/// Temporaries removed by the binary's signal handler (re-exported from the reports crate, the
/// workspace's dependency-free crate, so that every crate records into one registry).
pub use libre_reports::cleanup;
pub mod data;
pub mod detect;
pub mod error;
pub mod evaluate;
pub mod jobs;
pub mod models;
pub mod runtime;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

/// libre's version with the git revision it was built from, e.g. `0.1.0 (3f2a9c1e0b7d)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LIBRE_GIT_REV"), ")");

/// libtorch's default generator is one per process and the test harness runs tests on several
/// threads: every unit test that seeds or draws from it holds this lock, so a test's seeded
/// sequence is never advanced by another test in between.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
