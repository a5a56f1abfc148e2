//! Adaptive attacks on a classifier guarded by a detector, scored the way the field scores
//! detectors (Carlini & Wagner 2017, "Adversarial examples are not easily detected"; Tramer et
//! al. 2020, "On adaptive attacks to adversarial example defenses"; docs/detection.md, "Adaptive
//! evaluation"): the attacker knows the model, the detector score and the threshold fixed on
//! clean data, and wins on an image only when its adversarial input is misclassified *and*
//! scores below the threshold (not flagged).
//!
//! One engine, four objectives ([`AdaptiveMode`]):
//! - `pgd-restarts`: the classifier's loss alone (plain PGD with this engine's budget);
//! - `mimicry` / `mimicry-log`: ascend `loss - C * s(x)`, with `s` the score or, scale-free,
//!   `log s` (whose gradient is the score's divided by its current value);
//! - `selective`: ascend the loss while the image is still classified correctly, descend `s`
//!   once it is misclassified (each image switches on its own, at every step);
//! - `orthogonal` (Bryniarski et al., ICLR 2022, "Evading adversarial example detectors using
//!   orthogonal projected gradient descent"): while the image is classified correctly, step along
//!   the classifier's gradient with its component along the detector's gradient removed; once it
//!   is misclassified, step along the detector's (descent) gradient with its component along the
//!   classifier's removed, so progress on one objective does not undo the other.
//!
//! The budget finds what is there: `steps` per restart, `restarts` random starts, a step-size
//! schedule, and per-image early stop once an image is evaded (the batch shrinks, so a restart
//! costs only what the surviving images cost). Every iterate, the random start and the last one
//! included, is checked from the forward that computes its gradient (no extra forward but one
//! after the last step), and each image keeps its best iterate: evaded (the first found), else
//! misclassified with the lowest score, else the last iterate. With `restarts = 1`, no early stop,
//! a constant step and `pgd-restarts`, an image the attack does not fool ends exactly where
//! [`crate::pgd::Pgd`] with the same seed ends.
//!
//! Randomised victims (MC dropout, mean-field sampling) are attacked with Expectation over
//! Transformation: `eot_samples` forwards per step, gradients and the checked predictive and
//! score averaged over them. Non-differentiable steps inside the victim's score are the victim's
//! business (BPDA: libre's Mahalanobis pre-processing differentiates as the identity).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{check, AttackError, Result};
use crate::geometry::{check_batch, l2_scale, Ball, Norm};
use crate::objective::Objective;
use crate::rng::SeededRng;
use crate::victim::{predictive_log_probs, Victim};
use crate::{Attack, Budget};

/// Upper bounds on the budget: beyond these a run would not end in any useful time, and a typo
/// (`steps = 1000000000`) is refused before any work.
pub const MAX_STEPS: usize = 100_000;
pub const MAX_RESTARTS: usize = 1_000;

/// What each step ascends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdaptiveMode {
    /// The classifier's loss alone.
    Plain,
    /// `loss - C * s(x)`.
    Mimicry,
    /// The loss while correct, `-s(x)` once misclassified.
    Selective,
    /// Each objective's gradient projected orthogonal to the other's (see the module docs).
    Orthogonal,
}

/// How the detector score enters the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreForm {
    /// The score itself.
    Linear,
    /// `log(max(score, 1e-12))`: independent of the score's scale, for scores that are positive
    /// (feature variance, softmax variance, mutual information, entropy).
    Log,
}

/// The step-size schedule over one restart's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// `step_size` throughout.
    Constant,
    /// `step_size` halved at each quarter of the steps: a, a/2, a/4, a/8 (coarse moves first,
    /// then a fine search near the best region, as APGD's decay does on a fixed timetable).
    Halving,
}

/// Settings of an adaptive attack. `eps` and `step_size` are per-coordinate (l_2: times
/// `sqrt(D)`, [`crate::geometry`]); `objective.adaptive_c` is mimicry's C.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveConfig {
    pub eps: f64,
    pub step_size: f64,
    pub steps: usize,
    pub norm: Norm,
    pub mode: AdaptiveMode,
    pub score_form: ScoreForm,
    /// Random starts; each later one runs only on the images not yet evaded (with early stop).
    pub restarts: usize,
    /// The first restart starts at a random point of the ball (later ones always do).
    pub random_start: bool,
    pub schedule: Schedule,
    /// The detector's threshold (score >= threshold is flagged); `None`: success is
    /// misclassification alone (a classifier without a detector).
    pub threshold: Option<f64>,
    /// Stop working on an image once one of its iterates is evaded.
    pub early_stop: bool,
    #[serde(flatten)]
    pub objective: Objective,
}

impl AdaptiveConfig {
    /// The defaults of `mode`: eps 16/255, step 1/255, 200 steps, 2 restarts, halving schedule,
    /// early stop, C = 1 for mimicry (0 otherwise), no threshold.
    pub fn new(mode: AdaptiveMode, score_form: ScoreForm) -> Self {
        AdaptiveConfig {
            eps: 16.0 / 255.0,
            step_size: 1.0 / 255.0,
            steps: 200,
            norm: Norm::Linf,
            mode,
            score_form,
            restarts: 2,
            random_start: true,
            schedule: Schedule::Halving,
            threshold: None,
            early_stop: true,
            objective: Objective {
                adaptive_c: if mode == AdaptiveMode::Mimicry {
                    1.0
                } else {
                    0.0
                },
                ..Objective::default()
            },
        }
    }

    /// The registry name of this configuration.
    pub fn name(&self) -> &'static str {
        match (self.mode, self.score_form) {
            (AdaptiveMode::Plain, _) => "pgd-restarts",
            (AdaptiveMode::Mimicry, ScoreForm::Linear) => "mimicry",
            (AdaptiveMode::Mimicry, ScoreForm::Log) => "mimicry-log",
            (AdaptiveMode::Selective, _) => "selective",
            (AdaptiveMode::Orthogonal, _) => "orthogonal",
        }
    }

    /// Checks the budget (eps, step >= 0; 1 <= steps <= [`MAX_STEPS`]; 1 <= restarts <=
    /// [`MAX_RESTARTS`]), C >= 0 (and C = 0 outside mimicry: the other modes weigh nothing), a
    /// finite threshold, and the objective.
    pub fn validate(&self) -> Result<()> {
        let a = self.name();
        check::non_negative(a, "eps", self.eps)?;
        check::non_negative(a, "step_size", self.step_size)?;
        check::at_least(a, "steps", self.steps, 1)?;
        check::at_most(a, "steps", self.steps, MAX_STEPS)?;
        check::at_least(a, "restarts", self.restarts, 1)?;
        check::at_most(a, "restarts", self.restarts, MAX_RESTARTS)?;
        check::non_negative(a, "adaptive_c", self.objective.adaptive_c)?;
        if self.mode != AdaptiveMode::Mimicry && self.objective.adaptive_c != 0.0 {
            return Err(AttackError::config(
                a,
                "adaptive_c",
                self.objective.adaptive_c,
                "is mimicry's weight C; this attack weighs nothing (leave it 0 or use `mimicry`)",
            ));
        }
        if let Some(t) = self.threshold {
            check::finite(a, "threshold", t)?;
        }
        self.objective.validate(a)
    }

    /// Whether a step needs the detector score.
    fn needs_score(&self) -> bool {
        match self.mode {
            AdaptiveMode::Plain => self.threshold.is_some(),
            AdaptiveMode::Mimicry => self.objective.adaptive_c != 0.0 || self.threshold.is_some(),
            AdaptiveMode::Selective | AdaptiveMode::Orthogonal => true,
        }
    }

    /// The step length at step `t` (per-coordinate units).
    pub fn step_at(&self, t: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.step_size,
            Schedule::Halving => {
                let quarter = (4 * t / self.steps.max(1)).min(3) as i32;
                self.step_size * 0.5f64.powi(quarter)
            }
        }
    }
}

/// An adaptive attack (`pgd-restarts`, `mimicry`, `mimicry-log`, `selective`, `orthogonal`).
#[derive(Debug, Clone)]
pub struct Adaptive {
    config: AdaptiveConfig,
}

impl Adaptive {
    /// Validates the config.
    pub fn new(config: AdaptiveConfig) -> Result<Self> {
        config.validate()?;
        Ok(Adaptive { config })
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }
}

/// What one iterate is for the attacker: 2 evaded, 1 misclassified but flagged, 0 classified
/// correctly.
const EVADED: i64 = 2;

/// The forward (and backward) of one step on the active images.
struct Probe {
    /// `[b]` int64: 0, 1 or [`EVADED`].
    level: Tensor,
    /// `[b]` float: the score (zeros when the step needs none).
    score: Tensor,
    /// `[b, C, H, W]`: the ascent direction (None after the last step).
    grad: Option<Tensor>,
}

/// `a` with its component along `b` removed, per example (flattened): `a - <a,b>/<b,b> b`.
///
/// # Shapes
/// `a`, `b`: `[B, C, H, W]` -> `[B, C, H, W]`
pub fn project_out(a: &Tensor, b: &Tensor) -> Tensor {
    let dims = [1i64, 2, 3];
    let ab = (a * b).sum_dim_intlist(&dims[..], true, Kind::Float);
    let bb = b.square().sum_dim_intlist(&dims[..], true, Kind::Float);
    a - b * (ab / (bb + 1e-30))
}

impl Adaptive {
    fn score_term(&self, s: &Tensor) -> Tensor {
        match self.config.score_form {
            ScoreForm::Linear => s.shallow_clone(),
            ScoreForm::Log => s.clamp_min(1e-12).log(),
        }
    }

    /// Checks the iterate `adv` of the active images and, with `want_grad`, computes the step's
    /// ascent direction, from the same forwards (EoT: `eot_samples` of a randomised victim).
    fn probe(
        &self,
        victim: &dyn Victim,
        adv: &Tensor,
        y: &Tensor,
        want_grad: bool,
    ) -> Result<Probe> {
        let cfg = &self.config;
        let name = cfg.name();
        let b = y.size()[0];
        let needs_score = cfg.needs_score();
        let draws = if victim.is_stochastic() {
            cfg.objective.eot_samples
        } else {
            1
        };
        let body = || -> Result<Probe> {
            let xg = adv.detach().set_requires_grad(want_grad);
            let mut probs: Option<Tensor> = None;
            let mut score_sum: Option<Tensor> = None;
            let mut grad_sum: Option<Tensor> = None;
            for _ in 0..draws {
                let (logits, score) = if needs_score {
                    let (l, s) = victim.logits_and_score(&xg);
                    let s = s.ok_or_else(|| AttackError::NoDetector {
                        attack: name.to_string(),
                    })?;
                    if s.size() != [b] {
                        return Err(AttackError::shape(
                            name,
                            "victim score",
                            s.size(),
                            &format!("[{b}]"),
                        ));
                    }
                    (l, Some(s.to_kind(Kind::Float)))
                } else {
                    (victim.logits(&xg), None)
                };
                let loss = cfg.objective.per_example(name, &logits, y)?; // [b]
                let p = predictive_log_probs(&logits).detach().exp(); // [b, K]
                let correct = self.correct(&p, y);
                if want_grad {
                    let g = self.direction(&xg, &loss, score.as_ref(), &correct)?;
                    grad_sum = Some(match grad_sum {
                        Some(t) => t + g,
                        None => g,
                    });
                }
                probs = Some(match probs {
                    Some(t) => t + p,
                    None => p,
                });
                if let Some(s) = score {
                    let s = s.detach();
                    score_sum = Some(match score_sum {
                        Some(t) => t + s,
                        None => s,
                    });
                }
            }
            let n = draws as f64;
            let probs = probs.expect("draws >= 1") / n;
            let score = score_sum
                .map(|s| s / n)
                .unwrap_or_else(|| Tensor::zeros([b], (Kind::Float, adv.device())));
            let wrong = self.correct(&probs, y).logical_not();
            let flagged = match cfg.threshold {
                Some(t) => score.ge(t),
                None => score.zeros_like().to_kind(Kind::Bool),
            };
            let level =
                wrong.to_kind(Kind::Int64) * (flagged.logical_not().to_kind(Kind::Int64) + 1);
            Ok(Probe {
                level,
                score,
                grad: grad_sum.map(|g| g / n),
            })
        };
        if want_grad {
            tch::with_grad(body)
        } else {
            tch::no_grad(body)
        }
    }

    /// `[b]` bool: the prediction is the label (untargeted) or not the target (targeted): the
    /// attack has not yet succeeded on the classifier.
    fn correct(&self, probs: &Tensor, y: &Tensor) -> Tensor {
        let hit = probs.argmax(-1, false).eq_tensor(y);
        if self.config.objective.targeted {
            hit.logical_not()
        } else {
            hit
        }
    }

    /// The ascent direction at `xg` from one forward's per-example loss and score.
    fn direction(
        &self,
        xg: &Tensor,
        loss: &Tensor,
        score: Option<&Tensor>,
        correct: &Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let name = cfg.name();
        let backward = |t: Tensor, keep: bool| -> Result<Tensor> {
            let mut g = Tensor::f_run_backward(&[t.sum(Kind::Float)], &[xg], keep, false).map_err(
                |source| AttackError::Torch {
                    attack: name.to_string(),
                    source,
                },
            )?;
            Ok(g.pop().expect("one input, one gradient"))
        };
        let sel = correct.view([-1, 1, 1, 1]);
        match (cfg.mode, score) {
            (AdaptiveMode::Plain, _) => backward(loss.shallow_clone(), false),
            (AdaptiveMode::Mimicry, Some(s)) if cfg.objective.adaptive_c != 0.0 => {
                backward(loss - self.score_term(s) * cfg.objective.adaptive_c, false)
            }
            (AdaptiveMode::Mimicry, _) => backward(loss.shallow_clone(), false),
            (AdaptiveMode::Selective, Some(s)) => {
                // Per image: the loss while correct, minus the score once fooled.
                let s = self.score_term(s);
                backward(loss.where_self(correct, &(-s)), false)
            }
            (AdaptiveMode::Orthogonal, Some(s)) => {
                let g_cls = backward(loss.shallow_clone(), true)?;
                let g_det = backward(-self.score_term(s), false)?;
                let up = project_out(&g_cls, &g_det);
                let down = project_out(&g_det, &g_cls);
                Ok(up.where_self(&sel, &down))
            }
            (_, None) => Err(AttackError::NoDetector {
                attack: name.to_string(),
            }),
        }
    }
}

impl Attack for Adaptive {
    fn name(&self) -> &str {
        self.config.name()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn budget(&self) -> Option<Budget> {
        Some(Budget {
            norm: self.config.norm,
            eps: self.config.eps,
        })
    }

    fn targeted(&self) -> bool {
        self.config.objective.targeted
    }

    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, seed: u64) -> Result<Tensor> {
        let cfg = &self.config;
        check_batch(cfg.name(), x, y)?;
        if cfg.eps == 0.0 || x.size()[0] == 0 {
            return Ok(x.copy());
        }
        let x = &x.detach();
        let n = x.size()[0];
        let dev = x.device();
        let scale = match cfg.norm {
            Norm::Linf => 1.0,
            Norm::L2 => l2_scale(x),
        };
        let mut rng = SeededRng::new(seed);
        let mut best = x.copy();
        let mut best_level = Tensor::zeros([n], (Kind::Int64, dev));
        let mut best_score = Tensor::full([n], f64::INFINITY, (Kind::Float, dev));
        for r in 0..cfg.restarts {
            // The images this restart works on (all of them without early stop).
            let mut idx = if cfg.early_stop {
                best_level.ne(EVADED).nonzero().squeeze_dim(1)
            } else {
                Tensor::arange(n, (Kind::Int64, dev))
            };
            if idx.size()[0] == 0 {
                break;
            }
            let mut xa = x.index_select(0, &idx);
            let mut ya = y.index_select(0, &idx);
            let mut ball = tch::no_grad(|| Ball::new(&xa, cfg.norm, cfg.eps));
            let mut adv = if r > 0 || cfg.random_start {
                tch::no_grad(|| ball.random_start(&xa, &mut rng))
            } else {
                xa.copy()
            };
            for t in 0..=cfg.steps {
                let last = t == cfg.steps;
                let p = self.probe(victim, &adv, &ya, !last)?;
                tch::no_grad(|| {
                    // Better: a higher level, or the same level (1) at a lower score; an image
                    // never fooled keeps its latest iterate.
                    let old_level = best_level.index_select(0, &idx);
                    let old_score = best_score.index_select(0, &idx);
                    let better = p.level.gt_tensor(&old_level).logical_or(
                        &p.level
                            .eq_tensor(&old_level)
                            .logical_and(&p.level.eq(0).logical_or(
                                &p.level.eq(1).logical_and(&p.score.lt_tensor(&old_score)),
                            )),
                    );
                    let upd = better.nonzero().squeeze_dim(1);
                    if upd.size()[0] > 0 {
                        let at = idx.index_select(0, &upd);
                        best = best.index_copy(0, &at, &adv.index_select(0, &upd));
                        best_level = best_level.index_copy(0, &at, &p.level.index_select(0, &upd));
                        best_score = best_score.index_copy(0, &at, &p.score.index_select(0, &upd));
                    }
                });
                if last {
                    break;
                }
                let mut g = p.grad.expect("a gradient for every step but the last");
                if cfg.early_stop {
                    let keep = p.level.ne(EVADED);
                    let kept = keep.sum(Kind::Int64).int64_value(&[]);
                    if kept == 0 {
                        break;
                    }
                    if kept < idx.size()[0] {
                        let k = keep.nonzero().squeeze_dim(1);
                        idx = idx.index_select(0, &k);
                        xa = xa.index_select(0, &k);
                        ya = ya.index_select(0, &k);
                        adv = adv.index_select(0, &k);
                        g = g.index_select(0, &k);
                        ball = tch::no_grad(|| Ball::new(&xa, cfg.norm, cfg.eps));
                    }
                }
                let step = cfg.step_at(t) * scale;
                adv = tch::no_grad(|| ball.project(&xa, &ball.step(&adv, &g, step)));
            }
        }
        Ok(best)
    }
}
