//! The Carlini-Wagner l_2 attack (Carlini & Wagner 2017): minimise
//! `||x' - x||_2^2 + c * max(Z_y - max_{j != y} Z_j + kappa, 0)` over `x' = (tanh(w) + 1) / 2` with
//! Adam, and binary-search `c` per example. Z are the predictive log-probabilities (for `[B, K]`
//! logits their differences equal the logit differences the paper uses; for a Bayesian victim they
//! are the log of the MC-averaged softmax, docs/design.md section 8).
//!
//! Defaults are the usual library ones (advertorch / foolbox): 9 binary-search steps, initial
//! c 1e-3, Adam lr 0.01, confidence 0, early abort; `max_iterations` 1000 as cleverhans (advertorch's
//! 10 000 is rarely affordable). An example the search never fools is returned unchanged.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{check, AttackError, Result};
use crate::geometry::check_batch;
use crate::victim::predictive_log_probs;
use crate::{Attack, Budget, Victim};

/// Carlini-Wagner l_2 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CwL2Config {
    /// kappa: required log-probability margin of the adversarial class.
    pub confidence: f64,
    pub learning_rate: f64,
    pub binary_search_steps: usize,
    pub max_iterations: usize,
    pub initial_const: f64,
    /// Stop a search step when the loss has not dropped by 0.01% over max_iterations / 10 steps.
    pub abort_early: bool,
    pub targeted: bool,
}

impl Default for CwL2Config {
    fn default() -> Self {
        CwL2Config {
            confidence: 0.0,
            learning_rate: 0.01,
            binary_search_steps: 9,
            max_iterations: 1000,
            initial_const: 1e-3,
            abort_early: true,
            targeted: false,
        }
    }
}

impl CwL2Config {
    /// Checks confidence >= 0, learning_rate > 0, initial_const > 0, step counts >= 1.
    pub fn validate(&self) -> Result<()> {
        check::non_negative("cw-l2", "confidence", self.confidence)?;
        check::positive("cw-l2", "learning_rate", self.learning_rate)?;
        check::positive("cw-l2", "initial_const", self.initial_const)?;
        check::at_least("cw-l2", "binary_search_steps", self.binary_search_steps, 1)?;
        check::at_least("cw-l2", "max_iterations", self.max_iterations, 1)
    }
}

/// The Carlini-Wagner l_2 attack.
#[derive(Debug, Clone, Default)]
pub struct CwL2 {
    config: CwL2Config,
}

impl CwL2 {
    /// Validates the config.
    pub fn new(config: CwL2Config) -> Result<Self> {
        config.validate()?;
        Ok(CwL2 { config })
    }

    pub fn config(&self) -> &CwL2Config {
        &self.config
    }
}

const NO_UPPER: f64 = 1e10;

impl Attack for CwL2 {
    fn name(&self) -> &str {
        "cw-l2"
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn budget(&self) -> Option<Budget> {
        None
    }

    fn targeted(&self) -> bool {
        self.config.targeted
    }

    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, _seed: u64) -> Result<Tensor> {
        check_batch("cw-l2", x, y)?;
        let cfg = &self.config;
        let b = x.size()[0];
        if b == 0 {
            return Ok(x.copy());
        }
        let x = &x.detach();
        let (device, kind) = (x.device(), x.kind());
        let y1 = y.view([b, 1]);
        let kappa = cfg.confidence;
        let (mut lo, mut up) = (vec![0.0f64; b as usize], vec![NO_UPPER; b as usize]);
        let mut c = vec![cfg.initial_const; b as usize];
        let mut best_l2 = Tensor::full([b], f64::INFINITY, (Kind::Float, device));
        let mut best_adv = x.copy();
        // 1 - 1e-6 keeps atanh finite at pixels exactly 0 or 1.
        let w0 = tch::no_grad(|| ((x * 2.0 - 1.0) * (1.0 - 1e-6)).atanh());
        let (beta1, beta2, adam_eps) = (0.9f64, 0.999f64, 1e-8);
        let check_every = (cfg.max_iterations / 10).max(1);
        for _ in 0..cfg.binary_search_steps {
            let c_t = Tensor::from_slice(&c)
                .to_kind(Kind::Float)
                .to_device(device);
            let mut w = w0.shallow_clone();
            let mut m = w0.zeros_like();
            let mut v = w0.zeros_like();
            let mut succeeded = Tensor::zeros([b], (Kind::Bool, device));
            let mut prev = f64::INFINITY;
            for it in 0..cfg.max_iterations {
                let (grad, loss, l2sq, success, xa) = tch::with_grad(|| -> Result<_> {
                    let wv = w.detach().set_requires_grad(true);
                    let xa = (wv.tanh() + 1.0) * 0.5; // [B, C, H, W]
                    let logits = victim.logits(&xa.to_kind(kind));
                    let ls = logits.size();
                    if !(ls.len() == 2 || ls.len() == 3) || ls[0] != b || ls[ls.len() - 1] < 2 {
                        return Err(AttackError::shape(
                            "cw-l2",
                            "victim logits",
                            ls,
                            &format!("[{b}, K] or [{b}, S, K], K >= 2"),
                        ));
                    }
                    let z = predictive_log_probs(&logits); // [B, K]
                    let real = z.gather(1, &y1, false).squeeze_dim(1);
                    let mask = z
                        .zeros_like()
                        .scatter_value(1, &y1, 1.0)
                        .to_kind(Kind::Bool);
                    let other = z.masked_fill(&mask, f64::NEG_INFINITY).amax(1, false);
                    let gap = if cfg.targeted {
                        &other - &real
                    } else {
                        &real - &other
                    };
                    let f = (&gap + kappa).clamp_min(0.0);
                    let l2sq =
                        (&xa - x)
                            .square()
                            .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float);
                    let loss = (&l2sq + &c_t * f).sum(Kind::Float);
                    let grad = Tensor::f_run_backward(&[&loss], &[&wv], false, false)
                        .map_err(|source| AttackError::Torch {
                            attack: "cw-l2".into(),
                            source,
                        })?
                        .pop()
                        .expect("one gradient");
                    // Success as in the paper: the margin beats kappa (gap < -kappa).
                    let success = (gap + kappa).lt(0.0);
                    Ok((grad, loss.detach(), l2sq.detach(), success, xa.detach()))
                })?;
                tch::no_grad(|| {
                    let t = (it + 1) as i32;
                    m = &m * beta1 + &grad * (1.0 - beta1);
                    v = &v * beta2 + grad.square() * (1.0 - beta2);
                    let mhat = &m / (1.0 - beta1.powi(t));
                    let vhat = &v / (1.0 - beta2.powi(t));
                    w = &w - mhat / (vhat.sqrt() + adam_eps) * cfg.learning_rate;
                    let improved = success.logical_and(&l2sq.lt_tensor(&best_l2));
                    best_l2 = l2sq.where_self(&improved, &best_l2);
                    best_adv = xa
                        .to_kind(kind)
                        .where_self(&improved.view([b, 1, 1, 1]), &best_adv);
                    succeeded = succeeded.logical_or(&success);
                });
                if cfg.abort_early && it % check_every == 0 {
                    let l = loss.double_value(&[]);
                    if l > prev * 0.9999 {
                        break;
                    }
                    prev = l;
                }
            }
            let won: Vec<bool> = Vec::<bool>::try_from(&succeeded).expect("bool vector");
            for i in 0..b as usize {
                if won[i] {
                    up[i] = up[i].min(c[i]);
                    c[i] = (lo[i] + up[i]) / 2.0;
                } else {
                    lo[i] = lo[i].max(c[i]);
                    c[i] = if up[i] < NO_UPPER {
                        (lo[i] + up[i]) / 2.0
                    } else {
                        c[i] * 10.0
                    };
                }
            }
        }
        Ok(best_adv)
    }
}
