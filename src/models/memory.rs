//! The memory check of parallel MC forwards: a forward of B images x S samples whose
//! activations (and mean-field weight draws) cannot fit is refused with a message, before
//! libtorch aborts on the allocation.

use super::{tap_shapes, Model, Net};
use crate::bayes::Family;
use crate::{Error, Result};

impl<N: Net> Model<N> {
    /// Refuses a parallel MC forward of `batch` images x `samples` whose activations (and, for
    /// mean-field layers, weight draws) cannot fit, before libtorch aborts on the allocation.
    pub(super) fn check_mc_memory(&self, batch: u64, samples: u64) -> Result<()> {
        if crate::runtime::device::available_bytes(self.vs.device()).is_none() {
            return Ok(());
        }
        // Block outputs per image: those before the first Bayesian layer (or MC dropout) once,
        // the rest once per sample (the trunk runs once in a parallel MC forward).
        let key: String = self
            .net
            .layers()
            .iter()
            .map(|l| format!("{}:{} ", l.path(), l.family()))
            .chain(self.mc_dropout.iter().map(|d| d.layers.join(",")))
            .collect();
        let cached = self
            .act_floats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v);
        let (trunk, per_sample) = match cached {
            Some(v) => v,
            None => {
                let shapes = tap_shapes(self)?;
                let dropout_from = self
                    .mc_dropout
                    .as_ref()
                    .and_then(|d| shapes.iter().position(|t| d.layers.contains(&t.name)));
                let (mut trunk, mut per_sample) = (0u64, 0u64);
                for (i, t) in shapes.iter().enumerate() {
                    if t.sampled || dropout_from.is_some_and(|f| i >= f) {
                        per_sample += t.numel();
                    } else {
                        trunk += t.numel();
                    }
                }
                *self.act_floats.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((key, (trunk, per_sample)));
                (trunk, per_sample)
            }
        };
        let drawn: u64 = self
            .net
            .layers()
            .iter()
            .filter(|l| l.family() == Family::MeanField)
            .flat_map(|l| l.params())
            .map(|p| p.shape().iter().product::<i64>() as u64)
            .sum();
        // x2: the backward of an attack keeps the activations and their gradients.
        let floats = batch
            .saturating_mul(samples.saturating_mul(per_sample).saturating_add(trunk))
            .saturating_add(samples.saturating_mul(drawn))
            .saturating_mul(2);
        crate::runtime::device::check_fits(
            self.vs.device(),
            floats.saturating_mul(4),
            &format!("a parallel MC forward of {batch} image(s) x {samples} samples"),
        )
        .map_err(|e| {
            Error::param(
                "mc_samples",
                samples,
                format!("{e}: use fewer samples or smaller batches"),
            )
        })
    }
}
