//! Forward modes and the per-forward context (docs/design.md section 3).
//!
//! A [`ForwardMode`] says how weights are drawn; a [`Ctx`] is built from it for one forward and
//! handed to every layer. Activations are [`Act`]s: a tensor plus an optional MC sample axis.
//!
//! # Shapes
//! - `Act { samples: None }`: `[B, ...]` (the deterministic trunk, or a training forward where each
//!   example has its own weight sample).
//! - `Act { samples: Some(S) }`: `[B, S, ...]`, the S samples shared across the batch.

use super::posterior::{BayesParam, Family};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// How a Bayesian forward draws its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardMode {
    /// Means (ensembles: member average); BatchNorm uses running statistics. Logits `[B, 1, K]`.
    Deterministic,
    /// Means with BatchNorm in training mode (batch statistics, running stats updated): DNN
    /// training. Logits `[B, 1, K]`.
    DeterministicTrain,
    /// Stochastic training forward, BatchNorm in training mode. Logits `[B, 1, K]`.
    Train(TrainSampling),
    /// One forward evaluating S samples shared across the batch (BatchNorm: running stats).
    /// Logits `[B, S, K]`.
    ParallelMc { samples: usize },
    /// S full forwards with the same draws `ParallelMc` makes from the same seed (a test oracle
    /// and a low-memory fallback). Logits `[B, S, K]`.
    SequentialMc { samples: usize },
}

impl ForwardMode {
    /// The number of samples along the output's sample axis.
    pub fn samples(&self) -> usize {
        match self {
            ForwardMode::ParallelMc { samples } | ForwardMode::SequentialMc { samples } => *samples,
            _ => 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            ForwardMode::ParallelMc { samples: 0 } | ForwardMode::SequentialMc { samples: 0 } => {
                Err(Error::invalid(
                    "MC samples S = 0: S must be >= 1 (--mc-samples)",
                ))
            }
            ForwardMode::Train(TrainSampling {
                routing: Routing::Given(ids),
                ..
            }) if ids.iter().any(|&i| i < 0) => Err(Error::invalid(format!(
                "routing ids must be >= 0, got {ids:?}"
            ))),
            ForwardMode::Train(TrainSampling {
                rows: Some(rows), ..
            }) if rows.is_empty() || rows.iter().any(|&i| i < 0) => Err(Error::invalid(
                "batch rows must be a non-empty list of input rows (>= 0)",
            )),
            _ => Ok(()),
        }
    }
}

/// Training-time sampling: mean-field draw scheme plus ensemble / low-rank routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSampling {
    pub sampling: McSampling,
    pub routing: Routing,
    /// The training batch as rows of an input that holds each distinct image once: example `i`
    /// of the batch is input row `rows[i]` (LiBRe sends copies of an image through different
    /// members). The layers before the first Bayesian one (or the first block holding one) then
    /// run once per distinct image; their batch norms compute training statistics over the
    /// whole batch, copies counted, so outputs and gradients equal those of the forward over
    /// `input[rows]` (docs/design.md section 16). None: the input is the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<i64>>,
}

impl Default for TrainSampling {
    fn default() -> Self {
        TrainSampling {
            sampling: McSampling::PerExample,
            routing: Routing::Random,
            rows: None,
        }
    }
}

/// How mean-field layers draw in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum McSampling {
    /// One weight sample per example (grouped conv / batched matmul).
    PerExample,
    /// One weight sample for the whole batch.
    PerBatch,
    /// Output mean from mu, output variance from x^2 and sigma^2 (Linear, Conv2d; other layers
    /// fall back to per-example samples).
    LocalReparam,
    /// One weight perturbation decorrelated per example by random sign flips (per example and
    /// channel for convs). Linear, Conv2d; other layers fall back to per-example samples.
    Flipout,
}

/// How a parallel MC forward ([`ForwardMode::ParallelMc`]) draws mean-field weights
/// (docs/design.md section 3).
///
/// Both give every example S draws from the same predictive distribution; they differ only in
/// how draws are correlated across the examples of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum McDraws {
    /// S weight samples, each shared by the whole batch (the reference's estimator; the
    /// default, so documented results reproduce draw for draw).
    #[default]
    Weights,
    /// Local reparameterisation (Kingma, Salimans & Welling 2015) wherever it is exact: a
    /// mean-field Linear layer, or a mean-field conv whose input and output maps are 1x1 (the last
    /// ResNet stage at 32 px). The layer's output for each example and sample is drawn from its
    /// Gaussian (mean `x mu^T`, variance `x^2 sigma^2^T`), which is the distribution a weight
    /// sample gives that example: each output unit reads its own weights, so the units are
    /// independent given the input. Costs two matmuls instead of drawing S full weight tensors
    /// (20 x 4.5 M normals for ResNet-50's last block). Every example gets independent draws,
    /// so examples of one batch no longer share a weight sample. Other layers (convs on larger
    /// maps, where positions share a weight) draw weights as in `Weights`.
    LocalReparam,
}

impl McDraws {
    pub fn name(self) -> &'static str {
        match self {
            McDraws::Weights => "weights",
            McDraws::LocalReparam => "local-reparam",
        }
    }
}

impl std::fmt::Display for McDraws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for McDraws {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "weights" => Ok(McDraws::Weights),
            "local-reparam" => Ok(McDraws::LocalReparam),
            _ => Err(Error::invalid(format!(
                "MC draws '{s}': expected 'weights' or 'local-reparam'"
            ))),
        }
    }
}

/// Which ensemble member / low-rank component each example goes through in training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Uniformly random per example (drawn once per forward, shared by all layers).
    Random,
    /// Every example through this member.
    Fixed(usize),
    /// One id per example (length B).
    Given(Vec<i64>),
}

/// The drawn tensor of one parameter for one layer call.
pub(crate) enum Drawn {
    /// One tensor for the whole batch (standard op).
    One(Tensor),
    /// `[S, ...]` shared across the batch.
    Shared(Tensor),
    /// `[B, ...]`, one per example.
    PerExample(Tensor),
}

impl Drawn {
    pub(crate) fn into_tensor(self) -> Tensor {
        match self {
            Drawn::One(t) | Drawn::Shared(t) | Drawn::PerExample(t) => t,
        }
    }
}

pub(crate) enum Plan {
    Mean,
    Shared { samples: i64 },
    PerExample { batch: i64, ts: TrainSampling },
}

/// MC dropout (Gal & Ghahramani 2016, the LiBRe paper's baseline; Feinman et al. 2017's "Bayesian
/// uncertainty"): dropout kept on at test time at the outputs of the named blocks (the model's tap
/// names, e.g. LeNet5's `conv2`, `linear1`), S masks per image in one parallel forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McDropout {
    /// Block (tap) names whose outputs are dropped.
    pub layers: Vec<String>,
    /// Drop probability, in (0, 1); kept units are scaled by 1 / (1 - p).
    pub p: f64,
    /// Masks per image (the MC sample count).
    pub samples: usize,
}

impl McDropout {
    pub fn validate(&self) -> Result<()> {
        if !(self.p > 0.0 && self.p < 1.0) {
            return Err(Error::invalid(format!(
                "dropout probability {}: must lie in (0, 1)",
                self.p
            )));
        }
        if self.layers.is_empty() {
            return Err(Error::invalid("MC dropout needs at least one layer"));
        }
        if self.samples < 2 {
            return Err(Error::invalid(format!(
                "MC dropout with {} sample(s): needs at least 2",
                self.samples
            )));
        }
        Ok(())
    }
}

/// Per-forward state shared by all layers of one model call.
pub struct Ctx {
    pub(crate) plan: Plan,
    train: bool,
    /// Sequential MC: the pass index; draws are cached across passes by parameter name.
    seq: Cell<Option<usize>>,
    seq_samples: i64,
    cache: RefCell<HashMap<String, Tensor>>,
    ids: RefCell<Option<Tensor>>,
    pending: Cell<bool>,
    /// Block boundaries marked so far in this pass, and how many there were when the first
    /// Bayesian layer ran: the taps from that index on vary over the samples.
    marks: Cell<usize>,
    bayes_from: Cell<Option<usize>>,
    features: RefCell<Option<Act>>,
    head_input: RefCell<Option<Act>>,
    /// Every block boundary's activation by name, when [`Ctx::record_taps`] asked for them.
    taps: RefCell<Option<Vec<(String, Act)>>>,
    /// Dropout at block boundaries, applied in the MC modes only.
    dropout: Option<McDropout>,
    /// How mean-field layers draw in a parallel MC forward.
    draws: McDraws,
    /// While the forward runs on distinct input rows ([`TrainSampling::rows`]): the expansion
    /// still to apply. Taken by [`Ctx::expand_rows`].
    rows: RefCell<Option<RowExpansion>>,
}

/// The batch as input rows ([`TrainSampling::rows`]).
struct RowExpansion {
    /// Example i of the batch is input row `rows[i]`.
    rows: Vec<i64>,
    /// Every input row once per extra copy in the batch: appended to the distinct rows, they
    /// give batch norm the batch's statistics.
    copies: Vec<i64>,
}

impl RowExpansion {
    fn new(rows: &[i64]) -> RowExpansion {
        let mut seen = std::collections::HashSet::new();
        let copies = rows.iter().copied().filter(|&r| !seen.insert(r)).collect();
        RowExpansion {
            rows: rows.to_vec(),
            copies,
        }
    }

    /// The gather index of the expansion, `[N]` int64 on `device`: batch example i <- row `rows[i]`.
    fn index(&self, device: tch::Device) -> Tensor {
        Tensor::from_slice(&self.rows).to_device(device)
    }
}

impl Ctx {
    /// A context for one forward over a batch of `batch` examples.
    pub fn new(mode: &ForwardMode, batch: i64) -> Result<Ctx> {
        mode.validate()?;
        let (plan, train, seq_samples) = match mode {
            ForwardMode::Deterministic => (Plan::Mean, false, 0),
            ForwardMode::DeterministicTrain => (Plan::Mean, true, 0),
            ForwardMode::Train(ts) => {
                let batch = match &ts.rows {
                    Some(rows) => {
                        if let Some(r) = rows.iter().find(|&&r| r >= batch) {
                            return Err(Error::Shape(format!(
                                "batch row {r} out of range for an input of {batch} image(s)"
                            )));
                        }
                        rows.len() as i64
                    }
                    None => batch,
                };
                if let Routing::Given(ids) = &ts.routing {
                    if ids.len() as i64 != batch {
                        return Err(Error::Shape(format!(
                            "routing ids: {} given for a batch of {batch}",
                            ids.len()
                        )));
                    }
                }
                let ts = ts.clone();
                (Plan::PerExample { batch, ts }, true, 0)
            }
            ForwardMode::ParallelMc { samples } => (
                Plan::Shared {
                    samples: *samples as i64,
                },
                false,
                0,
            ),
            // Sequential passes run as `Mean` plans whose layers pick slice `seq` of their draws.
            ForwardMode::SequentialMc { samples } => (Plan::Mean, false, *samples as i64),
        };
        let rows = match mode {
            ForwardMode::Train(TrainSampling {
                rows: Some(rows), ..
            }) => Some(RowExpansion::new(rows)),
            _ => None,
        };
        Ok(Ctx {
            rows: RefCell::new(rows),
            plan,
            train,
            seq: Cell::new(None),
            seq_samples,
            cache: RefCell::new(HashMap::new()),
            ids: RefCell::new(None),
            pending: Cell::new(false),
            marks: Cell::new(0),
            bayes_from: Cell::new(None),
            features: RefCell::new(None),
            head_input: RefCell::new(None),
            taps: RefCell::new(None),
            dropout: None,
            draws: McDraws::Weights,
        })
    }

    /// BatchNorm in training mode?
    pub fn train(&self) -> bool {
        self.train
    }

    /// Whether the forward still runs on an input's distinct rows ([`TrainSampling::rows`]).
    pub(crate) fn rows_pending(&self) -> bool {
        self.rows.borrow().is_some()
    }

    /// `a` as the batch: at the first Bayesian layer (and at the entry of a block holding one,
    /// so that its shortcut sees the batch too) the distinct rows become the batch's rows,
    /// `[U, ...]` -> `[N, ...]`; afterwards, and without [`TrainSampling::rows`], `a` itself.
    pub fn expand_rows(&self, a: &Act) -> Result<Act> {
        let Some(e) = self.rows.borrow_mut().take() else {
            return Ok(a.shallow_clone());
        };
        if a.samples.is_some() {
            return Err(Error::Shape(
                "batch rows: an activation with a sample axis cannot be expanded".into(),
            ));
        }
        Ok(Act::new(a.t.index_select(0, &e.index(a.t.device()))))
    }

    /// The logits and features at the end of a forward: when no layer expanded the distinct
    /// rows (no Bayesian layer ran), both expanded now, so the outputs are the batch's.
    pub(crate) fn finish_rows(&self, out: Act, feats: Act) -> Result<(Act, Act)> {
        let Some(e) = self.rows.borrow_mut().take() else {
            return Ok((out, feats));
        };
        let idx = e.index(out.t.device());
        let expand = |a: Act| Act::with(a.t.index_select(0, &idx), a.samples);
        Ok((expand(out), expand(feats)))
    }

    /// For a batch norm in training mode before the expansion: the input rows to append to the
    /// distinct ones so that its statistics are the batch's (None when there is nothing to add).
    pub(crate) fn batch_copies(&self, device: tch::Device) -> Option<Tensor> {
        let r = self.rows.borrow();
        let e = r.as_ref().filter(|e| !e.copies.is_empty())?;
        Some(Tensor::from_slice(&e.copies).to_device(device))
    }

    /// Starts sequential pass `s` (resets the captured features, keeps the cached draws).
    pub(crate) fn begin_pass(&self, s: usize) {
        self.seq.set(Some(s));
        self.pending.set(false);
        self.marks.set(0);
        self.features.replace(None);
        self.head_input.replace(None);
        if let Some(t) = self.taps.borrow_mut().as_mut() {
            t.clear();
        }
    }

    /// Sets how mean-field layers draw in a parallel MC forward (other plans ignore it).
    pub(crate) fn set_draws(&mut self, d: McDraws) {
        self.draws = d;
    }

    /// The sample count S when this is a parallel MC forward that draws mean-field outputs by
    /// local reparameterisation ([`McDraws::LocalReparam`]).
    pub(crate) fn local_reparam_samples(&self) -> Option<i64> {
        match (&self.plan, self.draws, self.seq.get()) {
            (Plan::Shared { samples }, McDraws::LocalReparam, None) => Some(*samples),
            _ => None,
        }
    }

    pub(crate) fn mean_field_scheme(&self) -> Option<McSampling> {
        match &self.plan {
            Plan::PerExample { ts, .. } => Some(ts.sampling),
            _ => None,
        }
    }

    /// Records that a Bayesian layer ran, so the next [`Ctx::mark`] captures its features.
    pub(crate) fn note_bayes(&self) {
        self.pending.set(true);
        if self.bayes_from.get().is_none() {
            self.bayes_from.set(Some(self.marks.get()));
        }
    }

    /// The index (in forward order) of the first tap at or after a Bayesian layer; None when no
    /// Bayesian layer ran.
    pub(crate) fn first_bayesian_tap(&self) -> Option<usize> {
        self.bayes_from.get()
    }

    /// A block boundary named after its last module (`conv2`, `layer4.1`): captures the
    /// activation when a Bayesian layer ran since the last mark, and records it as a tap when
    /// taps are on.
    pub fn mark(&self, name: &str, a: Act) -> Result<Act> {
        let a = self.drop_out(name, a)?;
        if self.pending.get() {
            self.features.replace(Some(a.shallow_clone()));
            self.pending.set(false);
        }
        if let Some(t) = self.taps.borrow_mut().as_mut() {
            t.push((name.to_string(), a.shallow_clone()));
        }
        self.marks.set(self.marks.get() + 1);
        Ok(a)
    }

    /// The classifier head's input, the fallback feature for models without Bayesian layers.
    pub fn mark_head(&self, name: &str, a: Act) -> Result<Act> {
        let a = self.mark(name, a)?;
        self.head_input.replace(Some(a.shallow_clone()));
        Ok(a)
    }

    /// Turns MC dropout on for this forward (it acts in the MC modes only).
    pub(crate) fn set_dropout(&mut self, d: Option<McDropout>) {
        self.dropout = d;
    }

    /// MC dropout at block `name`: `[B, (S,) ...]` -> `[B, S, ...]` with an independent mask per
    /// image and sample. The masks of all S samples are drawn at once (cached by block name in
    /// sequential passes), so sequential passes see the parallel forward's masks for one seed.
    fn drop_out(&self, name: &str, a: Act) -> Result<Act> {
        let Some(d) = self
            .dropout
            .as_ref()
            .filter(|d| d.layers.iter().any(|l| l == name))
        else {
            return Ok(a);
        };
        let s = match (&self.plan, self.seq.get()) {
            (Plan::Shared { samples }, _) => *samples,
            (Plan::Mean, Some(_)) => self.seq_samples,
            _ => return Ok(a), // deterministic and training forwards: no dropout
        };
        let mask_for = |shape: &[i64]| -> Tensor {
            let keep = 1.0 - d.p;
            Tensor::empty(shape, (a.t.kind(), a.t.device())).bernoulli_float_(keep) / keep
        };
        match (self.seq.get(), a.samples) {
            (Some(pass), None) => {
                let mut cache = self.cache.borrow_mut();
                let key = format!("dropout:{name}");
                if !cache.contains_key(&key) {
                    let mut shape = a.t.size();
                    shape.insert(1, s);
                    cache.insert(key.clone(), mask_for(&shape));
                }
                let m = cache[&key].select(1, pass as i64);
                Ok(Act::with(&a.t * m, None))
            }
            (None, None) => {
                let t = a.t.unsqueeze(1);
                let mut shape = t.size();
                shape[1] = s;
                Ok(Act::with(&t * mask_for(&shape), Some(s)))
            }
            (_, Some(_)) => {
                let m = mask_for(&a.t.size());
                Ok(Act::with(&a.t * m, a.samples))
            }
        }
    }

    /// Record every block boundary's activation (the classic detectors read several layers).
    pub(crate) fn record_taps(&self) {
        self.taps.replace(Some(Vec::new()));
    }

    /// The recorded taps, in forward order.
    pub(crate) fn take_taps(&self) -> Vec<(String, Act)> {
        self.taps
            .borrow_mut()
            .replace(Vec::new())
            .unwrap_or_default()
    }

    /// The captured features (or the head input) as recorded.
    pub(crate) fn take_features(&self) -> Option<Act> {
        let f = self.features.borrow_mut().take();
        f.or_else(|| self.head_input.borrow_mut().take())
    }

    fn route_ids(&self, components: i64, name: &str) -> Result<Option<Tensor>> {
        let Plan::PerExample { batch, ts } = &self.plan else {
            return Ok(None);
        };
        let mut cached = self.ids.borrow_mut();
        if cached.is_none() {
            let ids = match &ts.routing {
                Routing::Random => {
                    Tensor::randint(components, [*batch], (Kind::Int64, tch::Device::Cpu))
                }
                Routing::Fixed(k) => {
                    Tensor::full([*batch], *k as i64, (Kind::Int64, tch::Device::Cpu))
                }
                Routing::Given(v) => Tensor::from_slice(v),
            };
            *cached = Some(ids);
        }
        let ids = cached.as_ref().unwrap();
        let max = ids.max().int64_value(&[]);
        if max >= components {
            return Err(Error::invalid(format!(
                "{name}: routing id {max} out of range for {components} members"
            )));
        }
        Ok(Some(ids.shallow_clone()))
    }

    /// For a training forward that routes each example through one ensemble member: the member
    /// ids `[B]` (CPU int64), so the layer can run one standard op per member over its examples
    /// instead of materialising a weight per example (`[B, out, in]`: 640 MB for LeNet5's
    /// `linear1` at batch 256). None for other plans, families, fixed routing or a sample axis.
    pub(crate) fn ensemble_routes(&self, p: &BayesParam, x: &Act) -> Result<Option<Tensor>> {
        let Plan::PerExample { ts, .. } = &self.plan else {
            return Ok(None);
        };
        if x.samples.is_some()
            || p.family() != Family::Ensemble
            || matches!(ts.routing, Routing::Fixed(_))
            || self.seq.get().is_some()
        {
            return Ok(None);
        }
        let comps = p.components().unwrap_or(1);
        self.route_ids(comps, p.name())
    }

    /// Draws the tensor a layer uses for parameter `p` in this forward.
    pub(crate) fn draw(&self, p: &BayesParam) -> Result<Drawn> {
        if p.is_point() {
            return Ok(Drawn::One(p.mean()));
        }
        if let Some(s) = self.seq.get() {
            let mut cache = self.cache.borrow_mut();
            if !cache.contains_key(p.name()) {
                cache.insert(p.name().to_string(), p.draw(self.seq_samples)?);
            }
            return Ok(Drawn::One(cache[p.name()].get(s as i64)));
        }
        match &self.plan {
            Plan::Mean => Ok(Drawn::One(p.mean())),
            Plan::Shared { samples } => Ok(Drawn::Shared(p.draw(*samples)?)),
            Plan::PerExample { batch, ts } => match p.family() {
                Family::Ensemble | Family::LowRank => {
                    let comps = p.components().unwrap_or(1);
                    let ids = self.route_ids(comps, p.name())?.expect("per-example plan");
                    let dev_ids = ids.to_device(p.mean().device());
                    if let Routing::Fixed(_) = ts.routing {
                        // Every example uses the same member: one standard op suffices.
                        let one = p.draw_routed(&dev_ids.narrow(0, 0, 1))?;
                        return Ok(Drawn::One(one.get(0)));
                    }
                    Ok(Drawn::PerExample(p.draw_routed(&dev_ids)?))
                }
                _ => match ts.sampling {
                    McSampling::PerBatch => Ok(Drawn::One(p.draw(1)?.get(0))),
                    _ => Ok(Drawn::PerExample(p.draw(*batch)?)),
                },
            },
        }
    }
}

/// `k x k` max pooling of `[N, C, H, W]` (dilation 1, floor mode, padding with -inf), equal to
/// libtorch's `max_pool2d` value for value (NaN propagates in both).
///
/// Why not just `max_pool2d`: libtorch's CPU kernel computes the argmax indices too and walks
/// the NCHW input one window at a time; on the 2-core machines it took 19 ms of LeNet5's ~50 ms
/// per batch of 256 in `libre eval` and 75 ms of a ResNet-50 224 px forward. Where no gradient
/// is needed (inference on the CPU, fast paths on) the pooling runs as separable maxima over
/// strided views, rows first, then columns: 5-10x faster. With a gradient the plain op stays,
/// because its backward sends a tied window's gradient to one element, while `maximum` splits
/// it (ties are common: constant background gives equal pre-activations), and attacks must
/// match PyTorch's gradients. [`crate::bayes::conv::set_fast_paths`]`(false)` is the oracle.
pub fn max_pool2d(x: &Tensor, k: i64, stride: i64, pad: i64) -> Tensor {
    let fast = super::conv::fast_paths()
        && x.device() == tch::Device::Cpu
        && x.dim() == 4
        && !x.requires_grad()
        && x.is_floating_point()
        && k > 1
        && stride >= 1
        && pad <= k / 2
        && x.size()[2..].iter().all(|&n| n + 2 * pad >= k);
    // Anything unusual (a window larger than the map, too much padding) goes to libtorch, which
    // also gives the error messages.
    if !fast {
        return x.max_pool2d([k, k], [stride, stride], [pad, pad], [1, 1], false);
    }
    let padded;
    let x = if pad > 0 {
        padded = x.pad([pad, pad, pad, pad], "constant", f64::NEG_INFINITY);
        &padded
    } else {
        x
    };
    // Separable: the maximum over k strided row views, then over k strided column views.
    let pool_dim = |t: &Tensor, dim: i64| -> Tensor {
        let n = t.size()[dim as usize];
        let out = (n - k) / stride + 1;
        let view = |i: i64| t.slice(dim, i, i + stride * (out - 1) + 1, stride);
        (1..k).fold(view(0), |m, i| m.maximum(&view(i)))
    };
    pool_dim(&pool_dim(x, 2), 3)
}

/// An activation with an optional MC sample axis at dim 1.
///
/// # Shapes
/// `samples: None` -> `[B, ...]`; `samples: Some(S)` -> `[B, S, ...]`.
#[derive(Debug)]
pub struct Act {
    pub t: Tensor,
    pub samples: Option<i64>,
}

impl Act {
    pub fn new(t: Tensor) -> Act {
        Act { t, samples: None }
    }

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

    pub fn shallow_clone(&self) -> Act {
        Act::with(self.t.shallow_clone(), self.samples)
    }

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

/// Weight and bias drawn for one layer call, brought to a common form.
pub(crate) enum Multi {
    One(Tensor, Option<Tensor>),
    /// `[S, ...]` each.
    Shared(Tensor, Option<Tensor>),
    /// `[B, ...]` each.
    PerExample(Tensor, Option<Tensor>),
}

fn expand_to(t: Tensor, n: i64) -> Tensor {
    let mut size = vec![n];
    size.extend(t.size());
    t.unsqueeze(0).expand(&size, false)
}

/// Brings a weight and an optional bias to one form (a point bias broadcasts over S or B).
pub(crate) fn unify(w: Drawn, b: Option<Drawn>) -> Multi {
    let n_of = |d: &Drawn| match d {
        Drawn::Shared(t) | Drawn::PerExample(t) => Some(t.size()[0]),
        Drawn::One(_) => None,
    };
    let n = n_of(&w).or(b.as_ref().and_then(n_of));
    let shared = matches!(w, Drawn::Shared(_)) || matches!(b, Some(Drawn::Shared(_)));
    let lift = |d: Drawn| match (d, n) {
        (Drawn::One(t), Some(n)) => expand_to(t, n),
        (Drawn::One(t), None) | (Drawn::Shared(t), _) | (Drawn::PerExample(t), _) => t,
    };
    let (w, b) = (lift(w), b.map(lift));
    match n {
        None => Multi::One(w, b),
        Some(_) if shared => Multi::Shared(w, b),
        Some(_) => Multi::PerExample(w, b),
    }
}

/// Random signs (+1/-1) of the given shape, for flipout.
pub(crate) fn rademacher(shape: &[i64], like: &Tensor) -> Tensor {
    Tensor::randint(2, shape, (Kind::Float, like.device())).to_kind(like.kind()) * 2.0 - 1.0
}

/// The examples routed to each member: `groups[m]` lists, in increasing order, the indices i
/// with `ids[i] == m`, for m in `0..s`.
fn member_groups(ids: &Tensor, s: i64) -> Result<Vec<Vec<i64>>> {
    let v: Vec<i64> = Vec::<i64>::try_from(ids)?;
    let mut groups: Vec<Vec<i64>> = vec![Vec::new(); s as usize];
    for (i, &m) in v.iter().enumerate() {
        let g = usize::try_from(m)
            .ok()
            .and_then(|m| groups.get_mut(m))
            .ok_or_else(|| Error::Shape(format!("routing id {m} out of range 0..{s}")))?;
        g.push(i as i64);
    }
    Ok(groups)
}

/// Runs every example through its own ensemble member with one standard op per member: the
/// examples are sorted by member (stably), split into one contiguous chunk per member that has
/// examples, `f(member, chunk)` maps each chunk `[n_m, ...]` to `[n_m, ...out]`, and the rows are
/// put back in the original order. The fast path of [`apply_routed`]: no padding (with random
/// routing the largest of S groups is about 1.6x the mean at 160 examples and S = 20, and the
/// padded op computes on every pad row, forwards and backwards), and libtorch's oneDNN kernels
/// run faster on S plain convs than on one S-group conv. The layer hands `f` its weights as
/// `unbind(0)` views and the input is cut with `split_with_sizes`: each has one backward
/// (a stack, a cat), where indexing member by member would build S full-size zero gradients.
/// Measured on ResNet-18's 512-channel 3x3 conv at 4x4 maps, 160 examples, S = 20, 2 threads:
/// forward + backward 0.7 s padded, 0.36 s here.
///
/// # Shapes
/// `x`: `[B, ...]`, `ids`: `[B]` int64 (CPU) with values in `0..s` -> `[B, ...out]`
pub(crate) fn apply_segmented(
    x: &Tensor,
    ids: &Tensor,
    s: i64,
    f: &mut dyn FnMut(usize, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let groups = member_groups(ids, s)?;
    let n: usize = groups.iter().map(Vec::len).sum();
    // Examples sorted by member, each member's in their original order.
    let order: Vec<i64> = groups.concat();
    let sorted_already = order.iter().enumerate().all(|(p, &i)| p as i64 == i);
    let dev = x.device();
    let xs = if sorted_already {
        x.shallow_clone()
    } else {
        x.index_select(0, &Tensor::from_slice(&order).to_device(dev))
    };
    let members: Vec<usize> = (0..groups.len())
        .filter(|&m| !groups[m].is_empty())
        .collect();
    let sizes: Vec<i64> = members.iter().map(|&m| groups[m].len() as i64).collect();
    let chunks = xs.split_with_sizes(sizes.as_slice(), 0);
    let mut outs = Vec::with_capacity(chunks.len());
    for (&m, chunk) in members.iter().zip(chunks.iter()) {
        outs.push(f(m, chunk)?);
    }
    let y = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 0)
    };
    if sorted_already {
        return Ok(y);
    }
    let mut position = vec![0i64; n];
    for (p, &i) in order.iter().enumerate() {
        position[i as usize] = p as i64;
    }
    Ok(y.index_select(0, &Tensor::from_slice(&position).to_device(dev)))
}

/// Runs every example through its own ensemble member with one batched op: the examples are
/// grouped by member into a zero-padded `[S, M, ...]` tensor (M = the largest group), `f` maps it
/// to `[S, M, ...out]` (a bmm or a grouped conv over the S members), and the rows are gathered back
/// in the original order. The weight gradient of a batched op is one `[S, ...]` tensor, where
/// slicing member by member would build S full-size zero tensors in the backward.
///
/// # Shapes
/// `x`: `[B, ...]`, `ids`: `[B]` int64 (CPU) with values in `0..s` -> `[B, ...out]`
pub(crate) fn apply_routed(
    x: &Tensor,
    ids: &Tensor,
    s: i64,
    f: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let groups = member_groups(ids, s)?;
    let b = groups.iter().map(Vec::len).sum::<usize>() as i64;
    let m_max = groups.iter().map(Vec::len).max().unwrap_or(0).max(1) as i64;
    // Padded gather index [S * M] (padding rows point at an appended zero row), and for every
    // original example its position in the padded layout.
    let mut gather = Vec::with_capacity((s * m_max) as usize);
    let mut position = vec![0i64; b as usize];
    for (m, rows) in groups.iter().enumerate() {
        for (j, &r) in rows.iter().enumerate() {
            position[r as usize] = m as i64 * m_max + j as i64;
            gather.push(r);
        }
        gather.extend(std::iter::repeat_n(b, m_max as usize - rows.len()));
    }
    let dev = x.device();
    let mut zero_size = x.size();
    zero_size[0] = 1;
    let xz = Tensor::cat(
        &[
            x.shallow_clone(),
            x.zeros_like().narrow(0, 0, 1).reshape(&zero_size),
        ],
        0,
    );
    let mut pad_size = vec![s, m_max];
    pad_size.extend_from_slice(&x.size()[1..]);
    let xp = xz
        .index_select(0, &Tensor::from_slice(&gather).to_device(dev))
        .reshape(&pad_size);
    let y = f(&xp)?; // [S, M, ...out]
    let ys = y.size();
    let mut flat = vec![s * m_max];
    flat.extend_from_slice(&ys[2..]);
    Ok(y.reshape(&flat)
        .index_select(0, &Tensor::from_slice(&position).to_device(dev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both routing helpers give every example its own member's output, in the input's order,
    /// also with members that have no examples; an id outside `0..s` is an error, not a panic.
    #[test]
    fn routed_helpers_keep_the_order_and_agree() {
        let s = 4;
        let ids = Tensor::from_slice(&[2i64, 0, 2, 3, 0, 2]);
        let x = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([6, 2]);
        // Member m adds 100 m: the expected output is x + 100 ids.
        let want = &x + ids.to_kind(Kind::Float).unsqueeze(1) * 100.0;
        let seg = apply_segmented(&x, &ids, s, &mut |m, xm| Ok(xm + 100.0 * m as f64)).unwrap();
        let offs = (Tensor::arange(s, (Kind::Float, tch::Device::Cpu)) * 100.0).reshape([s, 1, 1]);
        let routed = apply_routed(&x, &ids, s, &mut |xp| Ok(xp + &offs)).unwrap();
        assert_eq!(seg, want);
        assert_eq!(routed, want);
        let bad = Tensor::from_slice(&[0i64, 4]);
        let x2 = x.narrow(0, 0, 2);
        assert!(apply_segmented(&x2, &bad, s, &mut |_, xm| Ok(xm.shallow_clone())).is_err());
        assert!(apply_routed(&x2, &bad, s, &mut |xp| Ok(xp.shallow_clone())).is_err());
    }
}
