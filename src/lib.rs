//! libre: practical Bayesian deep learning on pretrained image classifiers (BayesAdapter) and
//! adversarial detection with its predictive uncertainty (LiBRe), on tch / libtorch.
//!
//! Layout (one module per concern; the `libre` binary in `src/main.rs` + `src/cli/` is a thin layer
//! over this API):
//! - [`cache`]: the user cache, sha256-verified downloads through the registries' own clients,
//!   atomic installs.
//! - [`alloc`]: glibc thresholds so freed activation memory is reused, not re-faulted.
//! - [`device`]: device specs `auto|cpu|cuda[:N]`, registering libtorch's CUDA backend on demand.
//! - [`data`]: data set specs (`mnist:test`, `folder:DIR`, `FILE.safetensors`, ...), loaders,
//!   image files as inputs.
//! - [`import`]: PyTorch checkpoints (zip and legacy pickle formats) without Python.
//! - [`zoo`]: pretrained weights fetched from package registries.
//! - [`bayes`]: posterior families and Bayesian layers, conversion, priors, parallel MC
//!   (forward modes, the per-forward context, activations, routing kernels).
//! - [`models`]: LeNet5, DigitCNN, MLP, ResNet, WRN with PyTorch parameter names; the MC
//!   sample-count rule.
//! - [`detect`]: LiBRe and the uncertainty scores, calibration, the detector file.
//! - [`evaluate`]: research evaluation runs (attacks x models x scores -> report).
//! - [`shard`]: one job split into N parts for Slurm job arrays / Kubernetes Indexed Jobs.
//!
//! Images enter every API as `[N, C, H, W]` float pixels in `[0, 1]`; normalisation lives inside
//! the models.

pub mod alloc;
pub mod bayes;
pub mod cache;
/// Temporaries removed by the binary's signal handler (re-exported from the reports crate, the
/// workspace's dependency-free crate, so that every crate records into one registry).
pub use libre_reports::cleanup;
pub mod checkpoint;
pub mod data;
pub mod detect;
pub mod device;
pub mod error;
pub mod eval;
pub mod evaluate;
pub mod import;
pub mod models;
pub mod precision;
pub mod run;
pub mod shard;
pub mod train;
pub mod victim;
pub mod zoo;

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
