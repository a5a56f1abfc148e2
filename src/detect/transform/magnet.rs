//! MagNet (D. Meng and H. Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples",
//! CCS 2017): denoising autoencoders trained on clean images; an input far from the clean
//! manifold is reconstructed badly (detector by reconstruction error) or its reconstruction moves
//! the classifier's softmax (detector by the Jensen-Shannon divergence at temperature T); the
//! reformer classifies the reconstruction instead of the input.
//!
//! The paper's MNIST autoencoders (Table 1; the authors' `DAE` class), 3x3 "same" convolutions
//! with sigmoid activations:
//! - AE I (detector I and the reformer): conv 3, average-pool 2x2, conv 3, conv 3, nearest
//!   upsampling 2x2, conv 3, conv C;
//! - AE II (detector II): conv 3, conv 3, conv C.
//!
//! Training: Adam, mean squared error between the reconstruction of a noisy copy (Gaussian noise
//! of std 0.1, clipped to [0, 1]) and the clean image, batch 256. The paper runs 100 epochs of
//! MNIST at Adam's 0.001 (about 20,000 steps); libre's defaults, 20 epochs at 0.01, reach a
//! training MSE of about 0.005 on 9,000 digits in under two CPU minutes (0.001 for 20 epochs
//! stops near 0.035). Also different: the noise is drawn afresh per batch (the authors draw it
//! once), and the paper's activity regulariser (L2, 1e-9) is left out.
//!
//! Sub-detectors (scores, higher = more suspicious), as in the authors' `AEDetector` and
//! `DBDetector`:
//! - `l2`: mean over pixels of (x - AE_I(x))^2 (the paper's MNIST detector I);
//! - `l1`: mean over pixels of |x - AE_II(x)| (MNIST detector II);
//! - `jsd10`, `jsd40`: JSD(softmax(l(x) / T), softmax(l(AE_I(x)) / T)) with natural logarithms,
//!   T = 10, 40 (the paper's CIFAR-10 detectors).
//!
//! MagNet rejects an input when any of its detectors does, each at its own threshold. As one
//! score: the maximum over the chosen sub-detectors of the score divided by its 99th percentile on
//! held-out clean images (the last tenth of the fit data, not trained on); calibrating that
//! maximum at a target FPR is the union with equal per-detector quantiles.

use crate::data::Dataset;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// A MagNet sub-detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubDetector {
    L1,
    L2,
    Jsd10,
    Jsd40,
}

impl SubDetector {
    pub const ALL: [SubDetector; 4] = [
        SubDetector::L1,
        SubDetector::L2,
        SubDetector::Jsd10,
        SubDetector::Jsd40,
    ];
    /// The paper's MNIST detectors: I (L2) and II (L1).
    pub const MNIST: [SubDetector; 2] = [SubDetector::L2, SubDetector::L1];

    pub fn name(self) -> &'static str {
        match self {
            SubDetector::L1 => "l1",
            SubDetector::L2 => "l2",
            SubDetector::Jsd10 => "jsd10",
            SubDetector::Jsd40 => "jsd40",
        }
    }
    fn index(self) -> usize {
        SubDetector::ALL
            .iter()
            .position(|s| *s == self)
            .expect("listed")
    }
}

/// Parses a list of MagNet sub-detectors (a comma list of l1, l2, jsd10, jsd40; no duplicates).
pub fn parse_detectors(s: &str) -> Result<Vec<SubDetector>> {
    let mut out: Vec<SubDetector> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = SubDetector::ALL
            .into_iter()
            .find(|d| d.name() == part)
            .ok_or_else(|| {
                Error::param(
                    "magnet_detectors",
                    part,
                    "unknown detector: available l1, l2, jsd10, jsd40",
                )
            })?;
        if out.contains(&d) {
            return Err(Error::param("magnet_detectors", part, "given twice"));
        }
        out.push(d);
    }
    if out.is_empty() {
        return Err(Error::invalid("MagNet: no sub-detector given (e.g. l2,l1)"));
    }
    Ok(out)
}

/// MagNet's settings; saved with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagnetConfig {
    /// The sub-detectors whose union is the `magnet` score.
    pub detectors: Vec<SubDetector>,
    /// The classifier sees AE I's reconstruction.
    pub reformer: bool,
    /// Autoencoder training: epochs over the training part of the fit data, Adam learning rate,
    /// std of the training noise, images per step.
    pub epochs: usize,
    pub lr: f64,
    pub noise: f64,
    pub batch_size: usize,
}

impl Default for MagnetConfig {
    /// The paper's MNIST settings but a shorter, faster training: Adam at 0.01 for 20 epochs
    /// instead of 0.001 for 100 (docs/detection.md, "Input-transformation detectors").
    fn default() -> Self {
        MagnetConfig {
            detectors: SubDetector::MNIST.to_vec(),
            reformer: false,
            epochs: 20,
            lr: 1e-2,
            noise: 0.1,
            batch_size: 256,
        }
    }
}

impl MagnetConfig {
    pub fn validate(&self) -> Result<()> {
        if self.detectors.is_empty() {
            return Err(Error::invalid("MagNet: no sub-detector given (e.g. l2,l1)"));
        }
        if self.epochs == 0 {
            return Err(Error::param("ae_epochs", self.epochs, "must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::param("ae_lr", self.lr, "must be a positive number"));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::param("ae_noise", self.noise, "must be >= 0"));
        }
        if self.batch_size == 0 {
            return Err(Error::param(
                "ae_batch_size",
                self.batch_size,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What the fit measured; saved with the detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagnetFit {
    /// Images trained on and held out (for the normalisers).
    pub n_train: usize,
    pub n_held_out: usize,
    /// Each sub-detector's 99th percentile on the held-out images (l1, l2, jsd10, jsd40).
    pub normalisers: [f64; 4],
    /// The last epoch's mean training loss of AE I and AE II.
    pub final_loss: [f64; 2],
}

/// Which of the paper's autoencoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    I,
    II,
}

/// A MagNet autoencoder.
pub struct Autoencoder {
    pub vs: nn::VarStore,
    arch: Arch,
    convs: Vec<nn::Conv2D>,
}

impl Autoencoder {
    /// A fresh autoencoder for `channels`-channel images (libtorch's default initialisation).
    pub fn new(arch: Arch, channels: i64, device: Device) -> Autoencoder {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let widths: &[(i64, i64)] = match arch {
            Arch::I => &[(channels, 3), (3, 3), (3, 3), (3, 3), (3, channels)],
            Arch::II => &[(channels, 3), (3, 3), (3, channels)],
        };
        let convs = widths
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| nn::conv2d(&root / format!("c{i}"), a, b, 3, cfg))
            .collect();
        Autoencoder { vs, arch, convs }
    }

    /// The reconstruction, `[B, C, H, W]` -> `[B, C, H, W]` (differentiable in `x`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let c = &self.convs;
        match self.arch {
            Arch::I => {
                let size = x.size();
                let h = c[0].forward(x).sigmoid();
                let h = h.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
                let h = c[1].forward(&h).sigmoid();
                let h = c[2].forward(&h).sigmoid();
                let h = h.upsample_nearest2d([size[2], size[3]], None::<f64>, None::<f64>);
                let h = c[3].forward(&h).sigmoid();
                c[4].forward(&h).sigmoid()
            }
            Arch::II => {
                let h = c[0].forward(x).sigmoid();
                let h = c[1].forward(&h).sigmoid();
                c[2].forward(&h).sigmoid()
            }
        }
    }

    /// Trains on `x` (`[N, C, H, W]`, on the autoencoder's device); returns the last epoch's mean
    /// loss. Batches and noise come from libtorch's generator.
    pub fn train(&mut self, x: &Tensor, cfg: &MagnetConfig) -> Result<f64> {
        let mut opt = nn::Adam::default().build(&self.vs, cfg.lr)?;
        let n = x.size()[0];
        let bs = (cfg.batch_size as i64).min(n);
        let mut last = 0.0;
        for _ in 0..cfg.epochs {
            let perm = Tensor::randperm(n, (Kind::Int64, x.device()));
            let (mut sum, mut steps) = (0.0, 0);
            for s in (0..n).step_by(bs as usize) {
                let idx = perm.narrow(0, s, bs.min(n - s));
                let clean = x.index_select(0, &idx);
                let noisy = (&clean + clean.randn_like() * cfg.noise).clamp(0.0, 1.0);
                let loss = (self.forward(&noisy) - &clean).square().mean(Kind::Float);
                opt.backward_step(&loss);
                sum += loss.double_value(&[]);
                steps += 1;
            }
            last = sum / steps as f64;
        }
        if !last.is_finite() {
            return Err(Error::invalid(format!(
                "MagNet: the autoencoder's training loss is {last}: lower the learning rate (ae_lr)"
            )));
        }
        self.vs.freeze();
        Ok(last)
    }

    /// The weights by name (`c0.weight`, ...).
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// An autoencoder with the stored weights `t` (names of [`Autoencoder::to_tensors`]).
    pub fn from_tensors(
        arch: Arch,
        channels: i64,
        t: &HashMap<String, Tensor>,
        device: Device,
    ) -> Result<Autoencoder> {
        let mut ae = Autoencoder::new(arch, channels, device);
        tch::no_grad(|| -> Result<()> {
            for (name, mut var) in ae.vs.variables() {
                let src = t
                    .get(&name)
                    .ok_or_else(|| Error::invalid(format!("missing MagNet tensor {name}")))?;
                if src.size() != var.size() {
                    return Err(Error::Shape(format!(
                        "MagNet tensor {name}: stored {:?}, the autoencoder has {:?}",
                        src.size(),
                        var.size()
                    )));
                }
                var.copy_(src);
            }
            Ok(())
        })?;
        ae.vs.freeze();
        Ok(ae)
    }
}

/// The Jensen-Shannon divergence between softmax(a / T) and softmax(b / T), natural logarithms.
///
/// # Shapes
/// `a`, `b`: `[B, K]` logits -> `[B]` float.
pub fn jsd(a: &Tensor, b: &Tensor, t: f64) -> Tensor {
    let la = (a / t).log_softmax(-1, Kind::Double);
    let lb = (b / t).log_softmax(-1, Kind::Double);
    let lm = la.logaddexp(&lb) - std::f64::consts::LN_2;
    let kl = |l: &Tensor| (l.exp() * (l - &lm)).sum_dim_intlist(-1, false, Kind::Double);
    ((kl(&la) + kl(&lb)) * 0.5).to_kind(Kind::Float)
}

/// A fitted MagNet detector.
pub struct Magnet {
    pub config: MagnetConfig,
    pub fit: MagnetFit,
    pub ae1: Autoencoder,
    pub ae2: Autoencoder,
}

/// Mean over every dim but the first: `[B, ...]` -> `[B]`.
fn per_image_mean(t: &Tensor) -> Tensor {
    t.flatten(1, -1).mean_dim(1, false, Kind::Float)
}

impl Magnet {
    /// Trains both autoencoders on the first nine tenths of `fit` and measures the normalisers on
    /// the rest. `logits` is the classifier (`[B, C, H, W]` -> `[B, K]`, for the JSD detectors).
    pub fn fit(
        config: &MagnetConfig,
        fit: &Dataset,
        logits: &dyn Fn(&Tensor) -> Result<Tensor>,
        batch_size: usize,
        device: Device,
    ) -> Result<Magnet> {
        config.validate()?;
        let n = fit.len();
        if n < 100 {
            return Err(Error::param(
                "fit_data",
                &fit.name,
                format!(
                    "{n} images; MagNet trains its autoencoders on nine tenths and sets its \
                     normalisers on the rest, which takes at least 100 images"
                ),
            ));
        }
        let [c, h, w] = fit.shape();
        if h % 2 != 0 || w % 2 != 0 {
            return Err(Error::invalid(format!(
                "magnet: AE I pools 2x2, so the images must have even sides, got \
                 {h}x{w}"
            )));
        }
        let held = n / 10;
        let n_train = n - held;
        let (x, _) = fit.batch(0, n_train)?;
        let x = x.to_device(device);
        let mut ae1 = Autoencoder::new(Arch::I, c as i64, device);
        let mut ae2 = Autoencoder::new(Arch::II, c as i64, device);
        let l1 = ae1.train(&x, config)?;
        let l2 = ae2.train(&x, config)?;
        drop(x);
        let mut m = Magnet {
            config: config.clone(),
            fit: MagnetFit {
                n_train,
                n_held_out: held,
                normalisers: [1.0; 4],
                final_loss: [l1, l2],
            },
            ae1,
            ae2,
        };
        // The normalisers: each sub-detector's 99th percentile on the held-out images.
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 4];
        tch::no_grad(|| -> Result<()> {
            for s in (n_train..n).step_by(batch_size.max(1)) {
                let (xb, _) = fit.batch(s, (s + batch_size).min(n))?;
                let xb = xb.to_device(device);
                let all = m.sub_scores(&SubDetector::ALL, logits, &xb, None, None)?;
                for (col, t) in cols.iter_mut().zip(all) {
                    col.extend(Vec::<f64>::try_from(
                        t.to_kind(Kind::Double).to_device(Device::Cpu),
                    )?);
                }
            }
            Ok(())
        })?;
        for (i, mut col) in cols.into_iter().enumerate() {
            col.sort_by(|a, b| a.total_cmp(b));
            let k = ((0.99 * col.len() as f64).ceil() as usize).clamp(1, col.len()) - 1;
            let q = col[k];
            if !q.is_finite() {
                return Err(Error::invalid(format!(
                    "MagNet: the {} detector's held-out scores are not finite",
                    SubDetector::ALL[i].name()
                )));
            }
            m.fit.normalisers[i] = q.max(1e-12);
        }
        Ok(m)
    }

    /// The classifier's input: AE I's reconstruction with the reformer, else `x` itself (None).
    pub fn reformed(&self, x: &Tensor) -> Option<Tensor> {
        self.config.reformer.then(|| self.ae1.forward(x))
    }

    /// The scores of `which` for a batch, `[B]` each. `logits_x` / `logits_rec`: the classifier's
    /// logits (`[B, K]`) of `x` and of AE I's reconstruction when the caller has them.
    pub fn sub_scores(
        &self,
        which: &[SubDetector],
        logits: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
        logits_x: Option<&Tensor>,
        logits_rec: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        let needs = |d: &[SubDetector]| which.iter().any(|w| d.contains(w));
        let rec1 = needs(&[SubDetector::L2, SubDetector::Jsd10, SubDetector::Jsd40])
            .then(|| self.ae1.forward(x));
        let jsd_logits = if needs(&[SubDetector::Jsd10, SubDetector::Jsd40]) {
            let lx = match logits_x {
                Some(l) => l.shallow_clone(),
                None => logits(x)?,
            };
            let lr = match logits_rec {
                Some(l) => l.shallow_clone(),
                None => logits(rec1.as_ref().expect("computed for the JSD"))?,
            };
            Some((lx, lr))
        } else {
            None
        };
        which
            .iter()
            .map(|d| {
                Ok(match d {
                    SubDetector::L2 => per_image_mean(&(x - rec1.as_ref().expect("AE I")).square()),
                    SubDetector::L1 => per_image_mean(&(x - self.ae2.forward(x)).abs()),
                    SubDetector::Jsd10 | SubDetector::Jsd40 => {
                        let (a, b) = jsd_logits.as_ref().expect("computed");
                        jsd(a, b, if *d == SubDetector::Jsd10 { 10.0 } else { 40.0 })
                    }
                })
            })
            .collect()
    }

    /// MagNet's union as one score: max over the configured sub-detectors of score / normaliser.
    pub fn union_score(
        &self,
        logits: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
        logits_x: Option<&Tensor>,
        logits_rec: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = self.sub_scores(&self.config.detectors, logits, x, logits_x, logits_rec)?;
        let mut best: Option<Tensor> = None;
        for (d, t) in self.config.detectors.iter().zip(s) {
            let r = t / self.fit.normalisers[d.index()];
            best = Some(match best {
                None => r,
                Some(b) => b.maximum(&r),
            });
        }
        best.ok_or_else(|| Error::invalid("MagNet: no sub-detector given"))
    }

    /// The fitted weights by name (`ae1/c0.weight`, ...).
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (p, ae) in [("ae1", &self.ae1), ("ae2", &self.ae2)] {
            v.extend(
                ae.to_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("{p}/{n}"), t)),
            );
        }
        v
    }

    /// Rebuilds a fitted detector (see [`Magnet::to_tensors`]) for `channels`-channel images.
    pub fn from_tensors(
        config: MagnetConfig,
        fit: MagnetFit,
        channels: i64,
        t: &HashMap<String, Tensor>,
        device: Device,
    ) -> Result<Magnet> {
        let sub = |prefix: &str| -> HashMap<String, Tensor> {
            t.iter()
                .filter_map(|(n, v)| {
                    n.strip_prefix(prefix)
                        .map(|r| (r.to_string(), v.shallow_clone()))
                })
                .collect()
        };
        Ok(Magnet {
            ae1: Autoencoder::from_tensors(Arch::I, channels, &sub("ae1/"), device)?,
            ae2: Autoencoder::from_tensors(Arch::II, channels, &sub("ae2/"), device)?,
            config,
            fit,
        })
    }
}
