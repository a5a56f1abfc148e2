//! Bayesian BatchNorm2d / BatchNorm1d (docs/design.md section 2): the normalisation and the running
//! statistics stay deterministic and shared by all samples; only the affine scale (`weight`) and
//! shift (`bias`) carry the posterior.
//!
//! Variables follow torchvision: `weight`, `bias`, `running_mean`, `running_var` and the int64
//! scalar `num_batches_tracked` (incremented per training forward, as PyTorch does).
//!
//! # Shapes
//! - input `[B, C, ...]` or `[B, S, C, ...]` (2d: `...` = H, W; 1d: nothing or L).
//! - affine `[S, C]` (shared) broadcasts as `[1, S, C, 1, 1]`; per-example `[B, C]` as `[B, C, 1, 1]`.

use super::act::Act;
use super::ctx::Ctx;
use super::posterior::BayesParam;
use super::route::{unify, Multi};
use super::{BayesLayer, LayerKind};
use crate::{Error, Result};
use tch::{nn, Kind, Tensor};

/// Options of a [`BatchNorm`] layer (PyTorch defaults).
#[derive(Debug, Clone, Copy)]
pub struct BatchNormConfig {
    pub eps: f64,
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// BatchNorm with a possibly Bayesian affine transform.
#[derive(Debug)]
pub struct BatchNorm {
    path: String,
    /// Spatial dims after C: 2 for BatchNorm2d, 0 or 1 for BatchNorm1d.
    spatial: Option<usize>,
    pub channels: i64,
    pub cfg: BatchNormConfig,
    pub weight: BayesParam,
    pub bias: BayesParam,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

fn build(p: &nn::Path, c: i64, spatial: Option<usize>, cfg: BatchNormConfig) -> BatchNorm {
    let path = p.components().collect::<Vec<_>>().join(".");
    let w = p.ones("weight", &[c]);
    let b = p.zeros("bias", &[c]);
    let running_mean = p.zeros_no_train("running_mean", &[c]);
    let running_var = p.ones_no_train("running_var", &[c]);
    let nbt = p.add(
        "num_batches_tracked",
        Tensor::zeros([], (Kind::Int64, p.device())),
        false,
    );
    BatchNorm {
        weight: BayesParam::point(format!("{path}.weight"), w),
        bias: BayesParam::point(format!("{path}.bias"), b),
        path,
        spatial,
        channels: c,
        cfg,
        running_mean,
        running_var,
        num_batches_tracked: nbt,
    }
}

/// BatchNorm2d over `[B, C, H, W]` (scale 1, shift 0).
pub fn batch_norm2d(p: &nn::Path, c: i64, cfg: BatchNormConfig) -> BatchNorm {
    build(p, c, Some(2), cfg)
}

/// BatchNorm1d over `[B, C]` or `[B, C, L]`.
pub fn batch_norm1d(p: &nn::Path, c: i64, cfg: BatchNormConfig) -> BatchNorm {
    build(p, c, None, cfg)
}

impl BatchNorm {
    fn bn(&self, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, train: bool) -> Tensor {
        x.batch_norm(
            w,
            b,
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.cfg.momentum,
            self.cfg.eps,
            true,
        )
    }

    /// The forward under the context's mode.
    pub fn forward(&self, x: &Act, ctx: &Ctx) -> Result<Act> {
        let point = self.weight.is_point() && self.bias.is_point();
        // The first Bayesian layer turns distinct input rows into the batch (TrainSampling::rows).
        let expanded = if point {
            None
        } else {
            Some(ctx.expand_rows(x)?)
        };
        let x = expanded.as_ref().unwrap_or(x);
        let size = x.t.size();
        let cdim = if x.samples.is_some() { 2 } else { 1 };
        let rank_ok = match self.spatial {
            Some(n) => size.len() == cdim + 1 + n,
            None => size.len() == cdim + 1 || size.len() == cdim + 2,
        };
        if !rank_ok || size[cdim] != self.channels {
            return Err(Error::Shape(format!(
                "{}: expected {} channels at dim {cdim} of a {}-d input, got {:?}",
                self.path,
                self.channels,
                cdim + 1 + self.spatial.unwrap_or(0),
                size
            )));
        }
        let train = ctx.train();
        if train {
            let _guard = tch::no_grad_guard();
            let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
        }
        if point {
            if let (true, Some(copies)) = (train, ctx.batch_copies(x.t.device())) {
                // Before the expansion: the statistics (and the running averages) of the batch,
                // copies counted, from the distinct rows plus the copies; outputs for the
                // distinct rows. A copy's output equals its row's, so the forward and its
                // gradient are those of the batch norm over the expanded batch.
                let u = size[0];
                let all = Tensor::cat(&[x.t.shallow_clone(), x.t.index_select(0, &copies)], 0);
                let (w, b) = (self.weight.mean(), self.bias.mean());
                let y = self.bn(&all, Some(&w), Some(&b), true).narrow(0, 0, u);
                return Ok(Act::with(y, x.samples));
            }
            return Ok(x.map_flat(|t| {
                self.bn(t, Some(&self.weight.mean()), Some(&self.bias.mean()), train)
            }));
        }
        ctx.note_bayes();
        let w = ctx.draw(&self.weight)?;
        let b = ctx.draw(&self.bias)?;
        // Trailing ones so a [.., C] affine broadcasts over the spatial dims.
        let trail = size.len() - cdim - 1;
        let view = |t: Tensor, lead: &[i64]| {
            let mut shape = lead.to_vec();
            shape.push(self.channels);
            shape.extend(std::iter::repeat_n(1, trail));
            t.reshape(&shape)
        };
        Ok(match unify(w, Some(b)) {
            Multi::One(w, b) => x.map_flat(|t| self.bn(t, Some(&w), b.as_ref(), train)),
            Multi::Shared(w, b) if !train && super::fast::fast_paths() => {
                // Running statistics: normalisation and the S affines are one scale and shift per
                // sample and channel, applied in one pass (the plain path below makes three).
                let s = w.size()[0];
                let b = b.expect("batchnorm bias");
                let scale = w / (&self.running_var + self.cfg.eps).sqrt(); // [S, C]
                let shift = b - &self.running_mean * &scale;
                let xt = match x.samples {
                    Some(_) => x.t.shallow_clone(),
                    None => x.t.unsqueeze(1),
                };
                let y = view(shift, &[1, s]).addcmul(&xt, &view(scale, &[1, s]));
                Act::with(y, Some(s))
            }
            Multi::Shared(w, b) => {
                let s = w.size()[0];
                let n = x.map_flat(|t| self.bn(t, None, None, train));
                let nt = match n.samples {
                    Some(_) => n.t,
                    // Normalised once, the affine broadcasts it to [B, S, C, ...].
                    None => n.t.unsqueeze(1),
                };
                let b = b.expect("batchnorm bias");
                let y = nt * view(w, &[1, s]) + view(b, &[1, s]);
                Act::with(y, Some(s))
            }
            Multi::PerExample(w, b) => {
                let bsz = size[0];
                let n = self.bn(&x.t, None, None, train);
                let b = b.expect("batchnorm bias");
                Act::new(n * view(w, &[bsz]) + view(b, &[bsz]))
            }
        })
    }
}

impl BayesLayer for BatchNorm {
    fn path(&self) -> &str {
        &self.path
    }
    fn kind(&self) -> LayerKind {
        LayerKind::BatchNorm
    }
    fn params(&self) -> Vec<&BayesParam> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut BayesParam> {
        vec![&mut self.weight, &mut self.bias]
    }
}
