//! `libre calibrate` (a threshold at a target false-positive rate on held-out clean data),
//! `libre detect` (score images, flag the suspicious ones) and `libre detect merge` (join a
//! sharded run's parts). The commands translate flags into `libre::detect` calls:
//!
//! - [`args`]: the flags and their help;
//! - `checks`: the refusals about flags, before any work;
//! - `calibrate`, `build`: `libre calibrate` and the detector it builds;
//! - `run`, `outputs`, `merge`: `libre detect`, what it writes, and `libre detect merge`.

pub mod args;
mod build;
mod calibrate;
mod checks;
mod merge;
mod outputs;
mod run;

pub use args::{CalibrateArgs, DetectArgs, DetectCmd};
pub use calibrate::run_calibrate;
pub use run::run_detect;
