//! ResNet-18/34/50 with torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`, ..., `fc`), so a torchvision state_dict loads 1:1; optional CIFAR stem
//! (3x3 stride-1 `conv1`, no max-pool). LiBRe (Deng et al., CVPR 2021; docs/design.md section 4)
//! converts the last bottleneck (`layer4.2`, `last-block`); the shortcut, pooling and head then
//! carry the sample axis.
//!
//! # Shapes
//! `[B, 3, H, W]` -> stem -> layer1..4 -> global average pool `[B, (S,) C]` -> fc `[B, (S,) K]`.

use super::{Arch, ModelConfig, Net};
use crate::bayes::{
    batch_norm2d, conv2d, linear, Act, BatchNorm, BatchNormConfig, BayesLayer, Conv2d, ConvConfig,
    Ctx, Linear, LinearConfig,
};
use crate::{Error, Result};
use tch::nn;

/// A bias-free `k x k` conv with "same" padding, initialised as torchvision does (Kaiming
/// normal, fan-out, ReLU gain); the ResNets and WRNs share it.
pub(super) fn conv(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> Conv2d {
    let c = conv2d(
        p,
        c_in,
        c_out,
        k,
        ConvConfig {
            stride,
            padding: k / 2,
            bias: false,
            ..Default::default()
        },
    );
    // torchvision init: kaiming normal, fan_out, ReLU gain.
    let std = (2.0 / (c_out * k * k) as f64).sqrt();
    tch::no_grad(|| {
        let _ = c.weight.mean().normal_(0.0, std);
    });
    c
}

fn bn(p: &nn::Path, c: i64) -> BatchNorm {
    batch_norm2d(p, c, BatchNormConfig::default())
}

/// A residual block: BasicBlock (`conv3` None) or Bottleneck (torchvision v1.5: stride on conv2).
#[derive(Debug)]
pub struct Block {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<(Conv2d, BatchNorm)>,
    /// `downsample.0` (1x1 conv) and `downsample.1` (BatchNorm).
    pub downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(p: &nn::Path, c_in: i64, planes: i64, stride: i64, bottleneck: bool) -> Block {
        let expansion = if bottleneck { 4 } else { 1 };
        let c_out = planes * expansion;
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (
                conv(&(&d / 0), c_in, c_out, 1, stride),
                bn(&(&d / 1), c_out),
            )
        });
        if bottleneck {
            Block {
                conv1: conv(&(p / "conv1"), c_in, planes, 1, 1),
                bn1: bn(&(p / "bn1"), planes),
                conv2: conv(&(p / "conv2"), planes, planes, 3, stride),
                bn2: bn(&(p / "bn2"), planes),
                conv3: Some((
                    conv(&(p / "conv3"), planes, c_out, 1, 1),
                    bn(&(p / "bn3"), c_out),
                )),
                downsample,
            }
        } else {
            Block {
                conv1: conv(&(p / "conv1"), c_in, planes, 3, stride),
                bn1: bn(&(p / "bn1"), planes),
                conv2: conv(&(p / "conv2"), planes, planes, 3, 1),
                bn2: bn(&(p / "bn2"), planes),
                conv3: None,
                downsample,
            }
        }
    }

    fn forward(&self, x: &Act, ctx: &Ctx) -> Result<Act> {
        // Each conv + BatchNorm pair runs folded into one conv for inference (Conv2d::forward_bn).
        let a = self.conv1.forward_bn(&self.bn1, x, ctx)?.relu();
        let mut a = self.conv2.forward_bn(&self.bn2, &a, ctx)?;
        if let Some((c3, b3)) = &self.conv3 {
            a = c3.forward_bn(b3, &a.relu(), ctx)?;
        }
        let id = match &self.downsample {
            Some((c, b)) => c.forward_bn(b, x, ctx)?,
            None => x.shallow_clone(),
        };
        // [B, S, C, H, W] + [B, C, H, W] broadcasts when only one side is Bayesian.
        Ok(a.add(&id).relu())
    }

    fn layers(&self) -> Vec<&dyn BayesLayer> {
        let mut v: Vec<&dyn BayesLayer> = vec![&self.conv1, &self.bn1, &self.conv2, &self.bn2];
        if let Some((c, b)) = &self.conv3 {
            v.push(c);
            v.push(b);
        }
        if let Some((c, b)) = &self.downsample {
            v.push(c);
            v.push(b);
        }
        v
    }

    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer> {
        let mut v: Vec<&mut dyn BayesLayer> = vec![
            &mut self.conv1,
            &mut self.bn1,
            &mut self.conv2,
            &mut self.bn2,
        ];
        if let Some((c, b)) = &mut self.conv3 {
            v.push(c);
            v.push(b);
        }
        if let Some((c, b)) = &mut self.downsample {
            v.push(c);
            v.push(b);
        }
        v
    }
}

/// A torchvision ResNet.
#[derive(Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub cifar_stem: bool,
    /// `layer1` .. `layer4`.
    pub layers: Vec<Vec<Block>>,
    pub fc: Linear,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let (blocks, bottleneck) = match cfg.arch {
            Arch::ResNet18 => ([2, 2, 2, 2], false),
            Arch::ResNet34 => ([3, 4, 6, 3], false),
            Arch::ResNet50 => ([3, 4, 6, 3], true),
            a => return Err(Error::invalid(format!("not a ResNet architecture: {a}"))),
        };
        let conv1 = if cfg.cifar_stem {
            conv(&(p / "conv1"), cfg.in_channels, 64, 3, 1)
        } else {
            let c = conv2d(
                &(p / "conv1"),
                cfg.in_channels,
                64,
                7,
                ConvConfig {
                    stride: 2,
                    padding: 3,
                    bias: false,
                    ..Default::default()
                },
            );
            let std = (2.0 / (64 * 49) as f64).sqrt();
            tch::no_grad(|| {
                let _ = c.weight.mean().normal_(0.0, std);
            });
            c
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::new();
        for (i, (&n, planes)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
            let lp = p / format!("layer{}", i + 1);
            let mut layer = Vec::new();
            for j in 0..n {
                let stride = if j == 0 && i > 0 { 2 } else { 1 };
                layer.push(Block::new(&(&lp / j), c_in, planes, stride, bottleneck));
                c_in = planes * expansion;
            }
            layers.push(layer);
        }
        Ok(ResNet {
            conv1,
            bn1: bn(&(p / "bn1"), 64),
            cifar_stem: cfg.cifar_stem,
            layers,
            fc: linear(&(p / "fc"), c_in, cfg.num_classes, LinearConfig::default()),
        })
    }
}

impl Net for ResNet {
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act> {
        let mut a = self.conv1.forward_bn(&self.bn1, &x, ctx)?.relu();
        if !self.cifar_stem {
            a = a.max_pool2d(3, 2, 1);
        }
        a = ctx.mark("conv1", a)?;
        for (li, layer) in self.layers.iter().enumerate() {
            for (bi, block) in layer.iter().enumerate() {
                if ctx.rows_pending() && super::any_bayesian(&block.layers()) {
                    // The shortcut must see the batch too (TrainSampling::rows).
                    a = ctx.expand_rows(&a)?;
                }
                a = block.forward(&a, ctx)?;
                a = ctx.mark(&format!("layer{}.{bi}", li + 1), a)?;
            }
        }
        let a = a.global_avg_pool();
        let a = ctx.mark_head("avgpool", a)?;
        self.fc.forward(&a, ctx)
    }

    fn layers(&self) -> Vec<&dyn BayesLayer> {
        let mut v: Vec<&dyn BayesLayer> = vec![&self.conv1, &self.bn1];
        for layer in &self.layers {
            for b in layer {
                v.extend(b.layers());
            }
        }
        v.push(&self.fc);
        v
    }

    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer> {
        let mut v: Vec<&mut dyn BayesLayer> = vec![&mut self.conv1, &mut self.bn1];
        for layer in &mut self.layers {
            for b in layer {
                v.extend(b.layers_mut());
            }
        }
        v.push(&mut self.fc);
        v
    }

    fn last_block(&self) -> Vec<String> {
        let n = self.layers[3].len();
        vec![format!("layer4.{}", n - 1)]
    }
}
