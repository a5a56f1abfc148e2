//! The per-forward context (docs/design.md section 3): a [`Ctx`] is built from a
//! [`ForwardMode`] for one model call and handed to every layer. It decides how each parameter
//! is drawn ([`Drawn`]), keeps the draws of sequential MC passes, the training routing ids and
//! the row expansion, and records the block boundaries (taps, LiBRe's features, MC dropout).
//!
//! # Shapes
//! - `Act { samples: None }`: `[B, ...]` (the deterministic trunk, or a training forward where each
//!   example has its own weight sample).
//! - `Act { samples: Some(S) }`: `[B, S, ...]`, the S samples shared across the batch.

use super::act::Act;
use super::mode::{ForwardMode, McDraws, McDropout, McSampling, Routing, TrainSampling};
use super::posterior::{BayesParam, Family};
use crate::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use tch::{Kind, Tensor};

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
    /// The tensor, whatever its form.
    pub(crate) fn into_tensor(self) -> Tensor {
        match self {
            Drawn::One(t) | Drawn::Shared(t) | Drawn::PerExample(t) => t,
        }
    }
}

/// How a forward draws every parameter, fixed by its mode when the [`Ctx`] is built.
pub(crate) enum DrawPlan {
    /// The means (ensembles: the member average): the deterministic modes.
    Mean,
    /// S draws shared across the batch: the MC modes.
    Shared { samples: i64 },
    /// Training draws under `ts` for `batch` examples (per example or per batch, or routed
    /// members).
    PerExample { batch: i64, ts: TrainSampling },
}

/// Per-forward state shared by all layers of one model call.
pub struct Ctx {
    pub(crate) plan: DrawPlan,
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
            ForwardMode::Deterministic => (DrawPlan::Mean, false, 0),
            ForwardMode::DeterministicTrain => (DrawPlan::Mean, true, 0),
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
                (DrawPlan::PerExample { batch, ts }, true, 0)
            }
            ForwardMode::ParallelMc { samples } => (
                DrawPlan::Shared {
                    samples: *samples as i64,
                },
                false,
                0,
            ),
            // Sequential passes run as `Mean` plans whose layers pick slice `seq` of their draws.
            ForwardMode::SequentialMc { samples } => (DrawPlan::Mean, false, *samples as i64),
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
            (DrawPlan::Shared { samples }, McDraws::LocalReparam, None) => Some(*samples),
            _ => None,
        }
    }

    /// How mean-field layers draw in a training forward; None outside training.
    pub(crate) fn mean_field_scheme(&self) -> Option<McSampling> {
        match &self.plan {
            DrawPlan::PerExample { ts, .. } => Some(ts.sampling),
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
            (DrawPlan::Shared { samples }, _) => *samples,
            (DrawPlan::Mean, Some(_)) => self.seq_samples,
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
        let DrawPlan::PerExample { batch, ts } = &self.plan else {
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
        let DrawPlan::PerExample { ts, .. } = &self.plan else {
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
            DrawPlan::Mean => Ok(Drawn::One(p.mean())),
            DrawPlan::Shared { samples } => Ok(Drawn::Shared(p.draw(*samples)?)),
            DrawPlan::PerExample { batch, ts } => match p.family() {
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
