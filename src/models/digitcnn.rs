//! ccexam's DigitCNN for MNIST (docs/design.md section 11), keys `features.0`, `features.3`,
//! `classifier.0`, `classifier.2` (an `nn.Sequential` whose ReLU / max-pool slots hold no
//! parameters): conv 1->32 k3 p1, ReLU, max-pool 2; conv 32->64 k3 p1, ReLU, max-pool 2; flatten;
//! linear 3136->128, ReLU; linear 128->10. Normalisation mean 0.1307 / std 0.3081 in the config.

use super::{ModelConfig, Net};
use crate::bayes::{
    conv2d, linear, Act, BayesLayer, Conv2d, ConvConfig, Ctx, Linear, LinearConfig,
};
use crate::Result;
use tch::nn;

/// DigitCNN as in ccexam.
#[derive(Debug)]
pub struct DigitCnn {
    pub features_0: Conv2d,
    pub features_3: Conv2d,
    pub classifier_0: Linear,
    pub classifier_2: Linear,
}

impl DigitCnn {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let c = ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let side = cfg.image_size / 4;
        let f = p / "features";
        let cl = p / "classifier";
        Ok(DigitCnn {
            features_0: conv2d(&(&f / 0), cfg.in_channels, 32, 3, c),
            features_3: conv2d(&(&f / 3), 32, 64, 3, c),
            classifier_0: linear(&(&cl / 0), 64 * side * side, 128, LinearConfig::default()),
            classifier_2: linear(&(&cl / 2), 128, cfg.num_classes, LinearConfig::default()),
        })
    }
}

impl Net for DigitCnn {
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act> {
        let a = self.features_0.forward(&x, ctx)?.relu().max_pool2d(2, 2, 0);
        let a = ctx.mark("features.0", a)?;
        let a = self.features_3.forward(&a, ctx)?.relu().max_pool2d(2, 2, 0);
        let a = ctx.mark("features.3", a)?;
        let a = self.classifier_0.forward(&a.flatten(), ctx)?.relu();
        let a = ctx.mark_head("classifier.0", a)?;
        self.classifier_2.forward(&a, ctx)
    }
    fn layers(&self) -> Vec<&dyn BayesLayer> {
        vec![
            &self.features_0,
            &self.features_3,
            &self.classifier_0,
            &self.classifier_2,
        ]
    }
    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer> {
        vec![
            &mut self.features_0,
            &mut self.features_3,
            &mut self.classifier_0,
            &mut self.classifier_2,
        ]
    }
    fn last_block(&self) -> Vec<String> {
        vec!["classifier.0".into()]
    }
}
