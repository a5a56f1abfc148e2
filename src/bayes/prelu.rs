//! Bayesian PReLU (docs/design.md section 2): `y = x` for `x > 0`, `a * x` otherwise, with the
//! slope `a` (one per channel, or one shared) carrying the posterior.
//!
//! # Shapes
//! - input `[B, C, ...]` or `[B, S, C, ...]`; slopes `[P]` with P = 1 or C.
//! - shared samples `[S, P]` broadcast as `[1, S, P, 1, ...]`; per-example `[B, P]` as `[B, P, 1..]`.

use super::act::Act;
use super::ctx::Ctx;
use super::posterior::BayesParam;
use super::route::{unify, Multi};
use super::{BayesLayer, LayerKind};
use crate::{Error, Result};
use tch::{nn, Tensor};

/// A PReLU whose slope may carry a posterior (PyTorch init 0.25).
#[derive(Debug)]
pub struct PRelu {
    path: String,
    pub num_parameters: i64,
    pub weight: BayesParam,
}

/// Builds a PReLU with `num_parameters` slopes (1 or the channel count) under `p`.
pub fn prelu(p: &nn::Path, num_parameters: i64) -> PRelu {
    let path = p.components().collect::<Vec<_>>().join(".");
    let w = p.var("weight", &[num_parameters], nn::Init::Const(0.25));
    PRelu {
        weight: BayesParam::point(format!("{path}.weight"), w),
        path,
        num_parameters,
    }
}

impl PRelu {
    /// The forward under the context's mode.
    pub fn forward(&self, x: &Act, ctx: &Ctx) -> Result<Act> {
        let size = x.t.size();
        let cdim = if x.samples.is_some() { 2 } else { 1 };
        if size.len() <= cdim || (self.num_parameters != 1 && size[cdim] != self.num_parameters) {
            return Err(Error::Shape(format!(
                "{}: expected {} channels at dim {cdim}, got {:?}",
                self.path, self.num_parameters, size
            )));
        }
        if self.weight.is_point() {
            let w = self.weight.mean();
            return Ok(x.map_flat(|t| t.prelu(&w)));
        }
        ctx.note_bayes();
        // The first Bayesian layer turns distinct input rows into the batch (TrainSampling::rows).
        let x = &ctx.expand_rows(x)?;
        let trail = size.len() - cdim - 1;
        let view = |t: Tensor, lead: &[i64]| {
            let mut shape = lead.to_vec();
            shape.push(self.num_parameters);
            shape.extend(std::iter::repeat_n(1, trail));
            t.reshape(&shape)
        };
        // relu(x) + a * min(x, 0) equals prelu exactly: one of the two terms is an exact zero.
        Ok(match unify(ctx.draw(&self.weight)?, None) {
            Multi::One(w, _) => x.map_flat(|t| t.prelu(&w)),
            Multi::Shared(w, _) => {
                let s = w.size()[0];
                let t = match x.samples {
                    Some(_) => x.t.shallow_clone(),
                    None => x.t.unsqueeze(1),
                };
                Act::with(t.relu() + t.clamp_max(0.0) * view(w, &[1, s]), Some(s))
            }
            Multi::PerExample(w, _) => {
                Act::new(x.t.relu() + x.t.clamp_max(0.0) * view(w, &[size[0]]))
            }
        })
    }
}

impl BayesLayer for PRelu {
    fn path(&self) -> &str {
        &self.path
    }
    fn kind(&self) -> LayerKind {
        LayerKind::PRelu
    }
    fn params(&self) -> Vec<&BayesParam> {
        vec![&self.weight]
    }
    fn params_mut(&mut self) -> Vec<&mut BayesParam> {
        vec![&mut self.weight]
    }
}
