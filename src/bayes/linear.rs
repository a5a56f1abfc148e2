//! Bayesian fully connected layer (docs/design.md section 2: Linear with any posterior family).
//!
//! Point numerics are PyTorch's `F.linear` (`x W^T + b`), as tch's `nn::Linear`.
//!
//! # Shapes
//! - input `[B, in]` or `[B, S, in]`; output `[B, out]` or `[B, S, out]`.
//! - The first Bayesian layer of a parallel MC forward gets `[B, in]` and S weights `[S, out, in]`:
//!   one matmul against the stacked `[S*out, in]` gives `[B, S*out]` -> `[B, S, out]`, without
//!   copying the input S times. Later layers: batched matmul over the sample axis.

use super::act::Act;
use super::ctx::Ctx;
use super::mode::McSampling;
use super::posterior::BayesParam;
use super::route::{apply_routed, rademacher, unify, Multi};
use super::{BayesLayer, LayerKind};
use crate::{Error, Result};
use tch::{nn, Tensor};

/// Options of a [`Linear`] layer.
#[derive(Debug, Clone, Copy)]
pub struct LinearConfig {
    pub bias: bool,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig { bias: true }
    }
}

/// A linear layer `y = x W^T + b` whose weight and bias may carry a posterior.
#[derive(Debug)]
pub struct Linear {
    path: String,
    pub in_dim: i64,
    pub out_dim: i64,
    pub weight: BayesParam,
    pub bias: Option<BayesParam>,
}

/// Builds a point linear layer with PyTorch's default init (kaiming-uniform weight, uniform
/// bias in +-1/sqrt(in)) under `p` (`p / "weight"`, `p / "bias"`).
pub fn linear(p: &nn::Path, in_dim: i64, out_dim: i64, cfg: LinearConfig) -> Linear {
    let path = p.components().collect::<Vec<_>>().join(".");
    let bound = 1.0 / (in_dim as f64).sqrt();
    let w = p.var(
        "weight",
        &[out_dim, in_dim],
        nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    );
    let b = cfg.bias.then(|| {
        p.var(
            "bias",
            &[out_dim],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )
    });
    Linear {
        weight: BayesParam::point(format!("{path}.weight"), w),
        bias: b.map(|b| BayesParam::point(format!("{path}.bias"), b)),
        path,
        in_dim,
        out_dim,
    }
}

impl Linear {
    /// The forward under the context's mode.
    pub fn forward(&self, x: &Act, ctx: &Ctx) -> Result<Act> {
        // The first Bayesian layer turns distinct input rows into the batch (TrainSampling::rows).
        let expanded = if self.is_point() {
            None
        } else {
            Some(ctx.expand_rows(x)?)
        };
        let x = expanded.as_ref().unwrap_or(x);
        let last = *x.t.size().last().unwrap_or(&0);
        if last != self.in_dim {
            return Err(Error::Shape(format!(
                "{}: expected {} input features, got shape {:?}",
                self.path,
                self.in_dim,
                x.t.size()
            )));
        }
        if !self.is_point() {
            ctx.note_bayes();
            if let (Some(scheme), None) = (ctx.mean_field_scheme(), x.samples) {
                if let Some(y) = self.gaussian_trick(&x.t, scheme, ctx)? {
                    return Ok(Act::new(y));
                }
            }
            if let (Some(s), Some((mu, sigma))) =
                (ctx.local_reparam_samples(), self.weight.gaussian())
            {
                let bias = self.bias.as_ref().map(|b| (b.mean(), b.gaussian()));
                let y = local_reparam(&x.t, &mu, &sigma, bias, x.samples.is_none().then_some(s));
                return Ok(Act::with(y, Some(s)));
            }
        }
        if let Some(ids) = ctx.ensemble_routes(&self.weight, x)? {
            let n = self.weight.components().unwrap_or(1);
            let w = self.weight.draw(n)?; // [S, out, in]
            let b = match &self.bias {
                Some(b) => Some(b.draw(n)?), // [S, out]
                None => None,
            };
            // [S, M, in] x [S, in, out] -> [S, M, out]
            let y = apply_routed(&x.t, &ids, n, &mut |xp| {
                let y = xp.bmm(&w.transpose(1, 2));
                Ok(match &b {
                    Some(b) => y + b.unsqueeze(1),
                    None => y,
                })
            })?;
            return Ok(Act::new(y));
        }
        let w = ctx.draw(&self.weight)?;
        let b = self.bias.as_ref().map(|b| ctx.draw(b)).transpose()?;
        Ok(match unify(w, b) {
            Multi::One(w, b) => x.map_flat(|t| t.linear(&w, b.as_ref())),
            Multi::Shared(w, b) => {
                let s = w.size()[0];
                let y = match x.samples {
                    // [B, in] x [S*out, in]^T -> [B, S*out] -> [B, S, out]
                    None => {
                        let bsz = x.t.size()[0];
                        let y =
                            x.t.linear(&w.reshape([s * self.out_dim, self.in_dim]), None::<Tensor>);
                        y.reshape([bsz, s, self.out_dim])
                    }
                    // [S, B, in] bmm [S, in, out] -> [S, B, out] -> [B, S, out]
                    Some(_) => x.t.transpose(0, 1).bmm(&w.transpose(1, 2)).transpose(0, 1),
                };
                // bias [S, out] broadcasts over B
                Act::with(add_opt(y, b.map(|b| b.unsqueeze(0))), Some(s))
            }
            Multi::PerExample(w, b) => {
                if x.samples.is_some() {
                    return Err(Error::Shape(format!(
                        "{}: per-example weights with a sample axis",
                        self.path
                    )));
                }
                // [B, 1, in] bmm [B, in, out] -> [B, out]; squeeze only dim 1 (batch 1 is fine).
                let y = x.t.unsqueeze(1).bmm(&w.transpose(1, 2)).squeeze_dim(1);
                Act::new(add_opt(y, b))
            }
        })
    }

    fn is_point(&self) -> bool {
        self.weight.is_point() && self.bias.as_ref().is_none_or(|b| b.is_point())
    }

    /// Local reparameterisation / flipout for a mean-field weight; `None` for other schemes.
    fn gaussian_trick(&self, x: &Tensor, scheme: McSampling, ctx: &Ctx) -> Result<Option<Tensor>> {
        let Some((mu, sigma)) = self.weight.gaussian() else {
            return Ok(None);
        };
        match scheme {
            McSampling::LocalReparam => {
                let bias = self.bias.as_ref().map(|b| (b.mean(), b.gaussian()));
                Ok(Some(local_reparam(x, &mu, &sigma, bias, None)))
            }
            McSampling::Flipout => {
                let bsz = x.size()[0];
                let delta = &sigma * crate::runtime::precision::randn(&mu.size(), &mu);
                let s_in = rademacher(&[bsz, self.in_dim], x);
                let s_out = rademacher(&[bsz, self.out_dim], x);
                let y = x.linear(&mu, None::<Tensor>)
                    + (x * s_in).linear(&delta, None::<Tensor>) * s_out;
                // The bias is drawn per example ([B, out]) or is a point ([out]): both broadcast.
                let b = match &self.bias {
                    Some(b) => Some(ctx.draw(b)?.into_tensor()),
                    None => None,
                };
                Ok(Some(add_opt(y, b)))
            }
            _ => Ok(None),
        }
    }
}

/// Local reparameterisation (Kingma, Salimans & Welling 2015) of `x W^T + b` under a mean-field
/// weight (and bias): one draw per row of `x` from `N(x mu^T + b_mu, x^2 (sigma^2)^T + b_sigma^2)`.
///
/// `x`: `[..., in]`; `mu`, `sigma`: `[out, in]`; `bias`: its mean `[out]` and, when mean-field,
/// its sigma. Output `[..., out]`. With `shared_by` = S, `x` `[B, in]` is the input of S samples
/// ([`super::McDraws::LocalReparam`]): both matmuls run on the B rows once and the output is S
/// independent draws `[B, S, out]`.
pub(crate) fn local_reparam(
    x: &Tensor,
    mu: &Tensor,
    sigma: &Tensor,
    bias: Option<(Tensor, Option<(Tensor, Tensor)>)>,
    shared_by: Option<i64>,
) -> Tensor {
    let mean = x.linear(mu, bias.as_ref().map(|b| &b.0));
    let var_b = bias.and_then(|b| b.1.map(|(_, s)| &s * &s));
    let var = (x * x).linear(&(sigma * sigma), var_b.as_ref());
    let std = (var + 1e-16).sqrt();
    let (mean, std) = match shared_by {
        // [B, out] -> [B, 1, out], broadcast against S draws [B, S, out].
        Some(_) => (mean.unsqueeze(1), std.unsqueeze(1)),
        None => (mean, std),
    };
    let mut shape = mean.size();
    if let Some(s) = shared_by {
        shape[1] = s;
    }
    let eps = crate::runtime::precision::randn(&shape, &mean);
    mean + std * eps
}

pub(crate) fn add_opt(y: Tensor, b: Option<Tensor>) -> Tensor {
    match b {
        Some(b) => y + b,
        None => y,
    }
}

impl BayesLayer for Linear {
    fn path(&self) -> &str {
        &self.path
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Linear
    }
    fn params(&self) -> Vec<&BayesParam> {
        std::iter::once(&self.weight)
            .chain(self.bias.as_ref())
            .collect()
    }
    fn params_mut(&mut self) -> Vec<&mut BayesParam> {
        std::iter::once(&mut self.weight)
            .chain(self.bias.as_mut())
            .collect()
    }
}
