//! Bayesian 2-d convolution (docs/design.md section 2: Conv2d with any stride, padding, dilation,
//! groups).
//!
//! Point numerics are `conv2d` as in tch's `nn::Conv2D` / PyTorch's `nn.Conv2d`.
//!
//! # Shapes
//! - input `[B, C, H, W]` or `[B, S, C, H, W]`; output `[B, out, H', W']` or `[B, S, out, H', W']`.
//! - First Bayesian layer of a parallel MC forward: the S weights `[S, out, C/g, k, k]` are stacked
//!   into one conv with `S*out` output channels on the un-copied input.
//! - Input with a sample axis: folded to `[B, S*C, H, W]`, one grouped conv (groups = S*g).
//! - Per-example weights `[B, out, ...]` (training): input folded to `[1, B*C, H, W]`, groups B*g.
//! - Fast path, S weights on a 1x1 map (the last ResNet stage at 32 px): with "same" padding only
//!   the centre tap of the kernel meets data, so the conv is a matmul `[B, C] x [C, S*out]`
//!   (shared input) or a bmm over the members `[S, B, C] x [S, C, out]`. The grouped conv computes
//!   the same numbers but oneDNN re-lays all S weights on every call and multiplies the k*k - 1
//!   taps that see only padding (issue 14 measured 407 ms against 79 ms for ResNet-50, S = 20).
//!   [`set_fast_paths`] switches it off, so the grouped conv stays the oracle of the tests.
//! - Mean-field weights with [`super::McDraws::LocalReparam`] on a 1x1 map: the output of each
//!   example and sample is drawn from its Gaussian over the centre tap (two matmuls), instead of
//!   drawing S weight tensors.

use super::act::Act;
use super::ctx::Ctx;
use super::fast::fast_paths;
use super::linear::{add_opt, local_reparam};
use super::mode::McSampling;
use super::posterior::BayesParam;
use super::route::{apply_routed, apply_segmented, rademacher, unify, Multi};
use super::{BayesLayer, LayerKind};
use crate::{Error, Result};
use tch::{nn, Tensor};

/// The centre tap of a kernel tensor `[..., k, k]` (odd k): `[...]`, a view.
fn kernel_centre(w: &Tensor) -> Tensor {
    let k = w.size()[w.dim() - 1];
    w.select(-1, k / 2).select(-1, k / 2)
}

/// Options of a [`Conv2d`] layer.
#[derive(Debug, Clone, Copy)]
pub struct ConvConfig {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
    pub bias: bool,
}

impl Default for ConvConfig {
    fn default() -> Self {
        ConvConfig {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
}

/// A 2-d convolution whose weight and bias may carry a posterior.
#[derive(Debug)]
pub struct Conv2d {
    path: String,
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub cfg: ConvConfig,
    pub weight: BayesParam,
    pub bias: Option<BayesParam>,
    /// The centre-tap weights of an ensemble laid out for the matmul, kept between forwards while
    /// the members are unchanged (see [`Conv2d::centre_weights`]).
    packed: std::sync::Mutex<Option<Packed>>,
    /// The weights with the following BatchNorm folded in, for inference (see
    /// [`Conv2d::forward_bn`]).
    folded: std::sync::Mutex<Option<Folded>>,
}

/// A point conv with its BatchNorm folded in, for one version of the tensors involved.
#[derive(Debug)]
struct Folded {
    /// The conv weight (and bias) and the BatchNorm's weight, bias, running mean and variance
    /// and batch counter.
    src: Sources,
    w: Tensor,
    b: Tensor,
    /// The centre tap `[out, C]` (odd kernels), for 1x1 maps.
    centre: Option<Tensor>,
}

/// Tensors a cached layout was made from, with their in-place versions (optimiser steps, loads
/// and BatchNorm updates bump them). Holding the tensors keeps their storage alive, so no other
/// tensor can take their address while the cache is kept.
#[derive(Debug)]
struct Sources(Vec<(Tensor, i64)>);

impl Sources {
    fn of(ts: &[&Tensor]) -> Sources {
        Sources(
            ts.iter()
                .map(|t| (t.shallow_clone(), t.internal_version()))
                .collect(),
        )
    }

    /// The same tensors (by storage) at the same versions.
    fn matches(&self, ts: &[&Tensor]) -> bool {
        self.0.len() == ts.len()
            && self
                .0
                .iter()
                .zip(ts)
                .all(|((a, v), b)| a.data_ptr() == b.data_ptr() && *v == b.internal_version())
    }
}

/// Centre-tap weights packed for one weight version.
#[derive(Debug)]
struct Packed {
    /// The members tensor and its version.
    src: Sources,
    /// S and the layout.
    key: (i64, bool),
    t: Tensor,
}

/// Builds a point conv under `p` with PyTorch's default init (bound 1/sqrt(fan_in)).
pub fn conv2d(p: &nn::Path, c_in: i64, c_out: i64, k: i64, cfg: ConvConfig) -> Conv2d {
    let path = p.components().collect::<Vec<_>>().join(".");
    let fan_in = (c_in / cfg.groups) * k * k;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = p.var("weight", &[c_out, c_in / cfg.groups, k, k], init);
    let b = cfg.bias.then(|| p.var("bias", &[c_out], init));
    Conv2d {
        weight: BayesParam::point(format!("{path}.weight"), w),
        bias: b.map(|b| BayesParam::point(format!("{path}.bias"), b)),
        path,
        in_channels: c_in,
        out_channels: c_out,
        kernel: k,
        cfg,
        packed: std::sync::Mutex::new(None),
        folded: std::sync::Mutex::new(None),
    }
}

impl Conv2d {
    fn conv(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, groups: i64) -> Tensor {
        let c = &self.cfg;
        x.conv2d(
            w,
            b,
            [c.stride, c.stride],
            [c.padding, c.padding],
            [c.dilation, c.dilation],
            groups,
        )
    }

    fn is_point(&self) -> bool {
        self.weight.is_point() && self.bias.as_ref().is_none_or(|b| b.is_point())
    }

    /// The forward under the context's mode.
    pub fn forward(&self, x: &Act, ctx: &Ctx) -> Result<Act> {
        // The first Bayesian layer turns distinct input rows into the batch (TrainSampling::rows).
        let expanded = if self.is_point() {
            None
        } else {
            Some(ctx.expand_rows(x)?)
        };
        let x = expanded.as_ref().unwrap_or(x);
        let size = x.t.size();
        let cdim = if x.samples.is_some() { 2 } else { 1 };
        if size.len() != cdim + 3 || size[cdim] != self.in_channels {
            return Err(Error::Shape(format!(
                "{}: expected [B, {}, H, W]{} input, got {:?}",
                self.path,
                self.in_channels,
                if x.samples.is_some() {
                    " with a sample axis"
                } else {
                    ""
                },
                size
            )));
        }
        if !self.is_point() {
            ctx.note_bayes();
            if let (Some(scheme), None) = (ctx.mean_field_scheme(), x.samples) {
                if let Some(y) = self.gaussian_trick(&x.t, scheme, ctx)? {
                    return Ok(Act::new(y));
                }
            }
            if let Some(s) = ctx.local_reparam_samples() {
                if let Some(y) = self.local_reparam_1x1(x, s) {
                    return Ok(Act::with(y, Some(s)));
                }
            }
        }
        let g = self.cfg.groups;
        if let Some(ids) = ctx.ensemble_routes(&self.weight, x)? {
            let n = self.weight.components().unwrap_or(1);
            let w = self.weight.draw(n)?; // [S, out, in/g, k, k]
            let b = match &self.bias {
                Some(b) => Some(b.draw(n)?), // [S, out]
                None => None,
            };
            let (out, cg, k) = (self.out_channels, self.in_channels / g, self.kernel);
            if fast_paths() {
                // One plain op per member over its examples (apply_segmented); on 1x1 maps a
                // matmul over the centre tap (trained weights: sliced anew each forward).
                let centre = self.centre_tap_only(&x.t);
                let ws = if centre { kernel_centre(&w) } else { w }.unbind(0);
                let bs = b.map(|b| b.unbind(0));
                let y = apply_segmented(&x.t, &ids, n, &mut |m, xm| {
                    let bm = bs.as_ref().map(|b| &b[m]);
                    Ok(if centre {
                        let rows = xm.size()[0];
                        xm.reshape([rows, self.in_channels])
                            .linear(&ws[m], bm)
                            .reshape([rows, out, 1, 1])
                    } else {
                        self.conv(xm, &ws[m], bm, g)
                    })
                })?;
                return Ok(Act::new(y));
            }
            // The oracle: [S, M, C, H, W] -> [M, S*C, H, W], one conv with S*g groups ->
            // [S, M, out, H', W'] (on 1x1 maps the same).
            let y = apply_routed(&x.t, &ids, n, &mut |xp| {
                let sz = xp.size();
                let m = sz[1];
                let xin = xp.transpose(0, 1).reshape([m, n * sz[2], sz[3], sz[4]]);
                let wf = w.reshape([n * out, cg, k, k]);
                let bf = b.as_ref().map(|b| b.reshape([n * out]));
                let y = self.conv(&xin, &wf, bf.as_ref(), n * g);
                let ys = y.size();
                Ok(y.reshape([m, n, out, ys[2], ys[3]]).transpose(0, 1))
            })?;
            return Ok(Act::new(y));
        }
        let w = ctx.draw(&self.weight)?;
        let b = self.bias.as_ref().map(|b| ctx.draw(b)).transpose()?;
        let (out, cg, k) = (self.out_channels, self.in_channels / g, self.kernel);
        Ok(match unify(w, b) {
            Multi::One(w, b) => x.map_flat(|t| self.conv(t, &w, b.as_ref(), g)),
            Multi::Shared(w, b) => {
                let s = w.size()[0];
                if let Some(y) = self.centre_tap(&x.t, x.samples, &w, b.as_ref()) {
                    return Ok(Act::with(y, Some(s)));
                }
                match x.samples {
                    None => {
                        // One wide conv: output channels ordered (group, sample, out/g) so that
                        // each of the g groups sees its own input slice.
                        let wg = w
                            .reshape([s, g, out / g, cg, k, k])
                            .transpose(0, 1)
                            .reshape([g * s * (out / g), cg, k, k]);
                        let bg =
                            b.map(|b| b.reshape([s, g, out / g]).transpose(0, 1).reshape([-1]));
                        let y = self.conv(&x.t, &wg, bg.as_ref(), g); // [B, g*S*out/g, H', W']
                        let ys = y.size();
                        let y = y
                            .reshape([ys[0], g, s, out / g, ys[2], ys[3]])
                            .transpose(1, 2)
                            .reshape([ys[0], s, out, ys[2], ys[3]]);
                        Act::with(y, Some(s))
                    }
                    Some(_) => {
                        let y = self.grouped(&x.t, &w, b.as_ref(), s);
                        Act::with(y, Some(s))
                    }
                }
            }
            Multi::PerExample(w, b) => {
                if x.samples.is_some() {
                    return Err(Error::Shape(format!(
                        "{}: per-example weights with a sample axis",
                        self.path
                    )));
                }
                // The batch becomes the "sample" axis of a single example.
                let y = self.grouped(&x.t.unsqueeze(0), &w, b.as_ref(), size[0]);
                Act::new(y.squeeze_dim(0))
            }
        })
    }

    /// This conv followed by `bn`. For inference (a forward that does not train) of two point
    /// layers, one conv whose weight and bias absorb BatchNorm's running-statistics affine
    /// (`w * g / sqrt(var + eps)`, `(b - mean) * g / sqrt(var + eps) + beta`), as PyTorch's
    /// inference optimisation does; on a 1x1 map with "same" padding a matmul over the centre
    /// tap. That removes one pass over the activations per BatchNorm and the k*k - 1 taps that
    /// meet only padding. The folded tensors are made once per version of the six tensors
    /// (optimiser steps, loads and BatchNorm updates bump the versions) without a graph: input
    /// gradients flow (attacks), parameter gradients need a training forward, which takes the
    /// unfused path. [`set_fast_paths`]`(false)` gives the unfused oracle.
    pub fn forward_bn(&self, bn: &super::BatchNorm, x: &Act, ctx: &Ctx) -> Result<Act> {
        let fold = fast_paths()
            && !ctx.train()
            && self.is_point()
            && bn.weight.is_point()
            && bn.bias.is_point()
            && bn.channels == self.out_channels;
        if !fold {
            return bn.forward(&self.forward(x, ctx)?, ctx);
        }
        let cdim = if x.samples.is_some() { 2 } else { 1 };
        let size = x.t.size();
        if size.len() != cdim + 3 || size[cdim] != self.in_channels {
            // The unfused forward names the problem.
            return bn.forward(&self.forward(x, ctx)?, ctx);
        }
        let (w, b, centre) = self.folded_with(bn);
        let centre = centre.filter(|_| self.centre_tap_only(&x.t));
        Ok(x.map_flat(|t| match &centre {
            // [N, C] x [out, C]^T -> [N, out, 1, 1]
            Some(c) => {
                let n = t.size()[0];
                t.reshape([n, self.in_channels])
                    .linear(c, Some(&b))
                    .reshape([n, self.out_channels, 1, 1])
            }
            None => self.conv(t, &w, Some(&b), self.cfg.groups),
        }))
    }

    /// The folded weight, bias and centre tap for the current versions of this conv's and
    /// `bn`'s tensors.
    fn folded_with(&self, bn: &super::BatchNorm) -> (Tensor, Tensor, Option<Tensor>) {
        let (w, b) = (self.weight.mean(), self.bias.as_ref().map(|b| b.mean()));
        let (g, beta) = (bn.weight.mean(), bn.bias.mean());
        // libtorch's batch_norm updates the running statistics without bumping their versions;
        // every training forward increments num_batches_tracked in place, which does.
        let mut src = vec![&w, &g, &beta, &bn.running_mean, &bn.running_var];
        src.push(&bn.num_batches_tracked);
        src.extend(b.as_ref());
        let mut cache = self.folded.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.as_ref().is_some_and(|f| f.src.matches(&src)) {
            *cache = Some(tch::no_grad(|| {
                let scale = &g / (&bn.running_var + bn.cfg.eps).sqrt(); // [out]
                let wf = &w * scale.reshape([-1, 1, 1, 1]);
                let shift = match &b {
                    Some(b) => b - &bn.running_mean,
                    None => -&bn.running_mean,
                };
                let k = self.kernel;
                let centre =
                    (k % 2 == 1 && self.cfg.groups == 1).then(|| kernel_centre(&wf).contiguous());
                Folded {
                    src: Sources::of(&src),
                    b: shift * &scale + &beta,
                    w: wf,
                    centre,
                }
            }));
        }
        let f = cache.as_ref().expect("just filled");
        (
            f.w.shallow_clone(),
            f.b.shallow_clone(),
            f.centre.as_ref().map(|c| c.shallow_clone()),
        )
    }

    /// Whether only the centre tap of the kernel meets data and the output map is 1x1: a 1x1
    /// input map with "same" padding and no groups.
    fn centre_tap_only(&self, x: &Tensor) -> bool {
        let c = &self.cfg;
        let (k, d) = (self.kernel, c.dilation);
        let size = x.size();
        let (h, wd) = (size[size.len() - 2], size[size.len() - 1]);
        c.groups == 1 && (h, wd) == (1, 1) && k % 2 == 1 && d * (k - 1) == 2 * c.padding
    }

    /// A mean-field conv on a 1x1 map in a parallel MC forward drawn by local
    /// reparameterisation ([`super::McDraws::LocalReparam`]): with one output position it is
    /// exact, as for a Linear layer over the centre tap. `None` for other layers and shapes.
    /// Output `[B, S, out, 1, 1]`.
    fn local_reparam_1x1(&self, x: &Act, s: i64) -> Option<Tensor> {
        let (mu, sigma) = self.weight.gaussian()?;
        if !self.centre_tap_only(&x.t) {
            return None;
        }
        let n = x.t.size()[0];
        let xf = match x.samples {
            None => x.t.reshape([n, self.in_channels]),
            Some(xs) => x.t.reshape([n, xs, self.in_channels]),
        };
        let bias = self.bias.as_ref().map(|b| (b.mean(), b.gaussian()));
        let shared_by = x.samples.is_none().then_some(s);
        let y = local_reparam(
            &xf,
            &kernel_centre(&mu),
            &kernel_centre(&sigma),
            bias,
            shared_by,
        );
        Some(y.reshape([n, s, self.out_channels, 1, 1]))
    }

    /// The S-weight conv of a 1x1 map as a matmul over the centre tap (see the module docs), or
    /// `None` where that is not the same computation: groups, a map larger than 1x1, or padding
    /// that lets other taps meet data (then the output would not be 1x1 either).
    /// `x`: `[B, C, 1, 1]` (`samples` None) or `[B, S, C, 1, 1]`; `w`: `[S, out, C, k, k]`;
    /// `b`: `[S, out]`. Output `[B, S, out, 1, 1]`.
    fn centre_tap(
        &self,
        x: &Tensor,
        samples: Option<i64>,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Option<Tensor> {
        if !fast_paths() || !self.centre_tap_only(x) {
            return None;
        }
        let size = x.size();
        let (s, out, cin, n) = (w.size()[0], self.out_channels, self.in_channels, size[0]);
        let shared_input = samples.is_none();
        let wc = self.centre_weights(w, shared_input);
        let y = match samples {
            // [B, C] x [C, S*out] -> [B, S, out]
            None => x.reshape([n, cin]).matmul(&wc).reshape([n, s, out]),
            // [S, B, C] x [S, C, out] -> [S, B, out] -> [B, S, out]
            Some(_) => x
                .reshape([n, s, cin])
                .transpose(0, 1)
                .bmm(&wc)
                .transpose(0, 1),
        };
        let y = match b {
            Some(b) => y + b.unsqueeze(0),
            None => y,
        };
        Some(y.reshape([n, s, out, 1, 1]))
    }

    /// The centre tap of `w` `[S, out, C, k, k]` as `[C, S*out]` (`shared_input`) or `[S, C, out]`,
    /// contiguous. An ensemble's members change only when trained or loaded, so outside autograd
    /// (detection, evaluation: the packed tensor needs no graph) the layout is made once per
    /// version of the members, not on every forward; sampled weights are new on every forward.
    fn centre_weights(&self, w: &Tensor, shared_input: bool) -> Tensor {
        let (s, out, cin) = (w.size()[0], self.out_channels, self.in_channels);
        let pack = || {
            let wc = kernel_centre(w); // [S, out, C]
            if shared_input {
                wc.reshape([s * out, cin]).tr().contiguous()
            } else {
                wc.transpose(1, 2).contiguous()
            }
        };
        if self.weight.family() != super::Family::Ensemble {
            return pack();
        }
        let key = (s, shared_input);
        let mut cache = self.packed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache
            .as_ref()
            .filter(|p| p.key == key && p.src.matches(&[w]))
        {
            return p.t.shallow_clone();
        }
        let t = pack();
        // A packed tensor in an autograd graph (an attack's forward) is not kept: the next
        // backward would meet a freed graph.
        *cache = (!t.requires_grad()).then(|| Packed {
            src: Sources::of(&[w]),
            key,
            t: t.shallow_clone(),
        });
        t
    }

    /// `[N, S, C, H, W]` with weights `[S, out, C/g, k, k]` -> `[N, S, out, H', W']` by one conv
    /// with groups S*g.
    fn grouped(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: i64) -> Tensor {
        let xs = x.size();
        let g = self.cfg.groups;
        let out = self.out_channels;
        let xf = x.reshape([xs[0], s * self.in_channels, xs[3], xs[4]]);
        let wf = w.reshape([s * out, self.in_channels / g, self.kernel, self.kernel]);
        let bf = b.map(|b| b.reshape([s * out]));
        let y = self.conv(&xf, &wf, bf.as_ref(), s * g);
        let ys = y.size();
        y.reshape([xs[0], s, out, ys[2], ys[3]])
    }

    /// Local reparameterisation / flipout for a mean-field weight; `None` for other schemes.
    fn gaussian_trick(&self, x: &Tensor, scheme: McSampling, ctx: &Ctx) -> Result<Option<Tensor>> {
        let Some((mu, sigma)) = self.weight.gaussian() else {
            return Ok(None);
        };
        let g = self.cfg.groups;
        match scheme {
            McSampling::LocalReparam => {
                let bias = self.bias.as_ref().map(|b| (b.mean(), b.gaussian()));
                let mean = self.conv(x, &mu, bias.as_ref().map(|b| &b.0), g);
                let var_b = bias.and_then(|b| b.1.map(|(_, s)| &s * &s));
                let var = self.conv(&(x * x), &(&sigma * &sigma), var_b.as_ref(), g);
                let eps = crate::runtime::precision::randn(&mean.size(), &mean);
                Ok(Some(mean + (var + 1e-16).sqrt() * eps))
            }
            McSampling::Flipout => {
                let bsz = x.size()[0];
                let delta = &sigma * crate::runtime::precision::randn(&mu.size(), &mu);
                // Signs per example and channel.
                let s_in = rademacher(&[bsz, self.in_channels, 1, 1], x);
                let s_out = rademacher(&[bsz, self.out_channels, 1, 1], x);
                let y =
                    self.conv(x, &mu, None, g) + self.conv(&(x * s_in), &delta, None, g) * s_out;
                let b = match &self.bias {
                    // [B, out] or [out] -> broadcast over H, W
                    Some(b) => Some(ctx.draw(b)?.into_tensor().unsqueeze(-1).unsqueeze(-1)),
                    None => None,
                };
                Ok(Some(add_opt(y, b)))
            }
            _ => Ok(None),
        }
    }
}

impl BayesLayer for Conv2d {
    fn path(&self) -> &str {
        &self.path
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Conv2d
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
