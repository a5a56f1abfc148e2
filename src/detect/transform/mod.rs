//! The input-transformation detectors (docs/detection.md, "Input-transformation detectors"):
//! feature squeezing ([`squeeze`]; Xu, Evans and Qi, NDSS 2018) and MagNet ([`magnet`]; Meng and
//! Chen, CCS 2017). They are classic detectors ([`super::classic::ClassicKind::Squeeze`],
//! [`super::classic::ClassicKind::Magnet`]): saved in the detector file, scored by `libre detect`
//! and `libre evaluate`, attacked through [`Transform::score`] (BPDA for the squeezers, the full
//! differentiable path for MagNet).
//!
//! | score | definition |
//! |---|---|
//! | `squeeze` | max over squeezers of the L1 distance between the softmax of the input and of its squeezed copy |
//! | `magnet` | max over the chosen sub-detectors of score / its held-out 99th percentile (MagNet's union) |
//! | `magnet-l1`, `magnet-l2` | reconstruction error of AE II (mean absolute) / AE I (mean squared) |
//! | `magnet-jsd10`, `magnet-jsd40` | JSD of the softmax at T = 10 / 40 of the input vs AE I's reconstruction |

pub mod magnet;
pub mod squeeze;

use super::classic::ClassicKind;
use super::Score;
use crate::bayes::ForwardMode;
use crate::data::Dataset;
use crate::models::BayesModel;
use crate::{Error, Result};
use magnet::{Magnet, MagnetConfig, MagnetFit, SubDetector};
use serde::{Deserialize, Serialize};
use squeeze::Squeezer;
use std::collections::HashMap;
use tch::{Device, Tensor};

/// The settings of an input-transformation detector; saved with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransformConfig {
    Squeeze { squeezers: Vec<Squeezer> },
    Magnet(MagnetConfig),
}

impl TransformConfig {
    /// The papers' MNIST settings for `kind` (None: not an input-transformation detector).
    pub fn default_for(kind: ClassicKind) -> Option<TransformConfig> {
        match kind {
            ClassicKind::Squeeze => Some(TransformConfig::Squeeze {
                squeezers: Squeezer::MNIST.to_vec(),
            }),
            ClassicKind::Magnet => Some(TransformConfig::Magnet(MagnetConfig::default())),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            TransformConfig::Squeeze { squeezers } if squeezers.is_empty() => Err(Error::invalid(
                "feature squeezing: no squeezer given (e.g. bits-1,median-2x2)",
            )),
            TransformConfig::Squeeze { .. } => Ok(()),
            TransformConfig::Magnet(m) => m.validate(),
        }
    }
}

/// What the fit measured (MagNet's normalisers and losses); saved with the detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransformFit {
    Squeeze,
    Magnet(MagnetFit),
}

/// A ready input-transformation detector.
pub enum Transform {
    Squeeze(Vec<Squeezer>),
    // Boxed: the autoencoders and their normalisers make the variant large next to a list of
    // squeezers.
    Magnet(Box<Magnet>),
}

/// The classifier's deterministic logits, `[B, C, H, W]` -> `[B, K]`.
fn classifier(model: &dyn BayesModel) -> impl Fn(&Tensor) -> Result<Tensor> + '_ {
    move |x: &Tensor| {
        Ok(model
            .forward_mc(x, &ForwardMode::Deterministic)?
            .select(1, 0))
    }
}

impl Transform {
    /// Builds (feature squeezing: nothing to fit) or fits (MagNet: its autoencoders on `fit`)
    /// the detector `cfg` describes.
    pub fn fit(
        model: &dyn BayesModel,
        cfg: &TransformConfig,
        fit: Option<&Dataset>,
        batch_size: usize,
        device: Device,
    ) -> Result<(Transform, TransformFit)> {
        cfg.validate()?;
        match cfg {
            TransformConfig::Squeeze { squeezers } => {
                Ok((Transform::Squeeze(squeezers.clone()), TransformFit::Squeeze))
            }
            TransformConfig::Magnet(m) => {
                let fit = fit.ok_or_else(|| {
                    Error::invalid(
                        "magnet trains its autoencoders on clean images: no fit data given",
                    )
                })?;
                let c = model.config().in_channels;
                if fit.shape()[0] as i64 != c {
                    return Err(Error::param(
                        "fit_data",
                        &fit.name,
                        format!("{}-channel images, the model takes {c}", fit.shape()[0]),
                    ));
                }
                let mg = Magnet::fit(m, fit, &classifier(model), batch_size, device)?;
                let f = TransformFit::Magnet(mg.fit.clone());
                Ok((Transform::Magnet(Box::new(mg)), f))
            }
        }
    }

    /// The scores this detector gives, its own (the default) first.
    pub fn scores(kind: ClassicKind) -> Vec<Score> {
        Score::ALL
            .into_iter()
            .filter(|s| s.classic() == Some(kind))
            .collect()
    }

    /// The classifier's input: MagNet's reformed image when the reformer is on (None: `x`).
    pub fn classifier_input(&self, x: &Tensor) -> Option<Tensor> {
        match self {
            Transform::Magnet(m) => m.reformed(x),
            Transform::Squeeze(_) => None,
        }
    }

    /// Score `s` of a batch, `[B]` float on `x`'s device, differentiable in `x` when it requires
    /// a gradient (the squeezers by BPDA). `logits_in`: the classifier's logits `[B, K]` of
    /// [`Transform::classifier_input`] (of `x` itself without a reformer), when the caller has
    /// them.
    pub fn score(
        &self,
        s: Score,
        model: &dyn BayesModel,
        x: &Tensor,
        logits_in: Option<&Tensor>,
    ) -> Result<Tensor> {
        let logits = classifier(model);
        match (self, s) {
            (Transform::Squeeze(sq), Score::Squeeze) => squeeze::score(sq, &logits, x, logits_in),
            (Transform::Magnet(m), _) => {
                // Without the reformer the classifier's input is x; with it, AE I's output, which
                // the JSD detectors compare against.
                let (lx, lrec) = if m.config.reformer {
                    (None, logits_in)
                } else {
                    (logits_in, None)
                };
                let one = |d: SubDetector| -> Result<Tensor> {
                    Ok(m.sub_scores(&[d], &logits, x, lx, lrec)?.remove(0))
                };
                match s {
                    Score::Magnet => m.union_score(&logits, x, lx, lrec),
                    Score::MagnetL1 => one(SubDetector::L1),
                    Score::MagnetL2 => one(SubDetector::L2),
                    Score::MagnetJsd10 => one(SubDetector::Jsd10),
                    Score::MagnetJsd40 => one(SubDetector::Jsd40),
                    _ => Err(Error::invalid(format!(
                        "score '{s}': this detector is magnet"
                    ))),
                }
            }
            (Transform::Squeeze(_), _) => Err(Error::invalid(format!(
                "score '{s}': this detector is squeeze"
            ))),
        }
    }

    /// The fitted state as named tensors (feature squeezing has none).
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Transform::Squeeze(_) => Vec::new(),
            Transform::Magnet(m) => m.to_tensors(),
        }
    }

    /// Rebuilds a detector from its settings, fit record and tensors.
    pub fn from_parts(
        cfg: &TransformConfig,
        fit: Option<&TransformFit>,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Transform> {
        match (cfg, fit) {
            (TransformConfig::Squeeze { squeezers }, _) => {
                Ok(Transform::Squeeze(squeezers.clone()))
            }
            (TransformConfig::Magnet(m), Some(TransformFit::Magnet(f))) => {
                // The image channels: AE I's first convolution's input channels.
                let first = tensors
                    .get("ae1/c0.weight")
                    .ok_or_else(|| Error::invalid("missing MagNet tensor ae1/c0.weight"))?;
                let (channels, device) = (first.size()[1], first.device());
                Ok(Transform::Magnet(Box::new(Magnet::from_tensors(
                    m.clone(),
                    f.clone(),
                    channels,
                    tensors,
                    device,
                )?)))
            }
            (TransformConfig::Magnet(_), _) => Err(Error::invalid(
                "a magnet detector without its fit record (normalisers)",
            )),
        }
    }
}
