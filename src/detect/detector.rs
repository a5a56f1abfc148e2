//! A detector: a model, how many MC samples it uses, and (after `libre calibrate`) the score and
//! threshold, saved as one file (docs/detection.md, "Detector files").
//!
//! A detector file is a libre checkpoint whose safetensors metadata also holds a JSON
//! [`DetectorMeta`] under [`DETECTOR_KEY`]; every command that takes `--weights` reads it as the
//! model, and `libre detect` also reads the calibration.

use super::calibrate::Calibration;
use super::classic::{Classic, ClassicConfig, ClassicKind, ClassicMeta, FitData, Pass};
use super::scores::{self, Prediction, Score};
use crate::bayes::mode::McDropout;
use crate::bayes::ForwardMode;
use crate::data::Dataset;
use crate::models::{mode_for, samples_for, BayesModel};
use crate::runtime::precision::Precision;
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

/// MC dropout's drop probability unless one is given.
pub const DEFAULT_DROPOUT_P: f64 = 0.5;
/// MC dropout's forward samples (dropout masks) unless a count is given.
pub const DEFAULT_DROPOUT_SAMPLES: usize = 20;

/// A model ready to score: its forward mode is fixed by the sample count. Built by
/// [`Detector::new`] or [`Detector::load`], then turned into an MC-dropout detector
/// ([`Detector::with_mc_dropout`]) or given a fitted classic detector
/// ([`Detector::fit_classic`]), so the sample count always matches what the model draws.
pub struct Detector {
    model: Box<dyn BayesModel>,
    samples: usize,
    meta: Option<DetectorMeta>,
    /// A fitted classic detector scoring with the model's features.
    classic: Option<Classic>,
}

/// MC dropout at `layers` (block names) with drop probability `p` (default
/// [`DEFAULT_DROPOUT_P`]) and `samples` masks (default [`DEFAULT_DROPOUT_SAMPLES`]), checked.
pub fn mc_dropout(
    layers: Vec<String>,
    p: Option<f64>,
    samples: Option<usize>,
) -> Result<McDropout> {
    let d = McDropout {
        layers,
        p: p.unwrap_or(DEFAULT_DROPOUT_P),
        samples: samples.unwrap_or(DEFAULT_DROPOUT_SAMPLES),
    };
    d.validate()?;
    Ok(d)
}

/// The detectors read from the model's own forward: its uncertainty (`libre`), MC dropout's
/// (`mc-dropout`) and MC dropout's softmax variance (`bu`, Feinman et al.'s Bayesian
/// uncertainty); the others are fitted [`ClassicKind`]s.
pub const MODEL_DETECTORS: [&str; 3] = ["libre", "mc-dropout", "bu"];

/// Whether `name` is a detector libre builds: one of [`MODEL_DETECTORS`] or a [`ClassicKind`].
pub fn is_detector(name: &str) -> bool {
    MODEL_DETECTORS.contains(&name) || name.parse::<ClassicKind>().is_ok()
}

/// Where a calibration's clean data and model came from, recorded in the detector file.
#[derive(Debug, Clone)]
pub struct CalibrationSource {
    /// The clean calibration data spec (e.g. `mnist:train[55000:60000]`).
    pub data: String,
    /// Where the model came from (a path or zoo name).
    pub weights: String,
    /// The seed of the scoring forwards (per batch: seed + batch index).
    pub seed: i64,
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

    /// The model.
    pub fn model(&self) -> &dyn BayesModel {
        self.model.as_ref()
    }

    /// MC samples of the forward (MC dropout's masks for an MC-dropout detector; 1 for a DNN).
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The calibration of a detector file (None for a plain checkpoint).
    pub fn meta(&self) -> Option<&DetectorMeta> {
        self.meta.as_ref()
    }

    /// The fitted classic detector, if any.
    pub fn classic(&self) -> Option<&Classic> {
        self.classic.as_ref()
    }

    /// How a mean-field posterior draws in the parallel MC forward
    /// ([`BayesModel::set_mc_draws`]).
    pub fn set_mc_draws(&mut self, d: crate::bayes::McDraws) {
        self.model.set_mc_draws(d);
    }

    /// The image shape the model takes, `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        let c = self.model.config();
        [
            c.in_channels as usize,
            c.image_size as usize,
            c.image_size as usize,
        ]
    }

    /// An MC-dropout detector: dropout `d` kept on at test time, `d.samples` masks per forward.
    /// Refuses a Bayesian model (its posterior already draws).
    pub fn with_mc_dropout(mut self, d: McDropout) -> Result<Detector> {
        if self.model.posterior().is_some() {
            return Err(Error::invalid(
                "MC dropout takes a deterministic network (this one has a posterior)",
            ));
        }
        self.samples = d.samples;
        self.model.set_mc_dropout(Some(d))?;
        Ok(self)
    }

    /// Fits the classic (or input-transformation) detector `cfg` on `data` and scores with it
    /// from now on; KD-BU's MC dropout sets the sample count. Fitting draws from libtorch's
    /// generator (dropout masks, MagNet's initialisation and noise): seed it for a reproducible
    /// detector.
    pub fn fit_classic(
        &mut self,
        cfg: &ClassicConfig,
        data: FitData,
        batch_size: usize,
        device: Device,
    ) -> Result<()> {
        let c = Classic::fit(self.model.as_mut(), cfg, data, batch_size, device)?;
        self.set_classic(c);
        Ok(())
    }

    /// Scores with the fitted classic detector `c` from now on (fitted on this detector's
    /// model: [`Classic::fit`] or [`Classic::fit_transform`]); KD-BU's MC dropout sets the
    /// sample count.
    pub fn set_classic(&mut self, c: Classic) {
        let cfg = &c.meta.config;
        if let Some(d) = cfg.dropout().filter(|_| cfg.kind() == ClassicKind::KdBu) {
            self.samples = d.samples;
        }
        self.classic = Some(c);
    }

    /// The scores `score` of every image of `ds`, in batches of `batch_size` on `device`, with
    /// libtorch's generator seeded `seed + batch index` before each batch (a calibration is
    /// reproducible); `on_batch(images)` after each batch.
    pub fn score_dataset(
        &self,
        ds: &Dataset,
        score: Score,
        batch_size: usize,
        seed: i64,
        device: Device,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<Vec<f64>> {
        if batch_size == 0 {
            return Err(Error::param("batch_size", batch_size, "must be at least 1"));
        }
        let want = self.input_shape();
        let mut out = Vec::with_capacity(ds.len());
        for (bi, s) in (0..ds.len()).step_by(batch_size).enumerate() {
            let b = super::input::data_chunk(ds, s, (s + batch_size).min(ds.len()), want)?;
            let (x, _) = b.tensor(want).expect("data batches are never empty");
            tch::manual_seed(seed.wrapping_add(bi as i64));
            let (_, sc) = self.score(&x.to_device(device), &[score])?;
            out.extend(Vec::<f64>::try_from(
                sc[0].to_kind(tch::Kind::Double).to_device(Device::Cpu),
            )?);
            on_batch(x.size()[0] as usize);
        }
        Ok(out)
    }

    /// The detector settings of a calibration at `fpr` on the clean scores `clean` (of
    /// `score`, at `precision`): the threshold ([`super::calibrate()`]), the sorted scores (for
    /// re-thresholding), the MC dropout and the classic detector.
    pub fn calibrated_meta(
        &self,
        score: Score,
        clean: &[f64],
        fpr: f64,
        precision: Precision,
        source: CalibrationSource,
    ) -> Result<DetectorMeta> {
        let calibration = super::calibrate::calibrate(clean, fpr)?;
        let mut sorted = clean.to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).expect("finite, checked by calibrate"));
        Ok(DetectorMeta {
            format: DETECTOR_FORMAT,
            score,
            samples: self.samples,
            calibration,
            data: source.data,
            weights: source.weights,
            seed: source.seed,
            libre_version: crate::VERSION.to_string(),
            calibration_scores: sorted,
            mc_dropout: self.model.mc_dropout().cloned(),
            classic: self.classic.as_ref().map(|c| c.meta.clone()),
            precision,
        })
    }

    /// Loads a checkpoint or detector file; a detector file's S is used unless overridden.
    /// The file is read once: the model, the detector settings and a classic detector's state.
    pub fn load(path: &Path, device: Device, requested: Option<usize>) -> Result<Detector> {
        let crate::weights::checkpoint::CheckpointContents {
            mut model,
            extra,
            extra_tensors,
            ..
        } = crate::weights::checkpoint::load_full(path, device)?;
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
            return Err(Error::param(
                "precision",
                p,
                "classic detectors are fitted and scored at f32",
            ));
        }
        self.model.set_precision(p)
    }

    /// Errors (naming the alternatives) unless this detector can give `s`: an uncertainty score
    /// the model's samples allow, or the score of its fitted classic detector.
    pub fn check_score(&self, s: Score) -> Result<()> {
        match (s.classic(), &self.classic) {
            (Some(k), Some(c)) if c.meta.config.kind() == k => Ok(()),
            (Some(k), Some(c)) => Err(Error::param(
                "score",
                s,
                format!(
                    "this detector was fitted as {}, not {}",
                    c.meta.config.kind().name(),
                    k.name()
                ),
            )),
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
                let k = c.meta.config.kind();
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
            Some(c) => Score::of_classic(c.meta.config.kind()),
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
        crate::weights::checkpoint::save_with(
            path,
            self.model.as_ref(),
            &[(DETECTOR_KEY, json)],
            &tensors,
        )
    }
}

impl DetectorMeta {
    /// The threshold for another target FPR, from the stored calibration scores.
    pub fn recalibrate(&self, fpr: f64) -> Result<Calibration> {
        super::calibrate::calibrate(&self.calibration_scores, fpr)
    }
}
