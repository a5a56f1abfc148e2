//! The prior regulariser (docs/design.md section 5): an isotropic Gaussian prior N(0, 1/(λN))
//! whose KL per datum is added to the gradients after `backward()`, never to the loss.
//!
//! Per VarStore variable (classified by name, see [`crate::bayes::ParamGroup`]):
//! - mean-field `mu` (a `weight` with a `weight_psi` sibling): `grad += λ mu`, or `λ (mu - mu0)`
//!   with `moped` (a prior centred at the means at construction time, i.e. the pretrained weights);
//! - `psi`: `grad += λ exp(2 psi) - 1/N`;
//!   together the exact gradient of `KL(N(mu, e^{2psi}) || N(0, 1/(λN))) / N`;
//! - ensemble members `[S, ...]`: `grad += (λ/S) member` (L2 on the member average penalty);
//! - low-rank (`mu`, `A`, `B`): the gradient of `λ/(2S) Σ_s ||mu ⊙ (A_s B_s)||²` in closed form;
//! - point parameters: plain L2, `grad += λ w`.
//!
//! Non-trainable variables (BatchNorm running statistics) and variables without a gradient (not
//! in the graph of the last backward) are skipped. Because the regulariser already decays every
//! trainable tensor, the optimiser's own weight decay must be 0 for these groups: the reference
//! applied it twice (docs/design.md section 6); [`crate::bayes::optim::Sgd`] defaults to 0.

use super::posterior::{SUFFIX_LR_A, SUFFIX_LR_B, SUFFIX_MEMBERS, SUFFIX_PSI};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{nn, Tensor};

/// Prior hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PriorConfig {
    /// λ, the weight decay of the MAP pre-training.
    pub decay: f64,
    /// N, the number of training examples.
    pub num_data: usize,
    /// Centre the means' prior at their values when the regulariser is built (MOPED).
    pub moped: bool,
}

impl PriorConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.decay >= 0.0 && self.decay.is_finite()) {
            return Err(Error::param(
                "decay",
                self.decay,
                "the prior decay λ must be finite and >= 0",
            ));
        }
        if self.num_data == 0 {
            return Err(Error::param(
                "num_data",
                0,
                "the prior's data set size N must be >= 1",
            ));
        }
        Ok(())
    }
}

/// Adds the prior's gradient to the variables of a VarStore.
#[derive(Debug)]
pub struct PriorRegularizer {
    cfg: PriorConfig,
    centres: HashMap<String, Tensor>,
}

impl PriorRegularizer {
    /// Builds the regulariser; with `moped`, snapshots the current means of mean-field layers.
    pub fn new(vs: &nn::VarStore, cfg: PriorConfig) -> Result<Self> {
        cfg.validate()?;
        let mut centres = HashMap::new();
        if cfg.moped {
            let vars = vs.variables();
            for (name, t) in &vars {
                if vars.contains_key(&format!("{name}{SUFFIX_PSI}")) {
                    centres.insert(name.clone(), t.detach().copy());
                }
            }
        }
        Ok(PriorRegularizer { cfg, centres })
    }

    pub fn config(&self) -> &PriorConfig {
        &self.cfg
    }

    /// Adds the prior gradient to every trainable variable's `.grad` (call after backward,
    /// before the optimiser step).
    pub fn apply(&self, vs: &nn::VarStore) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let vars = vs.variables();
        let lam = self.cfg.decay;
        let inv_n = 1.0 / self.cfg.num_data as f64;
        for (name, t) in &vars {
            if !t.requires_grad() {
                continue;
            }
            let mut g = t.grad();
            if !g.defined() {
                continue;
            }
            if name.ends_with(SUFFIX_PSI) {
                let _ = g.g_add_(&((t * 2.0).exp() * lam - inv_n));
            } else if name.ends_with(SUFFIX_MEMBERS) {
                let s = t.size()[0] as f64;
                let _ = g.g_add_(&(t * (lam / s)));
            } else if name.ends_with(SUFFIX_LR_A) || name.ends_with(SUFFIX_LR_B) {
                // Handled together with the mean below.
            } else if let (Some(a), Some(b)) = (
                vars.get(&format!("{name}{SUFFIX_LR_A}")),
                vars.get(&format!("{name}{SUFFIX_LR_B}")),
            ) {
                let (gm, ga, gb) = low_rank_prior_grads(t, a, b, lam);
                let _ = g.g_add_(&gm);
                for (v, d) in [(a, ga), (b, gb)] {
                    let mut vg = v.grad();
                    if vg.defined() {
                        let _ = vg.g_add_(&d);
                    }
                }
            } else if let Some(c) = self.centres.get(name) {
                let _ = g.g_add_(&((t - c) * lam));
            } else {
                let _ = g.g_add_(&(t * lam));
            }
        }
        Ok(())
    }
}

/// Closed-form gradients of `λ/(2S) Σ_s ||mu ⊙ M_s||²`, `M_s = A_s B_s` (reshaped like mu).
///
/// # Shapes
/// mu `[out, ...]`, a `[S, out, r]`, b `[S, r, numel/out]`; returns grads of the same shapes.
pub fn low_rank_prior_grads(
    mu: &Tensor,
    a: &Tensor,
    b: &Tensor,
    lam: f64,
) -> (Tensor, Tensor, Tensor) {
    let s = a.size()[0];
    let out = mu.size()[0];
    let mu2 = mu.reshape([1, out, -1]); // [1, out, rest]
    let m = a.bmm(b); // [S, out, rest]
    let gm = (&mu2 * &m * &m).sum_dim_intlist(0, false, mu.kind()) * (lam / s as f64);
    let gmat = &mu2 * &mu2 * &m * (lam / s as f64); // dL/dM_s
    let ga = gmat.bmm(&b.transpose(1, 2));
    let gb = a.transpose(1, 2).bmm(&gmat);
    (gm.reshape(mu.size()), ga, gb)
}
