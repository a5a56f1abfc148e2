//! Wide ResNet 28-10 (the BayesAdapter CIFAR-10 model, docs/design.md section 6), pre-activation
//! blocks with the common PyTorch names (`conv1`, `block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2/
//! convShortcut`, `bn1`, `fc`); dropout rate 0 (libre disables dropout anyway).
//!
//! # Shapes
//! `[B, 3, H, W]` -> conv1 -> 3 groups of 4 blocks (16*10, 32*10, 64*10 channels, strides 1, 2, 2)
//! -> BN, ReLU, global average pool `[B, (S,) 640]` -> fc `[B, (S,) K]`.

use super::resnet::conv;
use super::{ModelConfig, Net};
use crate::bayes::{
    batch_norm2d, linear, Act, BatchNorm, BatchNormConfig, BayesLayer, Conv2d, Ctx, Linear,
    LinearConfig,
};
use crate::Result;
use tch::nn;

/// A pre-activation wide basic block.
#[derive(Debug)]
pub struct WideBlock {
    pub bn1: BatchNorm,
    pub conv1: Conv2d,
    pub bn2: BatchNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn layers(&self) -> Vec<&dyn BayesLayer> {
        let mut v: Vec<&dyn BayesLayer> = vec![&self.bn1, &self.conv1, &self.bn2, &self.conv2];
        if let Some(c) = &self.conv_shortcut {
            v.push(c);
        }
        v
    }

    fn forward(&self, x: &Act, ctx: &Ctx) -> Result<Act> {
        let pre = self.bn1.forward(x, ctx)?.relu();
        let a = self.conv1.forward(&pre, ctx)?;
        let a = self
            .conv2
            .forward(&self.bn2.forward(&a, ctx)?.relu(), ctx)?;
        let id = match &self.conv_shortcut {
            // Not equal in/out: the shortcut sees the pre-activated input.
            Some(c) => c.forward(&pre, ctx)?,
            None => x.shallow_clone(),
        };
        Ok(a.add(&id))
    }
}

/// WRN-28-10.
#[derive(Debug)]
pub struct WideResNet {
    pub conv1: Conv2d,
    pub blocks: Vec<Vec<WideBlock>>,
    pub bn1: BatchNorm,
    pub fc: Linear,
}

impl WideResNet {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let (n, k) = (4, 10);
        let widths = [16 * k, 32 * k, 64 * k];
        let conv1 = conv(&(p / "conv1"), cfg.in_channels, 16, 3, 1);
        let mut c_in = 16;
        let mut blocks = Vec::new();
        for (g, (&w, stride)) in widths.iter().zip([1, 2, 2]).enumerate() {
            let gp = p / format!("block{}", g + 1) / "layer";
            let mut group = Vec::new();
            for i in 0..n {
                let bp = &gp / i;
                let s = if i == 0 { stride } else { 1 };
                let bn_cfg = BatchNormConfig::default();
                group.push(WideBlock {
                    bn1: batch_norm2d(&(&bp / "bn1"), c_in, bn_cfg),
                    conv1: conv(&(&bp / "conv1"), c_in, w, 3, s),
                    bn2: batch_norm2d(&(&bp / "bn2"), w, bn_cfg),
                    conv2: conv(&(&bp / "conv2"), w, w, 3, 1),
                    conv_shortcut: (c_in != w)
                        .then(|| conv(&(&bp / "convShortcut"), c_in, w, 1, s)),
                });
                c_in = w;
            }
            blocks.push(group);
        }
        Ok(WideResNet {
            conv1,
            blocks,
            bn1: batch_norm2d(&(p / "bn1"), c_in, BatchNormConfig::default()),
            fc: linear(&(p / "fc"), c_in, cfg.num_classes, LinearConfig::default()),
        })
    }
}

impl Net for WideResNet {
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act> {
        let mut a = self.conv1.forward(&x, ctx)?;
        a = ctx.mark("conv1", a)?;
        for (gi, group) in self.blocks.iter().enumerate() {
            for (bi, b) in group.iter().enumerate() {
                if ctx.rows_pending() && super::any_bayesian(&b.layers()) {
                    // The shortcut must see the batch too (TrainSampling::rows).
                    a = ctx.expand_rows(&a)?;
                }
                a = b.forward(&a, ctx)?;
                a = ctx.mark(&format!("block{}.layer.{bi}", gi + 1), a)?;
            }
        }
        let a = self.bn1.forward(&a, ctx)?.relu().global_avg_pool();
        let a = ctx.mark_head("avgpool", a)?;
        self.fc.forward(&a, ctx)
    }

    fn layers(&self) -> Vec<&dyn BayesLayer> {
        let mut v: Vec<&dyn BayesLayer> = vec![&self.conv1];
        for b in self.blocks.iter().flatten() {
            v.extend(b.layers());
        }
        v.extend([&self.bn1 as &dyn BayesLayer, &self.fc]);
        v
    }

    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer> {
        let mut v: Vec<&mut dyn BayesLayer> = vec![&mut self.conv1];
        for b in self.blocks.iter_mut().flatten() {
            v.push(&mut b.bn1);
            v.push(&mut b.conv1);
            v.push(&mut b.bn2);
            v.push(&mut b.conv2);
            if let Some(c) = &mut b.conv_shortcut {
                v.push(c);
            }
        }
        v.push(&mut self.bn1);
        v.push(&mut self.fc);
        v
    }

    fn last_block(&self) -> Vec<String> {
        vec!["block3.layer.3".into()]
    }
}
