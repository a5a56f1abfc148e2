//! `libre quickstart --bayesadapter`: the zoo LeNet5 converted to a mean-field posterior,
//! fine-tuned for an epoch, and the Bayes ensemble's accuracy and calibration next to the DNN's.

use super::Args;
use crate::cli::Output;
use libre::accuracy::{self, EvalOptions};
use libre::bayes::prior::PriorConfig;
use libre::bayes::{Family, ForwardMode, LayerSelection, McSampling, PosteriorConfig};
use libre::jobs::run::{Provenance, RunDir};
use libre::train::{self, Augment, TrainConfig};
use serde_json::json;

/// `--bayesadapter`: all-layer mean-field fine-tuning and the accuracy / calibration table.
pub(super) fn run_bayesadapter(args: Args, out: Output) -> anyhow::Result<()> {
    let device = crate::cli::resolve_device(&args.device.device, &out)?;
    let mut note = crate::cli::fetch_note(&out);
    let weights = libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut note)?;
    let train_ds = libre::data::open("mnist:train", None, &mut note)?;
    let test_ds = libre::data::open("mnist:test", None, &mut note)?;
    let (mut model, _) = libre::weights::checkpoint::load(&weights, device)?;

    out.note("1/4 evaluating the DNN (zoo:lenet5-mnist) on the MNIST test set");
    let det = EvalOptions {
        mode: ForwardMode::Deterministic,
        batch_size: 500,
        curve: vec![],
        seed: args.seed,
    };
    let dnn = accuracy::evaluate(model.as_ref(), &test_ds, &det, &mut |_| {})?;

    out.note("2/4 converting every layer to a mean-field Gaussian posterior");
    tch::manual_seed(args.seed);
    let pc = PosteriorConfig::new(Family::MeanField, args.mc_samples);
    let converted = model.convert(&LayerSelection::All, &pc)?;

    out.note(format!(
        "3/4 Bayesian fine-tuning, {} epoch(s) on the 60k MNIST training set",
        args.epochs
    ));
    let bs = 128;
    let steps = train_ds.len().div_ceil(bs);
    let cfg = TrainConfig {
        kind: "finetune".into(),
        data: "mnist:train".into(),
        limit: None,
        eval_data: None,
        epochs: args.epochs,
        batch_size: bs,
        seed: args.seed,
        augment: Augment::None,
        groups: train::finetune_groups(Family::MeanField, 8e-4, 0.1, args.epochs, steps),
        prior: Some(PriorConfig {
            decay: 1e-4,
            num_data: train_ds.len(),
            moped: false,
        }),
        // Local reparameterisation: per example the same output distribution as drawing a weight
        // sample per example (exact for mean-field Linear/Conv2d), at the cost of two ops instead
        // of a [B, out, in] weight draw; this keeps the quick start within minutes on 2 cores.
        sampling: Some(McSampling::LocalReparam),
        uncertainty_reg: None,
        eval_samples: args.mc_samples,
        libre: None,
    };
    let run = RunDir::create(&args.out)?;
    run.write_json(
        "config.json",
        &json!({ "train": cfg, "model": model.config(), "converted_layers": converted,
                 "weights": "zoo:lenet5-mnist", "provenance": Provenance::new(device) }),
    )?;
    let t0 = std::time::Instant::now();
    let logs = super::fine_tune(model.as_mut(), &train_ds, &cfg, &run, &out, "fine-tune")?;
    let ft_secs = t0.elapsed().as_secs_f64();

    out.note(format!(
        "4/4 evaluating the {}-sample Bayes ensemble",
        args.mc_samples
    ));
    let mc = EvalOptions {
        mode: ForwardMode::ParallelMc {
            samples: args.mc_samples,
        },
        batch_size: 250,
        curve: vec![],
        seed: args.seed,
    };
    let bnn = accuracy::evaluate(model.as_ref(), &test_ds, &mc, &mut |_| {})?;

    let (d, b) = (&dnn.metrics, &bnn.metrics);
    let data = json!({
        "dnn": { "top1": d.top1, "nll": d.nll, "ece": d.ece, "brier": d.brier, "seconds": dnn.seconds },
        "bnn": { "top1": b.top1, "nll": b.nll, "ece": b.ece, "brier": b.brier, "seconds": bnn.seconds,
                 "mc_samples": args.mc_samples },
        "finetune": { "epochs": logs.len(), "seconds": ft_secs, "final_loss": logs.last().map(|l| l.loss) },
        "run_dir": args.out, "n_test": d.n,
    });
    run.write_json("summary.json", &data)?;
    out.result(data, || {
        format!(
            "LeNet5 (advertorch) on the MNIST test set ({} images)\n\
             model                     top-1      NLL      ECE    Brier\n\
             DNN                     {:>6.2}%  {:.4}  {:.4}  {:.4}\n\
             BNN (mean-field, S={:<3}) {:>6.2}%  {:.4}  {:.4}  {:.4}\n\
             fine-tuning: {} epoch(s) in {:.0} s; run directory {}\n",
            d.n,
            100.0 * d.top1,
            d.nll,
            d.ece,
            d.brier,
            args.mc_samples,
            100.0 * b.top1,
            b.nll,
            b.ece,
            b.brier,
            logs.len(),
            ft_secs,
            args.out.display()
        )
    });
    Ok(())
}
