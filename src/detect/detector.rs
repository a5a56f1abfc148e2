//! A detector: a model, how many MC samples it uses, and (after `libre calibrate`) the score and
//! threshold, saved as one file (docs/detection.md, "Detector files").
//!
//! A detector file is a libre checkpoint whose safetensors metadata also holds a JSON
//! [`DetectorMeta`] under [`DETECTOR_KEY`]; every command that takes `--weights` reads it as the
//! model, and `libre detect` also reads the calibration.

use super::calibrate::Calibration;
use super::classic::{Classic, ClassicMeta, Pass};
use super::scores::{self, Prediction, Score};
use crate::bayes::mode::McDropout;
use crate::bayes::ForwardMode;
use crate::models::{mode_for, samples_for, BayesModel};
use crate::precision::Precision;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Tensor};

/// The safetensors metadata key of the detector settings.
pub const DETECTOR_KEY: &str = "libre_detector";
/// The detector metadata format this build writes and reads.
pub const DETECTOR_FORMAT: u32 = 1;

/// What `libre calibrate` decided, saved next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorMeta {
    pub format: u32,
    pub score: Score,
    /// MC samples of the forward (1 for a DNN).
    pub samples: usize,
    pub calibration: Calibration,
    /// The clean calibration data spec (e.g. `mnist:train[55000:60000]`).
    pub data: String,
    /// Where the model came from (`--weights` of `libre calibrate`).
    pub weights: String,
    pub seed: i64,
    pub libre_version: String,
    /// The calibration scores, sorted ascending, so `libre detect --fpr` can re-threshold
    /// without the calibration data.
    pub calibration_scores: Vec<f64>,
    /// MC dropout kept on at test time (an MC-dropout detector, or KD-BU's BU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mc_dropout: Option<McDropout>,
    /// A fitted classic detector (its state is in the file's `extra/` tensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classic: Option<ClassicMeta>,
    /// The precision the calibration scores were computed at (files before it: f32). The
    /// threshold holds at this precision only, so `libre detect` scores at it.
    #[serde(default)]
    pub precision: Precision,
}

/// A model ready to score: its forward mode is fixed by the sample count.
pub struct Detector {
    pub model: Box<dyn BayesModel>,
    pub samples: usize,
    pub meta: Option<DetectorMeta>,
    /// A fitted classic detector scoring with the model's features.
    pub classic: Option<Classic>,
}

impl Detector {
    /// A detector over a model, with `requested` MC samples (default: the posterior's S).
    pub fn new(model: Box<dyn BayesModel>, requested: Option<usize>) -> Result<Detector> {
        let samples = samples_for(model.as_ref(), requested)?;
        Ok(Detector {
            model,
            samples,
            meta: None,
            classic: None,
        })
    }

    /// Loads a checkpoint or detector file; a detector file's S is used unless overridden.
    /// The file is read once: the model, the detector settings and a classic detector's state.
    pub fn load(path: &Path, device: Device, requested: Option<usize>) -> Result<Detector> {
        let crate::checkpoint::Loaded {
            mut model,
            extra,
            extra_tensors,
            ..
        } = crate::checkpoint::load_full(path, device)?;
        let meta = match extra.get(DETECTOR_KEY) {
            Some(json) => {
                let m: DetectorMeta = serde_json::from_str(json).map_err(|e| {
                    Error::bad_file(path, format!("bad '{DETECTOR_KEY}' metadata: {e}"))
                })?;
                if m.format != DETECTOR_FORMAT {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "detector format {} is not supported by this libre (format \
                             {DETECTOR_FORMAT})",
                            m.format
                        ),
                    ));
                }
                Some(m)
            }
            None => None,
        };
        if let Some(m) = &meta {
            model
                .set_mc_dropout(m.mc_dropout.clone())
                .map_err(|e| Error::bad_file(path, e.to_string()))?;
        }
        let classic = match meta.as_ref().and_then(|m| m.classic.clone()) {
            Some(cm) => {
                let t = extra_tensors
                    .into_iter()
                    .filter_map(|(n, v)| {
                        n.strip_prefix("classic/")
                            .map(|r| (r.to_string(), v.to_device(device)))
                    })
                    .collect();
                Some(
                    Classic::from_parts(cm, &t)
                        .map_err(|e| Error::bad_file(path, e.to_string()))?,
                )
            }
            None => None,
        };
        let requested = requested.or(meta.as_ref().map(|m| m.samples));
        let mut d = Detector::new(model, requested)?;
        d.meta = meta;
        d.classic = classic;
        Ok(d)
    }

    /// Scores at precision `p` from now on ([`BayesModel::set_precision`]). A fitted classic
    /// detector is refused at anything but f32: its densities were fitted on float32 features.
    pub fn set_precision(&mut self, p: Precision) -> Result<()> {
        if self.classic.is_some() && p != Precision::F32 {
            return Err(Error::invalid(format!(
                "precision {p}: classic detectors are fitted and scored at f32"
            )));
        }
        self.model.set_precision(p)
    }

    /// Errors (naming the alternatives) unless this detector can give `s`: an uncertainty score
    /// the model's samples allow, or the score of its fitted classic detector.
    pub fn check_score(&self, s: Score) -> Result<()> {
        match (s.classic(), &self.classic) {
            (Some(k), Some(c)) if c.meta.config.kind == k => Ok(()),
            (Some(k), Some(c)) => Err(Error::invalid(format!(
                "score '{s}': this detector was fitted as {}, not {}",
                c.meta.config.kind.name(),
                k.name()
            ))),
            _ => s.check_available(self.mode().samples()),
        }
    }

    /// The forward the detector classifies (and is attacked) with: the posterior's or MC
    /// dropout's parallel forward, or for a classic detector its deterministic network (KD-BU's
    /// dropout only enters its BU feature).
    pub fn mode(&self) -> ForwardMode {
        if self.classic.is_some() {
            return ForwardMode::Deterministic;
        }
        mode_for(self.model.as_ref(), self.samples)
    }

    /// The scores this detector can give (a classic detector's own score first).
    pub fn available_scores(&self) -> Vec<Score> {
        let mut v: Vec<Score> = self
            .classic
            .iter()
            .flat_map(|c| {
                let k = c.meta.config.kind;
                Score::ALL
                    .into_iter()
                    .filter(move |s| s.classic() == Some(k))
            })
            .collect();
        v.extend(Score::available(self.mode().samples()));
        v
    }

    /// The default detection score: a classic detector's own, else feature variance for a
    /// Bayesian model and msp for a DNN.
    pub fn default_score(&self) -> Score {
        match &self.classic {
            Some(c) => Score::of_classic(c.meta.config.kind),
            None => Score::default_for(self.samples),
        }
    }

    /// The prediction and the requested scores of a batch, from one forward without gradients
    /// (a classic detector's: its deterministic forward with taps, whose logits give the
    /// prediction; KD-BU adds its MC-dropout forward, Mahalanobis' noise its moved inputs).
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]` in [0, 1] -> prediction `[B]`, one `[B]` tensor per score.
    pub fn score(&self, x: &Tensor, scores: &[Score]) -> Result<(Prediction, Vec<Tensor>)> {
        for s in scores {
            self.check_score(*s)?;
        }
        let plain: Vec<Score> = scores
            .iter()
            .copied()
            .filter(|s| s.classic().is_none())
            .collect();
        let classic = self
            .classic
            .as_ref()
            .filter(|_| scores.iter().any(|s| s.classic().is_some()));
        // What the classifier sees: MagNet's reformed image when its reformer is on, else `x`.
        let reformed = tch::no_grad(|| self.classic.as_ref().and_then(|c| c.classifier_input(x)));
        let xc = reformed.as_ref().unwrap_or(x);
        let (pred, mut plain_out, pass) = tch::no_grad(|| match classic {
            Some(_) => {
                let pass = Pass::of(self.model.as_ref(), xc)?;
                // The classic detector's forward is deterministic (`mode`): S = 1, so no plain
                // score reads the features (feature variance needs S >= 2) and the logits stand in.
                let (pred, out) = scores::compute(&pass.logits, &pass.logits, &plain)?;
                Ok((pred, out, Some(pass)))
            }
            None => {
                let (logits, feats) = self.model.forward_mc_with_features(xc, &self.mode())?;
                let (pred, out) = scores::compute(&logits, &feats, &plain)?;
                Ok::<_, Error>((pred, out, None))
            }
        })?;
        plain_out.reverse();
        let mut out = Vec::with_capacity(scores.len());
        for s in scores {
            out.push(match (s.classic(), classic, &pass) {
                (Some(_), Some(c), Some(p)) => c
                    .score_for(*s, self.model.as_ref(), x, p)?
                    .to_kind(tch::Kind::Float),
                _ => plain_out.pop().expect("one per plain score"),
            });
        }
        Ok((pred, out))
    }

    /// Writes the model and `meta` as a detector file (atomically). The model must be at f32
    /// (see [`BayesModel::set_precision`]); `meta.precision` records what it scored at.
    pub fn save(&self, path: &Path, meta: &DetectorMeta) -> Result<()> {
        let json = serde_json::to_string(meta)
            .map_err(|e| Error::invalid(format!("encoding detector metadata: {e}")))?;
        let tensors: Vec<(String, Tensor)> = self
            .classic
            .iter()
            .flat_map(|c| c.to_tensors())
            .map(|(n, t)| (format!("classic/{n}"), t))
            .collect();
        crate::checkpoint::save_with(path, self.model.as_ref(), &[(DETECTOR_KEY, json)], &tensors)
    }
}

impl DetectorMeta {
    /// The threshold for another target FPR, from the stored calibration scores.
    pub fn recalibrate(&self, fpr: f64) -> Result<Calibration> {
        super::calibrate::calibrate(&self.calibration_scores, fpr)
    }
}
