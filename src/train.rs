//! Training pipelines (docs/design.md sections 1, 5 and 6): deterministic pre-training (MAP with
//! weight decay) and BayesAdapter fine-tuning (two parameter groups, the prior regulariser with
//! N = training-set size, per-example sampling, the optional uncertainty regulariser).
//!
//! Runs are deterministic for a seed on the CPU: the shuffle of epoch e comes from its own RNG
//! seeded with (seed, e), and libtorch's generator is re-seeded with (seed, e) at the start of each
//! epoch, so a run resumed after epoch e draws exactly what the uninterrupted run drew.
//!
//! Crash safety: after each epoch the model and the optimiser state are written to a fresh
//! `epochs/epoch-N/` directory and the `last` symlink is swapped to it atomically (rename), so an
//! interrupted run always leaves the last complete epoch intact; `--resume` continues from it.

use crate::accuracy::{self, EvalOptions};
use crate::bayes::optim::{GroupConfig, Schedule, Sgd};
use crate::bayes::prior::{PriorConfig, PriorRegularizer};
use crate::bayes::{Family, ForwardMode, McSampling, ParamGroup, Routing, TrainSampling};
use crate::data::Dataset;
use crate::jobs::run::RunDir;
use crate::models::BayesModel;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Data augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    None,
    /// Random crop with 4 pixels of zero padding and horizontal flip (CIFAR-style images).
    CropFlip,
}

impl Augment {
    /// The standard choice for images of this shape: none for digits (1 channel), crop + flip
    /// for colour images.
    pub fn auto(shape: [usize; 3]) -> Augment {
        if shape[0] == 3 {
            Augment::CropFlip
        } else {
            Augment::None
        }
    }
}

/// BayesAdapter's uncertainty regulariser (docs/design.md section 6): on noise-perturbed copies of
/// the batch, fed twice with independent weight samples, `loss += coef * mean ReLU(gamma - MI)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UncertaintyReg {
    /// Uniform noise U(-eps, eps) in pixel units.
    pub eps: f64,
    pub gamma: f64,
    pub coef: f64,
}

/// Everything a training run needs; written to `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// "train" (deterministic MAP) or "finetune" (Bayesian).
    pub kind: String,
    pub data: String,
    pub limit: Option<usize>,
    pub eval_data: Option<String>,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: i64,
    pub augment: Augment,
    /// Optimiser groups. Pre-training: Mean only. Fine-tuning: Mean plus the posterior group.
    pub groups: Vec<(ParamGroup, GroupConfig)>,
    /// Prior (fine-tuning) or None (pre-training uses the optimiser's weight decay).
    pub prior: Option<PriorConfig>,
    /// Training-time sampling of the Bayesian layers (fine-tuning).
    pub sampling: Option<McSampling>,
    pub uncertainty_reg: Option<UncertaintyReg>,
    /// MC samples for the per-epoch evaluation of a Bayesian model.
    pub eval_samples: usize,
    /// LiBRe's objective (`libre finetune --recipe libre`) instead of plain cross-entropy.
    #[serde(default)]
    pub libre: Option<crate::detect::LibreConfig>,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::param("epochs", self.epochs, "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::param(
                "batch_size",
                self.batch_size,
                "must be at least 1",
            ));
        }
        if self.eval_samples == 0 {
            return Err(Error::param(
                "eval_samples",
                self.eval_samples,
                "must be at least 1",
            ));
        }
        for (g, c) in &self.groups {
            c.validate(*g)?;
        }
        if let Some(p) = &self.prior {
            p.validate()?;
        }
        if let Some(l) = &self.libre {
            l.validate()?;
            if self.uncertainty_reg.is_some() {
                return Err(Error::invalid(
                    "the LiBRe objective and BayesAdapter's uncertainty regulariser are exclusive",
                ));
            }
        }
        if let Some(u) = &self.uncertainty_reg {
            if !(u.eps > 0.0 && u.eps <= 1.0 && u.gamma >= 0.0 && u.coef >= 0.0) {
                return Err(Error::invalid(format!(
                    "uncertainty regulariser: eps {} must be in (0, 1], gamma {} and coef {} >= 0",
                    u.eps, u.gamma, u.coef
                )));
            }
        }
        Ok(())
    }
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub train_acc: f64,
    pub lr_mean: f64,
    pub eval_top1: Option<f64>,
    pub eval_nll: Option<f64>,
    pub eval_ece: Option<f64>,
    pub seconds: f64,
    pub images_per_s: f64,
    /// LiBRe runs: mean member disagreement d on the perturbed and on the clean pairs.
    #[serde(default)]
    pub d_perturbed: Option<f64>,
    #[serde(default)]
    pub d_clean: Option<f64>,
}

impl EpochLog {
    const HEADER: [&'static str; 11] = [
        "epoch",
        "loss",
        "train_acc",
        "lr_mean",
        "eval_top1",
        "eval_nll",
        "eval_ece",
        "seconds",
        "images_per_s",
        "d_perturbed",
        "d_clean",
    ];
    fn row(&self) -> Vec<String> {
        let o = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        vec![
            self.epoch.to_string(),
            format!("{:.6}", self.loss),
            format!("{:.6}", self.train_acc),
            format!("{:.6e}", self.lr_mean),
            o(self.eval_top1),
            o(self.eval_nll),
            o(self.eval_ece),
            format!("{:.3}", self.seconds),
            format!("{:.1}", self.images_per_s),
            o(self.d_perturbed),
            o(self.d_clean),
        ]
    }
    fn parse(r: &[String]) -> Option<EpochLog> {
        let f = |i: usize| r.get(i).and_then(|s| s.parse::<f64>().ok());
        Some(EpochLog {
            epoch: r.first()?.parse().ok()?,
            loss: f(1)?,
            train_acc: f(2)?,
            lr_mean: f(3)?,
            eval_top1: f(4),
            eval_nll: f(5),
            eval_ece: f(6),
            seconds: f(7)?,
            images_per_s: f(8)?,
            d_perturbed: f(9),
            d_clean: f(10),
        })
    }
}

/// Progress callbacks (the library never prints).
pub trait TrainObserver {
    fn batch(&mut self, _epoch: usize, _done: usize, _total: usize, _loss: f64, _acc: f64) {}
    fn epoch(&mut self, _log: &EpochLog) {}
}

impl TrainObserver for () {}

/// Deterministic per-epoch permutation (SplitMix64 Fisher-Yates).
fn permutation(n: usize, seed: i64, epoch: usize) -> Vec<usize> {
    let mut state = (seed as u64) ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (libre_reports::rng::splitmix64(&mut state) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

fn epoch_seed(seed: i64, epoch: usize) -> i64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch as i64)
}

fn augment(x: &Tensor, how: Augment) -> Tensor {
    match how {
        Augment::None => x.shallow_clone(),
        Augment::CropFlip => {
            let size = x.size();
            let (b, h, w) = (size[0], size[2], size[3]);
            let padded = x.constant_pad_nd([4, 4, 4, 4]);
            let offs = Tensor::randint(9, [b, 2], (Kind::Int64, Device::Cpu));
            let flips = Tensor::rand([b], (Kind::Float, Device::Cpu)).lt(0.5);
            let offs: Vec<i64> = Vec::<i64>::try_from(offs.view([-1])).unwrap();
            let flips: Vec<bool> = Vec::<bool>::try_from(flips).unwrap();
            let mut out = Vec::with_capacity(b as usize);
            for i in 0..b as usize {
                let img =
                    padded
                        .get(i as i64)
                        .narrow(1, offs[2 * i], h)
                        .narrow(2, offs[2 * i + 1], w);
                out.push(if flips[i] { img.flip([2]) } else { img });
            }
            Tensor::stack(&out, 0)
        }
    }
}

/// Mutual information from the sample axis: H(mean p) - mean H(p). `probs`: `[B, S, K]` -> `[B]`.
pub fn mutual_information(probs: &Tensor) -> Tensor {
    let ent = |p: &Tensor| -(p * p.clamp_min(1e-12).log()).sum_dim_intlist(-1, false, Kind::Float);
    let mean = probs.mean_dim(1, false, Kind::Float); // [B, K]
    ent(&mean) - ent(probs).mean_dim(1, false, Kind::Float)
}

/// Where the last complete epoch lives.
fn last_link(run: &RunDir) -> PathBuf {
    run.file("last")
}

/// The epoch the run directory's `last` checkpoint completed (None: no checkpoint yet).
pub fn last_epoch(run: &RunDir) -> Option<usize> {
    let target = std::fs::read_link(last_link(run)).ok()?;
    target
        .file_name()?
        .to_str()?
        .strip_prefix("epoch-")?
        .parse()
        .ok()
}

/// The model checkpoint of the last complete epoch.
pub fn last_checkpoint(run: &RunDir) -> Option<PathBuf> {
    last_epoch(run).map(|_| last_link(run).join("model.safetensors"))
}

fn save_epoch(run: &RunDir, epoch: usize, model: &dyn BayesModel, opt: &Sgd) -> Result<()> {
    let epochs = run.file("epochs");
    std::fs::create_dir_all(&epochs).map_err(|e| Error::io("create epochs dir", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-epoch-")
        .tempdir_in(&epochs)
        .map_err(|e| Error::io("temp dir", e))?;
    let _cleanup = crate::cleanup::track(tmp.path());
    crate::weights::checkpoint::save(tmp.path().join("model.safetensors"), model)?;
    let state = opt.state_tensors();
    let views: Vec<(String, Tensor)> = state;
    Tensor::write_safetensors(&views, tmp.path().join("optimizer.safetensors"))?;
    let dir = epochs.join(format!("epoch-{epoch}"));
    let _ = std::fs::remove_dir_all(&dir);
    let kept = tmp.keep();
    crate::cache::make_public(&kept).map_err(|e| Error::io("chmod epoch dir", e))?;
    std::fs::rename(&kept, &dir)
        .map_err(|e| Error::io(format!("rename into {}", dir.display()), e))?;
    // Swap the `last` symlink atomically.
    let link_tmp = run.file(".last.tmp");
    let _cleanup_link = crate::cleanup::track(&link_tmp);
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(
        Path::new("epochs").join(format!("epoch-{epoch}")),
        &link_tmp,
    )
    .map_err(|e| Error::io("create symlink", e))?;
    std::fs::rename(&link_tmp, last_link(run)).map_err(|e| Error::io("swap last symlink", e))?;
    // Keep only the last two epochs.
    if epoch >= 2 {
        let _ = std::fs::remove_dir_all(epochs.join(format!("epoch-{}", epoch - 2)));
    }
    Ok(())
}

/// Whether [`fit`] starts a new run or continues one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStart {
    /// A new run in a fresh run directory.
    New,
    /// Continue after the run's last complete epoch (the model passed in must be the one loaded
    /// from it).
    Resume,
}

/// Train `model` in place for `cfg.epochs` epochs into `run`, from the start or after the run's
/// last complete epoch ([`RunStart`]).
pub fn fit(
    model: &mut dyn BayesModel,
    train: &Dataset,
    eval_ds: Option<&Dataset>,
    cfg: &TrainConfig,
    run: &RunDir,
    start: RunStart,
    obs: &mut dyn TrainObserver,
) -> Result<Vec<EpochLog>> {
    let resume = start == RunStart::Resume;
    cfg.validate()?;
    crate::models::require_f32(model, "training")?;
    let k = model.config().num_classes as usize;
    if train.labels().is_none() {
        return Err(Error::invalid(format!(
            "{} has no labels: training needs them",
            train.name
        )));
    }
    train.check_labels(k)?;
    let n = train.len();
    let device = model.var_store().device();
    let mut opt = Sgd::new(model.var_store(), &cfg.groups)?;
    // MOPED centres are snapshotted here: for a resumed run they must be the pretrained means, so
    // they are read from the run's initial checkpoint when resuming.
    let prior = match &cfg.prior {
        Some(p) if resume && p.moped => {
            let (init, _) =
                crate::weights::checkpoint::load(run.file("initial.safetensors"), device)?;
            Some(PriorRegularizer::new(init.var_store(), *p)?)
        }
        Some(p) => Some(PriorRegularizer::new(model.var_store(), *p)?),
        None => None,
    };
    let mut logs: Vec<EpochLog> = Vec::new();
    let mut start_epoch = 1;
    if resume {
        let e = last_epoch(run).ok_or_else(|| {
            Error::invalid(format!(
                "{}: no complete epoch to resume from",
                run.path.display()
            ))
        })?;
        let state = Tensor::read_safetensors(last_link(run).join("optimizer.safetensors"))?;
        opt.load_state_tensors(&state, device)?;
        logs = run
            .read_csv_rows("metrics.csv")?
            .iter()
            .filter_map(|r| EpochLog::parse(r))
            .filter(|l| l.epoch <= e)
            .collect();
        start_epoch = e + 1;
    } else if cfg.prior.map(|p| p.moped).unwrap_or(false) {
        crate::weights::checkpoint::save(run.file("initial.safetensors"), model)?;
    }
    let bayesian = model.posterior().is_some();
    let mode = match (cfg.sampling, bayesian) {
        (Some(s), true) => ForwardMode::Train(TrainSampling {
            sampling: s,
            routing: Routing::Random,
            rows: None,
        }),
        _ => ForwardMode::DeterministicTrain,
    };
    for epoch in start_epoch..=cfg.epochs {
        let t0 = std::time::Instant::now();
        tch::manual_seed(epoch_seed(cfg.seed, epoch));
        let perm = permutation(n, cfg.seed, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0usize);
        let (mut dp_sum, mut dc_sum, mut d_batches, mut dc_seen) = (0.0f64, 0.0f64, 0usize, false);
        for chunk in perm.chunks(cfg.batch_size) {
            let (x, y) = train.gather(chunk)?;
            let x = augment(&x, cfg.augment).to_device(device);
            let y = y.to_device(device);
            let (logits, mut loss) = if let Some(l) = &cfg.libre {
                let o = crate::detect::objective::step(model, &x, &y, l)?;
                dp_sum += o.d_perturbed;
                if let Some(dc) = o.d_clean {
                    dc_sum += dc;
                    dc_seen = true;
                }
                d_batches += 1;
                (o.clean_logits, o.loss)
            } else {
                let logits = model.forward_mc(&x, &mode)?.squeeze_dim(1); // [B, K]
                let loss = logits.cross_entropy_for_logits(&y);
                (logits, loss)
            };
            if let Some(u) = cfg.uncertainty_reg {
                // Two independent draws on the same perturbed copies; MI from those 2 samples.
                let noise = (Tensor::rand_like(&x) * 2.0 - 1.0) * u.eps;
                let xp = (&x + noise).clamp(0.0, 1.0);
                let p1 = model.forward_mc(&xp, &mode)?.softmax(-1, Kind::Float); // [B, 1, K]
                let p2 = model.forward_mc(&xp, &mode)?.softmax(-1, Kind::Float);
                let mi = mutual_information(&Tensor::cat(&[p1, p2], 1)); // [B]
                                                                         // Out of place on purpose: `+=` would modify a tensor of the autograd graph.
                #[allow(clippy::assign_op_pattern)]
                {
                    loss = loss + (u.gamma - mi).relu().mean(Kind::Float) * u.coef;
                }
            }
            let lv = f64::try_from(&loss)?;
            if !lv.is_finite() {
                return Err(Error::invalid(format!(
                    "epoch {epoch}: the loss became {lv}; lower the learning rate"
                )));
            }
            opt.zero_grad();
            loss.backward();
            if let Some(p) = &prior {
                p.apply(model.var_store())?;
            }
            opt.step();
            let b = chunk.len();
            loss_sum += lv * b as f64;
            correct += i64::try_from(logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64))?;
            seen += b;
            obs.batch(
                epoch,
                seen,
                n,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
            );
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let (mut eval_top1, mut eval_nll, mut eval_ece) = (None, None, None);
        if let Some(ev) = eval_ds {
            let mode = crate::models::mode_for(model, cfg.eval_samples);
            let opts = EvalOptions {
                mode,
                batch_size: 500,
                curve: vec![],
                seed: cfg.seed,
            };
            let r = accuracy::evaluate(model, ev, &opts, &mut |_| {})?;
            eval_top1 = Some(r.metrics.top1);
            eval_nll = Some(r.metrics.nll);
            eval_ece = Some(r.metrics.ece);
        }
        let log = EpochLog {
            epoch,
            loss: loss_sum / seen as f64,
            train_acc: correct as f64 / seen as f64,
            lr_mean: opt.lr(ParamGroup::Mean).unwrap_or(0.0),
            eval_top1,
            eval_nll,
            eval_ece,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_secs.max(1e-9),
            d_perturbed: (d_batches > 0).then(|| dp_sum / d_batches as f64),
            d_clean: dc_seen.then(|| dc_sum / d_batches as f64),
        };
        // Checkpoint first, then the log: the log never names an epoch whose checkpoint is lost.
        save_epoch(run, epoch, model, &opt)?;
        logs.push(log.clone());
        let rows: Vec<Vec<String>> = logs.iter().map(|l| l.row()).collect();
        run.write_csv("metrics.csv", &EpochLog::HEADER, &rows)?;
        obs.epoch(&log);
    }
    crate::weights::checkpoint::save(run.file("model.safetensors"), model)?;
    Ok(logs)
}

/// Default optimiser groups for deterministic pre-training: SGD with momentum 0.9, Nesterov,
/// weight decay λ and a per-step cosine schedule over the run.
pub fn pretrain_groups(lr: f64, decay: f64, total_steps: usize) -> Vec<(ParamGroup, GroupConfig)> {
    vec![(
        ParamGroup::Mean,
        GroupConfig {
            lr,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: decay,
            schedule: Schedule::Cosine {
                total: total_steps,
                min_lr: 0.0,
            },
        },
    )]
}

/// The BayesAdapter fine-tuning groups (docs/design.md section 6): the means with SGD `lr_mean`,
/// momentum 0.9, Nesterov; the posterior group (psi, members or low-rank factors) with `lr_post`:
/// psi by plain SGD with a x0.1 step decay every third of the run (at least one epoch), members /
/// factors with momentum 0.9 and a per-step cosine to a tenth (LiBRe). No optimiser weight decay:
/// the prior regulariser decays every group (no double decay, docs/design.md section 6).
pub fn finetune_groups(
    family: Family,
    lr_mean: f64,
    lr_post: f64,
    epochs: usize,
    steps_per_epoch: usize,
) -> Vec<(ParamGroup, GroupConfig)> {
    let mean = GroupConfig {
        lr: lr_mean,
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    };
    let (group, post) = match family {
        Family::MeanField => (
            ParamGroup::Psi,
            GroupConfig {
                lr: lr_post,
                schedule: Schedule::Step {
                    every: steps_per_epoch * (epochs / 3).max(1),
                    gamma: 0.1,
                },
                ..Default::default()
            },
        ),
        _ => (
            if family == Family::Ensemble {
                ParamGroup::Members
            } else {
                ParamGroup::LowRank
            },
            GroupConfig {
                lr: lr_post,
                momentum: 0.9,
                schedule: Schedule::Cosine {
                    total: epochs * steps_per_epoch,
                    min_lr: lr_post / 10.0,
                },
                ..Default::default()
            },
        ),
    };
    vec![(ParamGroup::Mean, mean), (group, post)]
}

/// LiBRe's optimiser groups (Deng et al. 2021, as in the authors' code): the ensemble members by
/// SGD with momentum 0.9 and weight decay `decay / S`, learning rate cosine-annealed per step from
/// `lr` to `ft_lr`; every other parameter by SGD with momentum 0.9 and weight decay `decay` at the
/// constant `ft_lr`. The optimiser decays, so no prior regulariser runs alongside.
///
/// For a mean-field posterior the psi group (log standard deviations) takes the members' place
/// with the same schedule and no weight decay (decay would pull psi towards 0, i.e. sigma towards
/// 1).
pub fn libre_groups(
    family: Family,
    lr: f64,
    ft_lr: f64,
    decay: f64,
    members: usize,
    total_steps: usize,
) -> Vec<(ParamGroup, GroupConfig)> {
    let (group, wd) = if family == Family::MeanField {
        (ParamGroup::Psi, 0.0)
    } else {
        (ParamGroup::Members, decay / members.max(1) as f64)
    };
    vec![
        (
            ParamGroup::Mean,
            GroupConfig {
                lr: ft_lr,
                momentum: 0.9,
                weight_decay: decay,
                ..Default::default()
            },
        ),
        (
            group,
            GroupConfig {
                lr,
                momentum: 0.9,
                weight_decay: wd,
                schedule: Schedule::Cosine {
                    total: total_steps,
                    min_lr: ft_lr,
                },
                ..Default::default()
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_seeded_permutation() {
        let p = permutation(100, 7, 1);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 7, 1));
        assert_ne!(p, permutation(100, 7, 2));
        assert_ne!(p, permutation(100, 8, 1));
        // Seeded training runs (and the results documented from them) depend on this exact order.
        assert_eq!(permutation(10, 7, 1), [6, 4, 8, 3, 1, 7, 0, 2, 5, 9]);
        assert_eq!(permutation(10, -3, 0), [2, 0, 4, 9, 7, 1, 6, 5, 8, 3]);
    }

    #[test]
    fn mutual_information_of_agreeing_and_disagreeing_samples() {
        let agree = Tensor::from_slice(&[0.9f32, 0.1, 0.9, 0.1]).view([1, 2, 2]);
        assert!(f64::try_from(mutual_information(&agree).abs().max()).unwrap() < 1e-6);
        let dis = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]);
        let mi = f64::try_from(mutual_information(&dis).get(0)).unwrap();
        assert!((mi - 2f64.ln()).abs() < 1e-5, "{mi}");
    }

    #[test]
    fn crop_flip_keeps_shape_and_pixels() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let x = Tensor::rand([3, 3, 8, 8], (Kind::Float, Device::Cpu));
        let y = augment(&x, Augment::CropFlip);
        assert_eq!(y.size(), [3, 3, 8, 8]);
        assert!(f64::try_from(y.max()).unwrap() <= 1.0);
        assert!(augment(&x, Augment::None).equal(&x));
    }
}
