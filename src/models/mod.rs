//! Models with PyTorch parameter names whose layers can be converted to Bayesian ones
//! (docs/design.md sections 2 and 11): LeNet5 (advertorch keys), DigitCNN (ccexam keys), an MLP,
//! ResNet-18/34/50 (torchvision names, optional CIFAR stem) and WRN-28-10.
//!
//! A model is a struct of named sub-modules (a [`Net`]) wrapped with its `nn::VarStore` and
//! [`ModelConfig`] in a [`Model`], used through the object-safe [`BayesModel`] trait. Inputs are
//! always `[B, C, H, W]` pixels in `[0, 1]`; the normalisation lives inside the model.

pub mod digitcnn;
pub mod lenet;
pub mod mlp;
pub mod resnet;
pub mod wrn;

pub use digitcnn::DigitCnn;
pub use lenet::LeNet5;
pub use mlp::Mlp;
pub use resnet::ResNet;
pub use wrn::WideResNet;

use crate::bayes::mode::{McDraws, McDropout};
use crate::bayes::{
    Act, BayesLayer, Ctx, Family, ForwardMode, LayerSelection, PosteriorConfig, TrainSampling,
};
use crate::precision::Precision;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

/// The architectures libre builds; serialised by name (`"lenet5"`, `"wrn28-10"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "lenet5")]
    Lenet5,
    #[serde(rename = "digitcnn")]
    DigitCnn,
    #[serde(rename = "mlp")]
    Mlp,
    #[serde(rename = "resnet18")]
    ResNet18,
    #[serde(rename = "resnet34")]
    ResNet34,
    #[serde(rename = "resnet50")]
    ResNet50,
    #[serde(rename = "wrn28-10")]
    Wrn28x10,
}

impl Arch {
    pub const ALL: [Arch; 7] = [
        Arch::Lenet5,
        Arch::DigitCnn,
        Arch::Mlp,
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::Wrn28x10,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Lenet5 => "lenet5",
            Arch::DigitCnn => "digitcnn",
            Arch::Mlp => "mlp",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::Wrn28x10 => "wrn28-10",
        }
    }

    /// The ResNet depth (18, 34, 50), for the ResNets.
    pub fn resnet_depth(self) -> Option<usize> {
        match self {
            Arch::ResNet18 => Some(18),
            Arch::ResNet34 => Some(34),
            Arch::ResNet50 => Some(50),
            _ => None,
        }
    }

    /// Nets that flatten a fixed-size map before the head: inputs must be exactly `image_size`.
    pub fn fixed_size(self) -> bool {
        matches!(self, Arch::Lenet5 | Arch::DigitCnn | Arch::Mlp)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown architecture '{s}' (--model): available {}",
                    Arch::ALL.map(Arch::name).join(", ")
                ))
            })
    }
}

/// Architecture and its options; serialised into every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// `lenet5`, `digitcnn`, `mlp`, `resnet18`, `resnet34`, `resnet50`, `wrn28-10`.
    pub arch: Arch,
    pub num_classes: i64,
    pub in_channels: i64,
    /// Square input side (fixed for lenet5/digitcnn/mlp; nominal for the convolutional nets).
    pub image_size: i64,
    /// ResNet: 3x3 stride-1 first conv and no max-pool (CIFAR-style inputs).
    pub cifar_stem: bool,
    /// Per-channel (mean, std) applied inside the model; None = raw [0, 1] pixels.
    pub normalization: Option<(Vec<f64>, Vec<f64>)>,
    /// MLP hidden widths.
    pub hidden: Vec<i64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::lenet5()
    }
}

impl ModelConfig {
    /// advertorch's MNIST LeNet5: raw pixels.
    pub fn lenet5() -> Self {
        ModelConfig {
            arch: Arch::Lenet5,
            num_classes: 10,
            in_channels: 1,
            image_size: 28,
            cifar_stem: false,
            normalization: None,
            hidden: vec![],
        }
    }

    /// ccexam's DigitCNN for MNIST: mean 0.1307, std 0.3081.
    pub fn digitcnn() -> Self {
        ModelConfig {
            arch: Arch::DigitCnn,
            normalization: Some((vec![0.1307], vec![0.3081])),
            ..ModelConfig::lenet5()
        }
    }

    /// An MLP on flattened pixels.
    pub fn mlp(in_channels: i64, image_size: i64, hidden: Vec<i64>, num_classes: i64) -> Self {
        ModelConfig {
            arch: Arch::Mlp,
            num_classes,
            in_channels,
            image_size,
            cifar_stem: false,
            normalization: None,
            hidden,
        }
    }

    /// A torchvision ResNet (`depth` 18, 34 or 50) on RGB input.
    pub fn resnet(depth: usize, num_classes: i64, image_size: i64, cifar_stem: bool) -> Self {
        ModelConfig {
            arch: match depth {
                18 => Arch::ResNet18,
                34 => Arch::ResNet34,
                50 => Arch::ResNet50,
                d => panic!("no ResNet-{d}: 18, 34 or 50"),
            },
            num_classes,
            in_channels: 3,
            image_size,
            cifar_stem,
            normalization: None,
            hidden: vec![],
        }
    }

    /// ImageNet normalisation (torchvision's mean/std).
    pub fn with_imagenet_normalization(mut self) -> Self {
        self.normalization = Some((vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]));
        self
    }

    /// Checks the options before a model is built.
    pub fn validate(&self) -> Result<()> {
        if self.num_classes < 1 || self.in_channels < 1 || self.image_size < 1 {
            return Err(Error::invalid(format!(
                "{}: num_classes {}, in_channels {}, image_size {} must all be >= 1",
                self.arch, self.num_classes, self.in_channels, self.image_size
            )));
        }
        if matches!(self.arch, Arch::Lenet5 | Arch::DigitCnn) && self.image_size % 4 != 0 {
            return Err(Error::invalid(format!(
                "{}: image_size {} must be a multiple of 4",
                self.arch, self.image_size
            )));
        }
        if let Some((m, s)) = &self.normalization {
            let c = self.in_channels as usize;
            if (m.len() != c && m.len() != 1)
                || m.len() != s.len()
                || s.iter().any(|&v| v.is_nan() || v <= 0.0)
            {
                return Err(Error::invalid(format!(
                    "{}: normalisation needs 1 or {c} means and as many positive stds, got {m:?} / {s:?}",
                    self.arch
                )));
            }
        }
        Ok(())
    }

    /// Whether the net requires inputs of exactly `image_size` (a flatten before the head).
    pub fn fixed_size(&self) -> bool {
        self.arch.fixed_size()
    }
}

/// The posterior a model carries: the conversion options and the converted layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PosteriorMeta {
    #[serde(flatten)]
    pub config: PosteriorConfig,
    /// Converted layer paths, in model order.
    pub layers: Vec<String>,
}

/// A network body: named sub-modules, a forward over [`Act`]s, and access to its layers.
pub trait Net {
    /// The forward from normalised input to logits.
    ///
    /// # Shapes
    /// `[B, C, H, W]` -> `[B, K]` or `[B, S, K]` (sample axis from the first Bayesian layer on).
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act>;
    /// All layers that may become Bayesian, in forward order.
    fn layers(&self) -> Vec<&dyn BayesLayer>;
    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer>;
    /// The paths that `last-block` selects.
    fn last_block(&self) -> Vec<String>;
}

/// One named activation of a forward (see [`BayesModel::forward_taps`]).
#[derive(Debug)]
pub struct Tap {
    /// The block's name after its last module (`conv2`, `layer4.1`, `avgpool`, `logits`).
    pub name: String,
    /// `[B, S, ...]`.
    pub value: Tensor,
    /// Whether the block comes at or after the first Bayesian layer, so that its output varies
    /// over the samples; before it a parallel MC forward computes one activation per image.
    pub sampled: bool,
}

/// The model API others use (training, LiBRe, attacks, checkpoints).
pub trait BayesModel {
    fn config(&self) -> &ModelConfig;
    fn var_store(&self) -> &nn::VarStore;
    fn var_store_mut(&mut self) -> &mut nn::VarStore;

    /// Logits under `mode`.
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]` in `[0, 1]` -> `[B, S, K]` with S = `mode.samples()` (1 for the
    /// deterministic and training modes).
    fn forward_mc(&self, x: &Tensor, mode: &ForwardMode) -> Result<Tensor> {
        Ok(self.forward_mc_with_features(x, mode)?.0)
    }

    /// Logits `[B, S, K]` and, from the same forward, the features at the output of the block
    /// holding the last Bayesian layer, `[B, S, ...]` (a model without Bayesian layers: the
    /// classifier head's input). LiBRe's detection score is their variance over S.
    fn forward_mc_with_features(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Tensor)>;

    /// Logits `[B, S, K]` and the activation at every block boundary from the same forward (the
    /// net's named taps in forward order, e.g. LeNet5's `conv1`, `conv2`, `linear1`, then
    /// `logits`), each `[B, S, ...]`. The classic detectors (KD, LID, Mahalanobis) read these.
    fn forward_taps(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Vec<Tap>)>;

    /// Paths of every convertible layer in forward order (`layer4.2.conv1`, ...).
    fn layer_paths(&self) -> Vec<String>;
    /// Each layer's current family.
    fn layer_families(&self) -> Vec<(String, Family)>;
    /// What `--layers last-block` selects.
    fn last_block(&self) -> Vec<String>;

    /// Converts the selected layers in place; returns the converted paths. All-or-nothing: fails
    /// before changing anything when a layer is already Bayesian or the family differs from an
    /// earlier conversion.
    fn convert(&mut self, sel: &LayerSelection, cfg: &PosteriorConfig) -> Result<Vec<String>>;
    /// Every layer back to a point estimate (means; ensembles: member average).
    fn to_deterministic(&mut self) -> Result<()>;
    /// The current posterior, None for a DNN.
    fn posterior(&self) -> Option<&PosteriorMeta>;

    /// Keeps dropout on at the named blocks in the MC forward modes (None: off). Errors, naming
    /// the valid names, for a block the model does not have.
    fn set_mc_dropout(&mut self, d: Option<McDropout>) -> Result<()>;
    fn mc_dropout(&self) -> Option<&McDropout>;

    /// How parallel MC forwards draw mean-field layers ([`McDraws`]; default: weight samples).
    fn set_mc_draws(&mut self, d: McDraws);
    fn mc_draws(&self) -> McDraws;

    /// Computes in `p` from now on ([`Precision`]): bf16 casts the weights (keeping their float32
    /// values, restored exactly by going back to f32). Inference only: converting, saving and
    /// training need f32, and refuse otherwise. Errors for bf16 on a device without bf16 kernels.
    fn set_precision(&mut self, p: Precision) -> Result<()>;
    fn precision(&self) -> Precision;
}

/// A [`Net`] with its VarStore and config.
pub struct Model<N: Net> {
    pub vs: nn::VarStore,
    pub net: N,
    cfg: ModelConfig,
    norm: Option<(Tensor, Tensor)>,
    posterior: Option<PosteriorMeta>,
    mc_dropout: Option<McDropout>,
    mc_draws: McDraws,
    precision: Precision,
    /// The float32 weights while the model computes in another precision.
    masters: crate::precision::Masters,
    /// Floats of the block activations of one image, computed once and once per sample, for
    /// the memory check of parallel MC forwards; measured once per set of Bayesian layers and
    /// MC-dropout blocks (the key). Not derived from `tap_shapes` on every forward: its cache
    /// key (every variable's name and shape) costs ~0.3 ms on ResNet-50, this one ~0.03 ms.
    act_floats: std::sync::Mutex<Option<(String, (u64, u64))>>,
}

impl<N: Net> Model<N> {
    /// Builds the net under the VarStore's root with `build`.
    pub fn new(
        cfg: &ModelConfig,
        device: Device,
        build: impl FnOnce(&nn::Path, &ModelConfig) -> Result<N>,
    ) -> Result<Self> {
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let net = build(&vs.root(), cfg)?;
        let norm = cfg.normalization.as_ref().map(|(m, s)| {
            let shape = [1, m.len() as i64, 1, 1];
            (
                Tensor::from_slice(m)
                    .to_kind(Kind::Float)
                    .reshape(shape)
                    .to_device(device),
                Tensor::from_slice(s)
                    .to_kind(Kind::Float)
                    .reshape(shape)
                    .to_device(device),
            )
        });
        Ok(Model {
            vs,
            net,
            cfg: cfg.clone(),
            norm,
            posterior: None,
            mc_dropout: None,
            mc_draws: McDraws::default(),
            precision: Precision::F32,
            masters: Default::default(),
            act_floats: Default::default(),
        })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let size = x.size();
        let c = &self.cfg;
        let fixed = c.fixed_size();
        let ok = size.len() == 4
            && size[0] >= 1
            && size[1] == c.in_channels
            && (!fixed || (size[2] == c.image_size && size[3] == c.image_size));
        if !ok {
            let hw = if fixed {
                format!("{0}, {0}", c.image_size)
            } else {
                "H, W".into()
            };
            return Err(Error::Shape(format!(
                "{}: expected input [B, {}, {hw}] with B >= 1, got {:?}",
                c.arch, c.in_channels, size
            )));
        }
        if x.kind() != Kind::Float {
            return Err(Error::Shape(format!(
                "{}: expected float32 pixels in [0, 1], got {:?}",
                c.arch,
                x.kind()
            )));
        }
        Ok(())
    }
}

impl<N: Net> Model<N> {
    /// Refuses a parallel MC forward of `batch` images x `samples` whose activations (and, for
    /// mean-field layers, weight draws) cannot fit, before libtorch aborts on the allocation.
    fn check_mc_memory(&self, batch: u64, samples: u64) -> Result<()> {
        if crate::device::available_bytes(self.vs.device()).is_none() {
            return Ok(());
        }
        // Block outputs per image: those before the first Bayesian layer (or MC dropout) once,
        // the rest once per sample (the trunk runs once in a parallel MC forward).
        let key: String = self
            .net
            .layers()
            .iter()
            .map(|l| format!("{}:{} ", l.path(), l.family()))
            .chain(self.mc_dropout.iter().map(|d| d.layers.join(",")))
            .collect();
        let cached = self
            .act_floats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v);
        let (trunk, per_sample) = match cached {
            Some(v) => v,
            None => {
                let shapes = tap_shapes(self)?;
                let dropout_from = self
                    .mc_dropout
                    .as_ref()
                    .and_then(|d| shapes.iter().position(|t| d.layers.contains(&t.name)));
                let (mut trunk, mut per_sample) = (0u64, 0u64);
                for (i, t) in shapes.iter().enumerate() {
                    if t.sampled || dropout_from.is_some_and(|f| i >= f) {
                        per_sample += t.numel();
                    } else {
                        trunk += t.numel();
                    }
                }
                *self.act_floats.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((key, (trunk, per_sample)));
                (trunk, per_sample)
            }
        };
        let drawn: u64 = self
            .net
            .layers()
            .iter()
            .filter(|l| l.family() == Family::MeanField)
            .flat_map(|l| l.params())
            .map(|p| p.shape().iter().product::<i64>() as u64)
            .sum();
        // x2: the backward of an attack keeps the activations and their gradients.
        let floats = batch
            .saturating_mul(samples.saturating_mul(per_sample).saturating_add(trunk))
            .saturating_add(samples.saturating_mul(drawn))
            .saturating_mul(2);
        crate::device::check_fits(
            self.vs.device(),
            floats.saturating_mul(4),
            &format!("a parallel MC forward of {batch} image(s) x {samples} samples"),
        )
        .map_err(|e| Error::invalid(format!("{e}: lower --mc-samples or --batch-size")))
    }

    /// One forward: logits `[B, S, K]`, the LiBRe features `[B, S, ...]` and, with `taps`, every
    /// block boundary `[B, S, ...]` by name followed by `logits`.
    fn run(
        &self,
        x: &Tensor,
        mode: &ForwardMode,
        taps: bool,
    ) -> Result<(Tensor, Tensor, Vec<Tap>)> {
        self.check_input(x)?;
        let x = x.to_device(self.vs.device());
        let x = match &self.norm {
            Some((m, s)) => (x - m) / s,
            None => x,
        };
        // Normalised in float32, then the model's precision; outputs come back as float32.
        let x = x.to_kind(self.precision.kind());
        if let ForwardMode::ParallelMc { samples } = mode {
            self.check_mc_memory(x.size()[0] as u64, *samples as u64)?;
        }
        let mut ctx = Ctx::new(mode, x.size()[0])?;
        ctx.set_dropout(self.mc_dropout.clone());
        ctx.set_draws(self.mc_draws);
        if taps {
            if let ForwardMode::Train(TrainSampling { rows: Some(_), .. }) = mode {
                return Err(Error::invalid(
                    "taps are recorded on the batch itself, not on its distinct rows",
                ));
            }
            ctx.record_taps();
        }
        // One pass with `s` samples on the sample axis.
        let pass = |s: i64| -> Result<(Tensor, Tensor, Vec<Tap>)> {
            let out = self.net.forward(Act::new(x.shallow_clone()), &ctx)?;
            // The logits close the last block (a Bayesian head has no later boundary).
            let out = ctx.mark("logits", out)?;
            let feats = ctx.take_features().expect("every net marks its head input");
            let (out, feats) = ctx.finish_rows(out, feats)?;
            let first_sampled = ctx.first_bayesian_tap().unwrap_or(usize::MAX);
            let taps = ctx
                .take_taps()
                .into_iter()
                .enumerate()
                .map(|(i, (n, a))| Tap {
                    name: n,
                    value: a.into_samples(s).to_kind(Kind::Float),
                    sampled: i >= first_sampled,
                })
                .collect();
            Ok((
                out.into_samples(s).to_kind(Kind::Float),
                feats.into_samples(s).to_kind(Kind::Float),
                taps,
            ))
        };
        let ForwardMode::SequentialMc { samples } = mode else {
            return pass(mode.samples() as i64);
        };
        let (mut outs, mut feats, mut taps) = (Vec::new(), Vec::new(), Vec::<Vec<Tap>>::new());
        for i in 0..*samples {
            ctx.begin_pass(i);
            let (o, f, t) = pass(1)?;
            outs.push(o);
            feats.push(f);
            taps.push(t);
        }
        // Tap j of every pass, joined on the sample axis.
        let joined = (0..taps.first().map_or(0, Vec::len))
            .map(|j| Tap {
                name: taps[0][j].name.clone(),
                value: Tensor::cat(&taps.iter().map(|t| &t[j].value).collect::<Vec<_>>(), 1),
                sampled: taps[0][j].sampled,
            })
            .collect();
        Ok((Tensor::cat(&outs, 1), Tensor::cat(&feats, 1), joined))
    }
}

impl<N: Net> BayesModel for Model<N> {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn forward_mc_with_features(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Tensor)> {
        let (out, feats, _) = self.run(x, mode, false)?;
        Ok((out, feats))
    }

    fn forward_taps(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Vec<Tap>)> {
        let (out, _, taps) = self.run(x, mode, true)?;
        Ok((out, taps))
    }

    fn layer_paths(&self) -> Vec<String> {
        self.net
            .layers()
            .iter()
            .map(|l| l.path().to_string())
            .collect()
    }

    fn layer_families(&self) -> Vec<(String, Family)> {
        self.net
            .layers()
            .iter()
            .map(|l| (l.path().to_string(), l.family()))
            .collect()
    }

    fn last_block(&self) -> Vec<String> {
        self.net.last_block()
    }

    fn convert(&mut self, sel: &LayerSelection, cfg: &PosteriorConfig) -> Result<Vec<String>> {
        cfg.validate()?;
        require_f32(self, "converting layers")?;
        if cfg.family == Family::Point {
            return Err(Error::invalid(
                "conversion to 'point': use to_deterministic instead",
            ));
        }
        if let Some(p) = &self.posterior {
            if p.config != *cfg {
                return Err(Error::invalid(format!(
                    "{}: already carries a posterior ({}, {} layer(s)); convert back to \
                     deterministic before converting with other options",
                    self.cfg.arch,
                    p.config.family,
                    p.layers.len()
                )));
            }
        }
        let chosen = sel.resolve(&self.layer_paths(), &self.last_block())?;
        let already: Vec<&str> = self
            .posterior
            .iter()
            .flat_map(|p| p.layers.iter().map(String::as_str))
            .filter(|l| chosen.iter().any(|c| c == l))
            .collect();
        if !already.is_empty() {
            return Err(Error::invalid(format!(
                "layers already converted: {}",
                already.join(", ")
            )));
        }
        // The new tensors, counted before any is allocated (a 100000-member ensemble used to
        // abort inside libtorch).
        let (s, r) = (cfg.samples as u64, cfg.rank as u64);
        let mut floats = 0u64;
        for l in self.net.layers() {
            if chosen.iter().any(|c| c == l.path()) {
                for p in l.params() {
                    let shape: Vec<u64> = p.shape().iter().map(|&d| d as u64).collect();
                    let n: u64 = shape.iter().product();
                    floats = floats.saturating_add(match cfg.family {
                        Family::MeanField => n,
                        Family::Ensemble => s.saturating_mul(n),
                        Family::LowRank if shape.len() >= 2 => {
                            let (out, rest) = (shape[0], n / shape[0].max(1));
                            s.saturating_mul(r).saturating_mul(out.saturating_add(rest))
                        }
                        _ => 0,
                    });
                }
            }
        }
        // The conversion holds a temporary copy while the tensors enter the VarStore.
        crate::device::check_fits(
            self.vs.device(),
            floats.saturating_mul(8),
            &format!(
                "converting {} layer(s) to {} (S = {}{})",
                chosen.len(),
                cfg.family,
                cfg.samples,
                if cfg.family == Family::LowRank {
                    format!(", rank {}", cfg.rank)
                } else {
                    String::new()
                }
            ),
        )?;
        let vs = &self.vs;
        for l in self.net.layers_mut() {
            if chosen.iter().any(|c| c == l.path()) {
                l.convert(vs, cfg)?;
            }
        }
        let mut layers = self.posterior.take().map(|p| p.layers).unwrap_or_default();
        layers.extend(chosen.iter().cloned());
        let order = self.layer_paths();
        layers.sort_by_key(|l| order.iter().position(|o| o == l));
        self.posterior = Some(PosteriorMeta {
            config: cfg.clone(),
            layers,
        });
        Ok(chosen)
    }

    fn to_deterministic(&mut self) -> Result<()> {
        require_f32(self, "converting layers")?;
        let vs = &self.vs;
        for l in self.net.layers_mut() {
            l.to_deterministic(vs)?;
        }
        self.posterior = None;
        Ok(())
    }

    fn posterior(&self) -> Option<&PosteriorMeta> {
        self.posterior.as_ref()
    }

    fn set_mc_dropout(&mut self, d: Option<McDropout>) -> Result<()> {
        if let Some(d) = &d {
            d.validate()?;
            let c = &self.cfg;
            let taps = tap_shapes(self)?;
            let names: Vec<&str> = taps
                .iter()
                .map(|t| t.name.as_str())
                .filter(|n| *n != "logits")
                .collect();
            if let Some(bad) = d.layers.iter().find(|l| !names.contains(&l.as_str())) {
                return Err(Error::invalid(format!(
                    "MC dropout at '{bad}': {} has the blocks {}",
                    c.arch,
                    names.join(", ")
                )));
            }
        }
        self.mc_dropout = d;
        Ok(())
    }

    fn mc_dropout(&self) -> Option<&McDropout> {
        self.mc_dropout.as_ref()
    }

    fn set_mc_draws(&mut self, d: McDraws) {
        self.mc_draws = d;
    }

    fn mc_draws(&self) -> McDraws {
        self.mc_draws
    }

    fn set_precision(&mut self, p: Precision) -> Result<()> {
        if p == self.precision {
            return Ok(());
        }
        if p != Precision::F32 {
            crate::device::check_precision(self.vs.device(), p)?;
        }
        if self.precision != Precision::F32 {
            self.masters.restore(&mut self.vs);
            self.precision = Precision::F32;
        }
        if p != Precision::F32 {
            self.masters.cast(&mut self.vs, p.kind());
            self.precision = p;
        }
        Ok(())
    }

    fn precision(&self) -> Precision {
        self.precision
    }
}

// How a prediction is made, decided in one place for eval, attack, detect, evaluate and the
// evaluation inside training: how many samples a model can give, and the forward that gives them.

/// Errors unless `model` computes in float32: `what` (saving, converting, training) needs its
/// float32 weights.
/// Whether any of these layers carries a posterior (a block to enter with the batch's rows,
/// [`crate::bayes::TrainSampling::rows`]).
pub(crate) fn any_bayesian(layers: &[&dyn BayesLayer]) -> bool {
    layers
        .iter()
        .any(|l| l.params().iter().any(|p| !p.is_point()))
}

pub fn require_f32(model: &dyn BayesModel, what: &str) -> Result<()> {
    match model.precision() {
        Precision::F32 => Ok(()),
        p => Err(Error::invalid(format!(
            "{what} needs the model at f32 precision (it computes in {p}): set_precision(F32) first"
        ))),
    }
}

/// The MC sample count for a model: 1 for a DNN (asking for more is an error), the requested or
/// the posterior's own S for a Bayesian model (an ensemble cannot give more than its members).
pub fn samples_for(model: &dyn BayesModel, requested: Option<usize>) -> Result<usize> {
    if let Some(d) = model.mc_dropout() {
        // Any number of dropout masks can be drawn.
        return match requested {
            Some(0) => Err(Error::invalid("--mc-samples must be at least 1")),
            Some(s) => Ok(s),
            None => Ok(d.samples),
        };
    }
    samples_for_posterior(model.posterior(), model.config().arch.name(), requested)
}

/// [`samples_for`] from a checkpoint's metadata alone (no model needs to be built).
pub fn samples_for_posterior(
    posterior: Option<&PosteriorMeta>,
    arch: &str,
    requested: Option<usize>,
) -> Result<usize> {
    match (posterior, requested) {
        (_, Some(0)) => Err(Error::invalid("--mc-samples must be at least 1")),
        (None, Some(s)) if s > 1 => Err(Error::invalid(format!(
            "--mc-samples {s}: this {arch} is a deterministic network (no posterior), so it gives \
             one prediction; convert or fine-tune it first for a Bayes ensemble"
        ))),
        (None, _) => Ok(1),
        (Some(p), Some(s)) => {
            if p.config.family != Family::MeanField && s > p.config.samples {
                return Err(Error::invalid(format!(
                    "--mc-samples {s}: the {} posterior has only {} members",
                    p.config.family, p.config.samples
                )));
            }
            Ok(s)
        }
        (Some(p), None) => Ok(p.config.samples),
    }
}

/// The forward mode that gives `samples` predictions (deterministic for one sample of a DNN).
pub fn mode_for(model: &dyn BayesModel, samples: usize) -> ForwardMode {
    if model.posterior().is_none() && model.mc_dropout().is_none() {
        ForwardMode::Deterministic
    } else {
        ForwardMode::ParallelMc { samples }
    }
}

/// Builds a freshly initialised point model of `cfg.arch` on `device`.
pub fn build(cfg: &ModelConfig, device: Device) -> Result<Box<dyn BayesModel>> {
    cfg.validate()?;
    Ok(match cfg.arch {
        Arch::Lenet5 => Box::new(Model::new(cfg, device, LeNet5::new)?),
        Arch::DigitCnn => Box::new(Model::new(cfg, device, DigitCnn::new)?),
        Arch::Mlp => Box::new(Model::new(cfg, device, Mlp::new)?),
        Arch::ResNet18 | Arch::ResNet34 | Arch::ResNet50 => {
            Box::new(Model::new(cfg, device, ResNet::new)?)
        }
        Arch::Wrn28x10 => Box::new(Model::new(cfg, device, WideResNet::new)?),
    })
}

impl std::fmt::Debug for dyn BayesModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BayesModel")
            .field("config", self.config())
            .field("posterior", &self.posterior())
            .finish()
    }
}

// Tap shapes, measured once (issue 14): a net's blocks and their activation sizes are fixed by
// its architecture, so MC dropout's block check, the parallel-MC memory check, the classic
// detectors' block list and the attack command's input check share one dummy forward per net and
// input size instead of running one each call.

/// One tap of the deterministic forward of a single image: its name and its shape without the
/// batch and sample axes (LeNet5 at 28 px: `conv1` `[32, 14, 14]`, ..., `logits` `[10]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapShape {
    pub name: String,
    pub shape: Vec<i64>,
    /// See [`Tap::sampled`].
    pub sampled: bool,
}

impl TapShape {
    /// Floats of the activation per image and sample.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product::<i64>() as u64
    }
}

/// [`tap_shapes_at`] at the model's own input size.
pub fn tap_shapes(model: &dyn BayesModel) -> Result<std::sync::Arc<[TapShape]>> {
    let c = model.config();
    tap_shapes_at(model, [c.in_channels, c.image_size, c.image_size])
}

/// The taps of `model` on one `[C, H, W]` image, in forward order and ending with `logits`: one
/// deterministic forward of a zero image the first time, then from a process-wide cache keyed
/// by the architecture options, every variable's name and shape (two nets built under one
/// config by [`Model::new`] still get their own entry) and the input size. A refused input is
/// an error each time (the model's message), never cached.
pub fn tap_shapes_at(
    model: &dyn BayesModel,
    input: [i64; 3],
) -> Result<std::sync::Arc<[TapShape]>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<[TapShape]>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut vars: Vec<String> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| format!("{n}{:?}", t.size()))
        .collect();
    vars.sort_unstable();
    let key = format!("{:?} {input:?} {}", model.config(), vars.join(","));
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = lock().get(&key) {
        return Ok(v.clone());
    }
    // Outside the lock: a forward may take a while, and concurrent first calls agree anyway.
    let x = Tensor::zeros(
        [1, input[0], input[1], input[2]],
        (Kind::Float, model.var_store().device()),
    );
    let (_, taps) = tch::no_grad(|| model.forward_taps(&x, &ForwardMode::Deterministic))?;
    let shapes: Arc<[TapShape]> = taps
        .into_iter()
        .map(|t| TapShape {
            shape: t.value.size()[2..].to_vec(),
            name: t.name,
            sampled: t.sampled,
        })
        .collect();
    Ok(lock().entry(key).or_insert(shapes).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayes::{Family, LayerSelection, PosteriorConfig};

    /// libtorch's generator is global: tests that reseed it must not interleave.

    #[test]
    fn taps_name_every_block_and_agree_with_the_plain_forward() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let mut m = build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let (logits, taps) = m.forward_taps(&x, &ForwardMode::Deterministic).unwrap();
        let names: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["conv1", "conv2", "linear1", "logits"]);
        let shapes: Vec<Vec<i64>> = taps.iter().map(|t| t.value.size()).collect();
        assert_eq!(
            shapes,
            [
                vec![3, 1, 32, 14, 14],
                vec![3, 1, 64, 7, 7],
                vec![3, 1, 200],
                vec![3, 1, 10]
            ]
        );
        let (l2, feats) = m
            .forward_mc_with_features(&x, &ForwardMode::Deterministic)
            .unwrap();
        assert!(logits.equal(&l2) && taps[3].value.equal(&l2) && taps[2].value.equal(&feats));
        assert!(
            taps.iter().all(|t| !t.sampled),
            "a point net has no sampled block"
        );

        // The memory check counts the blocks before the first Bayesian layer once: with linear1
        // an ensemble, conv1 and conv2 are the trunk, linear1 and the logits vary per sample.
        m.convert(
            &LayerSelection::LastBlock,
            &PosteriorConfig::new(Family::Ensemble, 3),
        )
        .unwrap();
        tch::no_grad(|| {
            for (n, mut t) in m.var_store().variables() {
                if n.ends_with("_members") {
                    let _ = t.g_add_(&(t.randn_like() * 0.05)); // members that differ
                }
            }
        });
        let sampled: Vec<bool> = tap_shapes(m.as_ref())
            .unwrap()
            .iter()
            .map(|t| t.sampled)
            .collect();
        assert_eq!(sampled, [false, false, true, true]);
        let (_, taps) = m
            .forward_taps(&x, &ForwardMode::ParallelMc { samples: 3 })
            .unwrap();
        for t in &taps {
            // A trunk tap is one activation broadcast over the samples.
            let spread = (&t.value - t.value.narrow(1, 0, 1))
                .abs()
                .max()
                .double_value(&[]);
            assert_eq!(spread == 0.0, !t.sampled, "{}", t.name);
        }
        let mut m = build(&ModelConfig::lenet5(), Device::Cpu).unwrap();

        // A sampled posterior: sequential passes give the parallel forward's taps.
        m.convert(
            &LayerSelection::All,
            &PosteriorConfig::new(Family::MeanField, 4),
        )
        .unwrap();
        tch::manual_seed(1);
        let (_, par) = m
            .forward_taps(&x, &ForwardMode::ParallelMc { samples: 4 })
            .unwrap();
        tch::manual_seed(1);
        let (_, seq) = m
            .forward_taps(&x, &ForwardMode::SequentialMc { samples: 4 })
            .unwrap();
        for (p, s) in par.iter().zip(&seq) {
            assert_eq!(p.name, s.name);
            assert_eq!(p.value.size()[1], 4);
            let diff = (&p.value - &s.value).abs().max().double_value(&[]);
            let scale = s.value.abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{}: max abs diff {diff} (scale {scale})",
                p.name
            );
        }
        assert!(par[0].value.std(false).double_value(&[]) > 0.0);
    }

    #[test]
    fn mc_dropout_masks_named_blocks_in_mc_modes_only() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let mut m = build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let (plain, ptaps) = m.forward_taps(&x, &ForwardMode::Deterministic).unwrap();
        let d = |layers: &[&str], p: f64| McDropout {
            layers: layers.iter().map(|s| s.to_string()).collect(),
            p,
            samples: 6,
        };
        let err = m
            .set_mc_dropout(Some(d(&["fc9"], 0.5)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fc9") && err.contains("conv1, conv2, linear1"),
            "{err}"
        );
        assert!(m.set_mc_dropout(Some(d(&["linear1"], 1.0))).is_err());
        m.set_mc_dropout(Some(d(&["conv2", "linear1"], 0.5)))
            .unwrap();
        // Deterministic forwards ignore it.
        let (det, _) = m.forward_taps(&x, &ForwardMode::Deterministic).unwrap();
        assert!(det.equal(&plain));
        let mode = ForwardMode::ParallelMc { samples: 6 };
        tch::manual_seed(3);
        let (par, taps) = m.forward_taps(&x, &mode).unwrap();
        assert_eq!(par.size(), [3, 6, 10]);
        assert!(par.std_dim(1, true, false).min().double_value(&[]) > 0.0);
        // conv1 untouched (the same for every sample); conv2's kept units scaled by 1 / (1 - p).
        assert_eq!(taps[0].value.size(), [3, 6, 32, 14, 14]);
        assert!(taps[0]
            .value
            .equal(&ptaps[0].value.expand_as(&taps[0].value)));
        let c2 = &taps[1].value; // [3, 6, 64, 7, 7]
        let base = ptaps[1].value.expand_as(c2);
        let kept = c2.ne(0.0);
        assert!(
            (c2 - &base * 2.0)
                .masked_select(&kept)
                .abs()
                .max()
                .double_value(&[])
                < 1e-5
        );
        let frac = kept
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        let nonzero = base
            .ne(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((frac / nonzero - 0.5).abs() < 0.05, "{frac} {nonzero}");
        // Sequential passes draw the parallel forward's masks.
        tch::manual_seed(3);
        let (seq, _) = m
            .forward_taps(&x, &ForwardMode::SequentialMc { samples: 6 })
            .unwrap();
        assert!(seq.allclose(&par, 1e-4, 1e-5, false));
    }
}
