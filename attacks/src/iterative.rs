//! The shared engine of the iterative gradient attacks (FGSM as one step, BIM, PGD, MIM, TIM,
//! DI-MIM, CW-linf): optional random start, then `steps` times gradient -> (smooth) -> (momentum)
//! -> steepest-ascent step -> projection. Each attack module states only what differs: its config
//! and validation ([`Variant`]) and its step's [`Extras`]; [`iterative_attack!`] writes the rest.
//!
//! Cost: exactly one victim forward and one backward per step and EoT sample; everything else
//! (normalisation, momentum, projection) runs under `no_grad` on `[B, C, H, W]` tensors.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{check, Result};
use crate::geometry::{check_batch, l2_scale, Ball, Norm};
use crate::objective::Objective;
use crate::rng::SeededRng;
use crate::victim::Victim;

/// Settings common to the iterative attacks.
///
/// `eps` and `step_size` are per-coordinate; for `norm = l2` the radius is `eps * sqrt(D)` and the
/// step `step_size * sqrt(D)` (the reference convention, see [`crate::geometry`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterativeConfig {
    pub eps: f64,
    pub step_size: f64,
    pub steps: usize,
    pub random_start: bool,
    pub norm: Norm,
    #[serde(flatten)]
    pub objective: Objective,
}

impl IterativeConfig {
    /// The ImageNet attack setting of LiBRe (Deng et al. 2021), which the project reproduces:
    /// eps 16/255, step 1/255, 20 iterations, l_inf, cross-entropy.
    pub fn spec_default(random_start: bool) -> Self {
        IterativeConfig {
            eps: 16.0 / 255.0,
            step_size: 1.0 / 255.0,
            steps: 20,
            random_start,
            norm: Norm::Linf,
            objective: Objective::default(),
        }
    }

    /// Checks eps >= 0, step_size >= 0, 1 <= steps <= [`crate::adaptive::MAX_STEPS`], all finite,
    /// and the objective.
    pub fn validate(&self, attack: &str) -> Result<()> {
        check::non_negative(attack, "eps", self.eps)?;
        check::non_negative(attack, "step_size", self.step_size)?;
        check::at_least(attack, "steps", self.steps, 1)?;
        check::at_most(attack, "steps", self.steps, crate::adaptive::MAX_STEPS)?;
        self.objective.validate(attack)
    }
}

/// DI-MIM's input diversity (Xie et al. 2019).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Diversity {
    pub resize_rate: f64,
    pub prob: f64,
}

/// What distinguishes the momentum family from plain PGD.
#[derive(Default)]
pub(crate) struct Extras {
    /// MIM decay factor mu: `g <- mu * g + grad / mean|grad|`.
    pub momentum: Option<f64>,
    /// TIM: a `[k, k]` kernel convolved depth-wise with the gradient.
    pub smoothing: Option<Tensor>,
    pub diversity: Option<Diversity>,
}

/// Runs the iterative attack; `x` is never modified and the result lies in the ball and [0, 1].
pub(crate) fn run(
    attack: &str,
    cfg: &IterativeConfig,
    extras: &Extras,
    victim: &dyn Victim,
    x: &Tensor,
    y: &Tensor,
    seed: u64,
) -> Result<Tensor> {
    check_batch(attack, x, y)?;
    if cfg.eps == 0.0 || x.size()[0] == 0 {
        return Ok(x.copy());
    }
    let x = &x.detach();
    let mut rng = SeededRng::new(seed);
    let ball = tch::no_grad(|| Ball::new(x, cfg.norm, cfg.eps));
    let step = match cfg.norm {
        Norm::Linf => cfg.step_size,
        Norm::L2 => cfg.step_size * l2_scale(x),
    };
    let channels = x.size()[1];
    // Depth-wise weight [C, 1, k, k]: each channel smoothed on its own.
    let kernel = extras.smoothing.as_ref().map(|k| {
        let ks = k.size();
        k.to_kind(x.kind())
            .to_device(x.device())
            .view([1, 1, ks[0], ks[1]])
            .repeat([channels, 1, 1, 1])
    });
    let mut adv = if cfg.random_start {
        tch::no_grad(|| ball.random_start(x, &mut rng))
    } else {
        x.shallow_clone()
    };
    let mut velocity: Option<Tensor> = None;
    for _ in 0..cfg.steps {
        let grad = match extras.diversity {
            Some(div) => match draw_diversity(&mut rng, x, div) {
                Some(d) => {
                    let tf = move |t: &Tensor| d.apply(t);
                    cfg.objective.gradient(attack, victim, &adv, y, Some(&tf))?
                }
                None => cfg.objective.gradient(attack, victim, &adv, y, None)?,
            },
            None => cfg.objective.gradient(attack, victim, &adv, y, None)?,
        };
        adv = tch::no_grad(|| {
            let mut g = grad;
            if let Some(w) = &kernel {
                let (kh, kw) = (w.size()[2], w.size()[3]);
                g = g.conv2d(
                    w,
                    None::<Tensor>,
                    [1, 1],
                    [kh / 2, kw / 2],
                    [1, 1],
                    channels,
                );
            }
            if let Some(mu) = extras.momentum {
                let normed = &g / (g.abs().mean_dim(&[1i64, 2, 3][..], true, Kind::Float) + 1e-12);
                let v = match velocity.take() {
                    Some(v) => v * mu + normed,
                    None => normed,
                };
                g = v.shallow_clone();
                velocity = Some(v);
            }
            ball.project(x, &ball.step(&adv, &g, step))
        });
    }
    Ok(adv)
}

/// One draw of the resize-and-pad transform: with probability `prob`, resize to `rnd x rnd'`
/// (rnd uniform in [H, floor(rate H)) ), zero-pad at a random offset to floor(rate H) x
/// floor(rate W), and resize back to H x W (the reference's victims need the original size).
/// `None` = this step sees the plain input (also when the image is too small for any padding).
fn draw_diversity(rng: &mut SeededRng, x: &Tensor, div: Diversity) -> Option<DiverseInput> {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let (out_h, out_w) = (
        (div.resize_rate * h as f64).floor() as i64,
        (div.resize_rate * w as f64).floor() as i64,
    );
    // Always consume the same draws so the stream does not depend on the branch taken.
    let apply = rng.next_f64() < div.prob;
    let u_size = rng.next_f64();
    let u_top = rng.next_f64();
    let u_left = rng.next_f64();
    if !apply || out_h <= h || out_w <= w {
        return None;
    }
    let rnd_h = h + ((u_size * (out_h - h) as f64) as i64).min(out_h - h - 1);
    let rnd_w = (rnd_h as f64 * w as f64 / h as f64).round() as i64;
    let rnd_w = rnd_w.clamp(w, out_w - 1);
    let top = ((u_top * (out_h - rnd_h + 1) as f64) as i64).min(out_h - rnd_h);
    let left = ((u_left * (out_w - rnd_w + 1) as f64) as i64).min(out_w - rnd_w);
    Some(DiverseInput {
        rnd: [rnd_h, rnd_w],
        pad: [left, out_w - rnd_w - left, top, out_h - rnd_h - top],
        orig: [h, w],
    })
}

#[derive(Debug, Clone, Copy)]
struct DiverseInput {
    rnd: [i64; 2],
    /// left, right, top, bottom, as `constant_pad_nd` takes them.
    pad: [i64; 4],
    orig: [i64; 2],
}

impl DiverseInput {
    fn apply(&self, t: &Tensor) -> Tensor {
        t.upsample_bilinear2d(self.rnd, false, None, None)
            .constant_pad_nd(self.pad)
            .upsample_bilinear2d(self.orig, false, None, None)
    }
}

/// The TIM kernel: outer product of a 1-D Gaussian pdf sampled at `linspace(-nsig, nsig, size)`,
/// normalised to sum 1 (Dong et al. 2019's `gkern`). `[size, size]`, float.
pub fn gaussian_kernel(size: usize, nsig: f64) -> Tensor {
    let pts: Vec<f64> = (0..size)
        .map(|i| {
            let t = if size == 1 {
                0.0
            } else {
                -nsig + 2.0 * nsig * i as f64 / (size - 1) as f64
            };
            (-0.5 * t * t).exp()
        })
        .collect();
    let mut k = Vec::with_capacity(size * size);
    for a in &pts {
        for b in &pts {
            k.push(a * b);
        }
    }
    let total: f64 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| (v / total) as f32).collect();
    Tensor::from_slice(&k).view([size as i64, size as i64])
}

/// What an attack built on [`run`] adds to the shared loop. Implemented by the attack's config
/// type; [`iterative_attack!`] turns the config into the attack.
pub(crate) trait Variant: Serialize {
    /// The shared settings (budget, steps, objective).
    fn base(&self) -> &IterativeConfig;

    /// Checks the settings; `attack` names the attack in errors.
    fn check(&self, attack: &str) -> Result<()>;

    /// The step's additions to plain PGD (momentum, smoothing, input diversity).
    fn extras(&self) -> Extras {
        Extras::default()
    }
}

/// BIM, PGD and CW-linf: the plain loop.
impl Variant for IterativeConfig {
    fn base(&self) -> &IterativeConfig {
        self
    }

    fn check(&self, attack: &str) -> Result<()> {
        self.validate(attack)
    }
}

/// Defines an attack struct around a config implementing [`Variant`]: `new` (validates),
/// `config`, and the [`crate::Attack`] impl, which runs the shared loop with the config's extras.
/// The name is a literal, or an expression of the config bound to `$c` (`name(c) = ...`).
///
/// A second form defines BIM and PGD, which differ only in their names and whether they start
/// from a random point in the ball.
macro_rules! iterative_attack {
    ($(#[$attr:meta])* $ty:ident($config:ty), name = $name:literal) => {
        $crate::iterative::iterative_attack!($(#[$attr])* $ty($config), name(_c) = $name);
    };
    ($(#[$attr:meta])* $ty:ident($config:ty), name($c:ident) = $name:expr) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct $ty {
            config: $config,
        }

        impl $ty {
            /// Validates the config.
            pub fn new(config: $config) -> $crate::error::Result<Self> {
                let attack = $ty { config };
                $crate::iterative::Variant::check(&attack.config, $crate::Attack::name(&attack))?;
                Ok(attack)
            }

            pub fn config(&self) -> &$config {
                &self.config
            }
        }

        impl $crate::Attack for $ty {
            fn name(&self) -> &str {
                let $c = &self.config;
                $name
            }

            fn config_json(&self) -> serde_json::Value {
                serde_json::to_value(&self.config).expect("config serialises")
            }

            fn budget(&self) -> Option<$crate::Budget> {
                let base = $crate::iterative::Variant::base(&self.config);
                Some($crate::Budget { norm: base.norm, eps: base.eps })
            }

            fn targeted(&self) -> bool {
                $crate::iterative::Variant::base(&self.config).objective.targeted
            }

            fn perturb(
                &self,
                victim: &dyn $crate::Victim,
                x: &tch::Tensor,
                y: &tch::Tensor,
                seed: u64,
            ) -> $crate::error::Result<tch::Tensor> {
                $crate::iterative::run(
                    $crate::Attack::name(self),
                    $crate::iterative::Variant::base(&self.config),
                    &$crate::iterative::Variant::extras(&self.config),
                    victim,
                    x,
                    y,
                    seed,
                )
            }
        }
    };
    ($(#[$attr:meta])* $ty:ident, $linf:literal, $l2:literal, random_start = $rs:literal) => {
        $crate::iterative::iterative_attack!(
            $(#[$attr])*
            $ty($crate::iterative::IterativeConfig),
            name(c) = match c.norm {
                $crate::geometry::Norm::Linf => $linf,
                $crate::geometry::Norm::L2 => $l2,
            }
        );

        impl Default for $ty {
            /// eps 16/255, step 1/255, 20 steps, l_inf ([`IterativeConfig::spec_default`]).
            fn default() -> Self {
                $ty { config: $crate::iterative::IterativeConfig::spec_default($rs) }
            }
        }

        impl $ty {
            /// The defaults in l_2.
            pub fn default_l2() -> Self {
                $ty {
                    config: $crate::iterative::IterativeConfig {
                        norm: $crate::geometry::Norm::L2,
                        ..$crate::iterative::IterativeConfig::spec_default($rs)
                    },
                }
            }
        }
    };
}
pub(crate) use iterative_attack;
