//! Feature squeezing (W. Xu, D. Evans, Y. Qi, "Feature Squeezing: Detecting Adversarial Examples
//! in Deep Neural Networks", NDSS 2018).
//!
//! A squeezer maps an image to a coarser one; an adversarial image's prediction moves more under
//! it than a clean image's. The score is the largest L1 distance, over the squeezers, between the
//! classifier's softmax on the input and on its squeezed copy (the paper's joint detector; its
//! MNIST configuration is 1-bit depth and a 2x2 median filter).
//!
//! Squeezers (pixels in [0, 1]):
//! - `bits-N` (1 <= N <= 8): `round(x * (2^N - 1)) / (2^N - 1)`, rounding half to even as NumPy
//!   (and libtorch) do, so 1 bit maps 0.5 to 0.
//! - `median-KxK` (2 <= K <= 5): the median of the K x K window of each pixel and channel, as
//!   the paper's `scipy.ndimage.median_filter(size=K, mode='reflect')`: the window of output
//!   pixel i covers inputs i - K/2 .. i - K/2 + K - 1 (integer division: 2x2 reads the pixel, the
//!   one above and the ones to the left), the border is mirrored with the edge pixel repeated
//!   (`d c b a | a b c d | d c b a`), and for an even window the upper of the two middle values is
//!   taken (SciPy's rank K*K/2).
//!
//! Non-local means (the paper's squeezer for colour images) is not offered: no maintained Rust
//! crate implements it (docs/detection.md, "Input-transformation detectors").

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// One squeezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Squeezer {
    /// Bit-depth reduction to N bits per channel.
    BitDepth(u32),
    /// K x K median filter.
    Median(u32),
}

impl Squeezer {
    /// Xu et al.'s MNIST joint detector: 1-bit depth and a 2x2 median filter.
    pub const MNIST: [Squeezer; 2] = [Squeezer::BitDepth(1), Squeezer::Median(2)];

    pub fn name(self) -> String {
        match self {
            Squeezer::BitDepth(n) => format!("bits-{n}"),
            Squeezer::Median(k) => format!("median-{k}x{k}"),
        }
    }

    /// The squeezed image (same shape; no gradient is defined for the rounding and the median,
    /// see [`Squeezer::apply_bpda`]).
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]` -> `[B, C, H, W]`.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Squeezer::BitDepth(n) => {
                let levels = ((1u64 << n) - 1) as f64;
                (x * levels).round() / levels
            }
            Squeezer::Median(k) => median_filter(x, k as i64),
        }
    }

    /// [`Squeezer::apply`] for an adaptive attacker (BPDA, Athalye, Carlini and Wagner, ICML
    /// 2018): the forward value is the squeezed image bit for bit, the backward the identity.
    pub fn apply_bpda(self, x: &Tensor) -> Tensor {
        let s = tch::no_grad(|| self.apply(&x.detach()));
        if x.requires_grad() {
            // x - x.detach() is exactly 0, so the value is `s`; its gradient is the identity.
            s + (x - x.detach())
        } else {
            s
        }
    }
}

impl std::fmt::Display for Squeezer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Squeezer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Squeezer> {
        let bad = || {
            Error::param(
                "squeezers",
                s,
                "unknown squeezer: use bits-N (1 <= N <= 8) or median-KxK (2 <= K <= 5), e.g. \
                 bits-1,median-2x2",
            )
        };
        if let Some(n) = s.strip_prefix("bits-") {
            let n: u32 = n.parse().map_err(|_| bad())?;
            return if (1..=8).contains(&n) {
                Ok(Squeezer::BitDepth(n))
            } else {
                Err(bad())
            };
        }
        if let Some(k) = s.strip_prefix("median-") {
            let (a, b) = k.split_once('x').ok_or_else(bad)?;
            let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            return if a == b && (2..=5).contains(&a) {
                Ok(Squeezer::Median(a))
            } else {
                Err(bad())
            };
        }
        Err(bad())
    }
}

impl TryFrom<String> for Squeezer {
    type Error = Error;
    fn try_from(s: String) -> Result<Squeezer> {
        s.parse()
    }
}

impl From<Squeezer> for String {
    fn from(s: Squeezer) -> String {
        s.name()
    }
}

/// Parses a list of squeezers (a comma list, no duplicates, at least one).
pub fn parse_squeezers(s: &str) -> Result<Vec<Squeezer>> {
    let mut out: Vec<Squeezer> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let q: Squeezer = part.parse()?;
        if out.contains(&q) {
            return Err(Error::param("squeezers", part, "given twice"));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "feature squeezing: no squeezer given (e.g. bits-1,median-2x2)",
        ));
    }
    Ok(out)
}

/// SciPy's `mode='reflect'` padding of the last two dims: `before` / `after` pixels mirrored with
/// the edge pixel repeated (each at most the size of the dim).
fn symmetric_pad(x: &Tensor, before: i64, after: i64) -> Tensor {
    let mut x = x.shallow_clone();
    for dim in [2i64, 3] {
        let n = x.size()[dim as usize];
        let mut parts = Vec::with_capacity(3);
        if before > 0 {
            parts.push(x.narrow(dim, 0, before).flip([dim]));
        }
        parts.push(x.shallow_clone());
        if after > 0 {
            parts.push(x.narrow(dim, n - after, after).flip([dim]));
        }
        x = Tensor::cat(&parts, dim);
    }
    x
}

/// The K x K median filter of SciPy's `median_filter(size=K, mode='reflect')` (module doc).
///
/// # Shapes
/// `x`: `[B, C, H, W]` -> `[B, C, H, W]`.
pub fn median_filter(x: &Tensor, k: i64) -> Tensor {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let before = k / 2;
    let after = k - 1 - before;
    let p = symmetric_pad(x, before.min(h).min(w), after.min(h).min(w));
    let windows: Vec<Tensor> = (0..k)
        .flat_map(|dy| (0..k).map(move |dx| (dy, dx)))
        .map(|(dy, dx)| p.narrow(2, dy, h).narrow(3, dx, w))
        .collect();
    let stacked = Tensor::stack(&windows, -1); // [B, C, H, W, K*K]
                                               // SciPy's rank K*K / 2 (0-based): the upper middle value for an even window.
    let rank = k * k / 2;
    stacked.kthvalue(rank + 1, -1, false).0.to_kind(Kind::Float)
}

/// The squeezing score of a batch: max over squeezers of `|| softmax(l(x)) - softmax(l(s(x))) ||_1`.
///
/// `logits` is the classifier (`[B, C, H, W]` -> `[B, K]`); `logits_x` the logits of `x` when the
/// caller has them. Differentiable in `x` through the classifier, the squeezers by BPDA.
pub fn score(
    squeezers: &[Squeezer],
    logits: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    logits_x: Option<&Tensor>,
) -> Result<Tensor> {
    let lx = match logits_x {
        Some(l) => l.shallow_clone(),
        None => logits(x)?,
    };
    let p = lx.softmax(-1, Kind::Float);
    let mut best: Option<Tensor> = None;
    for s in squeezers {
        let q = logits(&s.apply_bpda(x))?.softmax(-1, Kind::Float);
        let d = (&p - q).abs().sum_dim_intlist(-1, false, Kind::Float);
        best = Some(match best {
            None => d,
            Some(b) => b.maximum(&d),
        });
    }
    best.ok_or_else(|| Error::invalid("feature squeezing: no squeezer given"))
}
