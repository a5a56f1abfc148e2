//! `libre train` (deterministic pre-training) and `libre finetune` (BayesAdapter fine-tuning).

use super::Output;
use anyhow::Context;
use libre::bayes::prior::PriorConfig;
use libre::bayes::{Family, LayerSelection, McSampling, PosteriorConfig};
use libre::detect::objective::customary_eps;
use libre::detect::{LibreConfig, ObjectiveKind};
use libre::models::{Arch, BayesModel, ModelConfig};
use libre::run::{Provenance, RunDir};
use libre::train::{self, Augment, EpochLog, TrainConfig, TrainObserver, UncertaintyReg};
use serde_json::json;
use std::path::PathBuf;

/// Options both commands share.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Training data spec (mnist:train, fashion-mnist:train, cifar10:DIR:train, ...).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<String>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on this data set after every epoch (e.g. mnist:test).
    #[arg(long)]
    pub eval_data: Option<String>,
    /// Use only the first N evaluation examples.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Training epochs [default: 10 for train, 1 for finetune].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Examples per optimiser step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Seed of the initialisation, data order, augmentation and weight sampling (equal seeds give
    /// equal weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Data augmentation: auto (crop+flip for colour images, none for digits), none, crop-flip.
    #[arg(long, default_value = "auto")]
    pub augment: String,
    /// Run directory (config.json, metrics.csv, checkpoints, summary.json).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last complete epoch.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Replace the run already in --out (its run files are removed first; other files stay).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Architecture: lenet5, digitcnn, mlp, resnet18, resnet34, resnet50, wrn28-10.
    #[arg(long)]
    pub model: Option<String>,
    /// ResNet: CIFAR stem (3x3 conv, no max-pool), for small images.
    #[arg(long)]
    pub cifar_stem: bool,
    /// Learning rate of SGD with Nesterov momentum (cosine schedule).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// Weight decay λ (the MAP prior).
    #[arg(long, default_value_t = 5e-4)]
    pub decay: f64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// The pretrained model: a libre checkpoint or zoo:NAME.
    #[arg(long)]
    pub weights: Option<String>,
    /// Recipe: `bayesadapter` (prior-regularised fine-tuning of a posterior), `libre` (LiBRe:
    /// a last-block ensemble trained to disagree on noise-perturbed images; docs/detection.md) or
    /// `libre-robust` (LiBRe whose perturbed copies are adversarial examples crafted against the
    /// current model and detector each step, with adversarial cross-entropy; start it from an
    /// adversarially trained network, e.g. zoo:lenet5-mnist-adv; docs/detection.md,
    /// "Adversarial LiBRe training").
    #[arg(long, default_value = "bayesadapter", value_parser = ["bayesadapter", "libre", "libre-robust"])]
    pub recipe: String,
    /// mean-field, ensemble or low-rank [default: mean-field; ensemble for --recipe libre].
    #[arg(long)]
    pub posterior: Option<String>,
    /// Layers to make Bayesian: all, last-block, a path, a comma list or a glob [default: all;
    /// last-block for --recipe libre].
    #[arg(long)]
    pub layers: Option<String>,
    /// MC samples for evaluation (and ensemble members / low-rank components).
    #[arg(long, default_value_t = 20)]
    pub mc_samples: usize,
    /// Learning rate of the means (BayesAdapter: 8e-4, momentum 0.9, Nesterov).
    #[arg(long, default_value_t = 8e-4)]
    pub lr_mean: f64,
    /// Learning rate of psi / members / low-rank factors (BayesAdapter: 0.1 for psi).
    #[arg(long)]
    pub lr_posterior: Option<f64>,
    /// Prior weight decay λ (N(0, 1/(λN)), N = training-set size).
    #[arg(long, default_value_t = 1e-4)]
    pub decay: f64,
    /// Centre the prior of the means at the pretrained weights (MOPED).
    #[arg(long)]
    pub moped: bool,
    /// How a mean-field posterior is sampled in training: local-reparam (the default: each
    /// example gets its own output distribution at Linear and Conv2d, Kingma et al. 2015, with
    /// per-example weight draws for the other layers; the fastest), per-example (a weight draw per
    /// example everywhere: the same distribution, about 10x slower), flipout, per-batch.
    /// Ensembles and low-rank posteriors route members per example whatever this says.
    #[arg(long, default_value = "local-reparam")]
    pub sampling: String,
    /// Enable the uncertainty regulariser with this noise eps (e.g. 0.1).
    #[arg(long)]
    pub unc_reg_eps: Option<f64>,
    /// Uncertainty regulariser: the mutual information asked of noisy inputs (hinge margin γ in
    /// coef * mean ReLU(γ - MI)).
    #[arg(long, default_value_t = 0.75)]
    pub unc_reg_gamma: f64,
    /// Uncertainty regulariser: its weight in the loss.
    #[arg(long, default_value_t = 1.0)]
    pub unc_reg_coef: f64,
    /// LiBRe: the disagreement hinge: anchored (members agree on clean images, disagree on
    /// noise; chosen on validation data, docs/results.md), reference (the published one, which
    /// detects nothing on MNIST) or relative (docs/detection.md).
    #[arg(long, default_value = "anchored")]
    pub objective: String,
    /// LiBRe: weight of the disagreement hinge (0 = plain fine-tuning, the ablation).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// LiBRe: the hinge margin on the mean squared member disagreement.
    #[arg(long, default_value_t = 0.5)]
    pub gamma: f64,
    /// LiBRe: noise magnitude range MIN:MAX (pixel units) [default: 0.5x to 2x the data set's
    /// customary attack eps: 0.15:0.6 for 28 px digits, 4/255:16/255 for CIFAR-size images].
    #[arg(long, value_name = "MIN:MAX")]
    pub noise_eps: Option<String>,
    /// LiBRe: per-image probability of low-pass filtering the noise.
    #[arg(long, default_value_t = 0.03)]
    pub blur_prob: f64,
    /// LiBRe: start the members at the pretrained weights plus Gaussian noise of this many
    /// standard deviations of each weight tensor (0 = identical copies, the reference).
    #[arg(long, default_value_t = 0.0)]
    pub member_init_std: f64,
    /// LiBRe: initial learning rate of the ensemble members (cosine-annealed to --ft-lr). The
    /// published 1e-3 leaves identical members nearly identical for an epoch; 0.05 was chosen on
    /// validation data (docs/results.md).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// LiBRe: learning rate of every other parameter (and the members' final one).
    #[arg(long, default_value_t = 1e-4)]
    pub ft_lr: f64,
    /// libre-robust: the attack crafting each step's copies against the current model's
    /// predictive and feature variance: selective, mimicry or pgd-restarts.
    #[arg(long, default_value = "selective")]
    pub adv_attack: String,
    /// libre-robust: the attack's eps (pixel units) [default: the data set's customary eps,
    /// 0.3 for 28 px digits].
    #[arg(long)]
    pub adv_eps: Option<f64>,
    /// libre-robust: the attack's steps per training step.
    #[arg(long, default_value_t = 10)]
    pub adv_steps: usize,
    /// libre-robust: the attack's step size [default: eps / 4].
    #[arg(long)]
    pub adv_step_size: Option<f64>,
    /// libre-robust: mimicry's C when --adv-attack mimicry.
    #[arg(long, default_value_t = 10.0)]
    pub adv_c: f64,
    /// libre-robust: weight of the members' cross-entropy on the adversarial copies (0: the
    /// classifier is not trained on them).
    #[arg(long, default_value_t = 1.0)]
    pub adv_ce: f64,
    /// libre-robust: which crafted copies the members must disagree on: misclassified (only
    /// those one of their two members gets wrong; the rest enter the cross-entropy only; chosen
    /// on validation data, docs/results.md) or all.
    #[arg(long, default_value = "misclassified", value_parser = ["all", "misclassified"])]
    pub adv_hinge: String,
    #[command(flatten)]
    pub common: Common,
}

fn parse_range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--noise-eps '{s}': expected MIN:MAX, e.g. 0.15:0.6"))?;
    let p = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--noise-eps '{s}': '{t}' is not a number"))
    };
    Ok((p(a)?, p(b)?))
}

struct Bars<'a> {
    out: &'a Output,
    pb: indicatif::ProgressBar,
    epochs: usize,
}

impl TrainObserver for Bars<'_> {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64, acc: f64) {
        if self.pb.length() != Some(total as u64) {
            self.pb.set_length(total as u64);
        }
        self.pb.set_prefix(format!("epoch {epoch}/{}", self.epochs));
        self.pb.set_position(done as u64);
        self.pb
            .set_message(format!("loss {loss:.4} acc {:.2}%", 100.0 * acc));
    }
    fn epoch(&mut self, l: &EpochLog) {
        self.pb.set_position(0);
        let ev = match (l.eval_top1, l.eval_nll, l.eval_ece) {
            (Some(a), Some(n), Some(e)) => {
                format!("  eval top-1 {:.2}% NLL {n:.4} ECE {e:.4}", 100.0 * a)
            }
            _ => String::new(),
        };
        self.pb.suspend(|| {
            self.out.note(format!(
                "epoch {}: loss {:.4} train acc {:.2}%{ev}  ({:.1} s, {:.0} img/s)",
                l.epoch,
                l.loss,
                100.0 * l.train_acc,
                l.seconds,
                l.images_per_s
            ))
        });
        self.out
            .event("epoch", serde_json::to_value(l).unwrap_or_default());
    }
}

fn parse_augment(s: &str, shape: [usize; 3]) -> anyhow::Result<Augment> {
    Ok(match s {
        "auto" => Augment::auto(shape),
        "none" => Augment::None,
        "crop-flip" => Augment::CropFlip,
        _ => anyhow::bail!("--augment must be auto, none or crop-flip, got '{s}'"),
    })
}

fn parse_sampling(s: &str) -> anyhow::Result<McSampling> {
    Ok(match s {
        "per-example" => McSampling::PerExample,
        "per-batch" => McSampling::PerBatch,
        "local-reparam" => McSampling::LocalReparam,
        "flipout" => McSampling::Flipout,
        _ => anyhow::bail!(
            "--sampling must be per-example, per-batch, local-reparam or flipout, got '{s}'"
        ),
    })
}

/// What a command prepares before training: the model, its training config and extra settings
/// recorded in config.json.
type Prepared = (Box<dyn BayesModel>, TrainConfig, serde_json::Value);

/// What a run directory holds (removed by --force; nothing else in the directory is touched).
const RUN_FILES: [&str; 6] = [
    "config.json",
    "metrics.csv",
    "summary.json",
    "model.safetensors",
    "epochs",
    "last",
];

/// The run settings `train` and `finetune` share, from the common flags; the optimiser groups
/// are empty and the Bayesian settings off until the command sets them.
fn common_config(
    c: &Common,
    kind: &str,
    ds: &libre::data::Dataset,
    epochs: usize,
) -> anyhow::Result<TrainConfig> {
    Ok(TrainConfig {
        kind: kind.into(),
        data: c
            .data
            .clone()
            .expect("clap requires --data without --resume"),
        limit: c.limit,
        eval_data: c.eval_data.clone(),
        epochs,
        batch_size: c.batch_size,
        seed: c.seed,
        augment: parse_augment(&c.augment, ds.shape())?,
        groups: Vec::new(),
        prior: None,
        sampling: None,
        uncertainty_reg: None,
        eval_samples: 1,
        libre: None,
    })
}

/// Shared driver: open data, (re)load the model, train, write config / summary.
fn drive(
    out: Output,
    common: &Common,
    make: &mut dyn FnMut(&libre::data::Dataset, tch::Device) -> anyhow::Result<Prepared>,
) -> anyhow::Result<()> {
    let device = super::resolve_device(&common.device, &out)?;
    let resume = common.resume.is_some();
    let dir = common
        .resume
        .clone()
        .or(common.out.clone())
        .expect("clap requires --out without --resume");
    // Nothing is created before every setting has been checked: a failed start leaves no run
    // directory behind, and --resume never creates one.
    if common.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    if resume && !dir.join("config.json").is_file() {
        anyhow::bail!(
            "--resume {}: not a run directory (no config.json)",
            dir.display()
        );
    }
    let existing: Vec<&str> = RUN_FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !resume && !existing.is_empty() && !common.force {
        anyhow::bail!(
            "--out {} already holds a run ({}): pass --resume {} to continue it, --force to \
             replace it, or another --out",
            dir.display(),
            existing.join(", "),
            dir.display()
        );
    }
    let run = RunDir { path: dir.clone() };
    let (mut model, cfg, extra) = if resume {
        let cfg: TrainConfig = run
            .read_json::<serde_json::Value>("config.json")
            .and_then(|v| {
                serde_json::from_value(v["train"].clone())
                    .map_err(|e| libre::Error::bad_file(run.file("config.json"), e.to_string()))
            })?;
        let ckpt = train::last_checkpoint(&run).ok_or_else(|| {
            anyhow::anyhow!(
                "--resume {}: no complete epoch to resume from",
                dir.display()
            )
        })?;
        let (m, _) = libre::checkpoint::load(&ckpt, device)?;
        out.note(format!(
            "resuming {} after epoch {}",
            dir.display(),
            train::last_epoch(&run).unwrap_or(0)
        ));
        (m, cfg, json!({}))
    } else {
        let data = common
            .data
            .as_deref()
            .expect("clap requires --data without --resume");
        let ds = libre::data::open(data, common.limit, &mut super::fetch_note(&out))?;
        make(&ds, device)?
    };
    let train_ds = libre::data::open(&cfg.data, cfg.limit, &mut super::fetch_note(&out))?;
    let eval_ds = match &cfg.eval_data {
        Some(s) => Some(libre::data::open(
            s,
            common.eval_limit,
            &mut super::fetch_note(&out),
        )?),
        None => None,
    };
    cfg.validate()?;
    if !resume {
        // --force: the old run's files go only now, after every check passed.
        for f in &existing {
            let p = dir.join(f);
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.with_context(|| format!("--force: removing {}", p.display()))?;
        }
        let run = RunDir::create(&dir)?;
        let config = json!({
            "train": cfg, "model": model.config(), "posterior": model.posterior(),
            "provenance": Provenance::new(device), "extra": extra,
        });
        run.write_json("config.json", &config)?;
    }
    let mut bars = Bars {
        out: &out,
        pb: out.progress(train_ds.len() as u64, "train"),
        epochs: cfg.epochs,
    };
    let t0 = std::time::Instant::now();
    let logs = train::fit(
        model.as_mut(),
        &train_ds,
        eval_ds.as_ref(),
        &cfg,
        &run,
        if resume {
            train::RunStart::Resume
        } else {
            train::RunStart::New
        },
        &mut bars,
    )?;
    bars.pb.finish_and_clear();
    let last = logs.last().cloned();
    let summary = json!({
        "run_dir": dir, "epochs": logs.len(), "seconds_this_invocation": t0.elapsed().as_secs_f64(),
        "final": last, "checkpoint": run.file("model.safetensors"),
    });
    run.write_json("summary.json", &summary)?;
    out.result(summary.clone(), || {
        let mut s = format!("run directory: {}\n", dir.display());
        if let Some(l) = &last {
            s += &format!(
                "final epoch {}: loss {:.4}, train acc {:.2}%",
                l.epoch,
                l.loss,
                100.0 * l.train_acc
            );
            if let (Some(a), Some(n), Some(e)) = (l.eval_top1, l.eval_nll, l.eval_ece) {
                s += &format!(", eval top-1 {:.2}% NLL {n:.4} ECE {e:.4}", 100.0 * a);
            }
            s.push('\n');
        }
        s += &format!("checkpoint: {}\n", run.file("model.safetensors").display());
        s
    });
    Ok(())
}

pub fn run_train(args: TrainArgs, out: Output) -> anyhow::Result<()> {
    let c = &args.common;
    let epochs = c.epochs.unwrap_or(10);
    drive(out, c, &mut |ds, device| {
        let arch = args
            .model
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--model is required"))?;
        let [ch, h, _] = ds.shape();
        let k = ds
            .num_classes()
            .ok_or_else(|| anyhow::anyhow!("{} has no labels", ds.name))? as i64;
        let (ch, h) = (ch as i64, h as i64);
        let mc = match arch.parse::<Arch>()? {
            Arch::Mlp => ModelConfig::mlp(ch, h, vec![512, 256], k),
            a => match a.resnet_depth() {
                Some(depth) => ModelConfig {
                    in_channels: ch,
                    ..ModelConfig::resnet(depth, k, h, args.cifar_stem)
                },
                None => ModelConfig {
                    arch: a,
                    num_classes: k,
                    in_channels: ch,
                    image_size: h,
                    ..match a {
                        Arch::DigitCnn => ModelConfig::digitcnn(),
                        _ => ModelConfig::default(),
                    }
                },
            },
        };
        // Seeded before the model is built, so its initial weights are reproducible too.
        tch::manual_seed(c.seed);
        let model = libre::models::build(&mc, device)?;
        let steps = epochs * ds.len().div_ceil(c.batch_size);
        let cfg = TrainConfig {
            groups: train::pretrain_groups(args.lr, args.decay, steps),
            ..common_config(c, "train", ds, epochs)?
        };
        tch::manual_seed(c.seed);
        Ok((model, cfg, json!({})))
    })
}

pub fn run_finetune(args: FinetuneArgs, out: Output) -> anyhow::Result<()> {
    let c = &args.common;
    let epochs = c.epochs.unwrap_or(1);
    let libre_recipe = args.recipe == "libre" || args.recipe == "libre-robust";
    let robust_recipe = args.recipe == "libre-robust";
    if !robust_recipe {
        let given = [
            ("--adv-attack", args.adv_attack != "selective"),
            ("--adv-eps", args.adv_eps.is_some()),
            ("--adv-steps", args.adv_steps != 10),
            ("--adv-step-size", args.adv_step_size.is_some()),
            ("--adv-c", args.adv_c != 10.0),
            ("--adv-ce", args.adv_ce != 1.0),
            ("--adv-hinge", args.adv_hinge != "misclassified"),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            anyhow::bail!("{flag} applies to --recipe libre-robust only");
        }
    }
    drive(out, c, &mut |ds, device| {
        let w = args
            .weights
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--weights is required"))?;
        let default_post = if libre_recipe {
            "ensemble"
        } else {
            "mean-field"
        };
        let family: Family = args.posterior.as_deref().unwrap_or(default_post).parse()?;
        if family == Family::Point {
            anyhow::bail!("--posterior must be mean-field, ensemble or low-rank");
        }
        if libre_recipe && !matches!(family, Family::Ensemble | Family::MeanField) {
            anyhow::bail!(
                "--recipe libre trains a deep ensemble (members routed per image) or a mean-field \
                 posterior; --posterior {family} is not supported with it"
            );
        }
        let default_layers = if libre_recipe { "last-block" } else { "all" };
        let sel: LayerSelection = args.layers.as_deref().unwrap_or(default_layers).parse()?;
        let libre_cfg = if libre_recipe {
            let objective: ObjectiveKind = args.objective.parse()?;
            let mut l = LibreConfig::for_attack_eps(objective, customary_eps(ds.shape()));
            if let Some(r) = &args.noise_eps {
                l.noise_eps = parse_range(r)?;
            }
            l.alpha = args.alpha;
            l.gamma = args.gamma;
            l.blur_prob = args.blur_prob;
            l.member_init_std = args.member_init_std;
            if robust_recipe {
                let eps = args.adv_eps.unwrap_or(customary_eps(ds.shape()));
                let mut a = libre::detect::objective::AdversarialConfig::for_attack_eps(eps);
                a.attack = args.adv_attack.clone();
                a.steps = args.adv_steps;
                a.step_size = args.adv_step_size.unwrap_or(eps / 4.0);
                a.c = args.adv_c;
                a.ce_weight = args.adv_ce;
                a.hinge_misclassified_only = args.adv_hinge == "misclassified";
                out.note(format!(
                    "libre-robust: copies crafted by {} (eps {}, {} steps of {}{}), adversarial \
                     cross-entropy weight {}",
                    a.attack,
                    a.eps,
                    a.steps,
                    a.step_size,
                    if a.attack == "mimicry" {
                        format!(", C {}", a.c)
                    } else {
                        String::new()
                    },
                    a.ce_weight
                ));
                l.adversarial = Some(a);
            }
            l.validate()?;
            out.note(format!(
                "LiBRe: objective {}, alpha {}, gamma {}, noise eps U[{}, {}], blur {}, member \
                 init std {}",
                args.objective,
                l.alpha,
                l.gamma,
                l.noise_eps.0,
                l.noise_eps.1,
                l.blur_prob,
                l.member_init_std
            ));
            Some(l)
        } else {
            None
        };
        let path = libre::zoo::resolve(&w, &mut super::fetch_note(&out))?;
        let (mut model, _) = libre::checkpoint::load(&path, device)?;
        tch::manual_seed(c.seed);
        let pc = PosteriorConfig::new(family, args.mc_samples);
        let converted = model.convert(&sel, &pc)?;
        if let Some(l) = &libre_cfg {
            libre::detect::objective::spread_members(model.as_ref(), l.member_init_std)?;
        }
        let steps_per_epoch = ds.len().div_ceil(c.batch_size.max(1));
        let lr_post = args.lr_posterior.unwrap_or(match family {
            Family::MeanField => 0.1,
            _ => 1e-3,
        });
        let (groups, prior) = if libre_recipe {
            (
                train::libre_groups(
                    family,
                    args.lr,
                    args.ft_lr,
                    args.decay,
                    args.mc_samples,
                    epochs * steps_per_epoch,
                ),
                None,
            )
        } else {
            (
                train::finetune_groups(family, args.lr_mean, lr_post, epochs, steps_per_epoch),
                Some(PriorConfig {
                    decay: args.decay,
                    num_data: ds.len(),
                    moped: args.moped,
                }),
            )
        };
        let cfg = TrainConfig {
            groups,
            prior,
            sampling: Some(parse_sampling(&args.sampling)?),
            uncertainty_reg: args.unc_reg_eps.map(|eps| UncertaintyReg {
                eps,
                gamma: args.unc_reg_gamma,
                coef: args.unc_reg_coef,
            }),
            eval_samples: args.mc_samples,
            libre: libre_cfg,
            ..common_config(c, "finetune", ds, epochs)?
        };
        Ok((
            model,
            cfg,
            json!({ "weights": w, "recipe": args.recipe, "converted_layers": converted }),
        ))
    })
}
