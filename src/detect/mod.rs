//! Adversarial detection with predictive uncertainty (LiBRe: Deng et al., "LiBRe: A Practical
//! Bayesian Approach to Adversarial Detection", CVPR 2021; docs/detection.md).
//!
//! - [`scores`]: the uncertainty scores (feature variance, softmax variance, mutual information,
//!   entropy, msp, max-logit), several from one parallel MC forward.
//! - [`objective`]: LiBRe's fine-tuning objective (uniform-noise disagreement hinge) and this
//!   project's variants.
//! - [`calibrate`]: the threshold at a target false-positive rate on held-out clean data.
//! - [`detector`]: a model + sample count + calibration, saved as one file.
//! - [`classic`]: the classic detectors (KD, KD-BU, LID, Mahalanobis) as fitted detectors.
//! - [`transform`]: the input-transformation detectors (feature squeezing, MagNet), fitted and
//!   saved like the classic ones.
//! - [`input`]: what `libre detect` reads (images, folders, batch files, data specs), streamed.
//! - [`rows`]: the rows `libre detect` writes (csv, jsonl, table).
//! - [`parts`]: the parts of a sharded `libre detect` run and their merge.

pub mod calibrate;
pub mod classic;
pub mod detector;
pub mod input;
pub mod objective;
pub mod parts;
pub mod rows;
pub mod scores;
pub mod transform;
pub mod victim;

pub use calibrate::{calibrate, Calibration};
pub use detector::{CalibrationSource, Detector, DetectorMeta};
pub use objective::{LibreConfig, ObjectiveKind};
pub use scores::{Prediction, Score};
