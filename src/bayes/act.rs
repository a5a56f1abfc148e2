//! Activations between layers: a tensor plus an optional MC sample axis ([`Act`]).
//!
//! # Shapes
//! - `Act { samples: None }`: `[B, ...]` (the deterministic trunk, or a training forward where each
//!   example has its own weight sample).
//! - `Act { samples: Some(S) }`: `[B, S, ...]`, the S samples shared across the batch.

use super::pool::max_pool2d;
use tch::Tensor;

/// An activation with an optional MC sample axis at dim 1.
///
/// # Shapes
/// `samples: None` -> `[B, ...]`; `samples: Some(S)` -> `[B, S, ...]`.
#[derive(Debug)]
pub struct Act {
    /// `[B, ...]`, or `[B, S, ...]` with `samples`.
    pub t: Tensor,
    /// S when the tensor has the sample axis at dim 1.
    pub samples: Option<i64>,
}

impl Act {
    /// An activation without a sample axis.
    pub fn new(t: Tensor) -> Act {
        Act { t, samples: None }
    }

    /// An activation with the given sample axis.
    pub fn with(t: Tensor, samples: Option<i64>) -> Act {
        Act { t, samples }
    }

    /// Applies a sample-agnostic op, folding the sample axis into the batch: `[B, S, ...]` ->
    /// `[B*S, ...]` -> op -> `[B, S, ...]`.
    pub fn map_flat(&self, f: impl FnOnce(&Tensor) -> Tensor) -> Act {
        match self.samples {
            None => Act::new(f(&self.t)),
            Some(s) => {
                let size = self.t.size();
                let mut flat = vec![size[0] * s];
                flat.extend_from_slice(&size[2..]);
                let y = f(&self.t.reshape(&flat));
                let ys = y.size();
                let mut back = vec![size[0], s];
                back.extend_from_slice(&ys[1..]);
                Act::with(y.reshape(&back), Some(s))
            }
        }
    }

    /// The same tensor storage, a new handle.
    pub fn shallow_clone(&self) -> Act {
        Act::with(self.t.shallow_clone(), self.samples)
    }

    /// ReLU, elementwise.
    pub fn relu(&self) -> Act {
        Act::with(self.t.relu(), self.samples)
    }

    /// `k x k` max pooling (dilation 1, floor mode), as `torch.nn.functional.max_pool2d`.
    pub fn max_pool2d(&self, k: i64, stride: i64, pad: i64) -> Act {
        self.map_flat(|t| max_pool2d(t, k, stride, pad))
    }

    /// Global average pooling over H, W: `[B, (S,) C, H, W]` -> `[B, (S,) C]`.
    pub fn global_avg_pool(&self) -> Act {
        let d = self.t.dim() as i64;
        Act::with(
            self.t.mean_dim(&[d - 2, d - 1][..], false, self.t.kind()),
            self.samples,
        )
    }

    /// Flattens the per-example feature dims (C, H, W order, as PyTorch's `flatten(1)`).
    pub fn flatten(&self) -> Act {
        let start = if self.samples.is_some() { 2 } else { 1 };
        Act::with(self.t.flatten(start, -1), self.samples)
    }

    /// Residual addition; a tensor without the sample axis broadcasts over it.
    pub fn add(&self, other: &Act) -> Act {
        let t = match (self.samples, other.samples) {
            (Some(_), None) => &self.t + other.t.unsqueeze(1),
            (None, Some(_)) => self.t.unsqueeze(1) + &other.t,
            _ => &self.t + &other.t,
        };
        Act::with(t, self.samples.or(other.samples))
    }

    /// The tensor with an explicit sample axis `[B, S, ...]` (a broadcast view when absent).
    pub fn into_samples(self, s: i64) -> Tensor {
        match self.samples {
            Some(_) => self.t,
            None => {
                let mut size = self.t.size();
                size.insert(1, s);
                self.t.unsqueeze(1).expand(&size, false)
            }
        }
    }
}
