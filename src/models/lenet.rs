//! advertorch's MNIST LeNet5 (docs/design.md section 11; the zoo's 98.90% model), keys `conv1`,
//! `conv2`, `linear1`, `linear2`: conv 1->32 k3 p1, ReLU, max-pool 2; conv 32->64 k3 p1, ReLU,
//! max-pool 2; flatten (C, H, W order) 3136; linear 3136->200, ReLU; linear 200->10. Raw [0, 1]
//! pixels, no normalisation.

use super::{ModelConfig, Net};
use crate::bayes::{
    conv2d, linear, Act, BayesLayer, Conv2d, ConvConfig, Ctx, Linear, LinearConfig,
};
use crate::Result;
use tch::nn;

/// LeNet5 as in advertorch (`advertorch_examples/models.py`, `LeNet5`).
#[derive(Debug)]
pub struct LeNet5 {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub linear1: Linear,
    pub linear2: Linear,
}

impl LeNet5 {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let c = ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let side = cfg.image_size / 4;
        Ok(LeNet5 {
            conv1: conv2d(&(p / "conv1"), cfg.in_channels, 32, 3, c),
            conv2: conv2d(&(p / "conv2"), 32, 64, 3, c),
            linear1: linear(
                &(p / "linear1"),
                64 * side * side,
                200,
                LinearConfig::default(),
            ),
            linear2: linear(
                &(p / "linear2"),
                200,
                cfg.num_classes,
                LinearConfig::default(),
            ),
        })
    }
}

impl Net for LeNet5 {
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act> {
        let a = self.conv1.forward(&x, ctx)?.relu().max_pool2d(2, 2, 0);
        let a = ctx.mark("conv1", a)?;
        let a = self.conv2.forward(&a, ctx)?.relu().max_pool2d(2, 2, 0);
        let a = ctx.mark("conv2", a)?;
        let a = self.linear1.forward(&a.flatten(), ctx)?.relu();
        let a = ctx.mark_head("linear1", a)?;
        self.linear2.forward(&a, ctx)
    }
    fn layers(&self) -> Vec<&dyn BayesLayer> {
        vec![&self.conv1, &self.conv2, &self.linear1, &self.linear2]
    }
    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer> {
        vec![
            &mut self.conv1,
            &mut self.conv2,
            &mut self.linear1,
            &mut self.linear2,
        ]
    }
    fn last_block(&self) -> Vec<String> {
        vec!["linear1".into()]
    }
}
