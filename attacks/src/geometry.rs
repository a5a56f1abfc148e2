//! Threat-model geometry shared by the attacks: the l_inf and l_2 balls intersected with the
//! [0, 1] pixel box, steepest-ascent steps, random starts, and input checks (docs/design.md
//! section 8).
//!
//! l_2 convention of the reference: a per-coordinate `eps` means the radius `eps * sqrt(D)` and a
//! per-coordinate step `a` the step length `a * sqrt(D)`, `D = C * H * W`, so that l_inf and l_2
//! settings read alike.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{AttackError, Result};
use crate::rng::SeededRng;

/// The norm of an attack's threat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Linf,
    L2,
}

/// `sqrt(D)` of a `[B, C, H, W]` batch: the factor from per-coordinate to l_2 units.
pub fn l2_scale(x: &Tensor) -> f64 {
    let d: i64 = x.size()[1..].iter().product();
    (d as f64).sqrt()
}

/// Per-example l_2 norm over all but the batch axis, kept broadcastable: `[B, 1, 1, 1]`.
pub(crate) fn l2_norm_keep(t: &Tensor) -> Tensor {
    t.square()
        .sum_dim_intlist(&[1i64, 2, 3][..], true, Kind::Float)
        .sqrt()
}

/// The feasible set `{ x' : ||x' - x|| <= radius, 0 <= x' <= 1 }` around a clean batch.
pub(crate) struct Ball {
    norm: Norm,
    /// Radius in the norm's own units (already scaled by sqrt(D) for l_2).
    radius: f64,
    /// l_inf only: the box bounds max(x - eps, 0) and min(x + eps, 1), computed once.
    bounds: Option<(Tensor, Tensor)>,
}

impl Ball {
    /// `eps` is per-coordinate (see the module docs for l_2).
    pub fn new(x: &Tensor, norm: Norm, eps: f64) -> Ball {
        match norm {
            Norm::Linf => Ball {
                norm,
                radius: eps,
                bounds: Some(((x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0))),
            },
            Norm::L2 => Ball {
                norm,
                radius: eps * l2_scale(x),
                bounds: None,
            },
        }
    }

    /// Projection of `adv` onto the ball and the pixel box. For l_2 the clamp to [0, 1] comes
    /// after the radial projection: clamping towards a point inside the box only shortens each
    /// coordinate of the perturbation, so the result stays in the ball.
    pub fn project(&self, x: &Tensor, adv: &Tensor) -> Tensor {
        match (&self.bounds, self.norm) {
            (Some((lo, hi)), _) => adv.clamp_tensor(Some(lo), Some(hi)),
            (None, _) => {
                let d = adv - x;
                let factor = (self.radius / (l2_norm_keep(&d) + 1e-12)).clamp_max(1.0);
                (x + d * factor).clamp(0.0, 1.0)
            }
        }
    }

    /// Steepest-ascent step of length `step` (norm units) along `g`: `step * sign(g)` for l_inf,
    /// `step * g / ||g||_2` for l_2.
    pub fn step(&self, adv: &Tensor, g: &Tensor, step: f64) -> Tensor {
        match self.norm {
            Norm::Linf => adv + g.sign() * step,
            Norm::L2 => adv + g / (l2_norm_keep(g) + 1e-12) * step,
        }
    }

    /// Uniform random start in the ball (l_inf: U(-eps, eps) per pixel; l_2: uniform in the l_2
    /// ball), projected to the pixel box.
    pub fn random_start(&self, x: &Tensor, rng: &mut SeededRng) -> Tensor {
        let shape = x.size();
        let delta = match self.norm {
            Norm::Linf => rng.uniform(&shape, -self.radius, self.radius, x.kind(), x.device()),
            Norm::L2 => {
                let dir = rng.normal(&shape, x.kind(), x.device());
                let dir = &dir / (l2_norm_keep(&dir) + 1e-12);
                // Radius r * u^(1/D) makes the point uniform in the ball.
                let d = shape[1..].iter().product::<i64>() as f64;
                let r: Vec<f32> = (0..shape[0])
                    .map(|_| (self.radius * rng.next_f64().powf(1.0 / d)) as f32)
                    .collect();
                let r = Tensor::from_slice(&r)
                    .view([shape[0], 1, 1, 1])
                    .to_device(x.device());
                dir * r.to_kind(x.kind())
            }
        };
        self.project(x, &(x + delta))
    }
}

/// Checks a batch before attacking it: `x` `[B, C, H, W]` floating point with values in [0, 1],
/// `y` `[B]` int64 class indices.
pub(crate) fn check_batch(attack: &str, x: &Tensor, y: &Tensor) -> Result<()> {
    let xs = x.size();
    if xs.len() != 4 {
        return Err(AttackError::shape(attack, "input x", xs, "[B, C, H, W]"));
    }
    if !x.is_floating_point() {
        return Err(AttackError::input(
            attack,
            "input x",
            format!("dtype {:?} is not float", x.kind()),
        ));
    }
    if y.size() != [xs[0]] {
        return Err(AttackError::shape(
            attack,
            "labels y",
            y.size(),
            &format!("[{}]", xs[0]),
        ));
    }
    if y.kind() != Kind::Int64 {
        return Err(AttackError::input(
            attack,
            "labels y",
            format!("dtype {:?} is not int64", y.kind()),
        ));
    }
    if xs[0] == 0 {
        return Ok(());
    }
    let (lo, hi) = tch::no_grad(|| (x.min().double_value(&[]), x.max().double_value(&[])));
    if !(lo >= 0.0 && hi <= 1.0) {
        return Err(AttackError::input(
            attack,
            "input x",
            format!("values span [{lo}, {hi}], expected pixels in [0, 1] (un-normalised images)"),
        ));
    }
    if y.min().int64_value(&[]) < 0 {
        return Err(AttackError::input(
            attack,
            "labels y",
            "negative class index",
        ));
    }
    Ok(())
}
