//! `libre train` (deterministic pre-training) and `libre finetune` (BayesAdapter fine-tuning):
//! the run-directory driver both share, and `libre train` itself. The flags are in `args`,
//! `libre finetune`'s model preparation in `finetune`.

mod args;
mod finetune;
mod progress;

use args::{parse_augment, Common};
pub use args::{FinetuneArgs, TrainArgs};
pub use finetune::run_finetune;
use progress::Bars;

use crate::cli::Output;
use anyhow::Context;
use libre::jobs::run::{Provenance, RunDir};
use libre::models::{Arch, BayesModel, ModelConfig};
use libre::train::{self, TrainConfig};
use serde_json::json;

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
pub(super) fn common_config(
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
pub(super) fn drive(
    out: Output,
    common: &Common,
    make: &mut dyn FnMut(&libre::data::Dataset, tch::Device) -> anyhow::Result<Prepared>,
) -> anyhow::Result<()> {
    let device = crate::cli::resolve_device(&common.device.device, &out)?;
    let start = match common.resume {
        Some(_) => train::RunStart::Resume,
        None => train::RunStart::New,
    };
    let resume = start == train::RunStart::Resume;
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
        let (m, _) = libre::weights::checkpoint::load(&ckpt, device)?;
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
        let ds = libre::data::open(data, common.limit, &mut crate::cli::fetch_note(&out))?;
        make(&ds, device)?
    };
    let train_ds = libre::data::open(&cfg.data, cfg.limit, &mut crate::cli::fetch_note(&out))?;
    let eval_ds = match &cfg.eval_data {
        Some(s) => Some(libre::data::open(
            s,
            common.eval_limit,
            &mut crate::cli::fetch_note(&out),
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
        start,
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

/// `libre train`.
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
