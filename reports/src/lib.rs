//! libre-reports: detection and calibration metrics, CSV tables, plots and HTML reports for
//! LiBRe's DNN-versus-BNN comparisons (docs/detection.md). Pure functions over scores and labels:
//! no tch, no models, so everything here is fast to test and usable on scores from anywhere.
//!
//! * [`detection`]: AUROC, ROC curve, AUPR-in/out, TPR at FPR, TNR at TPR 95%, detection
//!   accuracy. Positive class = adversarial, higher score = more suspicious.
//! * [`classification`]: top-1/top-5, NLL, Brier, ECE and reliability bins of the MC-averaged
//!   softmax.
//! * [`bootstrap`]: seeded, stratified percentile intervals, identical for any thread count.
//! * [`tables`]: the CSV schema of a run directory (see the module docs and `README.md`).
//! * [`plots`]: one function per figure, generic over the plotters backend; SVG and PNG writers
//!   with an embedded font.
//! * [`text`]: plain-text tables for terminals.
//! * [`report`]: the report directory (index.html, summary.md, CSV tables, manifest.json),
//!   written atomically.
pub mod bootstrap;
pub mod classification;
pub mod cleanup;
pub mod detection;
pub mod error;
pub mod plots;
pub mod report;
pub mod rng;
pub mod robust;
pub mod tables;
pub mod text;

pub use error::{ReportError, Result};
