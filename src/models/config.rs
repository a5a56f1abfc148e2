//! What a model is, as a checkpoint records it: the architecture ([`Arch`]) with its options
//! ([`ModelConfig`]) and the posterior it carries ([`PosteriorMeta`]).

use crate::bayes::PosteriorConfig;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

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
    /// Every architecture, in the order help texts list them.
    pub const ALL: [Arch; 7] = [
        Arch::Lenet5,
        Arch::DigitCnn,
        Arch::Mlp,
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::Wrn28x10,
    ];

    /// The serialised name (`lenet5`, `wrn28-10`, ...).
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
                    "unknown architecture '{s}': available {}",
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
    /// Classes of the head (K).
    pub num_classes: i64,
    /// Input channels (1 grey, 3 RGB).
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
