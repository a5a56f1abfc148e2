//! Numeric precision of inference forwards (docs/design.md section 15).
//!
//! A model computes in float32 unless told otherwise. [`Precision::Bf16`] runs an inference
//! forward in bfloat16: the weights are cast once (the float32 values are kept aside and
//! restored exactly when the model goes back to float32), the normalised input is cast on entry
//! and the logits, features and taps are float32 again on exit, so every score and metric is
//! computed in float32 from bfloat16 activations. On CPUs with AMX or AVX512-BF16 (Sapphire
//! Rapids and later) oneDNN runs large bf16 matmuls and convolutions about 3x faster than float32
//! (docs/results.md, "bf16 inference"), and GPUs have bf16 tensor-core kernels; on other CPUs bf16
//! is emulated and slower. A detection threshold is only valid at the precision it was
//! calibrated at, so detector files record it.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Kind, Tensor};

/// The precision of a model's weights and activations in a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout (the default, and the only precision for training and attacks).
    #[default]
    F32,
    /// bfloat16 weights and activations, float32 outputs (inference).
    Bf16,
}

impl Precision {
    /// The tensor kind of weights and activations.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::invalid(format!(
                "unknown precision '{s}': expected f32 or bf16"
            ))),
        }
    }
}

/// The float32 values of a VarStore's floating-point variables while it computes in another
/// precision: the variables keep their identity (every layer holds handles to them), their data
/// is cast in place, and [`Masters::restore`] puts the float32 values back bit for bit.
#[derive(Debug, Default)]
pub(crate) struct Masters(Vec<(Tensor, Tensor)>);

impl Masters {
    /// Casts the floating-point variables of `vs` to `kind`, keeping their float32 values
    /// (`self` must be empty: the store is at float32).
    pub(crate) fn cast(&mut self, vs: &mut VarStore, kind: Kind) {
        debug_assert!(self.0.is_empty());
        tch::no_grad(|| {
            for v in vs.variables().into_values() {
                if v.is_floating_point() {
                    self.0.push((v.shallow_clone(), v.copy()));
                }
            }
            match kind {
                Kind::BFloat16 => vs.bfloat16(),
                Kind::Half => vs.half(),
                _ => vs.float(),
            }
            bump_versions(&self.0);
        });
    }

    /// Back to the float32 values kept by [`Masters::cast`].
    pub(crate) fn restore(&mut self, vs: &mut VarStore) {
        tch::no_grad(|| {
            vs.float();
            for (v, m) in &self.0 {
                let mut v = v.shallow_clone();
                v.copy_(m);
            }
            bump_versions(&self.0);
        });
        self.0.clear();
    }
}

/// Caches derived from weights (folded BatchNorm, packed members) are keyed by the tensors'
/// versions, and libtorch's `set_data` (how a VarStore changes precision) keeps the version: an
/// exact in-place multiply by one bumps it, so every cache is rebuilt at the new precision.
fn bump_versions(vars: &[(Tensor, Tensor)]) {
    for (v, _) in vars {
        let mut v = v.shallow_clone();
        let _ = v.g_mul_scalar_(1.0);
    }
}

/// Standard normal draws of `shape` in `like`'s kind and device. libtorch's CPU generator is
/// about 4.7x slower for bfloat16 than drawing float32 and casting (20 M draws: 1.2 s vs 0.3 s),
/// so reduced-precision draws are made in float32 and cast; float32 draws are unchanged (the
/// same numbers for a seed as before).
pub fn randn(shape: &[i64], like: &Tensor) -> Tensor {
    match like.kind() {
        Kind::BFloat16 | Kind::Half => {
            Tensor::randn(shape, (Kind::Float, like.device())).to_kind(like.kind())
        }
        k => Tensor::randn(shape, (k, like.device())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("BFloat16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::F32);
        let e = "f16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("'f16'") && e.contains("bf16"), "{e}");
        assert_eq!(Precision::Bf16.to_string(), "bf16");
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn randn_keeps_float32_draws_and_casts_reduced_ones() {
        let _rng = crate::rng_lock();
        let like = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        tch::manual_seed(5);
        let a = randn(&[1000], &like);
        tch::manual_seed(5);
        let b = Tensor::randn([1000], (Kind::Float, tch::Device::Cpu));
        assert!(a.equal(&b), "float32: libtorch's own draws");
        tch::manual_seed(5);
        let c = randn(&[1000], &like.to_kind(Kind::BFloat16));
        assert_eq!(c.kind(), Kind::BFloat16);
        assert!(c
            .to_kind(Kind::Float)
            .equal(&b.to_kind(Kind::BFloat16).to_kind(Kind::Float)));
    }

    #[test]
    fn cast_and_restore_is_exact_and_bumps_versions() {
        let _rng = crate::rng_lock();
        let mut vs = VarStore::new(tch::Device::Cpu);
        let w = vs.root().randn("w", &[7, 5], 0.0, 1.0);
        let before = w.copy();
        let v0 = w.internal_version();
        let mut m = Masters::default();
        m.cast(&mut vs, Kind::BFloat16);
        assert_eq!(w.kind(), Kind::BFloat16, "the layer's handle sees the cast");
        assert!(w.internal_version() > v0);
        let v1 = w.internal_version();
        m.restore(&mut vs);
        assert_eq!(w.kind(), Kind::Float);
        assert!(w.internal_version() > v1);
        assert!(w.equal(&before), "float32 values restored bit for bit");
    }
}
