//! A multi-layer perceptron on flattened pixels: `fc1 .. fcN` hidden layers with ReLU, then the
//! head `fc{N+1}` (`ModelConfig::hidden` gives the widths; empty: a linear classifier).

use super::{ModelConfig, Net};
use crate::bayes::{linear, Act, BayesLayer, Ctx, Linear, LinearConfig};
use crate::Result;
use tch::nn;

/// An MLP `fc1 .. fc{N+1}`.
#[derive(Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let mut dims = vec![cfg.in_channels * cfg.image_size * cfg.image_size];
        dims.extend(&cfg.hidden);
        dims.push(cfg.num_classes);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                linear(
                    &(p / format!("fc{}", i + 1)),
                    w[0],
                    w[1],
                    LinearConfig::default(),
                )
            })
            .collect();
        Ok(Mlp { layers })
    }
}

impl Net for Mlp {
    fn forward(&self, x: Act, ctx: &Ctx) -> Result<Act> {
        let mut a = x.flatten();
        let n = self.layers.len();
        if n == 1 {
            a = ctx.mark_head("input", a)?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            a = l.forward(&a, ctx)?;
            if i + 1 < n {
                a = a.relu();
                let name = format!("fc{}", i + 1);
                if i + 2 == n {
                    a = ctx.mark_head(&name, a)?;
                } else {
                    a = ctx.mark(&name, a)?;
                }
            }
        }
        Ok(a)
    }
    fn layers(&self) -> Vec<&dyn BayesLayer> {
        self.layers.iter().map(|l| l as &dyn BayesLayer).collect()
    }
    fn layers_mut(&mut self) -> Vec<&mut dyn BayesLayer> {
        self.layers
            .iter_mut()
            .map(|l| l as &mut dyn BayesLayer)
            .collect()
    }
    fn last_block(&self) -> Vec<String> {
        let n = self.layers.len();
        vec![self.layers[n.saturating_sub(2)].path().to_string()]
    }
}
