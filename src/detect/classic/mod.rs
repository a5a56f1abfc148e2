//! The classic detectors as fitted detectors (docs/detection.md, "Baselines"): validated
//! settings, [`Classic::fit`] on clean (and, for the logistic-regression forms, adversarial)
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

pub mod kd;
pub mod lid;
pub mod logistic;
pub mod mahalanobis;

use crate::bayes::mode::McDropout;
use crate::bayes::ForwardMode;
use crate::data::Dataset;
use crate::models::BayesModel;
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
}

impl ClassicKind {
    pub const ALL: [ClassicKind; 4] = [
        ClassicKind::Kd,
        ClassicKind::KdBu,
        ClassicKind::Lid,
        ClassicKind::Mahalanobis,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ClassicKind::Kd => "kd",
            ClassicKind::KdBu => "kd-bu",
            ClassicKind::Lid => "lid",
            ClassicKind::Mahalanobis => "mahalanobis",
        }
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
                Error::invalid(format!(
                    "unknown detector '{s}': available libre, mc-dropout, {}",
                    ClassicKind::ALL.map(|k| k.name()).join(", ")
                ))
            })
    }
}

/// Settings of a classic detector; saved with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassicConfig {
    pub kind: ClassicKind,
    /// Taps read (LID, Mahalanobis; default: every block before the logits). KD reads the head
    /// input.
    pub layers: Vec<String>,
    /// KD bandwidth (Feinman et al.: 1.20 for MNIST).
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
}

impl ClassicConfig {
    /// The papers' MNIST settings (bandwidth 1.20, k = 20 in a 100-image reference, no noise,
    /// every block, no dropout), which the CLI's defaults repeat.
    pub fn new(kind: ClassicKind) -> ClassicConfig {
        ClassicConfig {
            kind,
            layers: vec![],
            bandwidth: 1.2,
            k: 20,
            reference: 100,
            noise: 0.0,
            dropout: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.bandwidth > 0.0 && self.bandwidth.is_finite()) {
            return Err(Error::invalid(format!(
                "--bandwidth {}: must be a positive number",
                self.bandwidth
            )));
        }
        if self.k == 0 || self.k >= self.reference {
            return Err(Error::invalid(format!(
                "LID: k = {} must lie in [1, reference size {})",
                self.k, self.reference
            )));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::invalid(format!(
                "--noise {}: must be >= 0",
                self.noise
            )));
        }
        match (&self.dropout, self.kind) {
            (None, ClassicKind::KdBu) => Err(Error::invalid(
                "kd-bu needs MC dropout for BU: pass --dropout BLOCKS (and --dropout-p)",
            )),
            (Some(d), _) => d.validate(),
            _ => Ok(()),
        }
    }
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
}

/// A fitted classic detector.
pub struct Classic {
    pub meta: ClassicMeta,
    kd: Option<KernelDensity>,
    gauss: Vec<ClassGaussian>,
    /// LID reference activations per tap, `[R, D]`.
    reference: Vec<Tensor>,
    combiner: Option<LogisticCombiner>,
}

/// Per-tap features of a batch from the deterministic forward: `[B, D]` each (sample axis
/// dropped; maps averaged over space when `pool`, else flattened), and the logits `[B, K]`.
fn tap_features(
    model: &dyn BayesModel,
    x: &Tensor,
    taps: &[String],
    pool: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let (logits, all) = model.forward_taps(x, &ForwardMode::Deterministic)?;
    let mut out = Vec::with_capacity(taps.len());
    for name in taps {
        let t = all
            .iter()
            .find(|t| &t.name == name)
            .ok_or_else(|| Error::invalid(format!("the model has no block '{name}'")))?;
        let v = t.value.select(1, 0); // [B, ...]
        let v = if v.dim() > 2 && pool {
            v.flatten(2, -1).mean_dim(2, false, Kind::Float)
        } else {
            v.flatten(1, -1)
        };
        out.push(v.to_kind(Kind::Double));
    }
    Ok((logits.select(1, 0), out))
}

/// The block names of a model (its taps without the logits).
pub fn block_names(model: &dyn BayesModel) -> Result<Vec<String>> {
    let c = model.config();
    let x = Tensor::zeros(
        [1, c.in_channels, c.image_size, c.image_size],
        (Kind::Float, model.var_store().device()),
    );
    let (_, taps) = tch::no_grad(|| model.forward_taps(&x, &ForwardMode::Deterministic))?;
    Ok(taps
        .into_iter()
        .map(|t| t.name)
        .filter(|n| n != "logits")
        .collect())
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
            return Err(Error::invalid(format!(
                "no block '{bad}' in {}: it has {}",
                model.config().arch,
                blocks.join(", ")
            )));
        }
        Ok(taps)
    }

    /// Fits on clean images `fit` (labels needed); the logistic-regression forms also on
    /// `adversarial` (positives) and `clean` (negatives) images.
    pub fn fit(
        model: &mut dyn BayesModel,
        cfg: &ClassicConfig,
        fit: (&Dataset, &str),
        lr: Option<((&Dataset, &str), (&Dataset, &str))>,
        batch_size: usize,
        device: Device,
    ) -> Result<Classic> {
        cfg.validate()?;
        let labels_of = |ds: &Dataset| -> Result<()> {
            ds.labels().map(|_| ()).ok_or_else(|| {
                Error::invalid(format!("{}: fitting needs labelled images", ds.name))
            })
        };
        labels_of(fit.0)?;
        if cfg.kind.needs_adversarial() && lr.is_none() {
            return Err(Error::invalid(format!(
                "{} is a logistic regression on adversarial vs clean examples: pass \
                 --fit-adversarial FILE and --fit-clean SPEC",
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
            },
            kd: None,
            gauss: Vec::new(),
            reference: Vec::new(),
            combiner: None,
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
        }
        if cfg.kind == ClassicKind::KdBu {
            model.set_mc_dropout(cfg.dropout.clone())?;
        }
        let wants_lr = cfg.kind.needs_adversarial()
            || (cfg.kind == ClassicKind::Mahalanobis && lr.is_some() && taps.len() > 1);
        if let (true, Some(((adv, adv_name), (clean, clean_name)))) = (wants_lr, lr) {
            let raw = |ds: &Dataset| -> Result<Tensor> {
                let v = collect(ds, batch_size, device, &mut |x, _| {
                    Ok(vec![tch::no_grad(|| c.raw_features(model, x))?])
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
    /// the per-tap LIDs, or the per-tap Mahalanobis confidences. Differentiable in `x` unless
    /// called under `no_grad`.
    fn raw_features(&self, model: &dyn BayesModel, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.meta.config;
        let taps = &self.meta.taps;
        match cfg.kind {
            ClassicKind::Kd | ClassicKind::KdBu => {
                let (logits, f) = tap_features(model, x, taps, false)?;
                let pred = logits.detach().argmax(-1, false);
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
                let (_, f) = tap_features(model, x, taps, false)?;
                let lids = f
                    .iter()
                    .zip(&self.reference)
                    .map(|(b, r)| lid_batch(b, &r.to_device(b.device()), cfg.k, true))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&lids, 1))
            }
            ClassicKind::Mahalanobis => {
                let confs = (0..taps.len())
                    .map(|l| self.mahalanobis_confidence(model, x, l))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&confs, 1))
            }
        }
    }

    /// Lee et al.'s confidence at tap `l`: max over classes of minus half the squared
    /// Mahalanobis distance, after moving the input by `noise` along the sign of the gradient
    /// that raises it (clean inputs gain more than adversarial ones).
    fn mahalanobis_confidence(
        &self,
        model: &dyn BayesModel,
        x: &Tensor,
        l: usize,
    ) -> Result<Tensor> {
        let g = &self.gauss[l];
        let tap = std::slice::from_ref(&self.meta.taps[l]);
        let noise = self.meta.config.noise;
        // The pre-processing step is a fixed function of the input for the detector; an adaptive
        // attacker differentiates the confidence at the moved input and treats the move as
        // constant (BPDA, Athalye et al. 2018).
        let moved = if noise > 0.0 {
            let grad = tch::with_grad(|| -> Result<Tensor> {
                let xg = x.detach().set_requires_grad(true);
                let (_, f) = tap_features(model, &xg, tap, true)?;
                let conf = g.confidence(&f[0]).0.sum(Kind::Double);
                Ok(Tensor::run_backward(&[conf], &[&xg], false, false).remove(0))
            })?;
            (grad.sign() * noise).detach()
        } else {
            x.zeros_like()
        };
        let xm = (x + moved).clamp(0.0, 1.0);
        let (_, f) = tap_features(model, &xm, tap, true)?;
        Ok(g.confidence(&f[0]).0)
    }

    /// The detection score of a batch, `[B]` (higher = more suspicious): the logistic
    /// regression's probability of "adversarial" when fitted, else minus the density (KD) or
    /// the last tap's confidence (Mahalanobis).
    pub fn score(&self, model: &dyn BayesModel, x: &Tensor) -> Result<Tensor> {
        let raw = tch::no_grad(|| self.raw_features(model, x))?;
        match &self.combiner {
            Some(c) => {
                let p = c.predict_proba(&to_array2(&raw)?);
                Ok(Tensor::from_slice(p.as_slice().expect("contiguous")))
            }
            None => Ok(-raw.select(1, raw.size()[1] - 1).to_device(Device::Cpu)),
        }
    }

    /// [`Classic::score`] as a differentiable function of `x` (for adaptive attacks): the same
    /// value up to round-off, the logistic regression evaluated with tensor ops.
    pub fn score_tensor(&self, model: &dyn BayesModel, x: &Tensor) -> Result<Tensor> {
        let raw = self.raw_features(model, x)?;
        match &self.combiner {
            Some(c) => {
                let t = |v: &[f64]| Tensor::from_slice(v).to_device(raw.device());
                let z = (&raw - t(&c.mean)) / t(&c.std);
                Ok((z.matmul(&t(&c.coef)) + c.intercept).sigmoid())
            }
            None => Ok(-raw.select(1, raw.size()[1] - 1)),
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
        Ok(Classic {
            meta,
            kd,
            gauss,
            reference,
            combiner,
        })
    }
}

fn to_array2(t: &Tensor) -> Result<ndarray::Array2<f64>> {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous();
    let (n, f) = (t.size()[0] as usize, t.size()[1] as usize);
    let v = Vec::<f64>::try_from(t.view([-1]))?;
    ndarray::Array2::from_shape_vec((n, f), v).map_err(|e| Error::Shape(e.to_string()))
}
