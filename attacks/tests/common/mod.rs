//! Small closed-form victims shared by the attack tests.
#![allow(dead_code)]

use std::cell::Cell;

use libre_attacks::Victim;
use tch::{Kind, Tensor};

/// Deterministic pseudo-random numbers in [-1, 1) (independent of the crate's RNG).
pub fn table(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

pub fn to_tensor(v: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Float).reshape(shape)
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Affine classifier `z = W x + b` on flattened inputs; `w` is `[K][D]` row-major.
pub struct Linear {
    pub k: usize,
    pub d: usize,
    pub w: Vec<f64>,
    pub b: Vec<f64>,
    wt: Tensor,
    bt: Tensor,
}

impl Linear {
    pub fn new(k: usize, d: usize, w: Vec<f64>, b: Vec<f64>) -> Self {
        let wt = to_tensor(&w, &[k as i64, d as i64]);
        let bt = to_tensor(&b, &[k as i64]);
        Linear { k, d, w, b, wt, bt }
    }

    pub fn random(k: usize, d: usize, seed: u64, scale: f64) -> Self {
        let w = table(k * d, seed).iter().map(|v| v * scale).collect();
        let b = table(k, seed + 1).iter().map(|v| v * 0.1).collect();
        Linear::new(k, d, w, b)
    }

    /// Logits of one flattened input, in f64.
    pub fn logits_f64(&self, x: &[f64]) -> Vec<f64> {
        (0..self.k)
            .map(|k| {
                self.b[k]
                    + (0..self.d)
                        .map(|i| self.w[k * self.d + i] * x[i])
                        .sum::<f64>()
            })
            .collect()
    }

    /// Gradient of CE(softmax(Wx + b), y) w.r.t. x: W^T (p - e_y).
    pub fn ce_grad_f64(&self, x: &[f64], y: usize) -> Vec<f64> {
        let p = softmax(&self.logits_f64(x));
        (0..self.d)
            .map(|i| {
                (0..self.k)
                    .map(|k| self.w[k * self.d + i] * (p[k] - (k == y) as u8 as f64))
                    .sum()
            })
            .collect()
    }
}

pub fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

impl Victim for Linear {
    fn logits(&self, x: &Tensor) -> Tensor {
        x.flatten(1, -1).matmul(&self.wt.tr()) + &self.bt
    }
}

/// S linear members evaluated in one "parallel forward": logits `[B, S, K]`.
pub struct Ensemble {
    pub members: Vec<Linear>,
}

impl Victim for Ensemble {
    fn logits(&self, x: &Tensor) -> Tensor {
        let outs: Vec<Tensor> = self.members.iter().map(|m| m.logits(x)).collect();
        Tensor::stack(&outs, 1) // [B, S, K]
    }
}

/// A sampling victim: each forward uses the next member in turn (a deterministic stand-in for a
/// BNN drawing one weight sample per forward), logits `[B, K]`.
pub struct Cycling {
    pub members: Vec<Linear>,
    pub next: Cell<usize>,
}

impl Victim for Cycling {
    fn logits(&self, x: &Tensor) -> Tensor {
        let i = self.next.get();
        self.next.set((i + 1) % self.members.len());
        self.members[i].logits(x)
    }
    fn is_stochastic(&self) -> bool {
        true
    }
}

/// A linear model with a linear detector score `v . x`.
pub struct Scored {
    pub model: Linear,
    pub v: Vec<f64>,
}

impl Victim for Scored {
    fn logits(&self, x: &Tensor) -> Tensor {
        self.model.logits(x)
    }
    fn score(&self, x: &Tensor) -> Option<Tensor> {
        let v = to_tensor(&self.v, &[self.v.len() as i64, 1]);
        Some(x.flatten(1, -1).matmul(&v).squeeze_dim(1))
    }
}
