//! [`Model`]: a [`Net`] with its VarStore, config, normalisation, posterior and inference
//! settings (MC dropout, MC draws, precision), implementing [`BayesModel`]; [`build`] makes one
//! of any [`Arch`].

use super::{tap_shapes, Arch, BayesModel, ModelConfig, Net, PosteriorMeta, Tap};
use super::{DigitCnn, LeNet5, Mlp, ResNet, WideResNet};
use crate::bayes::{
    Act, BayesLayer, Ctx, Family, ForwardMode, LayerSelection, McDraws, McDropout, PosteriorConfig,
    TrainSampling,
};
use crate::runtime::precision::Precision;
use crate::{Error, Result};
use tch::{nn, Device, Kind, Tensor};

/// A [`Net`] with its VarStore and config.
pub struct Model<N: Net> {
    /// The model's variables, under PyTorch names.
    pub vs: nn::VarStore,
    /// The network body.
    pub net: N,
    cfg: ModelConfig,
    norm: Option<(Tensor, Tensor)>,
    posterior: Option<PosteriorMeta>,
    pub(super) mc_dropout: Option<McDropout>,
    mc_draws: McDraws,
    precision: Precision,
    /// The float32 weights while the model computes in another precision.
    masters: crate::runtime::precision::Masters,
    /// Floats of the block activations of one image, computed once and once per sample, for
    /// the memory check of parallel MC forwards; measured once per set of Bayesian layers and
    /// MC-dropout blocks (the key). Not derived from `tap_shapes` on every forward: its cache
    /// key (every variable's name and shape) costs ~0.3 ms on ResNet-50, this one ~0.03 ms.
    pub(super) act_floats: std::sync::Mutex<Option<(String, (u64, u64))>>,
}

impl<N: Net> Model<N> {
    /// Builds the net under the VarStore's root with `build`.
    pub fn new(
        cfg: &ModelConfig,
        device: Device,
        build: impl FnOnce(&nn::Path, &ModelConfig) -> Result<N>,
    ) -> Result<Self> {
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let net = build(&vs.root(), cfg)?;
        let norm = cfg.normalization.as_ref().map(|(m, s)| {
            let shape = [1, m.len() as i64, 1, 1];
            (
                Tensor::from_slice(m)
                    .to_kind(Kind::Float)
                    .reshape(shape)
                    .to_device(device),
                Tensor::from_slice(s)
                    .to_kind(Kind::Float)
                    .reshape(shape)
                    .to_device(device),
            )
        });
        Ok(Model {
            vs,
            net,
            cfg: cfg.clone(),
            norm,
            posterior: None,
            mc_dropout: None,
            mc_draws: McDraws::default(),
            precision: Precision::F32,
            masters: Default::default(),
            act_floats: Default::default(),
        })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let size = x.size();
        let c = &self.cfg;
        let fixed = c.fixed_size();
        let ok = size.len() == 4
            && size[0] >= 1
            && size[1] == c.in_channels
            && (!fixed || (size[2] == c.image_size && size[3] == c.image_size));
        if !ok {
            let hw = if fixed {
                format!("{0}, {0}", c.image_size)
            } else {
                "H, W".into()
            };
            return Err(Error::Shape(format!(
                "{}: expected input [B, {}, {hw}] with B >= 1, got {:?}",
                c.arch, c.in_channels, size
            )));
        }
        if x.kind() != Kind::Float {
            return Err(Error::Shape(format!(
                "{}: expected float32 pixels in [0, 1], got {:?}",
                c.arch,
                x.kind()
            )));
        }
        Ok(())
    }
}

impl<N: Net> Model<N> {
    /// One forward: logits `[B, S, K]`, the LiBRe features `[B, S, ...]` and, with `taps`, every
    /// block boundary `[B, S, ...]` by name followed by `logits`.
    fn run(
        &self,
        x: &Tensor,
        mode: &ForwardMode,
        taps: bool,
    ) -> Result<(Tensor, Tensor, Vec<Tap>)> {
        self.check_input(x)?;
        let x = x.to_device(self.vs.device());
        let x = match &self.norm {
            Some((m, s)) => (x - m) / s,
            None => x,
        };
        // Normalised in float32, then the model's precision; outputs come back as float32.
        let x = x.to_kind(self.precision.kind());
        if let ForwardMode::ParallelMc { samples } = mode {
            self.check_mc_memory(x.size()[0] as u64, *samples as u64)?;
        }
        let mut ctx = Ctx::new(mode, x.size()[0])?;
        ctx.set_dropout(self.mc_dropout.clone());
        ctx.set_draws(self.mc_draws);
        if taps {
            if let ForwardMode::Train(TrainSampling { rows: Some(_), .. }) = mode {
                return Err(Error::invalid(
                    "taps are recorded on the batch itself, not on its distinct rows",
                ));
            }
            ctx.record_taps();
        }
        // One pass with `s` samples on the sample axis.
        let pass = |s: i64| -> Result<(Tensor, Tensor, Vec<Tap>)> {
            let out = self.net.forward(Act::new(x.shallow_clone()), &ctx)?;
            // The logits close the last block (a Bayesian head has no later boundary).
            let out = ctx.mark("logits", out)?;
            let feats = ctx.take_features().expect("every net marks its head input");
            let (out, feats) = ctx.finish_rows(out, feats)?;
            let first_sampled = ctx.first_bayesian_tap().unwrap_or(usize::MAX);
            let taps = ctx
                .take_taps()
                .into_iter()
                .enumerate()
                .map(|(i, (n, a))| Tap {
                    name: n,
                    value: a.into_samples(s).to_kind(Kind::Float),
                    sampled: i >= first_sampled,
                })
                .collect();
            Ok((
                out.into_samples(s).to_kind(Kind::Float),
                feats.into_samples(s).to_kind(Kind::Float),
                taps,
            ))
        };
        let ForwardMode::SequentialMc { samples } = mode else {
            return pass(mode.samples() as i64);
        };
        let (mut outs, mut feats, mut taps) = (Vec::new(), Vec::new(), Vec::<Vec<Tap>>::new());
        for i in 0..*samples {
            ctx.begin_pass(i);
            let (o, f, t) = pass(1)?;
            outs.push(o);
            feats.push(f);
            taps.push(t);
        }
        // Tap j of every pass, joined on the sample axis.
        let joined = (0..taps.first().map_or(0, Vec::len))
            .map(|j| Tap {
                name: taps[0][j].name.clone(),
                value: Tensor::cat(&taps.iter().map(|t| &t[j].value).collect::<Vec<_>>(), 1),
                sampled: taps[0][j].sampled,
            })
            .collect();
        Ok((Tensor::cat(&outs, 1), Tensor::cat(&feats, 1), joined))
    }
}

impl<N: Net> BayesModel for Model<N> {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn forward_mc_with_features(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Tensor)> {
        let (out, feats, _) = self.run(x, mode, false)?;
        Ok((out, feats))
    }

    fn forward_taps(&self, x: &Tensor, mode: &ForwardMode) -> Result<(Tensor, Vec<Tap>)> {
        let (out, _, taps) = self.run(x, mode, true)?;
        Ok((out, taps))
    }

    fn layer_paths(&self) -> Vec<String> {
        self.net
            .layers()
            .iter()
            .map(|l| l.path().to_string())
            .collect()
    }

    fn layer_families(&self) -> Vec<(String, Family)> {
        self.net
            .layers()
            .iter()
            .map(|l| (l.path().to_string(), l.family()))
            .collect()
    }

    fn last_block(&self) -> Vec<String> {
        self.net.last_block()
    }

    fn convert(&mut self, sel: &LayerSelection, cfg: &PosteriorConfig) -> Result<Vec<String>> {
        cfg.validate()?;
        require_f32(self, "converting layers")?;
        if cfg.family == Family::Point {
            return Err(Error::invalid(
                "conversion to 'point': use to_deterministic instead",
            ));
        }
        if let Some(p) = &self.posterior {
            if p.config != *cfg {
                return Err(Error::invalid(format!(
                    "{}: already carries a posterior ({}, {} layer(s)); convert back to \
                     deterministic before converting with other options",
                    self.cfg.arch,
                    p.config.family,
                    p.layers.len()
                )));
            }
        }
        let chosen = sel.resolve(&self.layer_paths(), &self.last_block())?;
        let already: Vec<&str> = self
            .posterior
            .iter()
            .flat_map(|p| p.layers.iter().map(String::as_str))
            .filter(|l| chosen.iter().any(|c| c == l))
            .collect();
        if !already.is_empty() {
            return Err(Error::invalid(format!(
                "layers already converted: {}",
                already.join(", ")
            )));
        }
        // The new tensors, counted before any is allocated (a 100000-member ensemble used to
        // abort inside libtorch).
        let (s, r) = (cfg.samples as u64, cfg.rank as u64);
        let mut floats = 0u64;
        for l in self.net.layers() {
            if chosen.iter().any(|c| c == l.path()) {
                for p in l.params() {
                    let shape: Vec<u64> = p.shape().iter().map(|&d| d as u64).collect();
                    let n: u64 = shape.iter().product();
                    floats = floats.saturating_add(match cfg.family {
                        Family::MeanField => n,
                        Family::Ensemble => s.saturating_mul(n),
                        Family::LowRank if shape.len() >= 2 => {
                            let (out, rest) = (shape[0], n / shape[0].max(1));
                            s.saturating_mul(r).saturating_mul(out.saturating_add(rest))
                        }
                        _ => 0,
                    });
                }
            }
        }
        // The conversion holds a temporary copy while the tensors enter the VarStore.
        crate::runtime::device::check_fits(
            self.vs.device(),
            floats.saturating_mul(8),
            &format!(
                "converting {} layer(s) to {} (S = {}{})",
                chosen.len(),
                cfg.family,
                cfg.samples,
                if cfg.family == Family::LowRank {
                    format!(", rank {}", cfg.rank)
                } else {
                    String::new()
                }
            ),
        )?;
        let vs = &self.vs;
        for l in self.net.layers_mut() {
            if chosen.iter().any(|c| c == l.path()) {
                l.convert(vs, cfg)?;
            }
        }
        let mut layers = self.posterior.take().map(|p| p.layers).unwrap_or_default();
        layers.extend(chosen.iter().cloned());
        let order = self.layer_paths();
        layers.sort_by_key(|l| order.iter().position(|o| o == l));
        self.posterior = Some(PosteriorMeta {
            config: cfg.clone(),
            layers,
        });
        Ok(chosen)
    }

    fn to_deterministic(&mut self) -> Result<()> {
        require_f32(self, "converting layers")?;
        let vs = &self.vs;
        for l in self.net.layers_mut() {
            l.to_deterministic(vs)?;
        }
        self.posterior = None;
        Ok(())
    }

    fn posterior(&self) -> Option<&PosteriorMeta> {
        self.posterior.as_ref()
    }

    fn set_mc_dropout(&mut self, d: Option<McDropout>) -> Result<()> {
        if let Some(d) = &d {
            d.validate()?;
            let c = &self.cfg;
            let taps = tap_shapes(self)?;
            let names: Vec<&str> = taps
                .iter()
                .map(|t| t.name.as_str())
                .filter(|n| *n != "logits")
                .collect();
            if let Some(bad) = d.layers.iter().find(|l| !names.contains(&l.as_str())) {
                return Err(Error::invalid(format!(
                    "MC dropout at '{bad}': {} has the blocks {}",
                    c.arch,
                    names.join(", ")
                )));
            }
        }
        self.mc_dropout = d;
        Ok(())
    }

    fn mc_dropout(&self) -> Option<&McDropout> {
        self.mc_dropout.as_ref()
    }

    fn set_mc_draws(&mut self, d: McDraws) {
        self.mc_draws = d;
    }

    fn mc_draws(&self) -> McDraws {
        self.mc_draws
    }

    fn set_precision(&mut self, p: Precision) -> Result<()> {
        if p == self.precision {
            return Ok(());
        }
        if p != Precision::F32 {
            crate::runtime::device::check_precision(self.vs.device(), p)?;
        }
        if self.precision != Precision::F32 {
            self.masters.restore(&mut self.vs);
            self.precision = Precision::F32;
        }
        if p != Precision::F32 {
            self.masters.cast(&mut self.vs, p.kind());
            self.precision = p;
        }
        Ok(())
    }

    fn precision(&self) -> Precision {
        self.precision
    }
}

/// Whether any of these layers carries a posterior (a block to enter with the batch's rows,
/// [`crate::bayes::TrainSampling::rows`]).
pub(crate) fn any_bayesian(layers: &[&dyn BayesLayer]) -> bool {
    layers
        .iter()
        .any(|l| l.params().iter().any(|p| !p.is_point()))
}

/// Errors unless `model` computes in float32: `what` (saving, converting, training) needs its
/// float32 weights.
pub fn require_f32(model: &dyn BayesModel, what: &str) -> Result<()> {
    match model.precision() {
        Precision::F32 => Ok(()),
        p => Err(Error::invalid(format!(
            "{what} needs the model at f32 precision (it computes in {p}): set_precision(F32) first"
        ))),
    }
}

/// Builds a freshly initialised point model of `cfg.arch` on `device`.
pub fn build(cfg: &ModelConfig, device: Device) -> Result<Box<dyn BayesModel>> {
    cfg.validate()?;
    Ok(match cfg.arch {
        Arch::Lenet5 => Box::new(Model::new(cfg, device, LeNet5::new)?),
        Arch::DigitCnn => Box::new(Model::new(cfg, device, DigitCnn::new)?),
        Arch::Mlp => Box::new(Model::new(cfg, device, Mlp::new)?),
        Arch::ResNet18 | Arch::ResNet34 | Arch::ResNet50 => {
            Box::new(Model::new(cfg, device, ResNet::new)?)
        }
        Arch::Wrn28x10 => Box::new(Model::new(cfg, device, WideResNet::new)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayes::McDropout;

    #[test]
    fn mc_dropout_masks_named_blocks_in_mc_modes_only() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let mut m = build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let (plain, ptaps) = m.forward_taps(&x, &ForwardMode::Deterministic).unwrap();
        let d = |layers: &[&str], p: f64| McDropout {
            layers: layers.iter().map(|s| s.to_string()).collect(),
            p,
            samples: 6,
        };
        let err = m
            .set_mc_dropout(Some(d(&["fc9"], 0.5)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fc9") && err.contains("conv1, conv2, linear1"),
            "{err}"
        );
        assert!(m.set_mc_dropout(Some(d(&["linear1"], 1.0))).is_err());
        m.set_mc_dropout(Some(d(&["conv2", "linear1"], 0.5)))
            .unwrap();
        // Deterministic forwards ignore it.
        let (det, _) = m.forward_taps(&x, &ForwardMode::Deterministic).unwrap();
        assert!(det.equal(&plain));
        let mode = ForwardMode::ParallelMc { samples: 6 };
        tch::manual_seed(3);
        let (par, taps) = m.forward_taps(&x, &mode).unwrap();
        assert_eq!(par.size(), [3, 6, 10]);
        assert!(par.std_dim(1, true, false).min().double_value(&[]) > 0.0);
        // conv1 untouched (the same for every sample); conv2's kept units scaled by 1 / (1 - p).
        assert_eq!(taps[0].value.size(), [3, 6, 32, 14, 14]);
        assert!(taps[0]
            .value
            .equal(&ptaps[0].value.expand_as(&taps[0].value)));
        let c2 = &taps[1].value; // [3, 6, 64, 7, 7]
        let base = ptaps[1].value.expand_as(c2);
        let kept = c2.ne(0.0);
        assert!(
            (c2 - &base * 2.0)
                .masked_select(&kept)
                .abs()
                .max()
                .double_value(&[])
                < 1e-5
        );
        let frac = kept
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        let nonzero = base
            .ne(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((frac / nonzero - 0.5).abs() < 0.05, "{frac} {nonzero}");
        // Sequential passes draw the parallel forward's masks.
        tch::manual_seed(3);
        let (seq, _) = m
            .forward_taps(&x, &ForwardMode::SequentialMc { samples: 6 })
            .unwrap();
        assert!(seq.allclose(&par, 1e-4, 1e-5, false));
    }
}
