//! The classic detectors as fitted detectors (docs/detection.md, "Baselines"): settings
//! ([`ClassicParams`], checked once into a [`ClassicConfig`]), [`Classic::fit`] on clean (and, for the logistic-regression forms, adversarial)
//! images, and a fitted detector that scores a batch, saved inside a detector file.
//!
//! | kind | score (higher = more suspicious) | fitted on |
//! |---|---|---|
//! | `kd` | minus the Gaussian kernel density of the head input under the predicted class (Feinman et al. 2017) | clean training images |
//! | `kd-bu` | logistic regression on the z-scored (density, MC-dropout softmax variance) pair (Feinman et al.) | + adversarial and clean images |
//! | `lid` | logistic regression on the per-block LIDs against a stored clean reference set (Ma et al. 2018) | + adversarial and clean images |
//! | `mahalanobis` | minus the Mahalanobis confidence at the last block, or logistic regression over the blocks' confidences (Lee et al. 2018) | clean training images (+ adversarial and clean for the ensemble) |
//!
//! Features are the model's taps ([`crate::models::BayesModel::forward_taps`]) of the
//! deterministic forward (a Bayesian model's means): KD reads the head input; Mahalanobis
//! averages convolutional maps over space (Lee et al.: per-channel means); LID flattens them.
//! The logistic regressions are fitted on one attack's examples; the report says which.
//!
//! The input-transformation detectors (`squeeze`, `magnet`) are classic detectors too: their
//! work is in [`crate::detect::transform`]; here they are fitted, scored and saved.

pub mod kd;
pub mod lid;
pub mod logistic;
pub mod mahalanobis;

use crate::bayes::mode::McDropout;
use crate::bayes::ForwardMode;
use crate::data::Dataset;
use crate::detect::transform::{Transform, TransformConfig, TransformFit};
use crate::detect::Score;
use crate::models::{BayesModel, Tap};
use crate::{Error, Result};
use kd::KernelDensity;
use lid::lid_batch;
use logistic::LogisticCombiner;
use mahalanobis::ClassGaussian;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Which classic detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassicKind {
    Kd,
    KdBu,
    Lid,
    Mahalanobis,
    /// Feature squeezing (Xu et al. 2018; [`crate::detect::transform::squeeze`]).
    Squeeze,
    /// MagNet (Meng and Chen 2017; [`crate::detect::transform::magnet`]).
    Magnet,
}

impl ClassicKind {
    pub const ALL: [ClassicKind; 6] = [
        ClassicKind::Kd,
        ClassicKind::KdBu,
        ClassicKind::Lid,
        ClassicKind::Mahalanobis,
        ClassicKind::Squeeze,
        ClassicKind::Magnet,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ClassicKind::Kd => "kd",
            ClassicKind::KdBu => "kd-bu",
            ClassicKind::Lid => "lid",
            ClassicKind::Mahalanobis => "mahalanobis",
            ClassicKind::Squeeze => "squeeze",
            ClassicKind::Magnet => "magnet",
        }
    }
    /// Whether it is an input-transformation detector ([`crate::detect::transform`]).
    pub fn is_transform(self) -> bool {
        matches!(self, ClassicKind::Squeeze | ClassicKind::Magnet)
    }
    /// Whether fitting needs adversarial examples (the logistic-regression forms).
    pub fn needs_adversarial(self) -> bool {
        matches!(self, ClassicKind::KdBu | ClassicKind::Lid)
    }
}

impl std::str::FromStr for ClassicKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<ClassicKind> {
        ClassicKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::param(
                    "detector",
                    s,
                    format!(
                        "unknown detector: available libre, mc-dropout, {}",
                        ClassicKind::ALL.map(|k| k.name()).join(", ")
                    ),
                )
            })
    }
}

/// The settings of a classic detector as given, unchecked: the papers' MNIST settings from
/// [`ClassicParams::new`] (the one place of the defaults), changed field by field, then
/// [`ClassicParams::check`]ed into the [`ClassicConfig`] a fit takes (linfa's `ParamGuard`: a
/// fit never sees unchecked settings, and they are checked once).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicParams {
    pub kind: ClassicKind,
    /// Taps read (LID, Mahalanobis; empty: every block before the logits). KD reads the head
    /// input.
    pub layers: Vec<String>,
    /// KD bandwidth (Feinman et al.: 1.20 for MNIST, 0.26 for CIFAR-10).
    pub bandwidth: f64,
    /// LID: neighbours k and the size of the stored clean reference set (Ma et al.: k = 20 in
    /// mini-batches of 100).
    pub k: usize,
    pub reference: usize,
    /// Mahalanobis input pre-processing magnitude (0: none; Lee et al. tune it on validation
    /// data from {0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01}).
    pub noise: f64,
    /// KD-BU: the MC dropout giving BU.
    pub dropout: Option<McDropout>,
    /// Feature squeezing / MagNet settings (None: the papers' MNIST settings for those two).
    pub transform: Option<TransformConfig>,
}

impl ClassicParams {
    /// The papers' MNIST settings (bandwidth 1.20, k = 20 in a 100-image reference, no noise,
    /// every block, no dropout, the transform detectors' own defaults).
    pub fn new(kind: ClassicKind) -> ClassicParams {
        ClassicParams {
            kind,
            layers: vec![],
            bandwidth: 1.2,
            k: 20,
            reference: 100,
            noise: 0.0,
            dropout: None,
            transform: None,
        }
    }

    /// The checked settings, or an error naming the first setting out of its domain.
    pub fn check(self) -> Result<ClassicConfig> {
        let transform = self
            .transform
            .or_else(|| TransformConfig::default_for(self.kind));
        match (&transform, self.kind) {
            (None, _)
            | (Some(TransformConfig::Squeeze { .. }), ClassicKind::Squeeze)
            | (Some(TransformConfig::Magnet(_)), ClassicKind::Magnet) => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{}: the input-transformation settings are for another detector",
                    self.kind.name()
                )))
            }
        }
        if let Some(t) = &transform {
            t.validate()?;
        }
        if !(self.bandwidth > 0.0 && self.bandwidth.is_finite()) {
            return Err(Error::param(
                "bandwidth",
                self.bandwidth,
                "must be a positive number",
            ));
        }
        if self.k == 0 || self.k >= self.reference {
            return Err(Error::param(
                "lid_k",
                self.k,
                format!("must lie in [1, reference size {})", self.reference),
            ));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::param("noise", self.noise, "must be >= 0"));
        }
        match (&self.dropout, self.kind) {
            (None, ClassicKind::KdBu) => {
                return Err(Error::invalid(
                    "kd-bu needs MC dropout for BU: name the blocks it drops (and their drop \
                     probability)",
                ))
            }
            (Some(d), _) => d.validate()?,
            _ => {}
        }
        Ok(ClassicConfig {
            kind: self.kind,
            layers: self.layers,
            bandwidth: self.bandwidth,
            k: self.k,
            reference: self.reference,
            noise: self.noise,
            dropout: self.dropout,
            transform,
        })
    }
}

/// Checked settings of a classic detector ([`ClassicParams::check`]); saved with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassicConfig {
    kind: ClassicKind,
    layers: Vec<String>,
    bandwidth: f64,
    k: usize,
    reference: usize,
    noise: f64,
    dropout: Option<McDropout>,
    /// Feature squeezing / MagNet settings (None for the other kinds; for those two, None in
    /// older files means the papers' MNIST settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transform: Option<TransformConfig>,
}

impl ClassicConfig {
    /// The papers' MNIST settings of `kind` ([`ClassicParams::new`]), checked.
    pub fn new(kind: ClassicKind) -> Result<ClassicConfig> {
        ClassicParams::new(kind).check()
    }

    /// Which classic detector.
    pub fn kind(&self) -> ClassicKind {
        self.kind
    }

    /// Mahalanobis input pre-processing magnitude.
    pub fn noise(&self) -> f64 {
        self.noise
    }

    /// KD-BU's MC dropout.
    pub fn dropout(&self) -> Option<&McDropout> {
        self.dropout.as_ref()
    }

    /// The input-transformation settings of a squeeze / magnet config (the defaults when unset,
    /// as in files written before they were stored).
    fn transform_config(&self) -> Result<TransformConfig> {
        self.transform
            .clone()
            .or_else(|| TransformConfig::default_for(self.kind))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{} is not an input-transformation detector",
                    self.kind.name()
                ))
            })
    }
}

/// One named set of images a classic detector is fitted on: the data set and its spec (recorded
/// in the detector file).
#[derive(Clone, Copy)]
pub struct FitSet<'a> {
    pub data: &'a Dataset,
    pub name: &'a str,
}

/// The images a classic detector is fitted on.
#[derive(Clone, Copy, Default)]
pub struct FitData<'a> {
    /// Clean labelled images: KD's densities, Mahalanobis' class Gaussians, LID's reference set,
    /// MagNet's autoencoders (feature squeezing fits nothing).
    pub clean: Option<FitSet<'a>>,
    /// The logistic regression's examples (KD-BU, LID, multi-block Mahalanobis).
    pub logistic: Option<LogisticSets<'a>>,
}

/// The logistic regression's examples: adversarial images (the positives) and the clean images
/// they were crafted from (the negatives).
#[derive(Clone, Copy)]
pub struct LogisticSets<'a> {
    pub adversarial: FitSet<'a>,
    pub clean: FitSet<'a>,
}

/// What the detector file records about a fitted classic detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassicMeta {
    pub config: ClassicConfig,
    /// The taps actually used, in order.
    pub taps: Vec<String>,
    /// Clean images the densities / Gaussians / LID reference were fitted on.
    pub fit_data: String,
    pub n_fit: usize,
    /// The logistic regression's examples: adversarial file and clean spec, with counts.
    pub fit_adversarial: Option<String>,
    pub fit_clean: Option<String>,
    pub n_adversarial: usize,
    pub n_clean: usize,
    /// The logistic regression (z-score means and stds, coefficients, intercept).
    pub combiner: Option<LogisticCombiner>,
    /// What an input-transformation detector's fit measured (MagNet's normalisers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformFit>,
}

/// A fitted classic detector.
pub struct Classic {
    pub meta: ClassicMeta,
    kd: Option<KernelDensity>,
    gauss: Vec<ClassGaussian>,
    /// LID reference activations per tap, `[R, D]`.
    reference: Vec<Tensor>,
    combiner: Option<LogisticCombiner>,
    /// Feature squeezing / MagNet.
    transform: Option<Transform>,
}

/// The deterministic forward a fitted classic detector scores from, run once per batch: the
/// logits `[B, 1, K]` (the prediction of [`crate::detect::Detector`]) and every tap (the
/// detector's features), so the prediction and the score need no forward each.
pub struct Pass {
    pub logits: Tensor,
    taps: Vec<Tap>,
}

impl Pass {
    /// One deterministic forward of `x` with its taps (differentiable in `x` unless called under
    /// `no_grad`).
    pub fn of(model: &dyn BayesModel, x: &Tensor) -> Result<Pass> {
        let (logits, taps) = model.forward_taps(x, &ForwardMode::Deterministic)?;
        Ok(Pass { logits, taps })
    }

    /// The features at `names`: `[B, D]` double each (sample axis dropped; maps averaged over
    /// space when `pool`, else flattened).
    fn features(&self, names: &[String], pool: bool) -> Result<Vec<Tensor>> {
        names
            .iter()
            .map(|name| {
                let t =
                    self.taps.iter().find(|t| &t.name == name).ok_or_else(|| {
                        Error::invalid(format!("the model has no block '{name}'"))
                    })?;
                let v = t.value.select(1, 0); // [B, ...]
                let v = if v.dim() > 2 && pool {
                    v.flatten(2, -1).mean_dim(2, false, Kind::Float)
                } else {
                    v.flatten(1, -1)
                };
                Ok(v.to_kind(Kind::Double))
            })
            .collect()
    }
}

/// Per-tap features of a batch from one deterministic forward (see [`Pass::features`]), and the
/// logits `[B, K]`.
fn tap_features(
    model: &dyn BayesModel,
    x: &Tensor,
    taps: &[String],
    pool: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let pass = Pass::of(model, x)?;
    let f = pass.features(taps, pool)?;
    Ok((pass.logits.select(1, 0), f))
}

/// The block names of a model (its taps without the logits), from the model's cached tap shapes.
pub fn block_names(model: &dyn BayesModel) -> Result<Vec<String>> {
    Ok(crate::models::tap_shapes(model)?
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| n != "logits")
        .collect())
}

/// Whether two float32 tensors hold the same bits (unlike `==`, -0.0 and 0.0 differ), i.e. a
/// forward of either gives the same result.
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size()
        && a.kind() == Kind::Float
        && b.kind() == Kind::Float
        && a.detach()
            .view_dtype(Kind::Int)
            .equal(&b.detach().view_dtype(Kind::Int))
}

/// Runs `f` over `ds` in batches on `device`, collecting `[n, ...]` CPU tensors per output.
fn collect(
    ds: &Dataset,
    batch_size: usize,
    device: Device,
    f: &mut dyn FnMut(&Tensor, &Tensor) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let mut parts: Vec<Vec<Tensor>> = Vec::new();
    for s in (0..ds.len()).step_by(batch_size.max(1)) {
        let (x, y) = ds.batch(s, (s + batch_size).min(ds.len()))?;
        let outs = f(&x.to_device(device), &y.to_device(device))?;
        if parts.is_empty() {
            parts = (0..outs.len()).map(|_| Vec::new()).collect();
        }
        for (p, o) in parts.iter_mut().zip(outs) {
            p.push(o.to_device(Device::Cpu));
        }
    }
    Ok(parts.iter().map(|p| Tensor::cat(p, 0)).collect())
}

impl Classic {
    /// The taps a kind reads on `model` (validated against its blocks).
    /// Without a logistic regression, Mahalanobis scores the last block alone.
    fn taps_for(model: &dyn BayesModel, cfg: &ClassicConfig, lr: bool) -> Result<Vec<String>> {
        let blocks = block_names(model)?;
        let head = blocks
            .last()
            .cloned()
            .ok_or_else(|| Error::invalid("the model has no blocks"))?;
        let taps = match cfg.kind {
            ClassicKind::Kd | ClassicKind::KdBu => vec![head],
            ClassicKind::Mahalanobis if cfg.layers.is_empty() && !lr => vec![head],
            _ if cfg.layers.is_empty() => blocks.clone(),
            _ => cfg.layers.clone(),
        };
        if let Some(bad) = taps.iter().find(|t| !blocks.contains(t)) {
            return Err(Error::param(
                "layers",
                bad,
                format!(
                    "no such block in {}: it has {}",
                    model.config().arch,
                    blocks.join(", ")
                ),
            ));
        }
        Ok(taps)
    }

    /// Fits on clean images `data.clean` (labels needed); the logistic-regression forms also on
    /// `data.logistic`. The input-transformation detectors go to [`Classic::fit_transform`].
    pub fn fit(
        model: &mut dyn BayesModel,
        cfg: &ClassicConfig,
        data: FitData,
        batch_size: usize,
        device: Device,
    ) -> Result<Classic> {
        if cfg.kind.is_transform() {
            if data.logistic.is_some() {
                return Err(Error::invalid(format!(
                    "{} takes no logistic regression: no adversarial and clean examples",
                    cfg.kind.name()
                )));
            }
            return Self::fit_transform(model, cfg, data.clean, batch_size, device);
        }
        let fit = data.clean.ok_or_else(|| {
            Error::invalid(format!(
                "{} is fitted on clean labelled images: no fit data given",
                cfg.kind.name()
            ))
        })?;
        let fit = (fit.data, fit.name);
        let lr = data.logistic.map(|l| {
            (
                (l.adversarial.data, l.adversarial.name),
                (l.clean.data, l.clean.name),
            )
        });
        let labels_of = |ds: &Dataset| -> Result<()> {
            ds.labels().map(|_| ()).ok_or_else(|| {
                Error::invalid(format!("{}: fitting needs labelled images", ds.name))
            })
        };
        labels_of(fit.0)?;
        if cfg.kind.needs_adversarial() && lr.is_none() {
            return Err(Error::invalid(format!(
                "{} is a logistic regression on adversarial vs clean examples: give both",
                cfg.kind.name()
            )));
        }
        let taps = Self::taps_for(model, cfg, lr.is_some())?;
        let k = model.config().num_classes;
        let pool = cfg.kind == ClassicKind::Mahalanobis;
        let feats = tch::no_grad(|| {
            collect(fit.0, batch_size, device, &mut |x, y| {
                let (_, f) = tap_features(model, x, &taps, pool)?;
                let mut v = f;
                v.push(y.shallow_clone());
                Ok(v)
            })
        })?;
        let (labels, feats) = feats.split_last().expect("at least the labels");
        let mut c = Classic {
            meta: ClassicMeta {
                config: cfg.clone(),
                taps: taps.clone(),
                fit_data: fit.1.to_string(),
                n_fit: fit.0.len(),
                fit_adversarial: None,
                fit_clean: None,
                n_adversarial: 0,
                n_clean: 0,
                combiner: None,
                transform: None,
            },
            kd: None,
            gauss: Vec::new(),
            reference: Vec::new(),
            combiner: None,
            transform: None,
        };
        match cfg.kind {
            ClassicKind::Kd | ClassicKind::KdBu => {
                c.kd = Some(KernelDensity::fit(&feats[0], labels, k, cfg.bandwidth)?);
            }
            ClassicKind::Mahalanobis => {
                for f in feats {
                    c.gauss.push(ClassGaussian::fit(f, labels, k)?);
                }
            }
            ClassicKind::Lid => {
                let r = cfg.reference.min(fit.0.len());
                if r <= cfg.k {
                    return Err(Error::invalid(format!(
                        "LID: {} clean images cannot give a reference set larger than k = {}",
                        fit.0.len(),
                        cfg.k
                    )));
                }
                c.reference = feats.iter().map(|f| f.narrow(0, 0, r as i64)).collect();
            }
            ClassicKind::Squeeze | ClassicKind::Magnet => unreachable!("fitted above"),
        }
        if cfg.kind == ClassicKind::KdBu {
            model.set_mc_dropout(cfg.dropout.clone())?;
        }
        let wants_lr = cfg.kind.needs_adversarial()
            || (cfg.kind == ClassicKind::Mahalanobis && lr.is_some() && taps.len() > 1);
        if let (true, Some(((adv, adv_name), (clean, clean_name)))) = (wants_lr, lr) {
            let raw = |ds: &Dataset| -> Result<Tensor> {
                let v = collect(ds, batch_size, device, &mut |x, _| {
                    Ok(vec![tch::no_grad(|| {
                        c.raw_features(model, x, Some(&Pass::of(model, x)?))
                    })?])
                })?;
                Ok(v.into_iter().next().expect("one output"))
            };
            let (pos, neg) = (raw(adv)?, raw(clean)?);
            let x = Tensor::cat(&[&pos, &neg], 0);
            let y: Vec<bool> = (0..pos.size()[0])
                .map(|_| true)
                .chain((0..neg.size()[0]).map(|_| false))
                .collect();
            let comb = LogisticCombiner::fit(to_array2(&x)?, &y)?;
            c.meta.combiner = Some(comb.clone());
            c.meta.fit_adversarial = Some(adv_name.to_string());
            c.meta.fit_clean = Some(clean_name.to_string());
            c.meta.n_adversarial = adv.len();
            c.meta.n_clean = clean.len();
            c.combiner = Some(comb);
        }
        Ok(c)
    }

    /// The per-example inputs of the final score, `[B, F]` double: KD's log-density (and BU),
    /// the per-tap LIDs, or the per-tap Mahalanobis confidences.
    ///
    /// Scoring (`pass`: the deterministic forward of `x`, run without gradients) reads the taps
    /// from `pass`. Differentiated (`pass` None: an adaptive attack) the detector runs its own
    /// forwards, apart from the logits' and, for Mahalanobis, one per tap: forwards shared by
    /// several differentiated terms sum their gradients inside the network instead of at the
    /// input, and that other round-off changes the adversarial images the attacks craft.
    ///
    /// Forwards beyond the deterministic one, each a different computation: KD-BU's MC-dropout
    /// forward (every tap from the first dropped block on differs in it, the head input KD reads
    /// and the logits of the prediction included), and with Mahalanobis' `noise` one forward for
    /// every tap's gradient plus one per tap at its own moved input.
    fn raw_features(
        &self,
        model: &dyn BayesModel,
        x: &Tensor,
        pass: Option<&Pass>,
    ) -> Result<Tensor> {
        let cfg = &self.meta.config;
        let taps = &self.meta.taps;
        if cfg.kind == ClassicKind::Mahalanobis {
            let confs = self.mahalanobis_confidences(model, x, pass)?;
            return Ok(Tensor::stack(&confs, 1));
        }
        let own;
        let pass = match pass {
            Some(p) => p,
            None => {
                own = Pass::of(model, x)?;
                &own
            }
        };
        match cfg.kind {
            ClassicKind::Kd | ClassicKind::KdBu => {
                let f = pass.features(taps, false)?;
                let pred = pass.logits.select(1, 0).detach().argmax(-1, false);
                let kd = self
                    .kd
                    .as_ref()
                    .expect("fitted")
                    .log_density(&f[0], &pred)?;
                if cfg.kind == ClassicKind::Kd {
                    return Ok(kd.unsqueeze(1));
                }
                let s = cfg.dropout.as_ref().expect("validated").samples;
                let l = model.forward_mc(x, &ForwardMode::ParallelMc { samples: s })?;
                let bu = l
                    .softmax(-1, Kind::Double)
                    .var_dim(1, false, false)
                    .sum_dim_intlist(-1, false, Kind::Double);
                Ok(Tensor::stack(&[kd.to_device(bu.device()), bu], 1))
            }
            ClassicKind::Lid => {
                let f = pass.features(taps, false)?;
                let lids = f
                    .iter()
                    .zip(&self.reference)
                    .map(|(b, r)| lid_batch(b, &r.to_device(b.device()), cfg.k, true))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&lids, 1))
            }
            ClassicKind::Mahalanobis => unreachable!("returned above"),
            ClassicKind::Squeeze | ClassicKind::Magnet => {
                unreachable!("input-transformation detectors score in `transform`")
            }
        }
    }

    /// Lee et al.'s confidence at every tap: max over classes of minus half the squared
    /// Mahalanobis distance, after moving the input by `noise` along the sign of the gradient
    /// that raises that tap's confidence (clean inputs gain more than adversarial ones). `pass`
    /// as in [`Classic::raw_features`].
    fn mahalanobis_confidences(
        &self,
        model: &dyn BayesModel,
        x: &Tensor,
        pass: Option<&Pass>,
    ) -> Result<Vec<Tensor>> {
        let taps = &self.meta.taps;
        let noise = self.meta.config.noise;
        let at = |l: usize, xm: &Tensor| -> Result<Tensor> {
            let (_, f) = tap_features(model, xm, std::slice::from_ref(&taps[l]), true)?;
            Ok(self.gauss[l].confidence(&f[0]).0)
        };
        if noise == 0.0 {
            // No move: every tap reads `x` clamped to [0, 1] (differentiated: in a forward of
            // its own, see `raw_features`).
            let Some(pass) = pass else {
                return (0..taps.len())
                    .map(|l| at(l, &(x + x.zeros_like()).clamp(0.0, 1.0)))
                    .collect();
            };
            // Without gradients one forward serves every tap: `pass` itself when the clamp
            // changes no bit of `x` (pixels in [0, 1]), else one of the clamped input.
            let xm = (x + x.zeros_like()).clamp(0.0, 1.0);
            let f = if same_bits(&xm, x) {
                pass.features(taps, true)?
            } else {
                tap_features(model, &xm, taps, true)?.1
            };
            return Ok(f
                .iter()
                .zip(&self.gauss)
                .map(|(f, g)| g.confidence(f).0)
                .collect());
        }
        // The pre-processing step is a fixed function of the input for the detector; an adaptive
        // attacker differentiates the confidence at the moved input and treats the move as
        // constant (BPDA, Athalye et al. 2018). Every tap's gradient comes from one forward of
        // the detached input and one backward per tap: a tap's confidence reaches only its own
        // part of the graph, so each gradient is bit for bit the one a forward of its own gives.
        let grads = tch::with_grad(|| -> Result<Vec<Tensor>> {
            let xg = x.detach().set_requires_grad(true);
            let f = Pass::of(model, &xg)?.features(taps, true)?;
            let n = f.len();
            Ok(f.iter()
                .zip(&self.gauss)
                .enumerate()
                .map(|(l, (f, g))| {
                    let conf = g.confidence(f).0.sum(Kind::Double);
                    Tensor::run_backward(&[conf], &[&xg], l + 1 < n, false).remove(0)
                })
                .collect())
        })?;
        // Each tap's moved input is its own: one forward each.
        grads
            .iter()
            .enumerate()
            .map(|(l, grad)| at(l, &(x + (grad.sign() * noise).detach()).clamp(0.0, 1.0)))
            .collect()
    }

    /// The detection score of a batch, `[B]` (higher = more suspicious): the logistic
    /// regression's probability of "adversarial" when fitted, else minus the density (KD) or
    /// the last tap's confidence (Mahalanobis). `pass` is the deterministic forward of `x`
    /// ([`Pass::of`]), whose logits can give the prediction too.
    pub fn score(&self, model: &dyn BayesModel, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let raw = tch::no_grad(|| self.raw_features(model, x, Some(pass)))?;
        match &self.combiner {
            Some(c) => {
                let p = c.predict_proba(&to_array2(&raw)?);
                Ok(Tensor::from_slice(p.as_slice().expect("contiguous")))
            }
            None => Ok(-raw.select(1, raw.size()[1] - 1).to_device(Device::Cpu)),
        }
    }

    /// [`Classic::score`] as a differentiable function of `x` (for adaptive attacks): the same
    /// value up to round-off, the logistic regression evaluated with tensor ops. The detector's
    /// own forwards (see [`Classic::raw_features`]).
    pub fn score_tensor(&self, model: &dyn BayesModel, x: &Tensor) -> Result<Tensor> {
        let raw = self.raw_features(model, x, None)?;
        match &self.combiner {
            Some(c) => {
                let t = |v: &[f64]| Tensor::from_slice(v).to_device(raw.device());
                let z = (&raw - t(&c.mean)) / t(&c.std);
                Ok((z.matmul(&t(&c.coef)) + c.intercept).sigmoid())
            }
            None => Ok(-raw.select(1, raw.size()[1] - 1)),
        }
    }

    /// Builds feature squeezing (nothing to fit; `fit` unused) or fits MagNet (its autoencoders
    /// on `fit`, which it needs).
    pub fn fit_transform(
        model: &dyn BayesModel,
        cfg: &ClassicConfig,
        fit: Option<FitSet>,
        batch_size: usize,
        device: Device,
    ) -> Result<Classic> {
        let tcfg = cfg.transform_config()?;
        let fit = fit.filter(|_| cfg.kind == ClassicKind::Magnet);
        let (t, tfit) = Transform::fit(model, &tcfg, fit.map(|f| f.data), batch_size, device)?;
        Ok(Classic {
            meta: ClassicMeta {
                config: ClassicConfig {
                    transform: Some(tcfg),
                    ..cfg.clone()
                },
                taps: Vec::new(),
                fit_data: fit.map(|f| f.name.to_string()).unwrap_or_default(),
                n_fit: fit.map(|f| f.data.len()).unwrap_or(0),
                fit_adversarial: None,
                fit_clean: None,
                n_adversarial: 0,
                n_clean: 0,
                combiner: None,
                transform: Some(tfit),
            },
            kd: None,
            gauss: Vec::new(),
            reference: Vec::new(),
            combiner: None,
            transform: Some(t),
        })
    }

    /// What the classifier sees of `x`: MagNet's reformed image when its reformer is on (None:
    /// `x` itself). Differentiable in `x`.
    pub fn classifier_input(&self, x: &Tensor) -> Option<Tensor> {
        self.transform.as_ref().and_then(|t| t.classifier_input(x))
    }

    /// Score `s` (one of this detector's, see [`crate::detect::Detector::check_score`]) of a
    /// batch, `[B]` on the CPU: [`Classic::score`], or an input-transformation detector's score
    /// (`pass`: the deterministic forward of [`Classic::classifier_input`]).
    pub fn score_for(
        &self,
        s: Score,
        model: &dyn BayesModel,
        x: &Tensor,
        pass: &Pass,
    ) -> Result<Tensor> {
        match &self.transform {
            Some(t) => {
                let l = pass.logits.select(1, 0);
                let v = tch::no_grad(|| t.score(s, model, x, Some(&l)))?;
                Ok(v.to_device(Device::Cpu))
            }
            None => self.score(model, x, pass),
        }
    }

    /// [`Classic::score_for`] as a differentiable function of `x` (adaptive attacks; see
    /// [`Classic::score_tensor`]; the squeezers by BPDA, MagNet through its autoencoders).
    pub fn score_tensor_for(&self, s: Score, model: &dyn BayesModel, x: &Tensor) -> Result<Tensor> {
        match &self.transform {
            Some(t) => t.score(s, model, x, None),
            None => self.score_tensor(model, x),
        }
    }

    /// The fitted state as named tensors (stored in the detector file under `classic/`).
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        if let Some(kd) = &self.kd {
            v.extend(
                kd.to_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("kd/{n}"), t)),
            );
        }
        for (l, g) in self.gauss.iter().enumerate() {
            v.extend(
                g.to_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("gauss{l}/{n}"), t)),
            );
        }
        for (l, r) in self.reference.iter().enumerate() {
            v.push((format!("lid{l}/reference"), r.shallow_clone()));
        }
        if let Some(t) = &self.transform {
            v.extend(
                t.to_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("transform/{n}"), t)),
            );
        }
        v
    }

    /// Rebuilds a fitted detector from its metadata and tensors (see [`Classic::to_tensors`]).
    pub fn from_parts(meta: ClassicMeta, tensors: &HashMap<String, Tensor>) -> Result<Classic> {
        let sub = |prefix: &str| -> HashMap<String, Tensor> {
            tensors
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(prefix)
                        .map(|r| (r.to_string(), t.shallow_clone()))
                })
                .collect()
        };
        let kind = meta.config.kind;
        let kd = match kind {
            ClassicKind::Kd | ClassicKind::KdBu => Some(KernelDensity::from_tensors(&sub("kd/"))?),
            _ => None,
        };
        let n = meta.taps.len();
        let gauss = match kind {
            ClassicKind::Mahalanobis => (0..n)
                .map(|l| ClassGaussian::from_tensors(&sub(&format!("gauss{l}/"))))
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        let reference = match kind {
            ClassicKind::Lid => (0..n)
                .map(|l| {
                    tensors
                        .get(&format!("lid{l}/reference"))
                        .map(|t| t.shallow_clone())
                        .ok_or_else(|| Error::invalid(format!("missing tensor lid{l}/reference")))
                })
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        let combiner = meta.combiner.clone();
        let transform = if kind.is_transform() {
            Some(Transform::from_parts(
                &meta.config.transform_config()?,
                meta.transform.as_ref(),
                &sub("transform/"),
            )?)
        } else {
            None
        };
        Ok(Classic {
            meta,
            kd,
            gauss,
            reference,
            combiner,
            transform,
        })
    }
}

fn to_array2(t: &Tensor) -> Result<ndarray::Array2<f64>> {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous();
    let (n, f) = (t.size()[0] as usize, t.size()[1] as usize);
    let v = Vec::<f64>::try_from(t.view([-1]))?;
    ndarray::Array2::from_shape_vec((n, f), v).map_err(|e| Error::Shape(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayes::{Family, LayerSelection, McDraws, PosteriorConfig};
    use crate::detect::{Detector, Score};
    use crate::models::{ModelConfig, PosteriorMeta};
    use std::cell::Cell;
    use std::rc::Rc;
    use tch::nn;

    /// A model that counts its forwards (every forward is one of the two calls counted here;
    /// `forward_mc` goes through `forward_mc_with_features`).
    struct Counting {
        inner: Box<dyn BayesModel>,
        forwards: Rc<Cell<usize>>,
    }

    impl BayesModel for Counting {
        fn config(&self) -> &ModelConfig {
            self.inner.config()
        }
        fn var_store(&self) -> &nn::VarStore {
            self.inner.var_store()
        }
        fn var_store_mut(&mut self) -> &mut nn::VarStore {
            self.inner.var_store_mut()
        }
        fn forward_mc_with_features(
            &self,
            x: &Tensor,
            mode: &ForwardMode,
        ) -> Result<(Tensor, Tensor)> {
            self.forwards.set(self.forwards.get() + 1);
            self.inner.forward_mc_with_features(x, mode)
        }
        fn forward_taps(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Vec<Tap>)> {
            self.forwards.set(self.forwards.get() + 1);
            self.inner.forward_taps(x, mode)
        }
        fn layer_paths(&self) -> Vec<String> {
            self.inner.layer_paths()
        }
        fn layer_families(&self) -> Vec<(String, Family)> {
            self.inner.layer_families()
        }
        fn last_block(&self) -> Vec<String> {
            self.inner.last_block()
        }
        fn convert(&mut self, sel: &LayerSelection, cfg: &PosteriorConfig) -> Result<Vec<String>> {
            self.inner.convert(sel, cfg)
        }
        fn to_deterministic(&mut self) -> Result<()> {
            self.inner.to_deterministic()
        }
        fn posterior(&self) -> Option<&PosteriorMeta> {
            self.inner.posterior()
        }
        fn set_mc_dropout(&mut self, d: Option<McDropout>) -> Result<()> {
            self.inner.set_mc_dropout(d)
        }
        fn mc_dropout(&self) -> Option<&McDropout> {
            self.inner.mc_dropout()
        }
        fn set_mc_draws(&mut self, d: McDraws) {
            self.inner.set_mc_draws(d)
        }
        fn mc_draws(&self) -> McDraws {
            self.inner.mc_draws()
        }
        fn set_precision(&mut self, p: crate::runtime::precision::Precision) -> Result<()> {
            self.inner.set_precision(p)
        }
        fn precision(&self) -> crate::runtime::precision::Precision {
            self.inner.precision()
        }
    }

    /// A batch file of `n` random 28 px digits labelled `i % 10`, opened as a data set.
    fn random_set(dir: &std::path::Path, name: &str, n: i64) -> Dataset {
        let p = dir.join(format!("{name}.safetensors"));
        let x = Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(10);
        crate::data::write_batch_file(&p, &x, Some(&y), HashMap::new()).unwrap();
        crate::data::open(p.to_str().unwrap(), None, &mut |_| {}).unwrap()
    }

    /// Scoring a batch with a fitted classic detector (its score and a plain one) runs the
    /// deterministic forward once, plus only the forwards that compute something else (KD-BU's
    /// MC dropout, Mahalanobis' moved inputs); the scores and the prediction are bit for bit
    /// those of separate forwards (the detector's own and the plain prediction's).
    #[test]
    fn scoring_runs_one_deterministic_forward_per_batch() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let tmp = tempfile::tempdir().unwrap();
        let fit = random_set(tmp.path(), "fit", 40);
        let adv = random_set(tmp.path(), "adv", 20);
        let clean = random_set(tmp.path(), "clean", 20);
        let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu));
        let forwards = Rc::new(Cell::new(0));
        let drop = McDropout {
            layers: vec!["conv2".into(), "linear1".into()],
            p: 0.5,
            samples: 4,
        };
        let cfg = |kind, noise| {
            ClassicParams {
                k: 5,
                reference: 30,
                noise,
                dropout: (kind == ClassicKind::KdBu).then(|| drop.clone()),
                ..ClassicParams::new(kind)
            }
            .check()
            .unwrap()
        };
        // (settings, logistic regression, forwards per scored batch, per differentiated score)
        let cases = [
            (cfg(ClassicKind::Kd, 0.0), false, 1, 1),
            (cfg(ClassicKind::KdBu, 0.0), true, 2, 2),
            (cfg(ClassicKind::Lid, 0.0), true, 1, 1),
            (cfg(ClassicKind::Mahalanobis, 0.0), false, 1, 1),
            (cfg(ClassicKind::Mahalanobis, 0.0), true, 1, 3),
            (cfg(ClassicKind::Mahalanobis, 0.01), true, 1 + 1 + 3, 1 + 3),
        ];
        for (cfg, lr, per_batch, differentiated) in cases {
            let what = format!("{} (noise {}, lr {lr})", cfg.kind.name(), cfg.noise);
            let inner = crate::models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
            let model = Counting {
                inner,
                forwards: forwards.clone(),
            };
            crate::models::tap_shapes(&model).unwrap(); // measured (and cached) beforehand
            let mut det = Detector::new(Box::new(model), None).unwrap();
            forwards.set(0);
            let set = |data, name| FitSet { data, name };
            let data = FitData {
                clean: Some(set(&fit, "fit")),
                logistic: lr.then_some(LogisticSets {
                    adversarial: set(&adv, "adv"),
                    clean: set(&clean, "clean"),
                }),
            };
            det.fit_classic(&cfg, data, 16, Device::Cpu).unwrap();
            // 40 fit images in 3 batches of 16 (one forward each), the logistic regression's
            // 20 + 20 in 2 + 2, scored like a batch.
            let lr_batches = if lr { 4 } else { 0 };
            assert_eq!(forwards.get(), 3 + lr_batches * per_batch, "fit: {what}");
            let taps = det.classic().unwrap().meta.taps.len();
            let score = Score::of_classic(cfg.kind);

            forwards.set(0);
            tch::manual_seed(1);
            let (pred, s) = det.score(&x, &[Score::Msp, score]).unwrap();
            assert_eq!(forwards.get(), per_batch, "{what}");

            // The same numbers from separate forwards: the plain prediction's, and the detector
            // reading its own (as a differentiated score does).
            let c = det.classic().unwrap();
            let model = det.model();
            let (logits, feats) = model
                .forward_mc_with_features(&x, &ForwardMode::Deterministic)
                .unwrap();
            let (pred2, msp) =
                crate::detect::scores::compute(&logits, &feats, &[Score::Msp]).unwrap();
            assert!(
                pred.class.equal(&pred2.class) && pred.probs.equal(&pred2.probs),
                "{what}"
            );
            assert!(s[0].equal(&msp[0]), "{what}");
            tch::manual_seed(1);
            let own = tch::no_grad(|| c.raw_features(model, &x, None)).unwrap();
            tch::manual_seed(1);
            let pass = tch::no_grad(|| Pass::of(model, &x)).unwrap();
            let shared = tch::no_grad(|| c.raw_features(model, &x, Some(&pass))).unwrap();
            assert!(own.equal(&shared), "{what}");
            assert_eq!(
                own.size(),
                [
                    6,
                    if cfg.kind == ClassicKind::KdBu {
                        2
                    } else {
                        taps as i64
                    }
                ]
            );

            // Differentiated (adaptive attacks): the detector's own forwards, one per tap for
            // Mahalanobis (see `raw_features`).
            forwards.set(0);
            let xg = x.copy().set_requires_grad(true);
            let st = c.score_tensor(model, &xg).unwrap();
            assert_eq!(forwards.get(), differentiated, "{what}");
            assert!(st.requires_grad(), "{what}");
        }
    }

    /// The block names come from the cached tap shapes: one dummy forward per net at most.
    #[test]
    fn block_names_are_measured_once() {
        let _rng = crate::rng_lock();
        let forwards = Rc::new(Cell::new(0));
        let model = Counting {
            inner: crate::models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap(),
            forwards: forwards.clone(),
        };
        assert_eq!(block_names(&model).unwrap(), ["conv1", "conv2", "linear1"]);
        assert!(forwards.get() <= 1);
        let after_first = forwards.get();
        assert_eq!(block_names(&model).unwrap(), ["conv1", "conv2", "linear1"]);
        assert_eq!(forwards.get(), after_first);
        let shapes = crate::models::tap_shapes(&model).unwrap();
        let got: Vec<(&str, &[i64])> = shapes
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("conv1", &[32, 14, 14][..]),
                ("conv2", &[64, 7, 7][..]),
                ("linear1", &[200][..]),
                ("logits", &[10][..])
            ]
        );
        assert_eq!(forwards.get(), after_first);
        // A refused input size is an error every time (not cached), naming what the net takes.
        for _ in 0..2 {
            let e = crate::models::tap_shapes_at(&model, [1, 32, 32])
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected input [B, 1, 28, 28]"), "{e}");
        }
    }
}
