//! The tap shapes of a model, measured once per net and input size (issue 14): its blocks'
//! names and activation sizes, which MC dropout's block check, the parallel-MC memory check, the
//! classic detectors' block list and the attack command's input check share.

use super::BayesModel;
use crate::bayes::ForwardMode;
use crate::Result;
use tch::{Kind, Tensor};

// A net's blocks and their activation sizes are fixed by its architecture: one dummy forward
// per net and input size instead of one each call.

/// One tap of the deterministic forward of a single image: its name and its shape without the
/// batch and sample axes (LeNet5 at 28 px: `conv1` `[32, 14, 14]`, ..., `logits` `[10]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapShape {
    /// See [`super::Tap::name`].
    pub name: String,
    /// Without the batch and sample axes.
    pub shape: Vec<i64>,
    /// See [`super::Tap::sampled`].
    pub sampled: bool,
}

impl TapShape {
    /// Floats of the activation per image and sample.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product::<i64>() as u64
    }
}

/// [`tap_shapes_at`] at the model's own input size.
pub fn tap_shapes(model: &dyn BayesModel) -> Result<std::sync::Arc<[TapShape]>> {
    let c = model.config();
    tap_shapes_at(model, [c.in_channels, c.image_size, c.image_size])
}

/// The taps of `model` on one `[C, H, W]` image, in forward order and ending with `logits`: one
/// deterministic forward of a zero image the first time, then from a process-wide cache keyed
/// by the architecture options, every variable's name and shape (two nets built under one
/// config by [`Model::new`] still get their own entry) and the input size. A refused input is
/// an error each time (the model's message), never cached.
pub fn tap_shapes_at(
    model: &dyn BayesModel,
    input: [i64; 3],
) -> Result<std::sync::Arc<[TapShape]>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<[TapShape]>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut vars: Vec<String> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| format!("{n}{:?}", t.size()))
        .collect();
    vars.sort_unstable();
    let key = format!("{:?} {input:?} {}", model.config(), vars.join(","));
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = lock().get(&key) {
        return Ok(v.clone());
    }
    // Outside the lock: a forward may take a while, and concurrent first calls agree anyway.
    let x = Tensor::zeros(
        [1, input[0], input[1], input[2]],
        (Kind::Float, model.var_store().device()),
    );
    let (_, taps) = tch::no_grad(|| model.forward_taps(&x, &ForwardMode::Deterministic))?;
    let shapes: Arc<[TapShape]> = taps
        .into_iter()
        .map(|t| TapShape {
            shape: t.value.size()[2..].to_vec(),
            name: t.name,
            sampled: t.sampled,
        })
        .collect();
    Ok(lock().entry(key).or_insert(shapes).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayes::{Family, LayerSelection, PosteriorConfig};
    use crate::models::{build, ModelConfig};
    use tch::Device;

    #[test]
    fn taps_name_every_block_and_agree_with_the_plain_forward() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let mut m = build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let (logits, taps) = m.forward_taps(&x, &ForwardMode::Deterministic).unwrap();
        let names: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["conv1", "conv2", "linear1", "logits"]);
        let shapes: Vec<Vec<i64>> = taps.iter().map(|t| t.value.size()).collect();
        assert_eq!(
            shapes,
            [
                vec![3, 1, 32, 14, 14],
                vec![3, 1, 64, 7, 7],
                vec![3, 1, 200],
                vec![3, 1, 10]
            ]
        );
        let (l2, feats) = m
            .forward_mc_with_features(&x, &ForwardMode::Deterministic)
            .unwrap();
        assert!(logits.equal(&l2) && taps[3].value.equal(&l2) && taps[2].value.equal(&feats));
        assert!(
            taps.iter().all(|t| !t.sampled),
            "a point net has no sampled block"
        );

        // The memory check counts the blocks before the first Bayesian layer once: with linear1
        // an ensemble, conv1 and conv2 are the trunk, linear1 and the logits vary per sample.
        m.convert(
            &LayerSelection::LastBlock,
            &PosteriorConfig::new(Family::Ensemble, 3),
        )
        .unwrap();
        tch::no_grad(|| {
            for (n, mut t) in m.var_store().variables() {
                if n.ends_with("_members") {
                    let _ = t.g_add_(&(t.randn_like() * 0.05)); // members that differ
                }
            }
        });
        let sampled: Vec<bool> = tap_shapes(m.as_ref())
            .unwrap()
            .iter()
            .map(|t| t.sampled)
            .collect();
        assert_eq!(sampled, [false, false, true, true]);
        let (_, taps) = m
            .forward_taps(&x, &ForwardMode::ParallelMc { samples: 3 })
            .unwrap();
        for t in &taps {
            // A trunk tap is one activation broadcast over the samples.
            let spread = (&t.value - t.value.narrow(1, 0, 1))
                .abs()
                .max()
                .double_value(&[]);
            assert_eq!(spread == 0.0, !t.sampled, "{}", t.name);
        }
        let mut m = build(&ModelConfig::lenet5(), Device::Cpu).unwrap();

        // A sampled posterior: sequential passes give the parallel forward's taps.
        m.convert(
            &LayerSelection::All,
            &PosteriorConfig::new(Family::MeanField, 4),
        )
        .unwrap();
        tch::manual_seed(1);
        let (_, par) = m
            .forward_taps(&x, &ForwardMode::ParallelMc { samples: 4 })
            .unwrap();
        tch::manual_seed(1);
        let (_, seq) = m
            .forward_taps(&x, &ForwardMode::SequentialMc { samples: 4 })
            .unwrap();
        for (p, s) in par.iter().zip(&seq) {
            assert_eq!(p.name, s.name);
            assert_eq!(p.value.size()[1], 4);
            let diff = (&p.value - &s.value).abs().max().double_value(&[]);
            let scale = s.value.abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{}: max abs diff {diff} (scale {scale})",
                p.name
            );
        }
        assert!(par[0].value.std(false).double_value(&[]) > 0.0);
    }
}
