//! SPSA (Uesato et al. 2018), the black-box attack of docs/design.md section 8: the margin loss's
//! gradient is estimated from `samples` Rademacher directions v, each evaluated at x + delta v and
//! x - delta v (`(f(x + dv) - f(x - dv)) / (2 delta) * v`, averaged), and ascended with Adam
//! (lr 0.01) for `steps` iterations, projecting to the l_inf ball and [0, 1] after each update.
//! An example stops at its first misclassification (targeted: at the target). Only forwards,
//! under `no_grad`; the directions come from the seed. Defaults: 100 iterations, 128 samples,
//! delta 1e-3, eps 16/255.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{check, AttackError, Result};
use crate::geometry::{check_batch, Ball, Norm};
use crate::objective::Objective;
use crate::rng::SeededRng;
use crate::victim::predictive_log_probs;
use crate::{Attack, Budget, Victim};

/// SPSA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpsaConfig {
    pub eps: f64,
    /// Adam iterations.
    pub steps: usize,
    /// Rademacher directions per gradient estimate (each costs two forwards).
    pub samples: usize,
    pub delta: f64,
    pub learning_rate: f64,
    /// Directions evaluated per victim forward (memory bound: 2 x max_batch x B images).
    pub max_batch: usize,
    /// Freeze an example once it is misclassified (as in LiBRe's evaluation).
    pub early_stop: bool,
    pub targeted: bool,
}

impl Default for SpsaConfig {
    fn default() -> Self {
        SpsaConfig {
            eps: 16.0 / 255.0,
            steps: 100,
            samples: 128,
            delta: 1e-3,
            learning_rate: 0.01,
            max_batch: 64,
            early_stop: true,
            targeted: false,
        }
    }
}

impl SpsaConfig {
    /// Checks eps >= 0, delta > 0, learning_rate > 0 and counts >= 1.
    pub fn validate(&self) -> Result<()> {
        check::non_negative("spsa", "eps", self.eps)?;
        check::positive("spsa", "delta", self.delta)?;
        check::positive("spsa", "learning_rate", self.learning_rate)?;
        check::at_least("spsa", "steps", self.steps, 1)?;
        check::at_least("spsa", "samples", self.samples, 1)?;
        check::at_least("spsa", "max_batch", self.max_batch, 1)
    }
}

/// The SPSA attack.
#[derive(Debug, Clone, Default)]
pub struct Spsa {
    config: SpsaConfig,
}

impl Spsa {
    /// Validates the config.
    pub fn new(config: SpsaConfig) -> Result<Self> {
        config.validate()?;
        Ok(Spsa { config })
    }

    pub fn config(&self) -> &SpsaConfig {
        &self.config
    }
}

/// Per-example predictive log-probabilities, checking the victim's output shape.
fn log_probs(victim: &dyn Victim, x: &Tensor) -> Result<Tensor> {
    let n = x.size()[0];
    let z = victim.logits(x);
    let zs = z.size();
    if !(zs.len() == 2 || zs.len() == 3) || zs[0] != n || zs[zs.len() - 1] < 2 {
        return Err(AttackError::shape(
            "spsa",
            "victim logits",
            zs,
            &format!("[{n}, K] or [{n}, S, K], K >= 2"),
        ));
    }
    Ok(predictive_log_probs(&z))
}

impl Attack for Spsa {
    fn name(&self) -> &str {
        "spsa"
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn budget(&self) -> Option<Budget> {
        Some(Budget {
            norm: Norm::Linf,
            eps: self.config.eps,
        })
    }

    fn targeted(&self) -> bool {
        self.config.targeted
    }

    /// # Shapes
    /// Per chunk of n directions and A active examples the victim sees `[2 n A, C, H, W]`.
    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, seed: u64) -> Result<Tensor> {
        check_batch("spsa", x, y)?;
        let cfg = &self.config;
        let b = x.size()[0];
        if cfg.eps == 0.0 || b == 0 {
            return Ok(x.copy());
        }
        let objective = Objective {
            targeted: cfg.targeted,
            ..Objective::margin()
        };
        tch::no_grad(|| {
            let x = &x.detach();
            let (device, kind) = (x.device(), x.kind());
            let shape = x.size();
            let mut rng = SeededRng::new(seed);
            let mut adv = x.shallow_clone();
            let mut m = x.zeros_like();
            let mut v = x.zeros_like();
            let mut active = Tensor::ones([b], (Kind::Bool, device));
            let (beta1, beta2, adam_eps) = (0.9f64, 0.999f64, 1e-8);
            for t in 1..=cfg.steps {
                if cfg.early_stop {
                    let pred = log_probs(victim, &adv)?.argmax(1, false);
                    let done = if cfg.targeted {
                        pred.eq_tensor(y)
                    } else {
                        pred.ne_tensor(y)
                    };
                    active = active.logical_and(&done.logical_not());
                }
                let idx = active.nonzero().squeeze_dim(1);
                let a = idx.size()[0];
                if a == 0 {
                    break;
                }
                let xa = adv.index_select(0, &idx); // [A, C, H, W]
                let ya = y.index_select(0, &idx);
                let mut grad = xa.zeros_like();
                let mut left = cfg.samples;
                while left > 0 {
                    let n = left.min(cfg.max_batch) as i64;
                    left -= n as usize;
                    let mut dshape = vec![n];
                    dshape.extend_from_slice(&shape[1..]);
                    dshape.insert(1, a); // [n, A, C, H, W]
                    let dirs = rng.rademacher(&dshape, kind, device);
                    let base = xa.unsqueeze(0);
                    let both =
                        Tensor::cat(&[&base + &dirs * cfg.delta, &base - &dirs * cfg.delta], 0)
                            .view([-1, shape[1], shape[2], shape[3]]); // [2 n A, C, H, W]
                    let yy = ya.repeat([2 * n]);
                    let f = objective
                        .per_example("spsa", &victim.logits(&both), &yy)?
                        .view([2, n, a]);
                    let df = (f.get(0) - f.get(1)) / (2.0 * cfg.delta); // [n, A]
                    grad += (dirs * df.view([n, a, 1, 1, 1]).to_kind(kind))
                        .sum_dim_intlist(0, false, kind);
                }
                let grad = grad / cfg.samples as f64;
                // Adam ascent on the active rows; the others keep their state.
                let ma = m.index_select(0, &idx) * beta1 + &grad * (1.0 - beta1);
                let va = v.index_select(0, &idx) * beta2 + grad.square() * (1.0 - beta2);
                let mhat = &ma / (1.0 - beta1.powi(t as i32));
                let vhat = &va / (1.0 - beta2.powi(t as i32));
                let stepped = &xa + mhat / (vhat.sqrt() + adam_eps) * cfg.learning_rate;
                let xs = x.index_select(0, &idx);
                let stepped = Ball::new(&xs, Norm::Linf, cfg.eps).project(&xs, &stepped);
                m = m.index_copy(0, &idx, &ma);
                v = v.index_copy(0, &idx, &va);
                adv = adv.index_copy(0, &idx, &stepped);
            }
            Ok(adv)
        })
    }
}
